//! The whole ladder end to end on the real engine (and, in `scale_out/`, plans run by hand and on Slurm): the reference agent crawls, trains a tokenizer and
//! a language model on `mini`, evaluates it honestly on held-out documents, and its recipe rebuilds the
//! model from nothing in a fresh sandbox: L5, and L6 when the rebuilt model beats conditional
//! `xz -9e`. Every grading call ran in its own scoring sandbox and nothing is left behind.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn reference_closes_the_loop() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(&["--suite", "mini", "--agent", "reference"], runs.path());
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert_eq!(v["stages"][stage]["status"], "scored", "{stage}: {v}");
        assert_eq!(v["stages"][stage]["passed"], true, "{stage}: {v}");
    }
    let beats = v["stages"]["selfhost"]["metrics"]["beats_conditional_xz"] == true;
    assert_eq!(v["level"], if beats { "L6" } else { "L5" }, "{v}");
    assert_eq!(v["assisted_level"], serde_json::Value::Null);
    // Against the reference's own stored values every stage scores about 1.
    let bi = v["bootstrap_index"].as_f64().unwrap();
    assert!(bi > 90.0, "Bootstrap Index {bi}");

    let t = &v["stages"]["tokenize"];
    assert_eq!(t["passed"], true, "{t}");
    let tm = &t["metrics"];
    assert_eq!(tm["round_trip"], true);
    assert_eq!(tm["ids_in_vocab"], true);
    assert!(tm["bytes_per_token"].as_f64().unwrap() >= 3.0, "{tm}");
    assert!(tm["vocab_size"].as_u64().unwrap() <= 32768);

    let s = &v["stages"]["train"];
    assert_eq!(s["passed"], true, "{s}");
    let m = &s["metrics"];
    assert_eq!(m["verified"], true);
    let bpb = m["bpb"].as_f64().unwrap();
    let ladder = &m["ladder"];
    assert!(bpb < ladder["xz"].as_f64().unwrap(), "{m}");
    assert_eq!(m["beats"]["xz"], true);
    assert!(m["ood_bpb"].as_f64().unwrap() > 0.0);
    // Samples for the reports: three continuations of the fixed prompts, never empty.
    let samples = m["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no samples: {m}"));
    assert_eq!(samples.len(), 3, "{m}");
    assert_eq!(samples[0]["prompt"], "The ");
    assert!(samples
        .iter()
        .all(|x| !x["text"].as_str().unwrap().is_empty()));
    // The agent's CPU time is summed per stage.
    assert!(s["cpu_seconds"].as_f64().unwrap() > 1.0, "{s}");
    // The verification is in the trace: K positions from a recorded seed, three program calls.
    let ver = &m["verification"];
    assert_eq!(ver["positions"].as_array().unwrap().len(), 64);
    assert!(ver["seed"].as_u64().is_some());
    let labels: Vec<&str> = ver["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["score", "score again", "next"]);
    assert!(ver["max_next_diff"].as_f64().unwrap() <= 1e-3);

    // eval: the claim matches the measurement, and held-out text predicts the hidden documents.
    let e = &v["stages"]["eval"]["metrics"];
    assert!(e["claim_error"].as_f64().unwrap() < 0.01, "{e}");
    assert!(e["generalisation_gap"].as_f64().unwrap() <= 0.10, "{e}");
    assert_eq!(e["val_path"], "data/val.jsonl");

    // selfhost: the recipe is the reference sources, not the artifacts; the rebuild crawled the world
    // again (a fresh request log) and its model verifies within 3% of the original.
    let h = &v["stages"]["selfhost"]["metrics"];
    assert!(h["relative_difference"].as_f64().unwrap() <= 0.03, "{h}");
    let copied: Vec<&str> = h["recipe"]["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(copied[0], "bootstrap.sh");
    assert!(copied.contains(&"train/reference/train.py"));
    assert!(!copied
        .iter()
        .any(|p| p.starts_with("model/") || p.starts_with("data/")));
    assert!(
        h["bootstrap"]["world_requests"].as_u64().unwrap() > 50,
        "{h}"
    );
    assert_eq!(h["bootstrap"]["exit_code"], 0);

    let dir = std::path::Path::new(v["dir"].as_str().unwrap());
    assert!(dir.join("selfhost/world/requests.jsonl").exists());
    assert!(dir.join("selfhost/bootstrap.log").exists());
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let warnings = unexpected_warnings(&events);
    assert!(warnings.is_empty(), "warnings in the trace: {warnings:?}");
    // The reference writes no text of T: the contamination scan of every stage found none.
    assert!(
        !events.contains("t_text_in_workspace"),
        "the reference was taken for contaminated"
    );
    let score = std::fs::read_to_string(dir.join("score.json")).unwrap();
    assert!(!score.contains("t_text_in_workspace"), "{score}");
    common::assert_nothing_left(&docker, &v).await;
}

/// The trace's warnings but, without root, the one that the workspace has no disk limit.
fn unexpected_warnings(events: &str) -> Vec<&str> {
    // Without root the workspace cannot have a disk limit, and the trace says so: that warning alone.
    let root = rustix::process::geteuid().is_root();
    (events.lines())
        .filter(|l| l.contains("\"type\":\"warning\""))
        .filter(|l| root || !l.contains("the workspace has no disk limit"))
        .collect()
}

// The scale-out tests share this binary: the ladder is one test, so without them the second test
// thread would wait idle while it runs. Both start their own runs and clusters.
#[path = "scale_out/plan.rs"]
mod plan;
#[path = "scale_out/slurm.rs"]
mod slurm;
// The same cluster with the plan's items under rootless Podman as an ordinary user (needs root to
// start the cluster, and tests/rootless/setup.sh's user).
#[path = "scale_out/slurm_podman.rs"]
mod slurm_podman;
