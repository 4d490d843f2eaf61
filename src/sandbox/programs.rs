//! The scoring sandbox: runs an agent's program (`bin/tokenize`, `bin/lm`) on hidden input, each call in a fresh container.
//!
//! A scorer never runs the agent's code in the agent's own sandbox: every call gets a new container
//! (`gptx.role=scorer`) with no network, the workspace mounted read-only and the suite's scoring limits,
//! the hidden input on stdin only, and is removed when the call returns. What comes back is bytes
//! (stdout, the tail of stderr) and an [`ExecOutcome`]; the scorers parse them and nothing else reaches
//! the run. `docker::programs::DockerPrograms` is the real backend; tests may implement [`Programs`] with a closure.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::sandbox::{ExecOutcome, ExecRequest, OutStream, Sandbox, SandboxError};

/// Most stdout a scored program may print; beyond it the output is cut and the call reported as such.
pub(crate) const MAX_STDOUT: usize = 512 * 1024 * 1024;
/// Bytes of stderr kept (the tail) for error messages.
pub(crate) const STDERR_TAIL: usize = 4096;

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

/// What is wrong with an output line serde could not read, without quoting it: serde's own message
/// can quote the line (`invalid type: string "…"`), which may be hidden text.
pub fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Data => "JSON, but a field is missing or of the wrong type",
        _ => "not JSON",
    }
}

/// `: ` and a quote of a program's output for a message, or nothing when the call read hidden data:
/// its output could carry hidden text into the trace, the reasons and what the agent is told.
pub fn quote(hidden: bool, what: impl FnOnce() -> String) -> String {
    if hidden {
        String::new()
    } else {
        format!(": {}", what())
    }
}

/// Runs agent programs for scorers.
#[async_trait]
pub trait Programs: Send + Sync {
    /// Runs one call in a fresh scoring sandbox. `Err` only when the sandbox itself could not be
    /// made or driven (a harness problem); a program that misbehaves is an `Ok` with its outcome.
    async fn run(&self, call: &ProgramCall) -> Result<ProgramRun, SandboxError>;
}

/// What a fake program prints, given its command line and its stdin.
#[cfg(test)]
pub(crate) type Answer = fn(&str, &[u8]) -> Vec<u8>;

/// A fake scoring sandbox for tests: every call exits 0 with `answer(command, stdin)` on stdout.
#[cfg(test)]
pub(crate) struct Answering(pub Answer);

#[cfg(test)]
#[async_trait]
impl Programs for Answering {
    async fn run(&self, call: &ProgramCall) -> Result<ProgramRun, SandboxError> {
        let stdout = (self.0)(&call.cmd, &call.stdin);
        Ok(ProgramRun {
            stdout_total: stdout.len() as u64,
            stdout,
            outcome: ExecOutcome {
                exit_code: Some(0),
                ..Default::default()
            },
            ..Default::default()
        })
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
