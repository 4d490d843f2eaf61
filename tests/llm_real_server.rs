//! `openai:<model>` against a real OpenAI-compatible server running offline: llama.cpp's server (PyPI's
//! `llama-cpp-python[server]`) with a tiny random-weight model written locally by
//! `tests/fixtures/llm/make_tiny_gguf.py`. The model answers in text, never with a tool call, so the
//! stage ends after the loop's one nudge; what is tested is the wire: the request (tools, messages)
//! is accepted, and tokens come back and are priced.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_agent_against_llama_cpp_server() {
    let (docker, _) = common::docker_and_image().await;
    let ok = Command::new("python3")
        .args(["-c", "import llama_cpp.server, gguf"])
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "needs python3 -m pip install 'llama-cpp-python[server]' gguf (the README's test command does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny.gguf");
    let made = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/llm/make_tiny_gguf.py"
        ))
        .arg(&model)
        .status()
        .unwrap();
    assert!(made.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&model)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--n_ctx",
                "32768",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = tempfile::tempdir().unwrap();
    let out = common::gptx()
        .env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
        .args([
            "run",
            "--suite",
            "mini",
            "--stages",
            "tokenize",
            "--agent",
            "openai:gpt-4o-mini",
            "--max-output-tokens",
            "16",
            "--rescue",
            "false",
            "--json",
            "--quiet",
            "--runs-dir",
        ])
        .arg(runs.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["stages"]["tokenize"]["ended_by"], "agent_finished", "{v}");
    let dir = std::path::Path::new(v["dir"].as_str().unwrap());
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "model_call")
        .collect();
    // The text reply, the nudge's request, the second text reply.
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c["error"], serde_json::Value::Null, "{c}");
        assert!(c["input_tokens"].as_u64().unwrap() > 1000, "{c}");
        assert!(c["output_tokens"].as_u64().unwrap() > 0, "{c}");
        assert!(c["cost_usd"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(c["model"], "openai:gpt-4o-mini");
    }
    assert!(calls[1]["input_tokens"].as_u64() > calls[0]["input_tokens"].as_u64());
    common::assert_nothing_left(&docker, &v).await;
}
