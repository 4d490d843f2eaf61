//! `gptx mcp` with the official Python MCP SDK (`pip install mcp`) as the client, over stdio and over
//! streamable HTTP on loopback: it initializes, lists the tools, runs commands in the sandbox, gets a
//! bad request refused, checks, submits, and hears the run's level; the run directory records the
//! MCP client as the agent.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_takes_a_stage_over_stdio() {
    take_a_stage("stdio").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_takes_a_stage_over_streamable_http() {
    take_a_stage("http").await;
}

async fn take_a_stage(transport: &str) {
    let (docker, _) = common::docker_and_image().await;
    let sdk = Command::new("python3")
        .args(["-c", "import mcp"])
        .status()
        .unwrap();
    assert!(
        sdk.success(),
        "the Python MCP SDK is missing: pip install mcp (the README's test command does)"
    );
    let runs = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mcp/client.py"
        ))
        .arg(env!("CARGO_BIN_EXE_gptx"))
        .arg(runs.path())
        .arg(transport)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["server"], "gptx");
    let instructions = v["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("build a language model"),
        "{instructions}"
    );
    assert!(
        instructions.contains("Now stage tokenize. Its instruction:"),
        "{instructions}"
    );
    assert_eq!(
        v["tools"],
        serde_json::json!(["bash", "read_file", "write_file", "check", "submit"])
    );
    assert_eq!(v["echo_error"], false);
    assert!(v["echo"].as_str().unwrap().contains("hello from mcp"));
    assert_eq!(v["bad_error"], true);
    assert!(v["bad"].as_str().unwrap().contains("bad_request"));
    assert!(v["check"]
        .as_str()
        .unwrap()
        .contains("tokenizer/meta.json does not exist"));
    assert!(
        v["submit"]
            .as_str()
            .unwrap()
            .contains("The run is over: level L0"),
        "{}",
        v["submit"]
    );
    assert_eq!(v["after_error"], true);

    // The run: its agent is the MCP client, every call a step.
    let dir = std::fs::read_dir(runs.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["agent"], "mcp");
    assert_eq!(run["status"], "done");
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(events.matches("\"type\":\"step\"").count(), 4);
    assert_eq!(
        common::leftovers(&docker, run["run_id"].as_str().unwrap()).await,
        0
    );
}
