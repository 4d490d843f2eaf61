//! `gptx bench exec`: what a step costs through gptx, side by side with its anchors, in one sandbox and one run.
//!
//! One container, one run loop with full recording (trace, outputs, git snapshot). A scripted bench
//! agent hands the runner its calls and times how long the runner takes to come back for the next:
//! - `bash true`, interleaved with `docker exec <container> true` through the docker CLI (each
//!   followed by a 50 ms pause, so the engine's work after it is not counted against the next), so both
//!   see the same machine load, and with the in-box floor: a step that times `/bin/bash -c true`
//!   inside the box by bash's own clock (`$EPOCHREALTIME`, no fork) and notes it in a file;
//! - one step printing `--output-mib` MiB, against the same command to /dev/null, with gptx's peak
//!   resident memory over that step;
//! - `echo` steps with 200 files in the workspace, then with `--files` files; then steps in which
//!   a name comes and goes (`touch .t && rm .t`), which make the snapshot stat every file.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::agent::tools::RawCall;
use crate::agent::{Agent, AgentError, StageTask, Turn};
use crate::config::suite::{Home, SandboxLimits, Suite};
use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec};
use crate::sandbox::{ExecRequest, Sandbox};
use crate::trace::{EventLog, EventSink, Recorder, WorkspaceHistory};

/// `gptx bench exec`'s flags: how big the bench is.
#[derive(Debug, clap::Args)]
pub struct BenchExecArgs {
    /// Samples of each per-step figure.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// MiB of stdout for the throughput row.
    #[arg(long, default_value_t = 1024)]
    pub output_mib: u64,
    /// Files in the workspace for the large-workspace row.
    #[arg(long, default_value_t = 200_000)]
    pub files: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

type Sizes = BenchExecArgs;

/// The pause after each `docker exec` through the CLI, before the next figure is timed.
const CLI_SETTLE: Duration = Duration::from_millis(50);

/// Files in the workspace for the small-workspace row.
const FEW_FILES: usize = 200;

/// One call of the script: what to time it as, and what to do on the host before it.
struct Planned {
    label: &'static str,
    cmd: String,
    before: Before,
}

enum Before {
    Nothing,
    /// Time `docker exec <c> true` through the CLI.
    DockerCli,
    /// Fill the workspace to this many files (on the host).
    Files(usize),
    /// Start a fresh peak-memory window (`/proc/self/clear_refs`).
    ResetPeak,
}

#[derive(Default)]
struct Samples {
    ms: std::collections::BTreeMap<&'static str, Vec<f64>>,
    peak_rss_kb: Option<u64>,
    /// What the workspace is.
    workspace: &'static str,
}

struct BenchAgent {
    container: String,
    workspace: std::path::PathBuf,
    script: VecDeque<Planned>,
    running: Option<(&'static str, Instant)>,
    samples: Arc<Mutex<Samples>>,
}

fn agent_err(message: String) -> AgentError {
    AgentError {
        agent: "bench".into(),
        message,
    }
}

#[async_trait]
impl Agent for BenchAgent {
    fn spec(&self) -> String {
        "bench".into()
    }
    async fn begin_stage(&mut self, _task: &StageTask) -> Result<(), AgentError> {
        Ok(())
    }
    async fn next(&mut self) -> Result<Turn, AgentError> {
        if let Some((label, t)) = self.running.take() {
            let mut s = self.samples.lock().unwrap();
            s.ms.entry(label)
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1000.0);
            if label == "output" {
                s.peak_rss_kb = peak_rss_kb();
            }
        }
        let Some(call) = self.script.pop_front() else {
            return Ok(Turn::Call(RawCall {
                tool: "submit".into(),
                args: Value::Null,
                invalid: None,
            }));
        };
        self.prepare(&call.before).await?;
        self.running = Some((call.label, Instant::now()));
        Ok(Turn::Call(RawCall {
            tool: "bash".into(),
            args: json!({ "cmd": call.cmd, "timeout_s": 600 }),
            invalid: None,
        }))
    }
}

impl BenchAgent {
    /// Times `docker exec <c> true` through the CLI, then lets the engine settle: its work after
    /// the CLI exits would be counted against the step timed next (2 cores).
    async fn cli_sample(&mut self) -> Result<(), AgentError> {
        let ms = docker_cli_true(&self.container).await?;
        {
            let mut s = self.samples.lock().unwrap();
            s.ms.entry("docker_cli").or_default().push(ms);
        }
        tokio::time::sleep(CLI_SETTLE).await;
        Ok(())
    }

    async fn prepare(&mut self, before: &Before) -> Result<(), AgentError> {
        match before {
            Before::Nothing => {}
            Before::DockerCli => self.cli_sample().await?,
            Before::Files(n) => fill(&self.workspace, *n)
                .map_err(|e| agent_err(format!("filling the workspace: {e}")))?,
            Before::ResetPeak => {
                let _ = std::fs::write("/proc/self/clear_refs", "5");
            }
        }
        Ok(())
    }
}

async fn docker_cli_true(container: &str) -> Result<f64, AgentError> {
    let t0 = Instant::now();
    let status = tokio::process::Command::new("docker")
        .args(["exec", container, "true"])
        .status()
        .await
        .map_err(|e| agent_err(format!("docker CLI: {e}")))?;
    if !status.success() {
        return Err(agent_err(format!("docker exec exited with {status}")));
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Makes `files/` hold `n` empty files (adding what is missing).
fn fill(workspace: &std::path::Path, n: usize) -> std::io::Result<()> {
    let dir = workspace.join("files");
    std::fs::create_dir_all(&dir)?;
    for i in 0..n {
        let sub = dir.join(format!("{:03}", i % 1000));
        if i < 1000 {
            std::fs::create_dir_all(&sub)?;
        }
        let f = sub.join(format!("{i}"));
        if !f.exists() {
            std::fs::File::create(f)?;
        }
    }
    Ok(())
}

/// The harness's peak resident memory since the last reset, in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn plan(label: &'static str, cmd: &str, before: Before) -> Planned {
    let cmd = cmd.to_string();
    Planned { label, cmd, before }
}

fn script(sizes: &Sizes) -> VecDeque<Planned> {
    let mut s = VecDeque::new();
    for _ in 0..sizes.n {
        s.push_back(plan("true", "true", Before::DockerCli));
        s.push_back(plan("floor_step", FLOOR, Before::Nothing));
    }
    let head = format!("head -c {} /dev/zero", sizes.output_mib << 20);
    let null = format!("{head} > /dev/null");
    s.push_back(plan("output_null", &null, Before::Nothing));
    s.push_back(plan("output", &head, Before::ResetPeak));
    // The first step after a fill takes in the new files; the rows time the steps after it.
    // The last row: a name that comes and goes in the step, so the snapshot stats every file.
    let rows = [
        ("echo_few", FEW_FILES, "echo"),
        ("echo_many", sizes.files, "echo"),
        ("sweep_many", sizes.files, "touch .t && rm .t"),
    ];
    for (label, files, cmd) in rows {
        s.push_back(plan("fill", "echo", Before::Files(files)));
        for _ in 0..sizes.n.clamp(1, 50) {
            s.push_back(plan(label, cmd, Before::Nothing));
        }
    }
    s
}

/// Median and 90th percentile.
pub(crate) fn median_p90(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// The in-box floor's step: `/bin/bash -c true` timed by bash's clock, noted in [`FLOOR_FILE`].
const FLOOR: &str =
    "s=$EPOCHREALTIME; /bin/bash -c true; e=$EPOCHREALTIME; echo \"$s $e\" >> .bench-floor";
const FLOOR_FILE: &str = ".bench-floor";

/// The floor steps' times (ms), from the file they wrote in the workspace.
fn floor_samples(ws: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(ws.join(FLOOR_FILE))?;
    let ms = |line: &str| -> Option<f64> {
        let (s, e) = line.split_once(' ')?;
        Some((e.parse::<f64>().ok()? - s.parse::<f64>().ok()?) * 1000.0)
    };
    let v: Option<Vec<f64>> = text.lines().map(ms).collect();
    v.ok_or_else(|| anyhow::anyhow!("{FLOOR_FILE} holds a line that is not two times"))
}

/// gptx's own `true` exec with no recording: `n` samples (at most 100), in ms.
async fn exec_alone(sandbox: &DockerSandbox, n: usize) -> anyhow::Result<Vec<f64>> {
    let req = ExecRequest {
        cmd: "true".into(),
        timeout: Duration::from_secs(600),
        env: vec![],
        stdin: None,
    };
    let mut raw = Vec::new();
    for _ in 0..n.min(100) {
        let t0 = Instant::now();
        sandbox.exec(&req, &mut |_, _| {}).await?;
        raw.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(raw)
}

/// Runs the bench and prints the figures.
pub async fn exec(sizes: BenchExecArgs) -> Result<i32, super::Exit> {
    let home = Home::locate().map_err(super::env_error)?;
    let report = measure_all(&home, &sizes).await.map_err(super::env_error)?;
    if sizes.json {
        println!("{}", report.json(&sizes));
    } else {
        print!("{}", report.text(&sizes));
    }
    Ok(super::exit::OK)
}

async fn measure_all(home: &Home, sizes: &Sizes) -> anyhow::Result<Report> {
    let docker = crate::docker::engine::connect().await?;
    let image = crate::docker::images::ensure(&docker, home, "base").await?;
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("workspace");
    let (quota, workspace) = own_file_system(&ws, tmp.path(), sizes.files)?;
    crate::docker::session::prepare_workspace(&ws)?;
    let run_id = format!("bench-{}", crate::trace::rundir::new_run_id());
    let spec = bench_spec(&run_id, &image.tag, &ws);
    let sandbox = Arc::new(DockerSandbox::create(&docker, &spec).await?);
    let result = measure(home, sizes, &sandbox, &ws, tmp.path(), &run_id, &image.tag).await;
    let _ = sandbox.remove().await;
    let _ = crate::docker::engine::sweep(&docker, Some(&run_id), |_| false).await;
    if let Some(q) = quota {
        q.release(false)?;
    }
    result.map(|mut r| {
        r.samples.workspace = workspace;
        r
    })
}

/// The workspace at `ws` as a run's is: an ext4 file system of its own, large enough for `files`
/// files, when this process can mount one (root); else a plain directory. Says which.
fn own_file_system(
    ws: &std::path::Path,
    tmp: &std::path::Path,
    files: usize,
) -> anyhow::Result<(Option<crate::sandbox::quota::Quota>, &'static str)> {
    if !crate::sandbox::quota::available() {
        std::fs::create_dir(ws)?;
        return Ok((
            None,
            "a plain directory (not root: no loop mount, no inode feed)",
        ));
    }
    // ext4 makes an inode per 16 KiB: room for every file, and the rows' output besides.
    let mb = (files as u64 * 20 / 1000).max(1024) + 512;
    let owner = (
        crate::docker::sandbox::SANDBOX_UID,
        crate::docker::sandbox::SANDBOX_GID,
    );
    let q = crate::sandbox::quota::Quota::mount(ws, &tmp.join("workspace.img"), mb, owner)?;
    Ok((Some(q), "a loop-mounted ext4 of its own, as a root run's"))
}

/// The bench's sandbox: the agent's profile on `base`, one CPU.
fn bench_spec(run_id: &str, image: &str, ws: &std::path::Path) -> DockerSandboxSpec {
    DockerSandboxSpec {
        role: "bench".into(),
        memory_bytes: 1 << 30,
        pids: 256,
        workspace_host: ws.to_path_buf(),
        tmp_mb: 64,
        ..DockerSandboxSpec::agent(run_id, image, &SandboxLimits::default())
    }
}

/// Every figure of one bench run.
struct Report {
    raw_ms: Vec<f64>,
    samples: Samples,
}

async fn measure(
    home: &Home,
    sizes: &Sizes,
    sandbox: &Arc<DockerSandbox>,
    ws: &std::path::Path,
    tmp: &std::path::Path,
    run_id: &str,
    image: &str,
) -> anyhow::Result<Report> {
    let raw_ms = exec_alone(sandbox, sizes.n).await?;
    let script = script(sizes);
    let suite = Suite::parse(
        &format!(
            "name = \"bench\"\nimage = \"base\"\n[[stages]]\nname = \"train\"\nbudgets = {{ max_steps = {}, max_sandbox_seconds = 100000, max_wall_seconds = 100000, max_step_seconds = 600 }}\n",
            script.len() + 1
        ),
        std::path::Path::new("bench"),
    )?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut agent = BenchAgent {
        container: sandbox.name().to_string(),
        workspace: ws.to_path_buf(),
        script,
        running: None,
        samples: samples.clone(),
    };
    let run_dir = tmp.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let dir = crate::trace::rundir::RunDir::new(run_dir.clone());
    let recorder = Recorder::new(EventLog::create(&dir.events())?);
    let history = WorkspaceHistory::create(&dir.git(), ws)?;
    let mut runner = crate::runner::Runner::new(
        home.clone(),
        suite,
        run_id.to_string(),
        run_dir,
        sandbox.clone(),
        EventSink::new(recorder, vec![]),
        Some(history),
        CancellationToken::new(),
    );
    runner.run(&mut agent, image).await;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.ms.insert("floor", floor_samples(ws)?);
    Ok(Report { raw_ms, samples })
}

impl Report {
    fn p(&self, label: &str) -> (f64, f64) {
        median_p90(self.samples.ms.get(label).map_or(&[][..], Vec::as_slice))
    }

    fn one(&self, label: &str) -> f64 {
        self.p(label).0 / 1000.0
    }

    fn json(&self, sizes: &Sizes) -> Value {
        let pair = |(p50, p90): (f64, f64)| json!({"p50": p50, "p90": p90});
        let mb = (sizes.output_mib << 20) as f64 / 1e6;
        let (step, cli, floor) = (self.p("true").0, self.p("docker_cli").0, self.p("floor").0);
        json!({
            "samples": sizes.n,
            "gptx_step_ms": pair(self.p("true")),
            "sandbox_exec_ms": pair(median_p90(&self.raw_ms)),
            "docker_exec_cli_ms": pair(self.p("docker_cli")),
            "in_box_floor_ms": pair(self.p("floor")),
            "ratio_p50": step / cli, "floor_ratio_p50": floor / cli, "over_floor_ms": step - floor,
            "output": {"mib": sizes.output_mib, "gptx_s": self.one("output"), "harness_peak_rss_kb": self.samples.peak_rss_kb,
                       "in_box_dev_null_s": self.one("output_null"), "gptx_mb_per_s": mb / self.one("output")},
            "echo_step_ms": {"files": {"few": FEW_FILES, "many": sizes.files}, "workspace": self.samples.workspace,
                             "few": pair(self.p("echo_few")), "many": pair(self.p("echo_many")),
                             "sweep_many": pair(self.p("sweep_many"))},
        })
    }

    fn text(&self, sizes: &Sizes) -> String {
        let (g50, g90) = self.p("true");
        let (c50, c90) = self.p("docker_cli");
        let ((r50, r90), (b50, b90)) = (median_p90(&self.raw_ms), self.p("floor"));
        let (out, null) = (self.one("output"), self.one("output_null"));
        let mb = (sizes.output_mib << 20) as f64 / 1e6;
        let rss = self.samples.peak_rss_kb.map_or("unknown".into(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        });
        format!(
            "one sandbox, {n} interleaved samples per step row:\n\
             \x20 `bash true` step through gptx (trace, git snapshot)  p50 {g50:8.2} ms  p90 {g90:8.2} ms\n\
             \x20 gptx sandbox exec alone (no recording)             p50 {r50:8.2} ms  p90 {r90:8.2} ms\n\
             \x20 docker exec <c> true (docker CLI)                  p50 {c50:8.2} ms  p90 {c90:8.2} ms\n\
             \x20 in-box floor: /bin/bash -c true by bash's clock   p50 {b50:8.2} ms  p90 {b90:8.2} ms\n\
             \x20 ratio step / CLI at p50: {ratio:.3} (the floor alone: {fr:.3}); step over the floor at p50: {over:+.2} ms\n\
             {mib} MiB of stdout in one step:\n\
             \x20 through gptx {out:8.2} s ({rate:.0} MB/s); the same to /dev/null in the box {null:.2} s ({x:.1}x)\n\
             \x20 gptx peak resident memory over that step: {rss}\n{files}",
            n = sizes.n,
            ratio = g50 / c50,
            fr = b50 / c50,
            over = g50 - b50,
            mib = sizes.output_mib,
            rate = mb / out,
            x = out / null,
            files = self.file_rows(sizes),
        )
    }

    /// The rows of steps in a workspace of many files.
    fn file_rows(&self, sizes: &Sizes) -> String {
        let n = sizes.files;
        let rows = [
            ("echo_few", format!("at {FEW_FILES} files")),
            ("echo_many", format!("at {n} files")),
            ("sweep_many", format!("`touch .t && rm .t` at {n}")),
        ];
        let mut out = format!("`echo` step, the workspace {}:\n", self.samples.workspace);
        for (label, what) in rows {
            out += &self.row(label, &what);
        }
        out
    }

    /// One row of per-step figures: `what`, then the p50 and p90 of `label`.
    fn row(&self, label: &str, what: &str) -> String {
        let (p50, p90) = self.p(label);
        format!("  {what:<32} p50 {p50:8.2} ms  p90 {p90:8.2} ms\n")
    }
}
