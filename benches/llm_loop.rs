//! Criterion bench of the harness's cost per LLM step: a stage of 50 `bash` calls driven by the
//! OpenAI-compatible backend against a scripted server on loopback that answers at once, on the
//! recording fake sandbox with the workspace history on. With a model that takes no time, the whole
//! step is harness: the conversation serialised and sent, the reply parsed, the tool call run and
//! recorded (event, git snapshot), the result shortened and appended. Loopback HTTP is included, so
//! the figure is an upper bound of the overhead added to a real model's latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gptx::agent::llm::{scripted, LlmAgent, LlmOptions, OpenAi};
use gptx::config::suite::{Home, Suite};
use gptx::runner::Runner;
use gptx::sandbox::fake::{RecordingSandbox, Reply};
use gptx::trace::{EventLog, EventSink, Recorder, WorkspaceHistory};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const STEPS: usize = 50;

const SUITE: &str = r#"
name = "bench"
image = "base"
[budgets]
max_steps = 1000
[[stages]]
name = "crawl"
"#;

/// One stage of STEPS bash calls and a submit; returns its wall time.
async fn stage(base: &str) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let ws = run_dir.join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    // Realistic outputs: 2 KB of stdout per command.
    let replies = (0..STEPS)
        .map(|_| Reply::ok(&"output line\n".repeat(170)))
        .collect();
    let sandbox = Arc::new(RecordingSandbox::with_workspace(&ws, replies).unwrap());
    let suite = Suite::parse(SUITE, std::path::Path::new("bench.toml")).unwrap();
    let recorder = Recorder::new(EventLog::create(&run_dir.join("events.jsonl")).unwrap());
    let history = WorkspaceHistory::create(&run_dir.join("workspace.git"), &ws).unwrap();
    let mut runner = Runner::new(
        Home::locate().unwrap(),
        suite,
        "bench".into(),
        run_dir,
        sandbox,
        EventSink::new(recorder, vec![]),
        Some(history),
        CancellationToken::new(),
    );
    let mut agent = LlmAgent::new(
        Box::new(OpenAi::new("bench", base, None)),
        LlmOptions::default(),
        None,
    );
    let t0 = Instant::now();
    let mut result = runner.run(&mut agent, "img").await;
    let elapsed = t0.elapsed();
    runner.finish(&mut result);
    assert_eq!(result.stages[0].steps as usize, STEPS + 1);
    elapsed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    c.bench_function("llm step (instant model, per step)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let script: scripted::Script = Box::new(|n| {
                        let call = if n % (STEPS + 1) < STEPS {
                            json!({"id": format!("c{n}"), "type": "function",
                                   "function": {"name": "bash", "arguments": "{\"cmd\": \"ls -la\"}"}})
                        } else {
                            json!({"id": format!("c{n}"), "type": "function",
                                   "function": {"name": "submit", "arguments": "{}"}})
                        };
                        (200, json!({"choices": [{"message": {"content": null, "tool_calls": [call]}}],
                                     "usage": {"prompt_tokens": 1000, "completion_tokens": 20}}))
                    });
                    let (base, _) = scripted::serve(script).await.unwrap();
                    total += stage(&base).await / (STEPS as u32 + 1);
                }
                total
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(20));
    targets = bench
}
criterion_main!(benches);
