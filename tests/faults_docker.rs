//! Faults the harness must survive: a gptx killed mid-run leaves a run that `gptx gc` (or the next `gptx run`) marks interrupted, with its resources gone and its trace verifiable.

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

/// `gptx run --suite mini --agent reference` in the background, with these environment variables.
fn reference_run(runs: &Path, env: &[(&str, String)]) -> std::process::Child {
    let mut cmd = common::gptx();
    cmd.args([
        "run",
        "--suite",
        "mini",
        "--agent",
        "reference",
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
    let mut child = reference_run(runs, &[]);
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

    // A second gc has nothing more to mark, and the trace is unchanged.
    let before = std::fs::read(dir.events()).unwrap();
    let (code, _, stderr) = gptx_out(&["gc"], runs.path());
    assert_eq!(code, 0);
    assert!(!stderr.contains("marked interrupted"), "{stderr}");
    assert_eq!(std::fs::read(dir.events()).unwrap(), before);
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

/// The same batch again runs only what is missing: done pairs are kept (and say so), a run whose
/// gptx was killed is run again, `--force` runs everything.
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
        stderr.contains("2 runs (1 agent(s) × 2 seed(s)): 2 done already"),
        "{stderr}"
    );
    assert_eq!(count(), 2, "nothing was run again");
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["run_id"], b["run_id"]);
        assert_eq!(b["kept"], true);
    }

    // Seed 1's run stopped before its end (as a killed and marked one does); seed 3 is new.
    let dir = runs.path().join(first[0]["run_id"].as_str().unwrap());
    let mut meta: RunMeta = rundir::read_json(&dir.join("run.json")).unwrap();
    meta.status = RunStatus::Interrupted;
    rundir::write_json_atomic(&dir.join("run.json"), &meta).unwrap();
    let (mixed, stderr, code) = batch(
        &["--suite", "mini", "--agent", "null", "--seeds", "1-3"],
        runs.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("1 done already") && stderr.contains("1 interrupted or failed before"),
        "{stderr}"
    );
    assert!(stderr.contains("1 new"), "{stderr}");
    assert_eq!(mixed.len(), 3);
    assert_eq!(mixed[0]["kept"], false, "seed 1 ran again");
    assert_eq!(mixed[1]["kept"], true);
    assert_eq!(mixed[1]["run_id"], first[1]["run_id"]);
    assert_eq!(count(), 4);

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
/// run stops within seconds as interrupted, says why, its trace verifies, and `gptx gc` (on the real
/// socket) removes what the lost engine kept.
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
    let mut child = reference_run(
        &runs,
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
