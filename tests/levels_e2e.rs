//! Levels end to end on `mini` with the agents below the reference: null (L0), an agent that only
//! crawls (L1), rescue after a failed crawl (an assisted level), a lying eval report (fails L4 with the
//! reason) and a recipe that smuggles its model (fails L5, every refused file in the trace).

mod common;

use std::path::Path;

use serde_json::{json, Value};

fn rescues(v: &Value) -> Vec<Value> {
    common::events(v)
        .into_iter()
        .filter(|e| e["type"] == "rescue")
        .collect()
}

/// Writes a script agent (one `{"tool","args"}` per line) into `dir`.
fn script(dir: &Path, calls: &[Value]) -> String {
    let path = dir.join("agent.jsonl");
    let text: String = calls.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&path, text).unwrap();
    format!("script:{}", path.display())
}

fn fixture_model() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/lm/model.py"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn null_is_l0_even_with_rescue() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(&["--suite", "mini", "--agent", "null"], runs.path());
    assert_eq!(v["status"], "done");
    assert_eq!(v["level"], "L0", "{v}");
    assert_eq!(v["assisted_level"], Value::Null);
    assert_eq!(v["bootstrap_index"], 0.0);
    // Crawl and tokenize were rescued, but the agent passed nothing after them.
    let r = rescues(&v);
    let stages: Vec<&str> = r.iter().map(|e| e["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["crawl", "tokenize"]);
    assert!(r.iter().all(|e| e["ok"] == true), "{r:?}");
    assert_eq!(v["stages"]["crawl"]["rescued"], true);
    assert_eq!(v["stages"]["train"]["reason"], "bin/lm does not exist");
    assert_eq!(
        v["stages"]["eval"]["reason"],
        "eval/report.json does not exist"
    );
    assert_eq!(
        v["stages"]["selfhost"]["reason"],
        "bootstrap.sh does not exist at the workspace root"
    );
    common::assert_nothing_left(&docker, &v).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_only_crawls_is_l1() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &["--suite", "mini", "--agent", "reference:crawl"],
        runs.path(),
    );
    assert_eq!(v["level"], "L1", "{v}");
    assert_eq!(v["assisted_level"], Value::Null);
    assert_eq!(v["stages"]["crawl"]["passed"], true);
    assert_eq!(v["stages"]["tokenize"]["rescued"], true);
    assert_eq!(v["stages"]["train"]["passed"], false);
    // The crawl's share of the index: weight 0.15 at the reference's F1.
    let bi = v["bootstrap_index"].as_f64().unwrap();
    assert!(bi > 14.0 && bi <= 15.0 + 1e-9, "{bi}");
    common::assert_nothing_left(&docker, &v).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rescue_after_a_failed_crawl_gives_an_assisted_level() {
    common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--agent",
            "reference:tokenize",
        ],
        runs.path(),
    );
    assert_eq!(v["level"], "L0", "{v}");
    assert_eq!(v["assisted_level"], "L2*");
    assert_eq!(v["stages"]["crawl"]["passed"], false);
    assert_eq!(v["stages"]["crawl"]["rescued"], true);
    assert_eq!(v["stages"]["tokenize"]["passed"], true);
    let r = rescues(&v);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["files"], json!(["data/corpus.jsonl"]));
    assert!(r[0]["detail"]
        .as_str()
        .unwrap()
        .contains("the world's gold text of"));
    assert!(r[0]["commit"].as_str().is_some());

    // Without rescue, the tokenizer has nothing to train on and the run stays at L0.
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--agent",
            "reference:tokenize",
            "--rescue",
            "false",
        ],
        runs.path(),
    );
    assert_eq!(
        (v["level"].as_str(), &v["assisted_level"]),
        (Some("L0"), &Value::Null)
    );
    assert!(rescues(&v).is_empty());
    assert_eq!(v["stages"]["tokenize"]["passed"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_eval_report_fails_l4_with_the_reason() {
    common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let val: String = (0..6)
        .map(|i| {
            json!({"url": format!("http://docs.gptx.test/v{i}"),
                   "text": format!("Section {i}. The interpreter reads a statement, compiles it and runs it; errors name the line. ").repeat(20)})
            .to_string() + "\n"
        })
        .collect();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "write_file", "args": {"path": "fixtures/model.py", "content": fixture_model()}}),
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content": "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/../fixtures/model.py\" honest \"$@\"\n"}}),
            json!({"tool": "bash", "args": {"cmd": "chmod +x bin/lm"}}),
            json!({"tool": "write_file", "args": {"path": "data/val.jsonl", "content": val}}),
            json!({"tool": "write_file", "args": {"path": "eval/report.json",
                "content": "{\"val_path\": \"data/val.jsonl\", \"val_bpb\": 0.5, \"notes\": \"state of the art\"}"}}),
            json!({"tool": "check", "args": {}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "eval", "--agent", &agent],
        runs.path(),
    );
    let e = &v["stages"]["eval"];
    assert_eq!(e["status"], "scored", "{e}");
    assert_eq!(e["passed"], false);
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.contains("the report claims 0.5000 bpb on data/val.jsonl but bin/lm measures"),
        "{reason}"
    );
    let m = &e["metrics"];
    assert_eq!(m["claimed_val_bpb"], 0.5);
    assert!(m["claim_error"].as_f64().unwrap() > 0.05);
    assert!(m["val_bpb"].as_f64().unwrap() > 1.0);
    assert!(m["test_bpb"].as_f64().unwrap() > 1.0);
    // `check` had shown the agent the measured value before it submitted.
    let check = common::events(&v)
        .into_iter()
        .find(|e| e["type"] == "step" && e["tool"] == "check")
        .unwrap();
    assert_eq!(check["result"]["ok"], true, "{check}");
    assert!(check["result"]["measured_val_bpb"].as_f64().unwrap() > 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_that_smuggles_its_model_fails_l5() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "write_file", "args": {"path": "fixtures/model.py", "content": fixture_model()}}),
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content":
                "#!/bin/sh\ncd \"$(dirname \"$0\")/..\"\n[ -s model/weights.bin ] || { echo 'model/weights.bin is missing' >&2; exit 1; }\nexec python3 fixtures/model.py honest \"$@\"\n"}}),
            // A 3 MB "model", then two ways to smuggle it: whole, and split into parts under the
            // per-file cap.
            json!({"tool": "bash", "args": {"cmd":
                "chmod +x bin/lm && mkdir -p model smuggle parts && head -c 3000000 /dev/urandom > model/weights.bin && cp model/weights.bin smuggle/weights.bin && split -b 200000 -d model/weights.bin parts/w."}}),
            json!({"tool": "write_file", "args": {"path": "bootstrap.sh", "content":
                "#!/bin/sh\nset -e\nmkdir -p model\nif [ -f smuggle/weights.bin ]; then cp smuggle/weights.bin model/; else cat parts/w.* > model/weights.bin; fi\n"}}),
            json!({"tool": "check", "args": {}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "selfhost", "--agent", &agent],
        runs.path(),
    );
    let s = &v["stages"]["selfhost"];
    assert_eq!(s["passed"], false, "{s}");
    let reason = s["reason"].as_str().unwrap();
    // The recipe failed; the rebuilt model's stderr on hidden documents is not shown.
    assert!(
        reason.starts_with("`bash ./bootstrap.sh` exited with code 1"),
        "{reason}"
    );
    assert!(!reason.contains("model/weights.bin is missing"), "{reason}");
    assert!(
        reason.contains("its stderr is not shown (the call ran on hidden data)"),
        "{reason}"
    );
    let m = &s["metrics"];
    // The original verified; the rebuild ran and failed.
    assert!(m["original_bpb"].as_f64().unwrap() > 1.0, "{m}");
    assert_ne!(m["bootstrap"]["exit_code"], 0);
    let refused = m["recipe"]["refused"].as_array().unwrap();
    let why = |p: &str| {
        refused
            .iter()
            .find(|r| r["path"] == p)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{p} was not refused: {refused:?}"))
    };
    assert!(why("smuggle/weights.bin").contains("over the 256 KiB limit"));
    assert!(why("model/weights.bin").contains("under model/"));
    for i in 0..15 {
        let r = why(&format!("parts/w.{i:02}"));
        assert!(
            r.contains("copied verbatim from built artifacts") || r.contains("past 2 MiB in all"),
            "{r}"
        );
    }
    let copied: Vec<&str> = m["recipe"]["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(copied, ["bootstrap.sh", "bin/lm", "fixtures/model.py"]);
    // The agent's check had said so before it submitted.
    let check = common::events(&v)
        .into_iter()
        .find(|e| e["type"] == "step" && e["tool"] == "check")
        .unwrap();
    assert_eq!(check["result"]["ok"], false);
    assert!(check["result"]["errors"]
        .to_string()
        .contains("smuggle/weights.bin is not copied"));
    common::assert_nothing_left(&docker, &v).await;
}

/// A model that needs nothing but its code, for recipes that only have to put it back.
fn code_only_lm(calls: &mut Vec<Value>) {
    calls.push(
        json!({"tool": "write_file", "args": {"path": "src/model.py", "content": fixture_model()}}),
    );
    calls.push(json!({"tool": "write_file", "args": {"path": "data/corpus.jsonl", "content":
        (0..4).map(|i| json!({"url": format!("http://docs.gptx.test/p{i}"),
            "text": format!("Page {i}. A statement is read, compiled and run; an error names its line. ").repeat(30)})
            .to_string() + "\n").collect::<String>()}}));
}

const BASH_RECIPE: &str = r#"#!/usr/bin/env bash
# bash only: pipefail, [[ ]], arrays and a here-string; dash stops at the first line.
set -euo pipefail
verbs=(score next sample)
[[ ${#verbs[@]} -eq 3 ]]
mkdir -p bin model
cat > bin/lm <<'SH'
#!/bin/sh
exec python3 "$(dirname "$0")/../src/model.py" honest "$@"
SH
chmod +x bin/lm
read -r first <<< "rebuilt"
echo "$first" > model/ok
echo "bootstrap: $first bin/lm"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_bash_only_recipe_runs_with_its_shebang_and_passes_l5() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    code_only_lm(&mut calls);
    calls.extend([
        json!({"tool": "write_file", "args": {"path": "bootstrap.sh", "content": BASH_RECIPE}}),
        json!({"tool": "bash", "args": {"cmd": "chmod +x bootstrap.sh && ./bootstrap.sh"}}),
        json!({"tool": "check", "args": {}}),
        json!({"tool": "check", "args": {"rebuild": true}}),
        json!({"tool": "submit", "args": {}}),
    ]);
    let agent = script(runs.path(), &calls);
    let v = common::run_json(
        &["--suite", "mini", "--stages", "selfhost", "--agent", &agent],
        runs.path(),
    );
    let s = &v["stages"]["selfhost"];
    assert_eq!(s["passed"], true, "{s}");
    let b = &s["metrics"]["bootstrap"];
    assert_eq!(b["command"], "./bootstrap.sh", "{b}");
    assert_eq!(b["exit_code"], 0, "{b}");
    assert!(b["stdout_tail"]
        .as_str()
        .unwrap()
        .contains("bootstrap: rebuilt bin/lm"));
    assert_eq!(s["metrics"]["relative_difference"], 0.0);
    let steps: Vec<Value> = common::events(&v)
        .into_iter()
        .filter(|e| e["type"] == "step" && e["tool"] == "check")
        .collect();
    assert_eq!(steps.len(), 2);
    // The quick check: the command the grade will use and a bash syntax check.
    let quick = &steps[0]["result"];
    assert_eq!(quick["ok"], true, "{quick}");
    assert_eq!(quick["command"], "./bootstrap.sh");
    assert_eq!(quick["syntax"]["exit_code"], 0, "{quick}");
    // The trial rebuild: run as the grade runs it, verified on the agent's own documents, and its
    // time counted against the stage.
    let trial = &steps[1]["result"];
    assert_eq!(trial["ok"], true, "{trial}");
    assert_eq!(trial["exit_code"], 0);
    assert_eq!(trial["command"], "./bootstrap.sh");
    assert!(trial["log_tail"]
        .as_str()
        .unwrap()
        .contains("bootstrap: rebuilt bin/lm"));
    assert!(trial["rebuilt_bpb"].as_f64().unwrap() > 1.0, "{trial}");
    assert_eq!(trial["relative_difference"], 0.0);
    assert_eq!(trial["documents"], 4);
    assert!(steps[1]["sandbox_seconds"].as_f64().unwrap() > 0.0);
    common::assert_nothing_left(&docker, &v).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_that_fails_is_not_a_rebuild_even_when_its_copied_model_verifies() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    code_only_lm(&mut calls);
    calls.extend([
        // bin/lm is part of the recipe and verifies on its own; bootstrap.sh fails at once.
        json!({"tool": "write_file", "args": {"path": "bin/lm", "content":
            "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/../src/model.py\" honest \"$@\"\n"}}),
        json!({"tool": "write_file", "args": {"path": "bootstrap.sh", "content":
            "#!/bin/sh\necho 'cannot build' >&2\nexit 3\n"}}),
        json!({"tool": "bash", "args": {"cmd": "chmod +x bin/lm bootstrap.sh"}}),
        json!({"tool": "submit", "args": {}}),
    ]);
    let agent = script(runs.path(), &calls);
    let v = common::run_json(
        &["--suite", "mini", "--stages", "selfhost", "--agent", &agent],
        runs.path(),
    );
    let s = &v["stages"]["selfhost"];
    assert_eq!(s["passed"], false, "{s}");
    assert_eq!(s["normalized"], 0.0);
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("`./bootstrap.sh` exited with code 3 after")
            && reason.contains("(stderr ends: cannot build)"),
        "{reason}"
    );
    // The copied model did verify: the failure is the recipe's alone.
    assert_eq!(s["metrics"]["relative_difference"], 0.0, "{s}");
    assert_eq!(s["metrics"]["bootstrap"]["exit_code"], 3);
    common::assert_nothing_left(&docker, &v).await;
}
