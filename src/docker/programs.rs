//! The real scoring sandbox: each call of an agent's program in a fresh hardened container, removed when the call returns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;

use crate::config::suite::ScoringLimits;
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
    pub pids: u64,
    counter: AtomicU64,
    tmp_mb: u64,
}

impl DockerPrograms {
    pub fn new(
        docker: bollard::Docker,
        run_id: String,
        image: String,
        workspace_host: PathBuf,
        limits: ScoringLimits,
        pids: u64,
    ) -> Self {
        Self {
            docker,
            run_id,
            image,
            workspace_host,
            limits,
            pids,
            counter: AtomicU64::new(0),
            tmp_mb: DEFAULT_TMP_MB,
        }
    }

    /// The size of each scoring sandbox's `/tmp` (its root filesystem is read-only).
    pub(crate) fn with_tmp_mb(mut self, mb: u64) -> Self {
        self.tmp_mb = mb;
        self
    }
}

/// `/tmp` of a scoring sandbox unless the suite says otherwise.
pub(crate) const DEFAULT_TMP_MB: u64 = 256;

#[async_trait]
impl Programs for DockerPrograms {
    async fn run(&self, call: &ProgramCall) -> Result<ProgramRun, SandboxError> {
        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = DockerSandboxSpec {
            run_id: self.run_id.clone(),
            role: "scorer".into(),
            image: self.image.clone(),
            memory_bytes: (self.limits.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (self.limits.cpus * 1e9) as i64,
            pids: self.pids as i64,
            network: None,
            workspace_host: self.workspace_host.clone(),
            workspace_readonly: true,
            env: vec![],
            // Unique across every DockerPrograms of the run (a check and a grade may overlap).
            instance: Some(format!("{n}-{:06x}", rand::random::<u32>() & 0xff_ffff)),
            tmp_mb: self.tmp_mb,
            extra_hosts: vec![],
        };
        let sandbox = DockerSandbox::create(&self.docker, &spec).await?;
        let result = run_in(&sandbox, call).await;
        let removed = sandbox.remove().await;
        let mut run = result?;
        removed?;
        run.seconds = started.elapsed().as_secs_f64();
        Ok(run)
    }
}
