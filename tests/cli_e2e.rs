//! `gptx` end to end through its binary on the real engine: the mini suite, show, verify, git history,
//! no leftovers, and Ctrl-C clean-up.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gptx;

fn smoke() -> String {
    format!(
        "script:{}/tasks/agents/smoke.jsonl",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mini_suite_with_a_script_leaves_a_complete_verifiable_run() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &["--suite", "mini", "--agent", &smoke(), "--rescue", "false"],
        runs.path(),
    );
    assert_eq!(v["status"], "done");
    assert_eq!(v["level"], "L0");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let dir = Path::new(v["dir"].as_str().unwrap()).to_path_buf();
    // The smoke script writes no corpus, tokenizer, model, report or recipe: every stage is graded
    // and fails with the reason (no rescue here: the run is the agent's alone).
    assert_eq!(v["stages"]["crawl"]["status"], "scored");
    assert_eq!(v["stages"]["crawl"]["metrics"]["recall"], 0.0);
    assert_eq!(v["stages"]["tokenize"]["status"], "failed");
    assert_eq!(
        v["stages"]["tokenize"]["reason"],
        "tokenizer/meta.json does not exist"
    );
    assert_eq!(v["stages"]["train"]["status"], "failed");
    assert_eq!(v["stages"]["train"]["reason"], "bin/lm does not exist");
    assert_eq!(
        v["stages"]["eval"]["reason"],
        "eval/report.json does not exist"
    );
    assert_eq!(
        v["stages"]["selfhost"]["reason"],
        "bootstrap.sh does not exist at the workspace root"
    );
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert_eq!(v["stages"][stage]["ended_by"], "submit", "{stage}");
        assert_eq!(v["stages"][stage]["steps"], 5, "{stage}");
    }
    // No warnings: networks switched, everything recorded, teardown clean.
    let trace_text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(
        !trace_text.contains("\"type\":\"warning\""),
        "warnings in the trace"
    );
    // Nothing of the run is left on the engine.
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);

    // The run directory is complete.
    for f in [
        "run.json",
        "events.jsonl",
        "score.json",
        "workspace.git",
        "outputs",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "done");
    assert!(run["images"]["agent"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // Two commits per stage: the write_file and the bash that wrote its output.
    let log = Command::new("git")
        .arg("--git-dir")
        .arg(dir.join("workspace.git"))
        .args(["log", "--format=%s"])
        .output()
        .unwrap();
    let subjects = String::from_utf8_lossy(&log.stdout);
    assert_eq!(subjects.lines().count(), 10, "{subjects}");
    assert!(subjects.contains("step 2 (crawl): bash python3 notes/stage_crawl.py"));
    let show = Command::new("git")
        .arg("--git-dir")
        .arg(dir.join("workspace.git"))
        .args(["show", "HEAD:notes/stage_selfhost.out"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).starts_with("stage selfhost (3, 11)"));

    // `gptx show` lists every stage and step with its commit.
    let shown = gptx()
        .args(["show", &run_id, "--runs-dir"])
        .arg(runs.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success());
    assert!(text.contains("verified, "), "{text}");
    for (i, stage) in ["crawl", "tokenize", "train", "eval", "selfhost"]
        .iter()
        .enumerate()
    {
        assert!(
            text.contains(&format!("== stage {}/5 {stage} ==", i + 1)),
            "{stage} missing from show:\n{text}"
        );
    }
    // Each step that changed the workspace ends with its commit (`@<id>`).
    let with_commit = text
        .lines()
        .filter(|l| l.trim_start().starts_with('#') && l.contains("  @"))
        .count();
    assert_eq!(with_commit, 10, "{text}");
    assert!(text.contains("#25"));

    // The trace verifies, and a one-byte edit anywhere is detected.
    let ok = gptx()
        .args(["verify", &run_id, "--runs-dir"])
        .arg(runs.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let events = dir.join("events.jsonl");
    let original = std::fs::read(&events).unwrap();
    let pos = original.windows(7).position(|w| w == b"notes/s").unwrap() + 6;
    let mut edited = original.clone();
    edited[pos] = b'S';
    std::fs::write(&events, &edited).unwrap();
    let bad = gptx()
        .args(["verify", &run_id, "--runs-dir"])
        .arg(runs.path())
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("edited"));
    std::fs::write(&events, &original).unwrap();

    // The score file, with ids, times and hashes redacted.
    let score: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("score.json")).unwrap()).unwrap();
    insta::assert_json_snapshot!("mini_smoke_score", score, {
        ".run_id" => "[run_id]",
        ".world_hash" => "[world_hash]",
        ".agent" => "[script path]",
        ".stages.*.sandbox_seconds" => "[seconds]",
        ".stages.*.wall_seconds" => "[seconds]",
        ".stages.*.cpu_seconds" => "[seconds]",
    });
}

/// Starts `gptx run --suite mini --stages <stage> --quiet` with a script agent, in the background.
fn spawn_run(runs: &Path, stage: &str, script: &Path) -> std::process::Child {
    gptx()
        .args([
            "run", "--suite", "mini", "--stages", stage, "--quiet", "--agent",
        ])
        .arg(format!("script:{}", script.display()))
        .arg("--runs-dir")
        .arg(runs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (up to `limit`) for a run directory in which `file` holds `needle`.
fn wait_for(runs: &Path, file: &str, needle: &str, limit: Duration) -> std::path::PathBuf {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < limit, "{file} never showed {needle:?}");
        let found = std::fs::read_dir(runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p.join(file))
                    .map(|t| t.contains(needle))
                    .unwrap_or(false)
            });
        if let Some(p) = found {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGINT and checks that gptx exits 130 within 30 s and marks the run interrupted.
fn interrupt(mut child: std::process::Child, dir: &Path) -> serde_json::Value {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let t1 = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(30),
        "clean-up took {:?}",
        t1.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "interrupted");
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_kills_the_step_removes_everything_and_keeps_the_trace() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let script = runs.path().join("sleepy.jsonl");
    std::fs::write(
        &script,
        "{\"tool\":\"bash\",\"args\":{\"cmd\":\"echo going; sleep 120\"}}\n{\"tool\":\"submit\"}\n",
    )
    .unwrap();
    let child = spawn_run(runs.path(), "crawl", &script);
    // Wait for the step to start.
    let dir = wait_for(
        runs.path(),
        "events.jsonl",
        "\"step_started\"",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(500));
    let events = dir.join("events.jsonl");
    let run_id = dir.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        common::leftovers(&docker, &run_id).await > 0,
        "the run should have a sandbox now"
    );
    let run = interrupt(child, &dir);
    let v = gptx::trace::verify(&events, run["trace_sha256"].as_str()).expect("trace intact");
    assert!(v.events >= 4);
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(text.contains("\"ended_by\":\"interrupted\""));
    assert_eq!(
        common::leftovers(&docker, &run_id).await,
        0,
        "resources left after Ctrl-C"
    );
}

#[test]
fn usage_errors_name_the_flag_and_exit_2() {
    let out = gptx()
        .args(["run", "--suite", "nope", "--agent", "null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--suite") && err.contains("mini"), "{err}");
    let out = gptx().args(["run", "--agent", "gpt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent"));
    let out = gptx()
        .args(["run", "--agent", "null", "--stages", "crawl,fly"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fly"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_a_selfhost_rebuild_removes_its_containers() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let model = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/lm/model.py"
    ))
    .unwrap();
    let calls = [
        serde_json::json!({"tool": "write_file", "args": {"path": "fixtures/model.py", "content": model}}),
        serde_json::json!({"tool": "write_file", "args": {"path": "bin/lm", "content":
            "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/../fixtures/model.py\" honest \"$@\"\n"}}),
        serde_json::json!({"tool": "write_file", "args": {"path": "bootstrap.sh", "content":
            "echo rebuilding; sleep 300\n"}}),
        serde_json::json!({"tool": "bash", "args": {"cmd": "chmod +x bin/lm"}}),
        serde_json::json!({"tool": "submit"}),
    ];
    let script = runs.path().join("slow-recipe.jsonl");
    std::fs::write(
        &script,
        calls.iter().map(|c| format!("{c}\n")).collect::<String>(),
    )
    .unwrap();
    let child = spawn_run(runs.path(), "selfhost", &script);
    // Wait until bootstrap.sh runs in the rebuild sandbox.
    let dir = wait_for(
        runs.path(),
        "selfhost/bootstrap.log",
        "rebuilding",
        Duration::from_secs(180),
    );
    let run_id = dir.file_name().unwrap().to_string_lossy().to_string();
    interrupt(child, &dir);
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(text.contains("stage selfhost: interrupted while scoring"));
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
}
