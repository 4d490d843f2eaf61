//! Plan items through the binary on the real engine: a done item is kept, a killed item's run is taken over and resumed even when its gptx was on another host, bad plans and flags are refused, and the leaderboard reads the plan's state.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::gptx;

fn plan_cmd(dir: &Path, args: &[&str]) -> std::process::Output {
    gptx()
        .arg("plan")
        .args(args)
        .arg("--out")
        .arg(dir.join("plan.json"))
        .output()
        .unwrap()
}

/// `gptx run --plan … --item K --json --quiet`: exit code, the JSON result, stderr.
fn item(dir: &Path, k: &str) -> (i32, Option<serde_json::Value>, String) {
    let out = gptx()
        .args(["run", "--plan"])
        .arg(dir.join("plan.json"))
        .args(["--item", k, "--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok()),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn states(dir: &Path) -> serde_json::Value {
    common::plan_states(gptx(), &dir.join("plan.json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_item_runs_once_and_a_killed_one_is_taken_over_from_another_host_and_resumed() {
    let (docker, _) = common::docker_and_image().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = plan_cmd(
        dir,
        &[
            "--suite",
            "mini",
            "--agent",
            "null",
            "--agent",
            "reference:crawl",
            "--seed",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = states(dir);
    assert_eq!(s["tally"]["items"], 2);
    assert_eq!(s["tally"]["missing"], 2);

    // Refused: flags the plan fixes, an item it does not have, a plan edited by hand.
    let out = gptx()
        .args(["run", "--plan"])
        .arg(dir.join("plan.json"))
        .args(["--item", "0", "--seeds", "1-2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop --seeds"));
    let (code, _, err) = item(dir, "7");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no item \"7\""), "{err}");

    // Item 0 runs; asked again, it is kept: the same run, nothing started.
    let (code, v, err) = item(dir, "0");
    assert_eq!(code, 0, "{err}");
    let v = v.unwrap();
    assert_eq!(v["level"], "L0");
    let first = v["run_id"].as_str().unwrap().to_string();
    let (code, v, err) = item(dir, "0");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is done"), "{err}");
    assert_eq!(v.unwrap()["run_id"], first.as_str());

    // Item 1 (by its id) is killed outright mid-run, as a node that dies would leave it: run.json
    // says `running`, with an owner on a host this one cannot see.
    let id = s["items"][1]["item"]["id"].as_str().unwrap().to_string();
    let mut child = gptx()
        .args(["run", "--plan"])
        .arg(dir.join("plan.json"))
        .args(["--item", &id, "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runs = dir.join("runs");
    let t0 = Instant::now();
    let run_dir = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "item 1 never took a step"
        );
        let found = std::fs::read_dir(&runs).unwrap().flatten().find(|e| {
            let p = e.path();
            p.file_name().unwrap() != std::ffi::OsStr::new(&first)
                && std::fs::read_to_string(p.join("events.jsonl"))
                    .is_ok_and(|t| t.contains("\"type\":\"step\""))
        });
        if let Some(e) = found {
            break e.path();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    let meta_path = run_dir.join("run.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["status"], "running");
    meta["owner"]["host"] = "a-node-that-died".into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    // Nobody holds its lock: the item is interrupted, whatever run.json says.
    let s = states(dir);
    assert_eq!(s["items"][1]["state"], "interrupted");
    assert_eq!(s["tally"]["done"], 1);
    // The leaderboard with the plan: incomplete, nothing ranked.
    let out_dir = dir.join("board");
    let lb = |out_dir: &Path| {
        let out = gptx()
            .args(["leaderboard", "--plan"])
            .arg(dir.join("plan.json"))
            .arg("--runs-dir")
            .arg(dir.join("runs"))
            .arg("--out")
            .arg(out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let md = lb(&out_dir);
    assert!(md.contains("INCOMPLETE") && md.contains("1/2 done"), "{md}");
    assert!(md.contains("1 reference:crawl seed 3 interrupted"), "{md}");

    // The item again: it takes the run over (it holds the item's lock, so the run's gptx is
    // gone), resumes it, and finishes where a whole run would.
    let (code, v, err) = item(dir, &id);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("marked interrupted") && err.contains("a-node-that-died"),
        "{err}"
    );
    assert!(err.contains(&format!("resuming run {run_id}")), "{err}");
    let v = v.unwrap();
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(v["level"], "L1");
    assert_eq!(v["resumed"], 1);
    let out = gptx()
        .args(["verify", &run_id, "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = states(dir);
    assert_eq!(s["tally"]["done"], 2);
    let md = lb(&out_dir);
    assert!(
        !md.contains("INCOMPLETE") && md.contains("2/2 done"),
        "{md}"
    );
    assert!(md.contains("| 1 | `reference:crawl` |"), "{md}");

    // The whole plan here: both items are kept, nothing runs again; --force would re-roll them.
    let out = gptx()
        .args(["run", "--parallel", "2", "--json", "--quiet", "--plan"])
        .arg(dir.join("plan.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["kept"] == true), "{lines:?}");
    let out = gptx()
        .args(["run", "--force", "--plan"])
        .arg(dir.join("plan.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // Every attempt is on record, with where it ran.
    let events = gptx::plan::attempts(&runs, s["plan_id"].as_str().unwrap());
    let attempts = format!("{events:#?}");
    assert!(events.iter().any(|e| e["event"] == "kept"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "started" && e["item"] == id.as_str())
            .count(),
        3,
        "killed, resumed, kept: {attempts}"
    );
    for r in [&first, &run_id] {
        assert_eq!(
            common::leftovers(&docker, r).await,
            0,
            "run {r} left resources"
        );
    }
}

#[test]
fn a_plan_names_its_file_and_fields_when_it_cannot_be_made_or_read() {
    let tmp = tempfile::tempdir().unwrap();
    let out = plan_cmd(tmp.path(), &["--suite", "mini"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent"));
    let out = plan_cmd(tmp.path(), &["--suite", "mini", "--agent", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent bogus"));
    let out = plan_cmd(tmp.path(), &["--suite", "nope", "--agent", "null"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--suite"));
    std::fs::write(tmp.path().join("plan.json"), "{\"format\": 3}").unwrap();
    let (code, _, err) = item(tmp.path(), "0");
    assert_eq!(code, 2);
    assert!(
        err.contains("plan.json") && err.contains("not a plan file"),
        "{err}"
    );
}
