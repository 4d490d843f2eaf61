//! The viewer on a ~100 MB trace: the run page from a cold state (a fresh `AppState`, so the trace index
//! is built by that request) and warm, plus a step page; HTTP over loopback, as a browser would ask.
//!
//! The trace is written once by `gptx::synth` under `target/serve-bench/` and reused while it is there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gptx::serve::{serve, AppState};
use gptx::synth::{write_run, Synth};
use tokio_util::sync::CancellationToken;

const RUN_ID: &str = "20260301-120000-be0c40";
/// 5 stages of 640 steps; each `bash` step keeps ~32 KiB of its 40 KB output inline in the event.
const STEPS_PER_STAGE: usize = 640;
const OUTPUT_BYTES: usize = 40_000;

fn runs_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("serve-bench")
}

/// The run directory with a trace of about 100 MB, written on first use.
fn trace(runs: &Path) -> u64 {
    let events = runs.join(RUN_ID).join("events.jsonl");
    let done = runs.join(RUN_ID).join("score.json");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(runs.join(RUN_ID));
        std::fs::create_dir_all(runs).unwrap();
        let t = Instant::now();
        write_run(
            runs,
            &Synth {
                run_id: RUN_ID.into(),
                steps_per_stage: STEPS_PER_STAGE,
                output_bytes: OUTPUT_BYTES,
                ..Synth::default()
            },
        )
        .unwrap();
        eprintln!(
            "wrote the bench trace in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    std::fs::metadata(&events).unwrap().len()
}

struct Running {
    base: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(runs: &Path) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        AppState::new(runs.to_path_buf(), None),
        cancel.clone(),
    ));
    Running { base, cancel, task }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn get(client: &reqwest::Client, url: &str) -> usize {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.unwrap().len()
}

/// A fresh server and state, then the run page: the time until its last byte arrived.
async fn cold(runs: &Path, client: &reqwest::Client) -> Duration {
    let t = Instant::now();
    let srv = start(runs).await;
    get(client, &format!("{}/runs/{RUN_ID}", srv.base)).await;
    let took = t.elapsed();
    srv.stop().await;
    took
}

fn bench(c: &mut Criterion) {
    let runs = runs_dir();
    let size = trace(&runs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();

    let first = rt.block_on(cold(&runs, &client));
    eprintln!(
        "cold first page: {:.1} ms for a {:.1} MB events.jsonl ({} bytes)",
        first.as_secs_f64() * 1000.0,
        size as f64 / 1e6,
        size
    );

    let mut g = c.benchmark_group("serve");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("run_page_cold_100MB", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (runs, client) = (runs.clone(), client.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += cold(&runs, &client).await;
                }
                total
            }
        })
    });

    let srv = rt.block_on(start(&runs));
    let run_url = format!("{}/runs/{RUN_ID}", srv.base);
    let last_page = format!("{}/runs/{RUN_ID}?page=32", srv.base);
    let step_url = format!("{}/runs/{RUN_ID}/steps/1602", srv.base);
    rt.block_on(async {
        get(&client, &run_url).await;
        get(&client, &last_page).await;
    });
    g.bench_function("run_page_warm", |b| {
        b.to_async(&rt).iter(|| get(&client, &run_url))
    });
    g.bench_function("run_page_last_warm", |b| {
        b.to_async(&rt).iter(|| get(&client, &last_page))
    });
    g.bench_function("step_page", |b| {
        b.to_async(&rt).iter(|| get(&client, &step_url))
    });
    g.finish();
    rt.block_on(srv.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
