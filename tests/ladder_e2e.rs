//! The first three rungs end to end on the real engine: the reference agent crawls, trains a
//! tokenizer and a language model on `mini`, and reaches L3 with a verified model below per-document
//! `xz -9e`; every grading call ran in its own scoring sandbox and nothing is left behind.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn reference_reaches_l3_with_a_verified_model() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize,train",
            "--agent",
            "reference",
        ],
        runs.path(),
    );
    assert_eq!(v["level"], "L3", "{v}");

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

    let dir = std::path::Path::new(v["dir"].as_str().unwrap());
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(
        !events.contains("\"type\":\"warning\""),
        "warnings in the trace"
    );
    assert_eq!(
        common::leftovers(&docker, v["run_id"].as_str().unwrap()).await,
        0
    );
}
