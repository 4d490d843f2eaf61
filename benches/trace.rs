//! Criterion benches of the recording path: appending hash-chained events, verifying a trace and
//! snapshotting a workspace of 200 and of 200,000 files.

use criterion::{criterion_group, criterion_main, Criterion};
use gptx::trace::{verify, Event, EventLog, StepRecord, WorkspaceHistory};

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

/// A workspace of `n` empty files, `per_dir` to a directory, with its first snapshot taken.
fn workspace(
    n: usize,
    per_dir: usize,
) -> (tempfile::TempDir, std::path::PathBuf, WorkspaceHistory) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    for i in 0..n {
        let dir = ws.join(format!("d{}", i / per_dir));
        if i % per_dir == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
    }
    let mut h = WorkspaceHistory::create(&tmp.path().join("w.git"), &ws).unwrap();
    let t = std::time::Instant::now();
    h.commit_if_changed("first").unwrap();
    eprintln!(
        "{n} files, {per_dir} to a directory: the first (whole) snapshot took {:?}",
        t.elapsed()
    );
    (tmp, ws, h)
}

fn snapshots(c: &mut Criterion) {
    for (n, per_dir) in [(200, 200), (200_000, 1000), (200_000, 200_000)] {
        let (_tmp, ws, mut h) = workspace(n, per_dir);
        c.bench_function(
            &format!("snapshot, {n} files ({per_dir} a dir), no change"),
            |b| b.iter(|| assert!(h.commit_if_changed("none").unwrap().is_none())),
        );
        let file = ws.join("d0/f7");
        let mut i = 0u64;
        c.bench_function(
            &format!("snapshot, {n} files ({per_dir} a dir), one file changed"),
            |b| {
                b.iter(|| {
                    i += 1;
                    std::fs::write(&file, i.to_string()).unwrap();
                    assert!(h.commit_if_changed("one").unwrap().is_some())
                })
            },
        );
    }
}

criterion_group!(benches, bench, snapshots);
criterion_main!(benches);
