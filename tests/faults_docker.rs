//! Faults the harness must survive: a gptx killed mid-run leaves a run that `gptx gc` (or the next `gptx run`) marks interrupted, with its resources gone and its trace verifiable, and that `gptx resume` finishes as an uninterrupted run would have.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use gptx::trace::rundir::{self, RunDir, RunMeta, RunStatus};

/// These tests kill processes and sweep the engine: one at a time, so one's `gc` or run start never
/// removes what another is looking at.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The run directory `gptx run` made below `runs` once its trace has a recorded step.
fn wait_for_a_step(runs: &Path, child: &mut std::process::Child) -> RunDir {
    let t0 = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "gptx ended before it was killed"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no step in 300 s");
        if let Some(dir) = std::fs::read_dir(runs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| RunDir::new(e.path()))
            .find(|d| d.run_json().exists())
        {
            let text = std::fs::read_to_string(dir.events()).unwrap_or_default();
            if text.lines().any(|l| l.contains("\"type\":\"step\"")) {
                return dir;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The reference agent on crawl and tokenize only (the rest submitted at once): a run of a minute
/// whose grades are not zero, for resume tests that compare with an uninterrupted run.
const PARTIAL: &str = "reference:crawl,tokenize";

/// `gptx run --suite mini --agent reference` in the background, with these environment variables.
fn reference_run(runs: &Path, env: &[(&str, String)]) -> std::process::Child {
    agent_run(runs, "reference", env)
}

/// `gptx run --suite mini --agent <agent>` in the background, with these environment variables.
fn agent_run(runs: &Path, agent: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = common::gptx();
    cmd.args([
        "run",
        "--suite",
        "mini",
        "--agent",
        agent,
        "--quiet",
        "--runs-dir",
    ])
    .arg(runs)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// A reference run below `runs`, SIGKILLed once its trace has a step; its directory.
fn killed_after_a_step(runs: &Path) -> RunDir {
    killed_after_a_step_of(runs, "reference")
}

/// A run of `agent` below `runs`, SIGKILLed once its trace has a step; its directory.
fn killed_after_a_step_of(runs: &Path, agent: &str) -> RunDir {
    let mut child = agent_run(runs, agent, &[]);
    let dir = wait_for_a_step(runs, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    dir
}

/// gptx said it marked `run_id` interrupted because its owner is gone.
fn assert_marked(stderr: &str, run_id: &str) {
    assert!(
        stderr.contains(&format!(
            "run {run_id} marked interrupted: owner process gone"
        )),
        "{stderr}"
    );
}

/// `gptx resume <run> --json --quiet`: the exit code, the result, stderr.
fn resume(run_id: &str, runs: &Path) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = gptx_out(&["resume", run_id, "--json", "--quiet"], runs);
    let v = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (code, v, stderr)
}

/// What a resumed run's result must share with an uninterrupted one.
fn outcome(v: &serde_json::Value) -> serde_json::Value {
    let stages: serde_json::Map<String, serde_json::Value> = v["stages"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        serde_json::json!([s["passed"], s["status"], s["ended_by"], s["steps"]]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "status": v["status"],
        "level": v["level"],
        "bootstrap_index": v["bootstrap_index"],
        "stages": stages,
    })
}

/// A resumed run's directory after it finished: `run_resumed` in a trace that verifies, run.json
/// and score.json saying so, nothing of it left on the engine or mounted.
async fn assert_resumed_cleanly(docker: &bollard::Docker, dir: &RunDir, runs: &Path, times: u32) {
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.resumes.len() as u32, times, "{:?}", meta.resumes);
    let score: rundir::RunScore = rundir::read_json(&dir.score_json()).unwrap();
    assert_eq!(score.resumed, times);
    let trace = std::fs::read_to_string(dir.events()).unwrap();
    assert_eq!(
        trace
            .lines()
            .filter(|l| l.contains("\"type\":\"run_resumed\""))
            .count() as u32,
        times
    );
    let (code, stdout, stderr) = gptx_out(&["verify", &meta.run_id], runs);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(common::leftovers(docker, &meta.run_id).await, 0);
    assert!(gptx::sandbox::quota::mounts_below(runs).is_empty());
}

fn gptx_out(args: &[&str], runs: &Path) -> (i32, String, String) {
    let out = common::gptx()
        .args(args)
        .arg("--runs-dir")
        .arg(runs)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGKILL mid-step: before, run.json said `running` forever and the run's containers and network
/// stayed until `gptx gc`; now `gptx gc` marks the run interrupted (owner process gone), removes
/// what it left, and the trace verifies up to the mark.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gptx_leaves_a_run_gc_marks_interrupted_and_cleans_up() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let dir = killed_after_a_step(runs.path());
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Running);
    assert!(meta.owner.is_some(), "run.json names its owner");
    let run_id = meta.run_id.clone();
    assert!(
        common::leftovers(&docker, &run_id).await > 0,
        "the kill left its sandbox"
    );

    let (code, stdout, stderr) = gptx_out(&["gc"], runs.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_marked(&stderr, &run_id);
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Interrupted);
    assert_eq!(meta.error.as_deref(), Some("owner process gone"));
    assert!(meta.trace_sha256.is_some() && meta.ended_at.is_some());
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
    assert!(gptx::sandbox::quota::mounts_below(runs.path()).is_empty());

    let (code, stdout, stderr) = gptx_out(&["verify", &run_id], runs.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (_, stdout, _) = gptx_out(&["runs"], runs.path());
    let line = stdout.lines().find(|l| l.starts_with(&run_id)).unwrap();
    assert!(
        line.contains("interrupted") && line.contains("owner process gone"),
        "{line}"
    );

    assert!(line.contains("resumable: gptx resume"), "{line}");

    // A second gc has nothing more to mark, and the trace is unchanged.
    let before = std::fs::read(dir.events()).unwrap();
    let (code, _, stderr) = gptx_out(&["gc"], runs.path());
    assert_eq!(code, 0);
    assert!(!stderr.contains("marked interrupted"), "{stderr}");
    assert_eq!(std::fs::read(dir.events()).unwrap(), before);
}

/// SIGKILL mid-step, then `gptx resume`: the run goes on from its last completed step and ends as
/// the same agent's uninterrupted run does (level, Bootstrap Index, every stage's grade, how it
/// ended and its steps); a second resume while the first goes is refused; nothing is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumed_ends_as_an_uninterrupted_one() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let whole = common::run_json(&["--suite", "mini", "--agent", PARTIAL], elsewhere.path());
    assert_eq!(whole["status"], "done", "{whole}");
    let dir = killed_after_a_step_of(runs.path(), PARTIAL);
    let run_id = dir.id();
    // Not marked yet: resume marks it first (as every run start does).
    let mut first = common::gptx()
        .args(["resume", &run_id, "--json", "--quiet", "--runs-dir"])
        .arg(runs.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once it holds the run, a second resume is refused.
    let t0 = Instant::now();
    loop {
        let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
        if meta.status == RunStatus::Running && !meta.resumes.is_empty() {
            break;
        }
        if first.try_wait().unwrap().is_some() {
            let out = first.wait_with_output().unwrap();
            panic!(
                "the resume ended before it was seen going: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the resume never began"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, stderr) = resume(&run_id, runs.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("being resumed") || stderr.contains("still running"),
        "{stderr}"
    );
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_marked(&stderr, &run_id);
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(v["resumed"], 1);
    assert_eq!(
        outcome(&v),
        outcome(&whole),
        "resumed {v}\nuninterrupted {whole}"
    );
    assert_resumed_cleanly(&docker, &dir, runs.path(), 1).await;
    // A done run is not resumed again.
    let (code, _, stderr) = resume(&run_id, runs.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("is done"), "{stderr}");
}

/// The next `gptx run` in the same runs directory marks a killed run too, and removes its sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_run_marks_a_killed_one_and_removes_what_it_left() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let dir = killed_after_a_step(runs.path());
    let run_id = rundir::read_json::<RunMeta>(&dir.run_json())
        .unwrap()
        .run_id;
    let (v, stderr) =
        common::run_json_with(&["--suite", "mini", "--agent", "null"], runs.path(), &[]);
    assert_eq!(v["status"], "done");
    assert_marked(&stderr, &run_id);
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Interrupted);
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
    assert!(gptx::sandbox::quota::mounts_below(runs.path()).is_empty());
    common::assert_nothing_left(&docker, &v).await;
}

/// Runs `gptx run <args> --json --quiet --runs-dir runs`; the JSON lines, stderr and exit code.
fn batch(args: &[&str], runs: &Path) -> (Vec<serde_json::Value>, String, i32) {
    let out = common::gptx()
        .arg("run")
        .args(args)
        .args(["--json", "--quiet", "--runs-dir"])
        .arg(runs)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The same batch again runs only what is missing: done pairs are kept (and say so), an interrupted
/// one is resumed, the missing ones are run, `--force` runs everything anew.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_run_again_keeps_done_pairs_and_runs_the_rest() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let args = ["--suite", "mini", "--agent", "null", "--seeds", "1-2"];
    let (first, _, code) = batch(&args, runs.path());
    assert_eq!(code, 0);
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|l| l["status"] == "done" && l["kept"] == false));
    let count = || std::fs::read_dir(runs.path()).unwrap().count();
    assert_eq!(count(), 2);

    let (again, stderr, code) = batch(&args, runs.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("2 runs (1 agent(s) × 2 seed(s)): 2 done, 0 to resume, 0 to run"),
        "{stderr}"
    );
    assert_eq!(count(), 2, "nothing was run again");
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["run_id"], b["run_id"]);
        assert_eq!(b["kept"], true);
    }

    // Seed 3's run is interrupted (Ctrl-C as soon as it has begun); seed 4 is new. The batch of
    // seeds 1-4 keeps 1 and 2, resumes 3 and runs 4.
    let mut child = common::gptx()
        .args([
            "run",
            "--suite",
            "mini",
            "--agent",
            "null",
            "--seed",
            "3",
            "--quiet",
            "--runs-dir",
        ])
        .arg(runs.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let third = loop {
        let found = std::fs::read_dir(runs.path())
            .unwrap()
            .flatten()
            .map(|e| RunDir::new(e.path()))
            .find(|d| rundir::read_json::<RunMeta>(&d.run_json()).is_ok_and(|m| m.seed == 3));
        if let Some(d) = found {
            break d;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "seed 3 never began"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let meta: RunMeta = rundir::read_json(&third.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Interrupted);
    let (mixed, stderr, code) = batch(
        &["--suite", "mini", "--agent", "null", "--seeds", "1-4"],
        runs.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("4 runs (1 agent(s) × 4 seed(s)): 2 done, 1 to resume, 1 to run"),
        "{stderr}"
    );
    assert_eq!(mixed.len(), 4);
    assert_eq!(mixed[0]["kept"], true);
    assert_eq!(mixed[1]["kept"], true);
    assert_eq!(mixed[1]["run_id"], first[1]["run_id"]);
    assert_eq!(
        mixed[2]["run_id"],
        meta.run_id.as_str(),
        "seed 3 was resumed"
    );
    assert_eq!(mixed[2]["resumed"], 1);
    assert_eq!(mixed[2]["status"], "done");
    assert_eq!(mixed[3]["resumed"], 0);
    assert_eq!(count(), 4);
    assert_resumed_cleanly(&docker, &third, runs.path(), 1).await;

    let (forced, stderr, code) = batch(&[&args[..], &["--force"]].concat(), runs.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(forced.iter().all(|l| l["kept"] == false));
    assert_eq!(count(), 6);
    for l in first.iter().chain(&mixed).chain(&forced) {
        assert_eq!(
            common::leftovers(&docker, l["run_id"].as_str().unwrap()).await,
            0
        );
    }
}

/// The engine's own socket: `DOCKER_HOST` when it names one, else the default.
fn engine_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

/// Kills a helper process however the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A socket proxy in front of the engine: forwards `argv[1]` to the engine's socket; SIGUSR1 cuts
/// every connection and stops listening (the engine is gone, as far as gptx can tell).
const PROXY: &str = r#"
import os, signal, socket, sys, threading
path, target = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(64)
conns = []
lock = threading.Lock()
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def cut(*_):
    try:
        os.unlink(path)
    except OSError:
        pass
    srv.close()
    with lock:
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
    print("cut", flush=True)
signal.signal(signal.SIGUSR1, cut)
print("ready", flush=True)
while True:
    try:
        c, _ = srv.accept()
    except OSError:
        signal.pause()
        continue
    e = socket.socket(socket.AF_UNIX)
    e.connect(target)
    with lock:
        conns.extend([c, e])
    threading.Thread(target=pipe, args=(c, e), daemon=True).start()
    threading.Thread(target=pipe, args=(e, c), daemon=True).start()
"#;

/// The engine goes away mid-step (a proxy between gptx and the engine cuts every connection): the
/// run stops within seconds as interrupted, says why, its trace verifies, `gptx gc` (on the real
/// socket) removes what the lost engine kept, and `gptx resume` finishes it once the engine is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_engine_stops_the_run_within_seconds_as_interrupted() {
    let _one = SERIAL.lock().await;
    use std::io::BufRead;
    let (docker, _) = common::docker_and_image().await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let sock = tmp.path().join("engine.sock");
    let mut proxy = std::process::Command::new("python3")
        .args(["-c", PROXY])
        .arg(&sock)
        .arg(engine_socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(proxy.id());
    let mut said = std::io::BufReader::new(proxy.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut child = agent_run(
        &runs,
        PARTIAL,
        &[("DOCKER_HOST", format!("unix://{}", sock.display()))],
    );
    let dir = wait_for_a_step(&runs, &mut child);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(proxy.id() as i32).unwrap(),
        rustix::process::Signal::USR1,
    )
    .unwrap();
    line.clear();
    said.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "cut");
    let cut = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(90),
            "gptx still runs 90 s after the engine went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = cut.elapsed();
    eprintln!(
        "gptx ended {:.1} s after the engine went away",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(45), "{took:?}");
    assert_eq!(status.code(), Some(130));
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Interrupted);
    let why = meta.error.clone().unwrap_or_default();
    assert!(why.contains("the Docker engine stopped answering"), "{why}");
    let (code, stdout, stderr) = gptx_out(&["verify", &meta.run_id], &runs);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let mounts = gptx::sandbox::quota::mounts_below(&runs);
    eprintln!("mounts after the run: {mounts:?}");
    // The engine kept the run's containers; gc on the real socket removes them.
    let (code, _, stderr) = gptx_out(&["gc"], &runs);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(common::leftovers(&docker, &meta.run_id).await, 0);
    assert!(gptx::sandbox::quota::mounts_below(&runs).is_empty());

    // The engine is back (the real socket): the run is resumed and finishes.
    let (code, v, stderr) = resume(&meta.run_id, &runs);
    if std::env::var_os("GPTX_TEST_KEEP").is_some() {
        let _ = std::process::Command::new("cp")
            .arg("-a")
            .arg(&dir.path)
            .arg("/tmp/kept-run")
            .status();
    }
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["status"], "done", "{v}");
    for stage in ["crawl", "tokenize"] {
        assert_eq!(v["stages"][stage]["passed"], true, "{stage}: {v}");
    }
    assert_resumed_cleanly(&docker, &dir, &runs, 1).await;
}

/// The runs directory's filesystem fills up mid-run: the run stops as failed and says why, the trace
/// has no partial line, and `gptx verify` passes on what was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_runs_directory_fails_the_run_cleanly() {
    let _one = SERIAL.lock().await;
    use std::io::Write;
    let (docker, _) = common::docker_and_image().await;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&runs)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(runs.clone());
    let mut child = reference_run(&runs, &[]);
    let dir = wait_for_a_step(&runs, &mut child);
    // Fill what is left.
    let mut filler = std::fs::File::create(runs.join("filler")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while filler.write_all(&chunk).is_ok() {}
    let _ = filler.write_all(&chunk[..4096]);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "gptx still runs");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(status.code(), Some(0));
    let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
    assert_eq!(meta.status, RunStatus::Failed, "{:?}", meta.error);
    let why = meta.error.clone().unwrap_or_default();
    eprintln!("run.json says: {why}");
    assert!(why.contains("trace could not be written"), "{why}");
    let trace = std::fs::read(dir.events()).unwrap();
    assert!(trace.ends_with(b"\n"), "a partial last line");
    let (code, stdout, stderr) = gptx_out(&["verify", &meta.run_id], &runs);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(common::leftovers(&docker, &meta.run_id).await, 0);
}

/// SIGKILL mid-rebuild (selfhost's grade: its own network, web server, sandbox and disk): `gptx gc`
/// marks the run and leaves nothing behind, the rebuild's disk included.
#[tokio::test(flavor = "multi_thread")]
async fn a_gptx_killed_mid_rebuild_leaves_nothing_after_gc() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let mut child = reference_run(runs.path(), &[]);
    let dir = wait_for_a_step(runs.path(), &mut child);
    let t0 = Instant::now();
    // The rebuild runs once selfhost's steps are over and its grade begins.
    loop {
        assert!(child.try_wait().unwrap().is_none(), "gptx ended first");
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no rebuild in 600 s"
        );
        let text = std::fs::read_to_string(dir.events()).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"type\":\"stage_ended\"") && l.contains("\"selfhost\""))
            && RunDir::new(dir.path.clone())
                .selfhost()
                .workspace()
                .join("bootstrap.sh")
                .exists()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = rundir::read_json::<RunMeta>(&dir.run_json())
        .unwrap()
        .run_id;
    let (code, _, stderr) = gptx_out(&["gc"], runs.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("marked interrupted"), "{stderr}");
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
    let networks = docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .unwrap();
    assert!(
        !networks
            .iter()
            .any(|n| n.name.as_deref().unwrap_or("").contains(&run_id)),
        "a network of the run is left"
    );
    assert!(gptx::sandbox::quota::mounts_below(runs.path()).is_empty());
    let (code, stdout, stderr) = gptx_out(&["verify", &run_id], runs.path());
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // Resumed: the four graded stages keep their grades, selfhost (whose steps were over) is
    // graded again, and the run ends as the reference's uninterrupted run does (ladder_e2e).
    let (code, v, stderr) = resume(&run_id, runs.path());
    assert_eq!(code, 0, "{stderr}");
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert_eq!(v["stages"][stage]["passed"], true, "{stage}: {v}");
    }
    assert_eq!(v["level"], "L6", "{v}");
    assert!(v["bootstrap_index"].as_f64().unwrap() > 99.9, "{v}");
    let resumed: Vec<serde_json::Value> = std::fs::read_to_string(dir.events())
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"type\":\"run_resumed\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(resumed[0]["stage"], "selfhost", "{resumed:?}");
    assert_resumed_cleanly(&docker, &dir, runs.path(), 1).await;
}

/// SIGKILL during a world build: the half-built world is left, the next build removes it and
/// builds the same world (same hash) as an uninterrupted build.
#[tokio::test(flavor = "multi_thread")]
async fn a_world_build_killed_midway_is_built_again_whole() {
    let _one = SERIAL.lock().await;
    let cache = tempfile::tempdir().unwrap();
    let half_built = |cache: &Path| -> Vec<String> {
        std::fs::read_dir(cache.join("worlds"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    };
    let mut child = common::gptx()
        .args(["world", "build", "--suite", "mini"])
        .env("GPTX_CACHE_DIR", cache.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while half_built(cache.path()).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the build ended first");
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(half_built(cache.path()).len(), 1);
    let show = |cache: &Path| -> serde_json::Value {
        let out = common::gptx()
            .args(["world", "show", "--suite", "mini", "--json"])
            .env("GPTX_CACHE_DIR", cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let rebuilt = show(cache.path());
    assert!(
        half_built(cache.path()).is_empty(),
        "the half-built world is gone"
    );
    let whole = tempfile::tempdir().unwrap();
    let fresh = show(whole.path());
    assert_eq!(rebuilt["world_hash"], fresh["world_hash"]);
    assert!(rebuilt["world_hash"]
        .as_str()
        .is_some_and(|h| h.len() >= 12));
}

/// `gptx resume` refuses, with exit 2 and before anything is built, a run that is done, one whose
/// trace was edited, one whose trace was cut, and an MCP client's run.
#[test]
fn resume_refuses_runs_it_cannot_go_on_with() {
    use gptx::synth::{write_run, Synth};
    let runs = tempfile::tempdir().unwrap();
    let make = |id: &str, agent: &str, status: RunStatus| {
        write_run(
            runs.path(),
            &Synth {
                run_id: id.into(),
                agent: agent.into(),
                status,
                ..Synth::default()
            },
        )
        .unwrap()
    };
    let done = make("r-done", "reference", RunStatus::Done);
    let (code, _, stderr) = resume(&done.id(), runs.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is done"), "{stderr}");

    let edited = make("r-edited", "reference", RunStatus::Interrupted);
    let text = std::fs::read_to_string(edited.events()).unwrap();
    std::fs::write(
        edited.events(),
        text.replacen("\"step\":1", "\"step\":7", 1),
    )
    .unwrap();
    let (code, _, stderr) = resume(&edited.id(), runs.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not verify"), "{stderr}");

    let cut = make("r-cut", "reference", RunStatus::Interrupted);
    let text = std::fs::read_to_string(cut.events()).unwrap();
    let keep: Vec<&str> = text.lines().collect();
    std::fs::write(cut.events(), keep[..keep.len() - 2].join("\n") + "\n").unwrap();
    let (code, _, stderr) = resume(&cut.id(), runs.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not verify"), "{stderr}");

    let mcp = make("r-mcp", "mcp", RunStatus::Interrupted);
    let (code, _, stderr) = resume(&mcp.id(), runs.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("MCP client"), "{stderr}");

    let (code, _, stderr) = resume("r-none", runs.path());
    assert_eq!(code, 2, "{stderr}");
}

/// The processes of the group run.json names.
fn group_members(pgid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .count()
}

/// An external agent that ignores the end of its input outlives a gptx SIGKILLed under it: before,
/// it ran on the host until someone found it; now marking the run (here `gptx gc`) kills its group.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_agent_does_not_outlive_a_killed_gptx() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let mut child = agent_run(runs.path(), "exec:sleep 600 & sleep 600", &[]);
    let t0 = Instant::now();
    let (dir, pgid) = loop {
        assert!(child.try_wait().unwrap().is_none(), "gptx ended first");
        assert!(t0.elapsed() < Duration::from_secs(120), "no agent in 120 s");
        let found = std::fs::read_dir(runs.path())
            .unwrap()
            .flatten()
            .map(|e| RunDir::new(e.path()))
            .find_map(|d| {
                let m: RunMeta = rundir::read_json(&d.run_json()).ok()?;
                m.agent_process.map(|p| (d, p.pgid))
            });
        if let Some(f) = found {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        group_members(pgid) >= 2,
        "the agent's shell and its sleeps run on"
    );
    let (code, _, stderr) = gptx_out(&["gc"], runs.path());
    assert_eq!(code, 0, "{stderr}");
    assert_marked(&stderr, &dir.id());
    let t1 = Instant::now();
    while group_members(pgid) > 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "the agent's group still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(common::leftovers(&docker, &dir.id()).await, 0);
}

/// An external agent is started afresh on resume: the stage's task again with a note of what is
/// left, its work so far in the workspace; the run finishes.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_agent_is_given_the_stage_again_on_resume() {
    let _one = SERIAL.lock().await;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = format!(
        "exec:python3 {}/tasks/agents/example_agent.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = killed_after_a_step_of(runs.path(), &agent);
    let (code, v, stderr) = resume(&dir.id(), runs.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["status"], "done", "{v}");
    let trace = std::fs::read_to_string(dir.events()).unwrap();
    let resumed: serde_json::Value = trace
        .lines()
        .find(|l| l.contains("\"type\":\"run_resumed\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(resumed["agent"], "fresh", "{resumed}");
    // The agent logs each task it is given: the first stage twice, the second time longer (the note).
    let logs: Vec<usize> = trace
        .lines()
        .filter(|l| l.contains("\"type\":\"agent_log\""))
        .flat_map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = e["text"].as_str().unwrap_or("").to_string();
            text.lines()
                .filter_map(|x| {
                    x.strip_prefix(&format!(
                        "[example-agent] stage {}: ",
                        resumed["stage"].as_str().unwrap()
                    ))
                    .and_then(|r| r.split(' ').next()?.parse::<usize>().ok())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[1] > logs[0], "{logs:?}");
    assert_resumed_cleanly(&docker, &dir, runs.path(), 1).await;
}
