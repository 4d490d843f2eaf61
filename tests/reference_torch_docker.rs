//! The neural reference on the `ml` image: a PyTorch model trained in the sandbox that verifies, and (on demand) climbs the whole ladder of `mini-ml`.

mod common;

/// Builds the `ml` image on first use (about two minutes) and runs `reference-torch` on `mini-ml`
/// with `extra` arguments; checks the model is the torch one and verifies.
async fn run(extra: &[&str]) -> (bollard::Docker, serde_json::Value) {
    let (docker, _) = common::docker_and_image().await;
    gptx::docker::images::build(&docker, &common::home(), "ml", false, true)
        .await
        .expect("the ml image (built on first use: needs root and debootstrap)");
    let runs = tempfile::tempdir().unwrap();
    let mut args = vec!["--suite", "mini-ml", "--agent", "reference-torch"];
    args.extend(extra);
    let v = common::run_json(&args, runs.path());
    let dir = std::path::Path::new(v["dir"].as_str().unwrap());
    let train_py = std::fs::read_to_string(dir.join("workspace/train/reference/train.py")).unwrap();
    assert!(train_py.contains("import torch"));
    let train = &v["stages"]["train"];
    assert_eq!(train["status"], "scored", "{v}");
    assert_eq!(train["metrics"]["verified"], true, "{v}");
    common::assert_nothing_left(&docker, &v).await;
    (docker, v)
}

/// Crawl, tokenize and a short train (each command capped at 150 s, so the trainer gives itself
/// about half a minute): the torch model, trained in the sandbox, verifies: the same numbers from
/// two fresh scoring sandboxes, `next` agreeing with `score`. About four minutes. How good the
/// model gets with its full budget is the ignored test below.
#[tokio::test(flavor = "multi_thread")]
async fn reference_torch_trains_in_the_sandbox_and_verifies() {
    let (_, v) = run(&[
        "--stages",
        "crawl,tokenize,train",
        "--max-step-seconds",
        "150",
    ])
    .await;
    let bpb = v["stages"]["train"]["metrics"]["bpb"].as_f64().unwrap();
    assert!(
        bpb.is_finite() && bpb < 8.0,
        "better than uniform bytes: {bpb}"
    );
}

/// The whole ladder with the suite's budgets: the model (780 steps) beats conditional xz on the
/// hidden text, and the selfhost rebuild trains it again from the recipe within the gate: L6.
/// About 24 minutes on an idle 2-CPU machine (the model is trained twice and scores the held-out
/// pages twice), and its bpb depends on finishing its 780 steps, which a loaded machine may not
/// (the training is capped by time): not in `cargo test`'s default set. Run it with
/// `cargo test --test reference_torch_docker -- --ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "24 minutes on an idle machine: run with --ignored"]
async fn reference_torch_reaches_l6_on_mini_ml() {
    let (_, v) = run(&[]).await;
    let train = &v["stages"]["train"]["metrics"];
    let bpb = train["bpb"].as_f64().unwrap();
    let bar = train["ladder"]["xz_conditional"].as_f64().unwrap();
    assert!(bpb < bar, "bpb {bpb} against xz|C {bar}");
    assert_eq!(v["stages"]["selfhost"]["passed"], true, "{v}");
    assert_eq!(v["level"], "L6", "{v}");
}
