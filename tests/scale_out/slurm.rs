//! A plan on a real Slurm cluster (Debian's slurmctld, two slurmd and munge, started by `tests/slurm/cluster.sh`): one array task per item, a task scancelled mid-run and submitted again, and one requeued mid-run, resume their items, and every item ends done at the level its agent reaches.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::gptx;

/// A private cluster, stopped when dropped (also when the test fails).
pub(super) struct Cluster {
    pub(super) dir: PathBuf,
    pub(super) conf: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub(super) fn start(nodes: u32) -> Self {
        for program in ["slurmctld", "slurmd", "munged", "sbatch"] {
            let check = format!("command -v {program} || test -x /usr/sbin/{program}");
            let found = Command::new("sh")
                .args(["-c", &check])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{program} is not installed: apt-get install -y slurmctld slurmd slurm-client munge (.ci/run does)"
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("gptx-slurm")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(nodes.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the cluster did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF=").map(str::to_string))
            .expect("SLURM_CONF in the script's output");
        Self {
            dir,
            conf,
            _tmp: tmp,
        }
    }

    pub(super) fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn gptx(&self) -> Command {
        let mut c = gptx();
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `gptx slurm submit [flags] --plan PLAN`, which must succeed: its stdout and stderr.
    fn submit(&self, plan: &Path, flags: &[&str]) -> (String, String) {
        let out = self
            .gptx()
            .args(["slurm", "submit"])
            .args(flags)
            .arg("--plan")
            .arg(plan)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh")
}

fn states(c: &Cluster, plan: &Path) -> serde_json::Value {
    common::plan_states(c.gptx(), plan)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_on_two_slurm_nodes_survives_a_requeue_and_ends_every_item_done() {
    let (docker, _) = common::docker_and_image().await;
    let cluster = Cluster::start(2);
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("plan.json");
    let out = cluster
        .gptx()
        // The selfhost rebuild (a minute of each reference run) is left out to keep CI short:
        // `ladder_e2e` climbs the whole ladder.
        .args(["plan", "--suite", "mini", "--seeds", "1-2"])
        .args(["--stages", "crawl,tokenize,train,eval"])
        .args([
            "--agent",
            "null",
            "--agent",
            "reference:crawl",
            "--agent",
            "reference",
        ])
        .arg("--out")
        .arg(&plan)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = states(&cluster, &plan);
    assert_eq!(s["tally"]["items"], 6);
    let index_of = |agent: &str, seed: u64| -> usize {
        s["items"]
            .as_array()
            .unwrap()
            .iter()
            .position(|i| i["item"]["agent"] == agent && i["item"]["seed"] == seed)
            .unwrap()
    };
    let victim = index_of("reference", 1);
    let cancelled = index_of("reference:crawl", 2);

    // The job script asks for what the plan says an item needs.
    let (script, _) = cluster.submit(&plan, &["--dry-run"]);
    for line in [
        "#SBATCH --array=0-5",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=5120M",
        "#SBATCH --time=",
        "#SBATCH --requeue",
    ] {
        assert!(script.contains(line), "{line} not in\n{script}");
    }

    let t0 = Instant::now();
    let (job, _) = cluster.submit(&plan, &[]);
    let job = job.trim().to_string();
    assert!(job.chars().all(|c| c.is_ascii_digit()), "job id {job:?}");

    let runs = work.path().join("runs");
    // The events of an item's latest run so far.
    let events_of = |index: usize| -> String {
        states(&cluster, &plan)["items"][index]["run_dir"]
            .as_str()
            .and_then(|d| std::fs::read_to_string(Path::new(d).join("events.jsonl")).ok())
            .unwrap_or_default()
    };

    // scancel one task mid-run (its gptx gets SIGTERM, ends the run `interrupted` and removes its
    // containers), then submit the plan again: only that item goes, and it resumes.
    while !events_of(cancelled).contains("\"type\":\"step\"") {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the crawl never took a step"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = cluster
        .cmd("scancel")
        .arg(format!("{job}_{cancelled}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scancel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the cancelled task never ended"
        );
        let q = cluster
            .cmd("squeue")
            .args(["--noheader", "--array", "--format=%K", "--jobs", &job])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&q.stdout)
            .lines()
            .any(|l| l.trim() == cancelled.to_string());
        if !listed && states(&cluster, &plan)["items"][cancelled]["state"] == "interrupted" {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (again, err) = cluster.submit(&plan, &[]);
    assert!(
        err.contains(&format!("1 tasks (items {cancelled})")),
        "only the cancelled item is submitted again: {err}"
    );
    let again = again.trim().to_string();

    // Requeue the reference's first seed once it is past its crawl: Slurm sends its gptx SIGTERM,
    // which ends the run `interrupted`, and starts the task again later on whichever node is free.
    let victim_id = s["items"][victim]["item"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the victim never got past its crawl"
        );
        let st = states(&cluster, &plan);
        if let Some(dir) = st["items"][victim]["run_dir"].as_str() {
            let events =
                std::fs::read_to_string(Path::new(dir).join("events.jsonl")).unwrap_or_default();
            if events.contains("\"type\":\"stage_started\",\"stage\":\"tokenize\"") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = cluster
        .cmd("scontrol")
        .args(["requeue", &format!("{job}_{victim}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scontrol requeue: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every item ends done.
    let mut last = serde_json::Value::Null;
    while t0.elapsed() < Duration::from_secs(1200) {
        last = states(&cluster, &plan);
        if last["tally"]["done"] == 6 {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let status = cluster
        .gptx()
        .args(["slurm", "status", "--plan"])
        .arg(&plan)
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(
        last["tally"]["done"],
        6,
        "{last:#}\n{status_text}\n{}",
        logs(&runs)
    );
    assert!(status.status.success());
    assert!(status_text.contains("6/6 done"), "{status_text}");
    assert!(
        status_text.contains(&format!("jobs {job},{again}")),
        "{status_text}"
    );

    // The levels each agent reaches when run alone, as a local batch reaches them (the
    // reference's L4 is the top of these four stages).
    for it in last["items"].as_array().unwrap() {
        let agent = it["item"]["agent"].as_str().unwrap();
        let dir = Path::new(it["run_dir"].as_str().unwrap());
        let score: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("score.json")).unwrap())
                .unwrap();
        let want = match agent {
            "null" => "L0",
            "reference:crawl" => "L1",
            _ => "L4",
        };
        assert_eq!(score["level"], want, "{agent} seed {}", it["item"]["seed"]);
        let run_id = it["run_id"].as_str().unwrap();
        let v = gptx()
            .args(["verify", run_id, "--runs-dir"])
            .arg(&runs)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        assert_eq!(
            common::leftovers(&docker, run_id).await,
            0,
            "run {run_id} left resources"
        );
        // One run per item: the requeued one was resumed, not run anew.
        assert_eq!(it["runs"], 1, "{agent} seed {}", it["item"]["seed"]);
        if it["item"]["id"] == victim_id.as_str() || it["item"]["index"] == cancelled {
            assert_eq!(
                score["resumed"], 1,
                "the requeued and the cancelled item resumed"
            );
        }
    }
    // The requeued task's second attempt is on record as Slurm's restart 1; items spread over
    // both nodes.
    let lines = gptx::plan::attempts(&runs, last["plan_id"].as_str().unwrap());
    let attempts = format!("{lines:#?}");
    assert!(
        lines.iter().any(|l| l["item"] == victim_id.as_str()
            && l["event"] == "started"
            && l["slurm_restart_count"] == "1"),
        "{attempts}"
    );
    let mut nodes: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["slurmd_nodename"].as_str())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes, vec!["node1", "node2"], "{attempts}");
    // Submitting again finds nothing to do.
    let (_, err) = cluster.submit(&plan, &[]);
    assert!(
        err.contains("nothing to submit: 6 of 6 items are done"),
        "{err}"
    );
}

/// The tasks' output (the plan's `slurm/*.out`, each one's last lines), for a failure message.
pub(super) fn logs(runs: &Path) -> String {
    let mut text = String::new();
    let Ok(plans) = std::fs::read_dir(runs.join(".plans")) else {
        return text;
    };
    for plan in plans.flatten() {
        let entries = std::fs::read_dir(plan.path().join("slurm")).into_iter();
        for e in entries.flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "out") {
                let body = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(30).collect();
                text.push_str(&format!("== {}\n", p.display()));
                for l in tail.into_iter().rev() {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
    }
    text
}
