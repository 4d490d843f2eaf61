//! The crawl stage end to end on the real engine: the reference agent passes the L1 gate on `mini`,
//! the null agent scores zero, and neither leaves anything behind.

mod common;

fn crawl_run(agent: &str, runs: &std::path::Path) -> serde_json::Value {
    common::run_json(
        &["--suite", "mini", "--stages", "crawl", "--agent", agent],
        runs,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_crawler_passes_l1_and_null_scores_zero() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();

    let v = crawl_run("reference", runs.path());
    let m = &v["stages"]["crawl"]["metrics"];
    assert_eq!(v["level"], "L1", "{v}");
    assert_eq!(v["stages"]["crawl"]["passed"], true);
    assert!(m["recall"].as_f64().unwrap() >= 0.9, "{m}");
    assert!(m["precision"].as_f64().unwrap() >= 0.9, "{m}");
    assert_eq!(m["robots_violations"], 0, "{m}");
    assert!(m["trap_requests"].as_u64().unwrap() < 30, "{m}");
    assert!(m["duplicate_rate"].as_f64().unwrap() < 0.05, "{m}");
    let dir = std::path::Path::new(v["dir"].as_str().unwrap());
    // The server logged the crawl, politely: robots.txt first on each host, an honest user agent.
    let log = std::fs::read_to_string(dir.join("world/requests.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "/robots.txt");
    assert!(log.lines().count() as u64 == m["requests"].as_u64().unwrap());
    // The world hash is recorded with the run.
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["world_hash"].as_str().unwrap().len(), 64);
    common::assert_nothing_left(&docker, &v).await;

    let v = crawl_run("null", runs.path());
    let c = &v["stages"]["crawl"];
    assert_eq!(v["level"], "L0");
    assert_eq!(c["metrics"]["recall"], 0.0);
    assert_eq!(c["metrics"]["requests"], 0);
    assert_eq!(c["normalized"], 0.0);
    assert!(c["reason"].as_str().unwrap().contains("does not exist"));
    common::assert_nothing_left(&docker, &v).await;
}
