//! The real scoring sandbox: each call of an agent's program in a fresh hardened container, removed when the call returns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;

use crate::config::suite::{SandboxLimits, ScoringLimits};
use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec};
use crate::sandbox::programs::{run_in, ProgramCall, ProgramRun, Programs};
use crate::sandbox::{Sandbox, SandboxError};

/// Fresh hardened containers on the real engine, one per call.
pub struct DockerPrograms {
    pub docker: bollard::Docker,
    pub run_id: String,
    /// The image tag (the suite's image: the agent's programs run where they were built).
    pub image: String,
    /// The agent's workspace on the host, mounted read-only.
    pub workspace_host: PathBuf,
    pub limits: ScoringLimits,
    /// The agent's sandbox: each scoring sandbox takes its pids limit, the size of its `/tmp` (the
    /// root filesystem is read-only) and its GPUs (its programs are graded on the same).
    pub sandbox: SandboxLimits,
    counter: AtomicU64,
}

impl DockerPrograms {
    pub fn new(
        docker: bollard::Docker,
        run_id: String,
        image: String,
        workspace_host: PathBuf,
        limits: ScoringLimits,
        sandbox: SandboxLimits,
    ) -> Self {
        Self {
            docker,
            run_id,
            image,
            workspace_host,
            limits,
            sandbox,
            counter: AtomicU64::new(0),
        }
    }

    /// The `n`th call's sandbox: fresh, no network, the workspace read-only, the scoring limits,
    /// the agent's `/tmp` size and GPUs.
    fn spec(&self, n: u64) -> DockerSandboxSpec {
        DockerSandboxSpec {
            run_id: self.run_id.clone(),
            role: "scorer".into(),
            image: self.image.clone(),
            memory_bytes: (self.limits.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (self.limits.cpus * 1e9) as i64,
            pids: self.sandbox.pids as i64,
            network: None,
            workspace_host: self.workspace_host.clone(),
            workspace_readonly: true,
            env: vec![],
            // Unique across every DockerPrograms of the run (a check and a grade may overlap).
            instance: Some(format!("{n}-{:06x}", rand::random::<u32>() & 0xff_ffff)),
            tmp_mb: self.sandbox.tmp_mb,
            gpus: self.sandbox.gpus.clone(),
            extra_hosts: vec![],
        }
    }
}

#[async_trait]
impl Programs for DockerPrograms {
    async fn run(&self, call: &ProgramCall) -> Result<ProgramRun, SandboxError> {
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = self.spec(n);
        let sandbox = DockerSandbox::create(&self.docker, &spec).await?;
        let result = run_in(&sandbox, call).await;
        let removed = sandbox.remove().await;
        let mut run = result?;
        removed?;
        run.seconds = started.elapsed().as_secs_f64();
        Ok(run)
    }
}
