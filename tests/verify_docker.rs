//! The scoring sandbox and the verification on the real engine: an honest model is verified with
//! the exact bits per byte, and every wrong model of `tests/fixtures/` is rejected with its reason;
//! the same for tokenizers. Nothing is left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use gptx::config::suite::{SandboxLimits, ScoringLimits};
use gptx::docker::programs::DockerPrograms;
use gptx::stages::bpb::{self, Doc, RejectKind, VerifyPlan};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A read-only-mountable workspace whose `bin/<name>` runs `fixture MODE <verb>`.
fn workspace(fixture: &str, bin: &str, mode: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path();
    std::fs::copy(Path::new(FIXTURES).join(fixture), p.join("fixture.py")).unwrap();
    std::fs::create_dir(p.join("bin")).unwrap();
    std::fs::write(
        p.join("bin").join(bin),
        format!("#!/bin/sh\nexec python3 /workspace/fixture.py {mode} \"$@\"\n"),
    )
    .unwrap();
    for (f, mode) in [("", 0o755), ("bin", 0o755), ("fixture.py", 0o644)] {
        std::fs::set_permissions(p.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(
        p.join("bin").join(bin),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    ws
}

fn docs() -> Vec<Doc> {
    let readme = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    vec![
        Doc {
            name: "t1".into(),
            bytes: b"Hello, World!\r\nThe quick brown fox.\n".to_vec(),
        },
        Doc {
            name: "t2".into(),
            bytes: readme[..3000.min(readme.len())].to_vec(),
        },
        Doc {
            name: "t3".into(),
            bytes: b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\0\xff\xfe end".to_vec(),
        },
    ]
}

/// The honest fixture's bits per byte, computed here independently.
fn honest_bpb(docs: &[Doc]) -> f64 {
    let (mut bits, mut bytes) = (0.0, 0usize);
    for d in docs {
        let mut counts = [0u32; 256];
        for (n, &b) in d.bytes.iter().enumerate() {
            bits -= ((counts[b as usize] as f64 + 1.0) / (n as f64 + 256.0)).log2();
            counts[b as usize] += 1;
        }
        bytes += d.bytes.len();
    }
    bits / bytes as f64
}

fn programs(docker: &bollard::Docker, run_id: &str, image: &str, ws: &Path) -> DockerPrograms {
    DockerPrograms::new(
        docker.clone(),
        run_id.into(),
        image.into(),
        ws.to_path_buf(),
        ScoringLimits {
            memory_mb: 512,
            timeout_seconds: 8.0,
            ..Default::default()
        },
        SandboxLimits {
            pids: 128,
            tmp_mb: 256,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_models_are_rejected_with_their_reason() {
    let (docker, image) = common::docker_and_image().await;
    let run_id = common::test_run_id("verify");
    let cases: Vec<(&str, Option<(RejectKind, &str)>)> = vec![
        ("honest", None),
        (
            "lookahead",
            Some((RejectKind::Inconsistent, "score -0.1054, next")),
        ),
        (
            "unnormalised",
            Some((RejectKind::Unnormalised, "probabilities sum to")),
        ),
        (
            "misspelled",
            Some((RejectKind::Spelling, ": the text has 0x4")),
        ),
        (
            "nondeterministic",
            Some((RejectKind::NonDeterministic, "the first time")),
        ),
        ("nan", Some((RejectKind::InvalidLogprob, "NaN"))),
        (
            "hang",
            Some((
                RejectKind::Failed,
                "score did not finish within 8 s (timeout)",
            )),
        ),
        (
            "crash",
            Some((
                RejectKind::Failed,
                "RuntimeError: the model file is corrupt",
            )),
        ),
        (
            "garbage",
            Some((
                RejectKind::Malformed,
                "score output line 1 is not the protocol",
            )),
        ),
        ("escape", None),
        (
            "carryover",
            Some((RejectKind::NonDeterministic, "the second")),
        ),
    ];
    let runs = cases.iter().map(|(mode, expect)| {
        let docker = docker.clone();
        let image = image.clone();
        let run_id = run_id.clone();
        async move {
            let ws = workspace("lm/model.py", "lm", mode);
            let p = programs(&docker, &run_id, &image, ws.path());
            let plan = VerifyPlan {
                docs: docs(),
                extra: vec![Doc {
                    name: "ood1".into(),
                    bytes: b"SELECT * FROM t;".to_vec(),
                }],
                positions: 16,
                timeout: Duration::from_secs(8),
                seed: 42,
                program: "./bin/lm".into(),
                hidden: false,
            };
            let v = bpb::verify(&p, &plan).await;
            // The read-only workspace kept nothing the program tried to write.
            assert!(
                !ws.path().join("leak.txt").exists(),
                "{mode}: wrote into the workspace"
            );
            (mode, expect, v)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    for (mode, expect, v) in results {
        println!(
            "{mode}: {}",
            match &v.result {
                Ok(ok) => format!("verified, bpb {:.4}", ok.bpb),
                Err(r) => r.to_string(),
            }
        );
        assert!(v.sandbox_error.is_none(), "{mode}: {:?}", v.sandbox_error);
        match (expect, &v.result) {
            (None, Ok(ok)) => {
                let want = honest_bpb(&docs());
                assert!(
                    (ok.bpb - want).abs() < 1e-9,
                    "{mode}: bpb {} want {want}",
                    ok.bpb
                );
                assert_eq!(ok.checks.len(), 16);
                assert!(ok.max_next_diff < 1e-9);
                assert!(ok.extra_bpb.unwrap() > 7.0);
                assert_eq!(v.positions.len(), 16);
                assert_eq!(
                    v.calls.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
                    ["score", "score again", "next"]
                );
            }
            (Some((kind, text)), Err(rej)) => {
                assert_eq!(rej.kind, *kind, "{mode}: {rej}");
                assert!(rej.detail.contains(text), "{mode}: {rej}");
            }
            (e, r) => panic!("{mode}: expected {e:?}, got {r:?}"),
        }
    }
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_tokenizers_fail_with_their_reason() {
    let (docker, image) = common::docker_and_image().await;
    let run_id = common::test_run_id("tokverify");
    let mut docs = docs();
    let graded = docs.len();
    docs.extend(gptx::stages::tokenize::edge_cases());
    let cases: Vec<(&str, u64, &str)> = vec![
        ("honest", 256, ""),
        ("pairs", 65792, ""),
        (
            "drops-nul",
            256,
            "round trip: t3: 46 bytes came back for 47",
        ),
        ("utf8", 256, "round trip: t3: 51 bytes came back for 47"),
        (
            "big-ids",
            256,
            "ids: t1 position 0: an id ≥ vocab_size 256: 1072",
        ),
        (
            "garbage",
            256,
            "fatal: encode output line 1 is not the protocol",
        ),
        ("missing", 256, "fatal: encode gave no answer for t2"),
        (
            "crash",
            256,
            "fatal: encode exited with code 1; stderr ends: tokenizer/merges.txt: no such file",
        ),
        (
            "hang",
            256,
            "fatal: encode did not finish within 8 s (timeout)",
        ),
    ];
    let runs = cases.iter().map(|(mode, vocab, expect)| {
        let (docker, image, run_id, docs) =
            (docker.clone(), image.clone(), run_id.clone(), docs.clone());
        async move {
            let ws = workspace("tokenize/tok.py", "tokenize", mode);
            let p = programs(&docker, &run_id, &image, ws.path());
            let r = gptx::stages::tokenize::grade(
                &p,
                &docs,
                graded,
                *vocab,
                Duration::from_secs(8),
                false,
            )
            .await;
            (mode, expect, r)
        }
    });
    for (mode, expect, r) in futures_util::future::join_all(runs).await {
        let said = if let Some(f) = &r.fatal {
            format!("fatal: {f}")
        } else if let Some(f) = r.round_trip_failures.first() {
            format!("round trip: {f}")
        } else if let Some(f) = r.ids_out_of_range.first() {
            format!("ids: {f}")
        } else {
            String::new()
        };
        println!("{mode}: {said} (bytes/token {:.3})", r.bytes_per_token());
        assert!(
            said.starts_with(*expect) || (!expect.is_empty() && said.contains(*expect)),
            "{mode}: {said}"
        );
        if expect.is_empty() {
            assert!(r.ok(), "{mode}");
            let want = if *mode == "pairs" { 2.0 } else { 1.0 };
            assert!(
                (r.bytes_per_token() - want).abs() < 0.01,
                "{mode}: {}",
                r.bytes_per_token()
            );
        }
    }
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
}
