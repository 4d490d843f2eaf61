//! External agents over SPEC §8's JSON lines (`exec:<command>`) on the real engine: the example
//! Python agent goes through every stage of `mini`; an agent that prints garbage gets `bad_request`
//! results until its step budget ends each stage; an agent that exits ends the run cleanly.

mod common;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

/// A directory any user may enter, for agents' programs: under the system's temp dir as root (the
/// agent runs as `nobody`), else under the target's (a confined agent gets a fresh `/tmp`).
fn readable_dir() -> tempfile::TempDir {
    let d = if rustix::process::geteuid().is_root() {
        tempfile::tempdir().unwrap()
    } else {
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
    };
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_agent_goes_through_every_stage_of_mini() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    // The agent runs as `nobody` when the tests run as root, and the checkout may sit below a
    // directory it cannot enter: its program goes where anyone may read it.
    let code = readable_dir();
    let script = code.path().join("example_agent.py");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tasks/agents/example_agent.py"),
        &script,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = format!("exec:python3 {}", script.display());
    let v = common::run_json(&["--suite", "mini", "--agent", &agent], runs.path());
    assert_eq!(v["status"], "done", "{v}");
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert_eq!(v["stages"][stage]["ended_by"], "submit", "{stage}: {v}");
    }
    // crawl: ls, write crawler.py, run it, check, submit; the crawler found documents.
    assert_eq!(v["stages"]["crawl"]["steps"], 5);
    assert!(
        v["stages"]["crawl"]["metrics"]["documents"]
            .as_u64()
            .unwrap()
            > 10,
        "{v}"
    );
    let evs = common::events(&v);
    let logs: String = evs
        .iter()
        .filter(|e| e["type"] == "agent_log")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(logs.contains("[example-agent] stage crawl:"), "{logs}");
    // The agent heard the result of the run.
    assert!(
        logs.contains(&format!("done: level {}", v["level"].as_str().unwrap())),
        "{logs}"
    );
    // ...and which stages passed, and why the others did not, in public words.
    assert!(logs.contains("  crawl: passed"), "{logs}");
    assert!(
        logs.contains("  selfhost: not passed: bootstrap.sh does not exist at the workspace root"),
        "{logs}"
    );
    assert!(
        logs.contains("  train: not passed: bin/lm does not exist"),
        "{logs}"
    );
    // Every call got through as a tool call (no bad_request).
    assert!(evs
        .iter()
        .filter(|e| e["type"] == "step")
        .all(|e| e["tool"] != "(malformed)"));
    common::assert_nothing_left(&docker, &v).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_gets_bad_request_and_an_agent_that_exits_ends_the_run_cleanly() {
    common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--max-steps",
            "4",
            "--agent",
            "exec:yes 'not a call'",
        ],
        runs.path(),
    );
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["level"], "L0");
    for stage in ["crawl", "tokenize"] {
        assert_eq!(v["stages"][stage]["ended_by"], "max_steps", "{stage}");
        assert_eq!(v["stages"][stage]["steps"], 4);
    }
    let steps: Vec<Value> = common::events(&v)
        .into_iter()
        .filter(|e| e["type"] == "step")
        .collect();
    assert_eq!(steps.len(), 8);
    for s in &steps {
        assert_eq!(s["tool"], "(malformed)");
        assert_eq!(s["ok"], false);
        assert_eq!(s["result"]["code"], "bad_request");
        assert!(s["result"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the message is not a tool call: not JSON"));
        assert_eq!(s["args"]["line"], "not a call");
    }

    // An agent that exits at once: each stage ends as an agent error, the run still finishes.
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--agent",
            "exec:echo leaving >&2",
        ],
        runs.path(),
    );
    assert_eq!(v["status"], "done", "{v}");
    for stage in ["crawl", "tokenize"] {
        assert_eq!(v["stages"][stage]["ended_by"], "agent_error", "{stage}");
        assert_eq!(v["stages"][stage]["steps"], 0);
    }
    let evs = common::events(&v);
    assert!(evs
        .iter()
        .any(|e| e["type"] == "warning" && e["message"].as_str().unwrap().contains("exited")));
    assert!(evs
        .iter()
        .any(|e| e["type"] == "agent_log" && e["text"] == "leaving\n"));
}

/// Sends calls as fast as it gets results; each runs `echo <the stage it thinks it is in>`.
const EAGER: &str = r#"
import json, sys
stage = None
n = 0
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "task":
        stage = msg["stage"]
    elif msg["type"] == "result" and not msg["ok"]:
        print("refused:", msg["error"]["code"], file=sys.stderr, flush=True)
        continue
    elif msg["type"] == "stop":
        print("stop:", msg["reason"], file=sys.stderr, flush=True)
        continue
    elif msg["type"] == "done":
        break
    n += 1
    print(json.dumps({"type": "call", "id": str(n), "tool": "bash", "args": {"cmd": "echo " + stage}}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_call_sent_as_the_budget_ran_out_does_not_leak_into_the_next_stage() {
    common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    // The agent runs as `nobody` when the tests run as root: its program must be readable by it.
    let code = readable_dir();
    let script = code.path().join("eager.py");
    std::fs::write(&script, EAGER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = format!("exec:python3 {}", script.display());
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--max-steps",
            "2",
            "--rescue",
            "false",
            "--agent",
            &agent,
        ],
        runs.path(),
    );
    let evs = common::events(&v);
    let cmds: Vec<(String, String)> = evs
        .iter()
        .filter(|e| e["type"] == "step")
        .map(|e| {
            (
                e["stage"].as_str().unwrap().to_string(),
                e["args"]["cmd"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(cmds.len(), 4, "{cmds:?}");
    for (stage, cmd) in &cmds {
        assert_eq!(cmd, &format!("echo {stage}"));
    }
    let logs: String = evs
        .iter()
        .filter(|e| e["type"] == "agent_log")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(logs.contains("refused: budget_exhausted"), "{logs}");
    assert!(logs.contains("stop: max_steps"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_is_ended_by_the_wall_budget() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "tokenize",
            "--max-wall-seconds",
            "3",
            "--agent",
            "exec:sleep 6037; echo never",
        ],
        runs.path(),
    );
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["stages"]["tokenize"]["ended_by"], "max_wall_seconds");
    assert_eq!(v["stages"]["tokenize"]["steps"], 0);
    // The wall budget, the stray-call wait and the exit grace before the kill; not the sleep.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        t0.elapsed()
    );
    common::assert_nothing_left(&docker, &v).await;
}
