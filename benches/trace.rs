//! Criterion benches of the recording path: appending hash-chained events and verifying a trace.

use criterion::{criterion_group, criterion_main, Criterion};
use gptx::trace::{verify, Event, EventLog, StepRecord};

fn step(i: u64) -> Event {
    Event::Step(StepRecord {
        stage: "train".into(),
        step: i,
        stage_step: i,
        tool: "bash".into(),
        args: serde_json::json!({"cmd": "python3 train.py --epochs 3"}),
        ok: true,
        result: serde_json::json!({"exit_code": 0, "stdout": "loss 2.31\n".repeat(50), "stderr": "", "truncated": false, "duration_ms": 812.5}),
        started_at: chrono::Utc::now(),
        duration_ms: 815.0,
        sandbox_seconds: 0.81,
        usage: None,
        outputs: vec![],
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
    })
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    c.bench_function("append one step event (hash chain + write)", |b| {
        let mut log = EventLog::create(&dir.path().join("append.jsonl")).unwrap();
        let ev = step(1);
        b.iter(|| {
            n += 1;
            log.append(&ev).unwrap()
        })
    });
    let path = dir.path().join("verify.jsonl");
    let mut log = EventLog::create(&path).unwrap();
    for i in 0..1000 {
        log.append(&step(i)).unwrap();
    }
    let tail = log.last_hash().to_string();
    c.bench_function("verify a 1000-step trace", |b| {
        b.iter(|| verify(&path, Some(&tail)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
