//! The scoring sandbox: runs an agent's program (`bin/tokenize`, `bin/lm`) on hidden input, each call in a fresh container.
//!
//! A scorer never runs the agent's code in the agent's own sandbox: every call gets a new container
//! (`gptx.role=scorer`) with no network, the workspace mounted read-only and the suite's scoring limits,
//! the hidden input on stdin only, and is removed when the call returns. What comes back is bytes
//! (stdout, the tail of stderr) and an [`ExecOutcome`]; the scorers parse them and nothing else reaches
//! the run. [`DockerPrograms`] is the real backend; tests may implement [`Programs`] with a closure.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::docker::sandbox::{DockerSandbox, DockerSandboxSpec};
use crate::sandbox::{ExecOutcome, ExecRequest, OutStream, Sandbox, SandboxError};

/// Most stdout a scored program may print; beyond it the output is cut and the call reported as such.
pub const MAX_STDOUT: usize = 512 * 1024 * 1024;
/// Bytes of stderr kept (the tail) for error messages.
pub const STDERR_TAIL: usize = 4096;

/// Limits of one scoring call (SPEC §5), from the suite's `[scoring]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringLimits {
    /// Memory of a scoring sandbox.
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Wall time of one call (one `score`, one `next` batch, one `encode`...).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Random positions at which `next` is checked against `score` (SPEC §3, K).
    #[serde(default = "default_k")]
    pub positions: usize,
    /// The largest `vocab_size` a tokenizer may declare.
    #[serde(default = "default_vocab")]
    pub max_vocab_size: u64,
}

fn default_memory() -> u64 {
    2048
}
fn default_cpus() -> f64 {
    1.0
}
fn default_timeout() -> f64 {
    300.0
}
fn default_k() -> usize {
    64
}
fn default_vocab() -> u64 {
    32768
}

impl Default for ScoringLimits {
    fn default() -> Self {
        Self {
            memory_mb: default_memory(),
            cpus: default_cpus(),
            timeout_seconds: default_timeout(),
            positions: default_k(),
            max_vocab_size: default_vocab(),
        }
    }
}

/// One call of an agent's program.
#[derive(Debug, Clone)]
pub struct ProgramCall {
    /// What the call is, for messages (`score`, `next`, `encode`).
    pub label: String,
    /// The command line, run by bash in `/workspace` (e.g. `./bin/lm score`).
    pub cmd: String,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// The call reads hidden data: its stderr is never put into a message (it could carry hidden
    /// text into the trace, the reasons and what the agent is told).
    pub hidden: bool,
}

/// What one call gave back.
#[derive(Debug, Clone, Default)]
pub struct ProgramRun {
    pub stdout: Vec<u8>,
    /// Stdout bytes printed in all (more than `stdout.len()` when cut at [`MAX_STDOUT`]).
    pub stdout_total: u64,
    /// The last [`STDERR_TAIL`] bytes of stderr, lossily decoded.
    pub stderr_tail: String,
    pub outcome: ExecOutcome,
    /// Wall time of the whole call, container start and removal included.
    pub seconds: f64,
    /// Wall time of the program alone, as the in-sandbox supervisor measured it.
    pub program_seconds: f64,
}

impl ProgramRun {
    /// Why the call failed as a process (timeout, signal, non-zero exit, output cut), if it did.
    pub fn failure(&self, call: &ProgramCall) -> Option<String> {
        let o = &self.outcome;
        let stderr = if call.hidden {
            if self.stderr_tail.trim().is_empty() {
                String::new()
            } else {
                "; its stderr is not shown (the call ran on hidden data)".to_string()
            }
        } else if self.stderr_tail.trim().is_empty() {
            String::new()
        } else {
            format!("; stderr ends: {}", one_line(&self.stderr_tail, 300))
        };
        if o.timed_out {
            return Some(format!(
                "{} did not finish within {:.0} s (timeout){stderr}",
                call.label,
                call.timeout.as_secs_f64()
            ));
        }
        if o.oom_killed {
            return Some(format!(
                "{} ran out of memory (killed by the OOM killer){stderr}",
                call.label
            ));
        }
        if let Some(e) = &o.error {
            return Some(format!("{}: {e}{stderr}", call.label));
        }
        if self.stdout_total > self.stdout.len() as u64 {
            return Some(format!(
                "{} printed {} bytes, over the {} MiB limit",
                call.label,
                self.stdout_total,
                MAX_STDOUT >> 20
            ));
        }
        match (o.exit_code, o.signal) {
            (Some(0), _) => None,
            (Some(127), _) => Some(format!(
                "{}: command not found (exit 127){stderr}",
                call.label
            )),
            (Some(c), _) => Some(format!("{} exited with code {c}{stderr}", call.label)),
            (None, Some(s)) => Some(format!("{} was killed by signal {s}{stderr}", call.label)),
            (None, None) => Some(format!("{} ended without an exit status", call.label)),
        }
    }
}

/// The tail of `s` on one line, at most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = flat.chars().count();
    if n <= max {
        flat
    } else {
        let tail: String = flat.chars().skip(n - max).collect();
        format!("…{tail}")
    }
}

/// Runs agent programs for scorers.
#[async_trait]
pub trait Programs: Send + Sync {
    /// Runs one call in a fresh scoring sandbox. `Err` only when the sandbox itself could not be
    /// made or driven (a harness problem); a program that misbehaves is an `Ok` with its outcome.
    async fn run(&self, call: &ProgramCall) -> Result<ProgramRun, SandboxError>;
}

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
    pub fn with_tmp_mb(mut self, mb: u64) -> Self {
        self.tmp_mb = mb;
        self
    }
}

/// `/tmp` of a scoring sandbox unless the suite says otherwise.
pub const DEFAULT_TMP_MB: u64 = 256;

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

/// Runs `call` in an existing sandbox, collecting stdout (capped) and the tail of stderr.
pub async fn run_in(sandbox: &dyn Sandbox, call: &ProgramCall) -> Result<ProgramRun, SandboxError> {
    let started = Instant::now();
    let req = ExecRequest {
        cmd: call.cmd.clone(),
        timeout: call.timeout,
        env: vec![],
        stdin: Some(call.stdin.clone()),
    };
    let mut stdout = Vec::new();
    let mut total = 0u64;
    let mut stderr: Vec<u8> = Vec::new();
    let outcome = {
        let mut sink = |s: OutStream, d: &[u8]| match s {
            OutStream::Stdout => {
                total += d.len() as u64;
                let room = MAX_STDOUT.saturating_sub(stdout.len());
                stdout.extend_from_slice(&d[..d.len().min(room)]);
            }
            OutStream::Stderr => {
                stderr.extend_from_slice(d);
                if stderr.len() > 2 * STDERR_TAIL {
                    stderr.drain(..stderr.len() - STDERR_TAIL);
                }
            }
        };
        sandbox.exec(&req, &mut sink).await?
    };
    let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL)..];
    Ok(ProgramRun {
        stdout,
        stdout_total: total,
        stderr_tail: String::from_utf8_lossy(tail).into_owned(),
        program_seconds: outcome.duration_ms / 1000.0,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> ProgramCall {
        ProgramCall {
            label: "score".into(),
            cmd: "./bin/lm score".into(),
            stdin: vec![],
            timeout: Duration::from_secs(5),
            hidden: false,
        }
    }

    #[test]
    fn failures_name_the_cause() {
        let mut r = ProgramRun {
            outcome: ExecOutcome {
                exit_code: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(r.failure(&call()), None);
        r.outcome.exit_code = Some(1);
        r.stderr_tail = "Traceback\n  ValueError: boom\n".into();
        assert_eq!(
            r.failure(&call()).unwrap(),
            "score exited with code 1; stderr ends: Traceback ValueError: boom"
        );
        r.outcome.timed_out = true;
        assert!(r.failure(&call()).unwrap().contains("within 5 s (timeout)"));
        assert_eq!(one_line("abcdef", 3), "…def");
    }
}
