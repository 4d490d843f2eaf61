//! `gptx export` on synthetic runs: the Inspect AI eval log read back by `inspect_ai` itself, the
//! ATIF trajectory checked by Harbor's own validator, and JUnit XML checked for structure, escaping
//! and well-formedness.

use std::path::Path;
use std::process::Command;

use gptx::report::export::{export, Format};
use gptx::synth::{write_run, Synth};
use gptx::trace::rundir::{RunDir, RunStatus};

/// Runs a Python snippet with `paths` as `sys.argv[1:]`; its stdout must be JSON.
fn python(script: &str, paths: &[&Path]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .expect("python3 must be installed to check exports");
    assert!(
        out.status.success(),
        "python3 failed on {paths:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python3 printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Fails, saying what to install, when `inspect_ai` is missing (CI installs it).
fn require_inspect_ai() {
    let out = Command::new("python3")
        .args(["-c", "import inspect_ai; print(inspect_ai.__version__)"])
        .output()
        .expect("python3 must be installed to check exports");
    assert!(
        out.status.success(),
        "the Inspect AI export test needs the inspect_ai package: run `python3 -m pip install inspect-ai`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const READ_BACK: &str = r#"
import json, sys
from inspect_ai.log import read_eval_log

def summary(path):
    # The header alone goes through Inspect's streaming reader, which needs `version` first.
    header = read_eval_log(path, header_only=True)
    log = read_eval_log(path)
    s0 = log.samples[0]
    return {
    "header_status": header.status,
    "status": log.status,
    "samples": len(log.samples),
    "ids": [s.id for s in log.samples],
    "scores": [None if s.scores is None else s.scores["gptx"].value for s in log.samples],
    "explanations": [None if s.scores is None else s.scores["gptx"].explanation for s in log.samples],
    "first_messages": len(s0.messages),
    "first_roles": [m.role for m in s0.messages],
    "first_tool_call": s0.messages[1].tool_calls[0].function if len(s0.messages) > 1 else None,
    "first_events": sorted({e.event for e in s0.events}),
    "total_samples": log.results.total_samples if log.results else None,
    "completed_samples": log.results.completed_samples if log.results else None,
    "metrics": {k: v.value for k, v in log.results.scores[0].metrics.items()} if log.results else None,
    "model": log.eval.model,
    "usage": {k: v.total_tokens for k, v in log.stats.model_usage.items()},
    "error": log.error.message if log.error else None,
    }

# inspect_ai takes seconds to import: one process reads every log given.
print(json.dumps([summary(p) for p in sys.argv[1:]]))
"#;

fn write_export(dir: &RunDir, format: Format, name: &str) -> std::path::PathBuf {
    let text = export(dir, format).unwrap();
    let path = dir.path.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn inspect_log_of_a_full_run_reads_back() {
    require_inspect_ai();
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(tmp.path(), &Synth::default()).unwrap();
    let path = write_export(&dir, Format::Inspect, "log.json");
    let v = &python(READ_BACK, &[&path])[0];
    assert_eq!(v["header_status"], "success");
    assert_eq!(v["status"], "success");
    assert_eq!(v["samples"], 5);
    assert_eq!(
        v["ids"],
        serde_json::json!(["crawl", "tokenize", "train", "eval", "selfhost"])
    );
    assert_eq!(v["scores"], serde_json::json!([1, 1, 1, 1, 1]));
    // The instruction, then a call and its result per step (3 steps).
    assert_eq!(v["first_messages"], 7);
    assert_eq!(
        v["first_roles"],
        serde_json::json!([
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool"
        ])
    );
    assert_eq!(v["first_tool_call"], "write_file");
    assert_eq!(v["first_events"], serde_json::json!(["score", "tool"]));
    assert_eq!(v["total_samples"], 5);
    assert_eq!(v["completed_samples"], 5);
    assert_eq!(v["metrics"]["accuracy"], 1.0);
    assert_eq!(v["metrics"]["level"], 6.0);
    assert_eq!(v["model"], "gptx/reference");
}

/// An LLM agent's run whose train, eval and selfhost fail (so there are model calls), one
/// interrupted in train (the stages after it are there, unscored), and one still running.
fn runs_that_stopped_short() -> [Synth; 3] {
    [
        Synth {
            passed_stages: 2,
            agent: "openai:gpt-4o-mini".into(),
            ..Synth::default()
        },
        Synth {
            run_id: "20261129-130000-000002".into(),
            status: RunStatus::Interrupted,
            passed_stages: 2,
            ..Synth::default()
        },
        Synth {
            run_id: "20261129-140000-000003".into(),
            status: RunStatus::Running,
            passed_stages: 1,
            ..Synth::default()
        },
    ]
}

#[test]
fn inspect_logs_of_runs_that_failed_or_stopped_midway_read_back() {
    require_inspect_ai();
    let tmp = tempfile::tempdir().unwrap();
    let [llm, interrupted, running] = runs_that_stopped_short();
    let specs = [
        llm,
        interrupted,
        running,
        // A failed run carries its error.
        Synth {
            run_id: "20261129-150000-000004".into(),
            status: RunStatus::Failed,
            passed_stages: 3,
            ..Synth::default()
        },
    ];
    let paths: Vec<std::path::PathBuf> = specs
        .iter()
        .map(|spec| {
            write_export(
                &write_run(tmp.path(), spec).unwrap(),
                Format::Inspect,
                "log.json",
            )
        })
        .collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let all = python(READ_BACK, &refs);

    let v = &all[0];
    assert_eq!(v["status"], "success", "the run finished; stages failed");
    assert_eq!(v["samples"], 5);
    assert_eq!(v["scores"], serde_json::json!([1, 1, 0, 0, 0]));
    let why = v["explanations"][2].as_str().unwrap();
    assert!(why.starts_with("gate not met: verified bpb"), "{why}");
    assert_eq!(v["first_messages"], 7);
    assert_eq!(
        v["first_events"],
        serde_json::json!(["model", "score", "tool"])
    );
    assert_eq!(v["metrics"]["accuracy"], 0.4);
    assert_eq!(v["model"], "openai/gpt-4o-mini");
    assert!(v["usage"]["openai/gpt-4o-mini"].as_u64().unwrap() > 0);

    let v = &all[1];
    assert_eq!(v["header_status"], "cancelled");
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["samples"], 5);
    assert_eq!(v["scores"], serde_json::json!([1, 1, null, null, null]));
    assert_eq!(v["completed_samples"], 2);

    let v = &all[2];
    assert_eq!(v["status"], "started");
    assert_eq!(v["samples"], 5);
    assert_eq!(v["total_samples"], serde_json::Value::Null);

    let v = &all[3];
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"], "the sandbox stopped answering");
}

/// Harbor's trajectory validator on each path, and what the tests look at of each trajectory.
const VALIDATE_ATIF: &str = r#"
import json, sys
from harbor.utils.trajectory_validator import TrajectoryValidator

def check(path):
    v = TrajectoryValidator()
    ok = v.validate(path)
    t = json.load(open(path))
    steps = t["steps"]
    return {
        "ok": ok,
        "errors": v.get_errors(),
        "version": t["schema_version"],
        "sources": [s["source"] for s in steps],
        "boundaries": [s["extra"]["boundary"] for s in steps if s["source"] != "agent" and "extra" in s],
        "tools": [s["tool_calls"][0]["function_name"] for s in steps if s["source"] == "agent"],
        "llm_calls": sum(s.get("llm_call_count", 0) for s in steps),
        "prompt_tokens": sum(s.get("metrics", {}).get("prompt_tokens", 0) for s in steps),
        "final": t.get("final_metrics"),
        "grades": t["extra"]["gptx"],
        "agent": t["agent"],
    }

print(json.dumps([check(p) for p in sys.argv[1:]]))
"#;

/// Fails, saying what to install, when Harbor is missing (CI installs it).
fn require_harbor() {
    let out = Command::new("python3")
        .args(["-c", "import harbor.utils.trajectory_validator"])
        .output()
        .expect("python3 must be installed to check exports");
    assert!(
        out.status.success(),
        "the ATIF export test needs Harbor's validator: run `python3 -m pip install --no-deps --ignore-requires-python harbor==0.26.0 'pydantic>=2'`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A full reference run, an LLM agent's run whose later stages fail, an interrupted run and a
/// running one: each trajectory passes Harbor's validator, with a `user` step opening each reached
/// stage, an `agent` step per tool call, a `system` step closing it, and the grades in `extra`.
#[test]
fn atif_trajectories_validate_with_harbor() {
    require_harbor();
    let (full, short) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let atif = |tmp: &Path, spec: &Synth| {
        write_export(&write_run(tmp, spec).unwrap(), Format::Atif, "t.json")
    };
    let mut paths = vec![atif(full.path(), &Synth::default())];
    paths.extend(
        runs_that_stopped_short()
            .iter()
            .map(|spec| atif(short.path(), spec)),
    );
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let all = python(VALIDATE_ATIF, &refs);
    for (v, path) in all.as_array().unwrap().iter().zip(&paths) {
        assert_eq!(v["ok"], true, "{}: {}", path.display(), v["errors"]);
        assert_eq!(v["version"], "ATIF-v1.8");
    }
    let v = &all[0];
    let sources = v["sources"].as_array().unwrap();
    // Five stages of three steps each: 5 × (user, 3 × agent, system).
    assert_eq!(sources.len(), 25, "{sources:?}");
    assert_eq!(
        sources[..5],
        serde_json::json!(["user", "agent", "agent", "agent", "system"])
            .as_array()
            .unwrap()[..]
    );
    assert_eq!(v["boundaries"].as_array().unwrap().len(), 10);
    assert_eq!(v["tools"][0], "write_file");
    assert_eq!(v["llm_calls"], 0, "the reference makes no model calls");
    assert_eq!(v["final"]["total_steps"], 25);
    assert_eq!(v["final"]["extra"]["tool_calls"], 15);
    assert_eq!(v["grades"]["level"], "L6");
    assert_eq!(v["grades"]["stages"]["train"]["passed"], true);
    assert!(v["grades"]["stages"]["train"]["metrics"]["bpb"].is_number());
    assert_eq!(v["agent"]["name"], "reference");

    let v = &all[1];
    assert!(v["llm_calls"].as_u64().unwrap() > 0, "{v}");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    // Every model call is on some agent step: the steps add up to the run's totals.
    assert_eq!(v["prompt_tokens"], v["final"]["total_prompt_tokens"]);
    assert_eq!(v["agent"]["model_name"], "openai/gpt-4o-mini");
    assert_eq!(v["grades"]["stages"]["train"]["passed"], false);

    let v = &all[2];
    assert_eq!(v["grades"]["status"], "interrupted");
    assert_eq!(v["grades"]["stages"]["selfhost"]["reached"], false);
}

const PARSE_XML: &str = r#"
import json, sys
import xml.etree.ElementTree as E
root = E.parse(sys.argv[1]).getroot()
suites = root.findall("testsuite")
cases = root.findall("./testsuite/testcase")
print(json.dumps({
    "root": root.tag,
    "suites": [s.get("name") for s in suites],
    "cases": [[c.get("classname"), c.get("name"), c.get("time")] for c in cases],
    "failures": [c.get("name") for c in cases if c.find("failure") is not None],
    "failure_messages": [c.find("failure").get("message") for c in cases if c.find("failure") is not None],
    "failure_texts": [c.find("failure").text for c in cases if c.find("failure") is not None],
    "skipped": [c.get("name") for c in cases if c.find("skipped") is not None],
    "errors": [c.get("name") for c in cases if c.find("error") is not None],
    "properties": {p.get("name"): p.get("value") for p in root.iter("property")},
    "counts": [suites[0].get(k) for k in ("tests", "failures", "errors", "skipped")],
}))
"#;

#[test]
fn junit_has_a_testcase_per_stage_and_failures_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(
        tmp.path(),
        &Synth {
            passed_stages: 3,
            ..Synth::default()
        },
    )
    .unwrap();
    let xml = export(&dir, Format::Junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 5);
    assert_eq!(xml.matches("<failure ").count(), 2);
    let path = write_export(&dir, Format::Junit, "junit.xml");
    let v = python(PARSE_XML, &[&path]);
    assert_eq!(v["root"], "testsuites");
    assert_eq!(v["suites"], serde_json::json!(["gptx.mini"]));
    assert_eq!(v["cases"][0][0], "gptx.mini.reference");
    assert_eq!(v["cases"][0][1], "crawl");
    assert!(v["cases"][0][2].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    assert_eq!(v["failures"], serde_json::json!(["eval", "selfhost"]));
    let msg = v["failure_messages"][0].as_str().unwrap();
    assert!(msg.starts_with("gate not met: the report claims"), "{msg}");
    let text = v["failure_texts"][0].as_str().unwrap();
    assert!(
        text.contains("claim_error"),
        "headline metrics inside: {text}"
    );
    assert_eq!(v["properties"]["run_id"], "20261129-120000-abcdef");
    assert_eq!(v["properties"]["level"], "L3");
    assert_eq!(v["properties"]["world_hash"], "w0");
    assert!(v["properties"]["bootstrap_index"].as_str().is_some());
    assert_eq!(v["counts"], serde_json::json!(["5", "2", "0", "0"]));
}

#[test]
fn junit_skips_stages_never_reached_and_escapes_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_run(
        tmp.path(),
        &Synth {
            agent: "exec:python3 agent.py --name \"<x>\" & 'y'\u{1}".into(),
            status: RunStatus::Interrupted,
            passed_stages: 1,
            ..Synth::default()
        },
    )
    .unwrap();
    let xml = export(&dir, Format::Junit).unwrap();
    assert!(
        xml.contains("&quot;&lt;x&gt;&quot; &amp; &apos;y&apos;\\u{1}"),
        "{xml}"
    );
    let path = write_export(&dir, Format::Junit, "junit.xml");
    let v = python(PARSE_XML, &[&path]);
    assert_eq!(
        v["cases"][0][0],
        "gptx.mini.exec:python3 agent.py --name \"<x>\" & 'y'\\u{1}"
    );
    assert_eq!(
        v["errors"],
        serde_json::json!(["tokenize"]),
        "interrupted, not scored"
    );
    assert_eq!(
        v["skipped"],
        serde_json::json!(["train", "eval", "selfhost"])
    );
    assert_eq!(v["failures"], serde_json::json!([]));
}
