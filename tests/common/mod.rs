//! Shared helpers for tests: the real Docker engine and the `base` image, the CLI, synthetic runs.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use bollard::Docker;
use gptx::config::suite::{Home, SandboxLimits};
use gptx::docker::sandbox::{DockerSandbox, DockerSandboxSpec};

pub fn home() -> Home {
    Home::locate().expect("gptx home (tasks/suites) from the crate root")
}

/// The engine and the `base` image tag, building the image on first use (needs root and debootstrap).
pub async fn docker_and_image() -> (Docker, String) {
    let docker = gptx::docker::engine::connect()
        .await
        .expect("a running Docker engine");
    let built = gptx::docker::images::build(&docker, &home(), "base", false, true)
        .await
        .expect("the base image (built on first use: needs root and debootstrap)");
    (docker, built.tag)
}

pub fn test_run_id(name: &str) -> String {
    format!("test-{name}-{:08x}", rand::random::<u32>())
}

/// Containers, networks and volumes still labelled with this run id.
pub async fn leftovers(docker: &Docker, run_id: &str) -> usize {
    use bollard::query_parameters::{
        ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    };
    use std::collections::HashMap;
    let f = || {
        Some(HashMap::from([(
            "label".to_string(),
            vec![format!("gptx.run={run_id}")],
        )]))
    };
    let c = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: f(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .len();
    let n = docker
        .list_networks(Some(ListNetworksOptions { filters: f() }))
        .await
        .unwrap()
        .len();
    let v = docker
        .list_volumes(Some(ListVolumesOptions { filters: f() }))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .len();
    c + n + v
}

pub fn spec(run_id: &str, image: &str, ws: &Path) -> DockerSandboxSpec {
    gptx::docker::session::prepare_workspace(ws).unwrap();
    // The agent's profile, one CPU, no GPU.
    DockerSandboxSpec {
        memory_bytes: 512 << 20,
        pids: 256,
        workspace_host: ws.to_path_buf(),
        tmp_mb: 64,
        ..DockerSandboxSpec::agent(run_id, image, &SandboxLimits::default())
    }
}

/// Runs `body` with a fresh sandbox, then removes it and checks nothing of it is left, even if `body` panics.
pub async fn with_sandbox<F, Fut>(name: &str, tweak: impl FnOnce(&mut DockerSandboxSpec), body: F)
where
    F: FnOnce(Arc<DockerSandbox>, std::path::PathBuf) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ws = tempfile::tempdir().unwrap();
    // The workspace lives until the sandbox is gone.
    with_sandbox_at(name, ws.path(), tweak, body).await;
}

/// [`with_sandbox`] on the workspace at `ws` (a loop mount, say).
pub async fn with_sandbox_at<F, Fut>(
    name: &str,
    ws: &std::path::Path,
    tweak: impl FnOnce(&mut DockerSandboxSpec),
    body: F,
) where
    F: FnOnce(Arc<DockerSandbox>, std::path::PathBuf) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (docker, image) = docker_and_image().await;
    let run_id = test_run_id(name);
    let mut s = spec(&run_id, &image, ws);
    tweak(&mut s);
    let sandbox = Arc::new(DockerSandbox::create(&docker, &s).await.expect("sandbox"));
    let outcome = tokio::spawn(body(sandbox.clone(), ws.to_path_buf())).await;
    use gptx::sandbox::Sandbox;
    sandbox.remove().await.expect("remove");
    let left = leftovers(&docker, &run_id).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    assert_eq!(left, 0, "resources of {run_id} left behind");
}

/// Runs `cmd` in the sandbox; returns the outcome, stdout and stderr.
pub async fn sh(
    sb: &dyn gptx::sandbox::Sandbox,
    cmd: &str,
    timeout_s: f64,
) -> (gptx::sandbox::ExecOutcome, String, String) {
    use gptx::sandbox::{ExecRequest, OutStream};
    let mut out = Vec::new();
    let mut err = Vec::new();
    let req = ExecRequest {
        cmd: cmd.into(),
        timeout: std::time::Duration::from_secs_f64(timeout_s),
        env: vec![],
        stdin: None,
    };
    let o = sb
        .exec(&req, &mut |s, d| match s {
            OutStream::Stdout => out.extend_from_slice(d),
            OutStream::Stderr => err.extend_from_slice(d),
        })
        .await
        .expect("exec");
    (
        o,
        String::from_utf8_lossy(&out).into(),
        String::from_utf8_lossy(&err).into(),
    )
}

/// The `gptx` binary, run from the crate root.
pub fn gptx() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gptx"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// Runs `gptx run <args> --json --quiet --runs-dir <runs>`, asserts success, returns the JSON result.
pub fn run_json(args: &[&str], runs: &Path) -> serde_json::Value {
    run_json_with(args, runs, &[]).0
}

/// [`run_json`] with these environment variables set; also returns what gptx wrote to stderr.
pub fn run_json_with(
    args: &[&str],
    runs: &Path,
    env: &[(&str, &str)],
) -> (serde_json::Value, String) {
    let mut cmd = gptx();
    cmd.arg("run")
        .args(args)
        .args(["--json", "--quiet", "--runs-dir"])
        .arg(runs);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    (
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap(),
        stderr,
    )
}

/// The events of a run, from the `dir` of `gptx run --json`'s result.
pub fn events(v: &serde_json::Value) -> Vec<serde_json::Value> {
    let dir = Path::new(v["dir"].as_str().unwrap());
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that the run of `gptx run --json`'s result `v` left no container, network or volume.
pub async fn assert_nothing_left(docker: &Docker, v: &serde_json::Value) {
    let run_id = v["run_id"].as_str().expect("run_id");
    assert_eq!(
        leftovers(docker, run_id).await,
        0,
        "run {run_id} left resources behind"
    );
}

/// A synthetic run `id` under `runs` (see `gptx::synth`), shaped by `f`.
pub fn synth_run(
    runs: &Path,
    id: &str,
    f: impl FnOnce(&mut gptx::synth::Synth),
) -> gptx::trace::rundir::RunDir {
    let mut s = gptx::synth::Synth {
        run_id: id.into(),
        ..Default::default()
    };
    f(&mut s);
    gptx::synth::write_run(runs, &s).unwrap()
}

/// Appends events to a run's trace, chained to its last line as the recorder would.
pub fn append_events(dir: &gptx::trace::rundir::RunDir, events: &[gptx::trace::Event]) {
    let mut log = gptx::trace::EventLog::open_existing(&dir.events()).unwrap();
    for e in events {
        log.append(e).unwrap();
    }
}

/// A reporter that cancels the run once it has seen `after` completed steps: an interrupt at a
/// known point, for resume tests.
pub struct CancelAfter {
    pub after: u64,
    pub seen: u64,
    pub cancel: tokio_util::sync::CancellationToken,
}

impl gptx::trace::Reporter for CancelAfter {
    fn report(&mut self, event: &gptx::trace::Event) {
        if matches!(event, gptx::trace::Event::Step(_)) {
            self.seen += 1;
            if self.seen == self.after {
                self.cancel.cancel();
            }
        }
    }
}

/// What `gptx resume` hands the runner, for a run directory whose workspace is as it was.
pub fn resume_from(run_dir: &Path) -> gptx::runner::ResumeFrom {
    let events = gptx::trace::log::read_events(&run_dir.join("events.jsonl")).unwrap();
    gptx::runner::ResumeFrom {
        state: gptx::runner::ResumeState::of(&events).unwrap(),
        reason: "interrupted".into(),
        workspace: "kept".into(),
        aside: None,
        missing: vec![],
    }
}

/// Runs `cmd`, asserts it succeeded (its stderr in the message), and parses its stdout as JSON.
pub fn json_of(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `gptx runs --json --plan PLAN` through `gptx` (a [`gptx()`] command, perhaps with more
/// environment): where each item of the plan stands.
pub fn plan_states(mut gptx: std::process::Command, plan: &Path) -> serde_json::Value {
    json_of(gptx.args(["runs", "--json", "--plan"]).arg(plan))
}
