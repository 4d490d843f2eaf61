//! The sandbox seam: one trait for "run this command / touch this file in the agent's box", two backends.
//!
//! Imported by `agent`, `stages`, `runner`, `docker` and `cli`; imports `config` and `trace`. The
//! Docker backends live in `docker/`.
//!
//! `DockerSandbox` (in `docker/sandbox.rs`) is the real one (bollard, a long-lived supervisor inside the
//! container);
//! [`fake::RecordingSandbox`] records calls and answers from a script, for unit tests of the runner.
//! [`gpus::list`] asks a sandbox which GPUs it sees (`nvidia-smi`, a harness command, not the agent's).

pub mod fake;
pub mod gpus;
pub mod paths;
pub mod programs;
pub mod quota;

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use paths::{PathError, WorkspacePath, WorkspaceRoot, WORKSPACE};

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutStream {
    Stdout,
    Stderr,
}

/// One command to run in the sandbox.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub cmd: String,
    pub timeout: std::time::Duration,
    pub env: Vec<(String, String)>,
    /// The command's standard input (None: `/dev/null`).
    pub stdin: Option<Vec<u8>>,
}

/// What happened to a command. Output itself goes through the sink passed to [`Sandbox::exec`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// Exit code, when the process exited (not killed by a signal).
    pub exit_code: Option<i32>,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The container's OOM killer fired during the command.
    pub oom_killed: bool,
    pub duration_ms: f64,
    /// User+system CPU seconds of the command's process tree (rusage of reaped children).
    pub cpu_seconds: f64,
    /// Largest resident set of any process of the command, in KiB.
    pub max_rss_kb: u64,
    /// CPU seconds the whole container used meanwhile (cgroup), when readable.
    pub container_cpu_seconds: Option<f64>,
    /// Peak memory of the container so far (cgroup), when readable.
    pub container_peak_bytes: Option<u64>,
    /// Set when the harness could not run the command as asked (e.g. the supervisor died).
    pub error: Option<String>,
}

impl ExecOutcome {
    /// The exit code as a shell would report it (128+signal when killed).
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }
}

/// Why a sandbox operation failed as a whole (as opposed to a command failing inside it).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("sandbox {what}: {message}")]
    Other { what: &'static str, message: String },
}

impl SandboxError {
    pub fn other(what: &'static str, message: impl Into<String>) -> Self {
        Self::Other {
            what,
            message: message.into(),
        }
    }
}

/// Receives output as it streams.
/// What [`Sandbox::end_stage`] found and killed.
/// Workspace files some process of the agent could write without a file event: by name
/// (workspace-relative) and by (device, inode), since a name may be gone while the file has others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedFiles {
    pub paths: Vec<String>,
    pub inodes: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Processes of the agent still running when the stage ended.
    pub killed: u64,
    /// Some of their command lines, for the integrity ledger.
    pub commands: Vec<String>,
    /// Lines from the in-sandbox supervisor that were not its protocol, during the stage.
    pub bad_lines: u64,
}

pub type OutputSink<'a> = &'a mut (dyn FnMut(OutStream, &[u8]) + Send);

/// The agent's box: commands, files, network, teardown.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// A short id for messages and traces.
    fn id(&self) -> &str;

    /// The workspace as the host sees it (for snapshots and file tools).
    fn workspace(&self) -> &WorkspaceRoot;

    /// Runs `bash -c cmd` in `/workspace`, streaming output into `sink`; kills the process tree at the timeout.
    async fn exec(
        &self,
        req: &ExecRequest,
        sink: OutputSink<'_>,
    ) -> Result<ExecOutcome, SandboxError>;

    /// Joins (Some) or leaves every network (None): network `none` is "no network but loopback".
    async fn set_network(&self, network: Option<&str>) -> Result<(), SandboxError>;

    /// Removes the sandbox and everything it holds but the workspace. Safe to call twice.
    async fn remove(&self) -> Result<(), SandboxError>;

    /// Ends a stage: every process of the agent in the sandbox is killed, and none is left when this
    /// returns Ok. The count is of the agent's own processes (the command supervisor not counted).
    async fn end_stage(&self) -> Result<Swept, SandboxError> {
        Ok(Swept::default())
    }

    /// The workspace files that a live process of the agent maps shared and writable or holds open
    /// for writing: a write through such a mapping raises no file event, so a snapshot looks at them.
    /// Err when that cannot be known (a process whose maps cannot be read), with why.
    async fn mapped_files(&self) -> Result<MappedFiles, String> {
        Ok(MappedFiles::default())
    }

    /// Why the machinery behind the sandbox (the engine) is gone, when it is: asked after a
    /// sandbox operation failed, to tell a lost engine from a failed command.
    async fn engine_lost(&self) -> Option<String> {
        None
    }

    /// Reads a workspace file, confined to the workspace.
    fn read_file(&self, path: &WorkspacePath, limit: u64) -> Result<(Vec<u8>, u64), SandboxError> {
        Ok(self.workspace().read(path, limit)?)
    }

    /// Writes a workspace file, confined to the workspace.
    fn write_file(&self, path: &WorkspacePath, data: &[u8]) -> Result<u64, SandboxError> {
        Ok(self.workspace().write(path, data)?)
    }

    /// Copies a host file into the workspace (upload).
    fn upload(&self, host: &Path, dest: &WorkspacePath) -> Result<u64, SandboxError> {
        let data = std::fs::read(host).map_err(|e| PathError::Io {
            path: host.display().to_string(),
            source: e,
        })?;
        self.write_file(dest, &data)
    }

    /// Copies a workspace file out to a host path inside `host_root` (download); both sides are confined.
    fn download(
        &self,
        src: &WorkspacePath,
        host_root: &WorkspaceRoot,
        dest: &WorkspacePath,
        limit: u64,
    ) -> Result<u64, SandboxError> {
        let (data, size) = self.read_file(src, limit)?;
        if size > limit {
            return Err(SandboxError::other(
                "download",
                format!(
                    "{} is {size} bytes, over the {limit}-byte limit",
                    src.rel().display()
                ),
            ));
        }
        Ok(host_root.write(dest, &data)?)
    }
}
