//! `gptx bench exec`: per-step overhead of gptx against `docker exec` through the CLI, side by side.
//!
//! One container, one run loop with full recording (trace, outputs, git snapshot). A bench agent
//! alternates: it times `docker exec <container> true` through the docker CLI, then hands the runner
//! `bash true` and times how long the runner takes to come back for the next call. The two samples are
//! interleaved, so both see the same machine load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::agent::tools::RawCall;
use crate::agent::{Agent, AgentError, StageTask, Turn};
use crate::config::suite::{Home, Suite};
use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec};
use crate::sandbox::{ExecRequest, Sandbox};
use crate::trace::{EventLog, EventSink, Recorder, WorkspaceHistory};

#[derive(Default)]
struct Samples {
    gptx_step_ms: Vec<f64>,
    docker_cli_ms: Vec<f64>,
}

struct BenchAgent {
    container: String,
    left: usize,
    returned_at: Option<Instant>,
    samples: Arc<Mutex<Samples>>,
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
        if let Some(t) = self.returned_at.take() {
            self.samples
                .lock()
                .unwrap()
                .gptx_step_ms
                .push(t.elapsed().as_secs_f64() * 1000.0);
        }
        if self.left == 0 {
            return Ok(Turn::Call(RawCall {
                tool: "submit".into(),
                args: Value::Null,
                invalid: None,
            }));
        }
        self.left -= 1;
        let t0 = Instant::now();
        let status = tokio::process::Command::new("docker")
            .args(["exec", &self.container, "true"])
            .status()
            .await
            .map_err(|e| AgentError {
                agent: "bench".into(),
                message: format!("docker CLI: {e}"),
            })?;
        if !status.success() {
            return Err(AgentError {
                agent: "bench".into(),
                message: format!("docker exec exited with {status}"),
            });
        }
        self.samples
            .lock()
            .unwrap()
            .docker_cli_ms
            .push(t0.elapsed().as_secs_f64() * 1000.0);
        self.returned_at = Some(Instant::now());
        Ok(Turn::Call(RawCall {
            tool: "bash".into(),
            args: json!({"cmd": "true"}),
            invalid: None,
        }))
    }
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

/// Runs the bench and prints the figures.
pub async fn exec(home: &Home, n: usize, json_out: bool) -> anyhow::Result<()> {
    let docker = crate::docker::engine::connect().await?;
    let image = crate::docker::images::ensure(&docker, home, "base").await?;
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("workspace");
    std::fs::create_dir(&ws)?;
    crate::docker::session::prepare_workspace(&ws)?;
    let run_id = format!("bench-{}", crate::trace::rundir::new_run_id());
    let spec = DockerSandboxSpec {
        run_id: run_id.clone(),
        role: "bench".into(),
        image: image.tag.clone(),
        memory_bytes: 1 << 30,
        nano_cpus: 1_000_000_000,
        pids: 256,
        network: None,
        workspace_host: ws.clone(),
        workspace_readonly: false,
        env: vec![],
        instance: None,
        tmp_mb: 64,
        extra_hosts: vec![],
    };
    let sandbox = Arc::new(DockerSandbox::create(&docker, &spec).await?);
    let result = async {
        // Raw sandbox exec, no recording: the floor of the supervisor path.
        let mut raw = Vec::new();
        for _ in 0..n.min(100) {
            let t0 = Instant::now();
            let req = ExecRequest {
                cmd: "true".into(),
                timeout: Duration::from_secs(30),
                env: vec![],
                stdin: None,
            };
            sandbox.exec(&req, &mut |_, _| {}).await?;
            raw.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let suite = Suite::parse(
            &format!(
                "name = \"bench\"\nimage = \"base\"\n[[stages]]\nname = \"train\"\nbudgets = {{ max_steps = {} }}\n",
                n + 1
            ),
            std::path::Path::new("bench"),
        )?;
        let samples = Arc::new(Mutex::new(Samples::default()));
        let mut agent = BenchAgent {
            container: sandbox.name().to_string(),
            left: n,
            returned_at: None,
            samples: samples.clone(),
        };
        let run_dir = tmp.path().join("run");
        std::fs::create_dir_all(&run_dir)?;
        let dir = crate::trace::rundir::RunDir::new(run_dir.clone());
        let recorder = Recorder::new(EventLog::create(&dir.events())?);
        let history = WorkspaceHistory::create(&dir.git(), &ws)?;
        let mut runner = crate::runner::Runner::new(
            home.clone(),
            suite,
            run_id.clone(),
            run_dir,
            sandbox.clone(),
            EventSink::new(recorder, vec![]),
            Some(history),
            CancellationToken::new(),
        );
        runner.run(&mut agent, &image.tag).await;
        let s = samples.lock().unwrap();
        anyhow::Ok((raw, s.gptx_step_ms.clone(), s.docker_cli_ms.clone()))
    }
    .await;
    let _ = sandbox.remove().await;
    let _ = crate::docker::engine::sweep(&docker, Some(&run_id), |_| false).await;
    let (raw, gptx, cli) = result?;
    let (g50, g90) = median_p90(&gptx);
    let (c50, c90) = median_p90(&cli);
    let (r50, r90) = median_p90(&raw);
    if json_out {
        println!(
            "{}",
            json!({"samples": n, "gptx_step_ms": {"p50": g50, "p90": g90},
                   "sandbox_exec_ms": {"p50": r50, "p90": r90},
                   "docker_exec_cli_ms": {"p50": c50, "p90": c90}, "ratio_p50": g50 / c50})
        );
    } else {
        println!("per-step overhead of `true`, {n} interleaved samples each, one container:");
        println!(
            "  gptx step (bash tool, trace, git snapshot)  p50 {g50:7.2} ms   p90 {g90:7.2} ms"
        );
        println!(
            "  gptx sandbox exec alone (no recording)      p50 {r50:7.2} ms   p90 {r90:7.2} ms"
        );
        println!(
            "  docker exec <c> true (docker CLI)           p50 {c50:7.2} ms   p90 {c90:7.2} ms"
        );
        println!("  ratio gptx step / docker exec at p50: {:.3}", g50 / c50);
    }
    Ok(())
}
