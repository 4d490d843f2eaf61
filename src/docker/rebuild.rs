//! The selfhost rebuild on the real engine: a fresh network, web server (its own request log) and sandbox for `bootstrap.sh`, always torn down.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;

use crate::config::suite::SandboxLimits;
use crate::config::suite::ScoringLimits;
use crate::docker::engine;
use crate::docker::programs::DockerPrograms;
use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec, SANDBOX_GID, SANDBOX_UID};
use crate::docker::web::WebServer;
use crate::sandbox::quota::{self, Quota};
use crate::sandbox::{ExecRequest, OutStream, Sandbox};
use crate::stages::selfhost::{FreshWorkspace, RebuildDisk, RebuildJob, RebuildRun, Rebuilder};
use crate::trace::rundir::RunDir;
use crate::world::World;

/// Bytes of each stream's tail kept in the score (the whole output goes to the log file).
const TAIL: usize = 4096;

/// Rebuilds in containers labelled with the run id (role `agent`, instance `selfhost`).
pub(crate) struct DockerRebuilder {
    pub docker: Docker,
    pub run_id: String,
    pub image: String,
    /// The world's web server's image (`base`: the agent's image need not have Python).
    pub web_image: String,
    pub world: Option<Arc<World>>,
    pub sandbox: SandboxLimits,
    pub scoring: ScoringLimits,
}

/// The rebuild workspace's loop-mounted disk.
struct WorkspaceDisk(Quota);

impl RebuildDisk for WorkspaceDisk {
    fn release(self: Box<Self>, keep: bool) -> Result<(), String> {
        self.0.release(keep).map_err(|e| e.to_string())
    }
}

fn tail(data: &[u8]) -> String {
    let cut = data.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&data[cut..]).into_owned()
}

impl DockerRebuilder {
    async fn run_in(
        &self,
        job: &RebuildJob,
        network: Option<String>,
        hosts: Vec<String>,
    ) -> Result<RebuildRun, String> {
        let workspace = &job.workspace;
        // The agent's profile and limits, GPUs included.
        let spec = DockerSandboxSpec {
            network,
            workspace_host: workspace.to_path_buf(),
            workspace_readonly: false,
            instance: Some(job.instance.clone()),
            extra_hosts: hosts,
            ..DockerSandboxSpec::agent(&self.run_id, &self.image, &self.sandbox)
        };
        let sandbox = DockerSandbox::create(&self.docker, &spec)
            .await
            .map_err(|e| format!("creating the rebuild sandbox: {e}"))?;
        let req = ExecRequest {
            cmd: job.command.clone(),
            timeout: job.timeout,
            env: vec![],
            stdin: None,
        };
        let log_path = RunDir::new(job.dir.clone()).bootstrap_log();
        let mut log = std::fs::File::create(&log_path).ok();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let res = {
            let mut sink = |s: OutStream, d: &[u8]| {
                use std::io::Write;
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(d);
                }
                let buf = match s {
                    OutStream::Stdout => &mut out,
                    OutStream::Stderr => &mut err,
                };
                buf.extend_from_slice(d);
                if buf.len() > 4 * TAIL {
                    buf.drain(..buf.len() - TAIL);
                }
            };
            sandbox.exec(&req, &mut sink).await
        };
        let removed = sandbox.remove().await;
        let o = res.map_err(|e| format!("running bootstrap.sh: {e}"))?;
        if let Err(e) = removed {
            tracing::warn!("removing the rebuild sandbox: {e}");
        }
        Ok(RebuildRun {
            exit_code: o.shell_code(),
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            seconds: o.duration_ms / 1000.0,
            cpu_seconds: o.container_cpu_seconds.unwrap_or(o.cpu_seconds),
            stdout_tail: tail(&out),
            stderr_tail: tail(&err),
            log: log.map(|_| log_path.display().to_string()),
            requests: None,
            programs: Arc::new(DockerPrograms::new(
                self.docker.clone(),
                self.run_id.clone(),
                self.image.clone(),
                workspace.to_path_buf(),
                self.scoring.clone(),
                self.sandbox.clone(),
            )),
        })
    }
}

#[async_trait]
impl Rebuilder for DockerRebuilder {
    /// Owned by the sandbox user and on its own disk of `disk_mb` when gptx runs as root; else open
    /// to all, on the host's disk.
    fn fresh_workspace(&self, dir: &Path, disk_mb: u64) -> Result<FreshWorkspace, String> {
        let rebuild = RunDir::new(dir.to_path_buf());
        let fresh = rebuild.workspace();
        let _ = std::fs::remove_dir_all(&fresh);
        let owner = rustix::process::geteuid()
            .is_root()
            .then_some((SANDBOX_UID, SANDBOX_GID));
        // The rebuild writes into a filesystem of the suite's size too, never the host's free space.
        // Where no disk can be mounted (no loop devices: an unprivileged container), the rebuild
        // goes on without one, as the run's own workspace does, and says so.
        let disk = match owner {
            Some(o) if quota::available() => {
                match Quota::mount(&fresh, &rebuild.workspace_image(), disk_mb, o) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        tracing::warn!(
                            "the rebuild's workspace has no disk limit ({disk_mb} MiB asked): {e}"
                        );
                        let _ = std::fs::remove_file(rebuild.workspace_image());
                        None
                    }
                }
            }
            _ => None,
        };
        std::fs::create_dir_all(&fresh)
            .and_then(|_| crate::docker::session::prepare_workspace(&fresh))
            .map_err(|e| format!("copying the recipe to {}: {e}", fresh.display()))?;
        Ok(FreshWorkspace {
            path: fresh,
            owner,
            disk: disk.map(|q| Box::new(WorkspaceDisk(q)) as Box<dyn RebuildDisk>),
        })
    }

    async fn rebuild(&self, job: &RebuildJob) -> Result<RebuildRun, String> {
        let world_dir = RunDir::new(job.dir.clone()).world();
        std::fs::create_dir_all(&world_dir)
            .and_then(|_| crate::docker::session::prepare_workspace(&world_dir))
            .map_err(|e| format!("{}: {e}", world_dir.display()))?;
        let Some(world) = &self.world else {
            return self.run_in(job, None, vec![]).await;
        };
        let net_name = format!("{}-world", job.instance);
        let net = engine::create_world_network(&self.docker, &self.run_id, &net_name)
            .await
            .map_err(|e| format!("creating the rebuild's world network: {e}"))?;
        let web = WebServer::start(
            &self.docker,
            &self.run_id,
            &self.web_image,
            world,
            &net,
            &world_dir,
            Some(&job.instance),
        )
        .await;
        let result = match &web {
            Ok(w) => self.run_in(job, Some(net.clone()), w.host_entries()).await,
            Err(e) => Err(format!("starting the rebuild's web server: {e}")),
        };
        if let Ok(w) = &web {
            for warning in w.remove().await {
                tracing::warn!("{warning}");
            }
        }
        if let Err(e) = self.docker.remove_network(&net).await {
            if !engine::is_not_found(&e) {
                tracing::warn!("removing network {net}: {e}");
            }
        }
        let mut run = result?;
        run.requests = std::fs::read_to_string(RunDir::new(job.dir.clone()).requests_log())
            .ok()
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64);
        Ok(run)
    }
}
