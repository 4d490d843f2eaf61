//! The `exec:<command>` agent: any external program speaking SPEC §8's JSON-lines protocol on its stdin and stdout, its stderr kept for the trace.
//!
//! harness → agent: `task`, `result`, `stop`, `done`; agent → harness: `call`. A line that is not a
//! call becomes a step whose tool call is refused with `bad_request`, so the agent hears about it
//! and a stream of garbage runs into `max_steps`. An agent that exits ends its stage (and the run's
//! later stages) as an agent error; one that goes silent is ended by the stage's wall budget.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::agent::confine;
use crate::agent::tools::{RawCall, ToolError};
use crate::agent::{Agent, AgentError, StageTask, Turn, Verdict};

/// Longest line accepted from the agent (a `write_file` of a big file fits).
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// Stderr kept between two drains; beyond it the oldest is dropped and counted.
const STDERR_KEEP: usize = 256 * 1024;
/// How long a stopped stage waits for a call the agent may have sent before it heard of the stop.
const STRAY_WAIT: Duration = Duration::from_secs(2);
/// How long one message may wait for the agent to read its input.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a finished agent gets to exit after `done` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Stderr {
    text: String,
    dropped: u64,
}

/// A running external agent.
pub(crate) struct ExecAgent {
    command: String,
    /// The agent's HOME, removed with it.
    _home: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Stderr>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// The id of the call whose result is owed.
    pending: Option<Value>,
    /// Set once the agent exited or broke its pipe: every later stage ends at once.
    gone: Option<String>,
    /// The line being read.
    partial: Vec<u8>,
}

/// The uid and gid an `exec:` agent runs as when gptx runs as root: `nobody`.
pub(crate) const AGENT_UID: u32 = 65534;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A fresh HOME for the agent, its own when it runs as [`AGENT_UID`].
fn scratch_home() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("gptx-agent-").tempdir()?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(dir.path(), Some(AGENT_UID), Some(AGENT_UID))?;
    }
    Ok(dir)
}

/// `sh -c <command>` with a cleared environment: PATH, LANG, LC_ALL and TZ when set, the scratch
/// `home`, `GPTX_PROTOCOL=1` and the variables named in `pass_env`; stdio piped, its own process
/// group, killed on drop.
fn agent_command(command: &str, pass_env: &[String], home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .env("HOME", home)
        .env("GPTX_PROTOCOL", "1");
    for name in ["LANG", "LC_ALL", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    for name in pass_env {
        match std::env::var_os(name) {
            Some(v) => {
                cmd.env(name, v);
            }
            None => tracing::warn!("--agent-env {name}: gptx has no such variable"),
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that everything it started goes when it goes.
        .process_group(0);
    cmd
}

/// Keeps the agent from what it must not read: when gptx runs as root, the uid and gid of
/// [`AGENT_UID`]; else its own namespaces ([`confine`]), unless the user opted out. The report
/// explains a failed spawn of a confined agent.
fn isolate(
    cmd: &mut tokio::process::Command,
    home: &Path,
    cache: &Path,
) -> Result<Option<confine::Report>, String> {
    if rustix::process::geteuid().is_root() {
        // The standard library also drops root's supplementary groups (setgroups) before setuid.
        cmd.uid(AGENT_UID).gid(AGENT_UID);
        return Ok(None);
    }
    // Before any agent starts: a process of the same uid can neither ptrace gptx nor read its memory.
    confine::protect_harness().map_err(|e| format!("making gptx non-dumpable: {e}"))?;
    if confine::opted_out() {
        tracing::warn!(
            "{}=1: the exec: agent runs unconfined, with gptx's uid: it can read the hidden data, other runs and the engine's socket",
            confine::OPT_OUT
        );
        return Ok(None);
    }
    let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
    let hidden = confine::secret_paths(cache);
    confine::install(cmd.as_std_mut(), home, &cwd, &hidden)
        .map(Some)
        .map_err(|e| format!("preparing the agent's confinement: {e}"))
}

/// Collects the agent's stderr into `sink`, keeping its last [`STDERR_KEEP`] bytes.
fn read_stderr(err: ChildStderr, sink: Arc<Mutex<Stderr>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = sink.lock().expect("stderr lock");
            s.text.push_str(&line);
            s.text.push('\n');
            if s.text.len() > STDERR_KEEP {
                let mut cut = s.text.len() - STDERR_KEEP;
                while !s.text.is_char_boundary(cut) {
                    cut += 1;
                }
                s.dropped += cut as u64;
                s.text.drain(..cut);
            }
        }
    })
}

impl ExecAgent {
    /// Starts `sh -c <command>` in the current directory, without the harness's privileges or
    /// environment: a cleared environment ([`agent_command`]), and when gptx runs as root, the uid
    /// and gid of [`AGENT_UID`] (`nobody`), which cannot read the world cache's hidden data or
    /// other runs; without root, confined in namespaces of its own where `cache`, the runs
    /// directories, the runtime directory and the engine's socket are empty and everything else
    /// read-only ([`confine`]). A host without unprivileged user namespaces is an error, unless
    /// `GPTX_UNCONFINED_AGENTS=1`.
    pub fn spawn(command: &str, pass_env: &[String], cache: &Path) -> Result<Self, AgentError> {
        let fail = |message: String| AgentError {
            agent: format!("exec:{command}"),
            message,
        };
        // The binary dies on SIGPIPE (for `gptx show | head`); an agent that closes its input must
        // be an error we report, not the end of gptx.
        // SAFETY: sets a process-wide disposition to "ignore"; no handler code runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let home =
            scratch_home().map_err(|e| fail(format!("a scratch home for the agent: {e}")))?;
        let mut cmd = agent_command(command, pass_env, home.path());
        let report = isolate(&mut cmd, home.path(), cache).map_err(fail)?;
        let mut child = cmd.spawn().map_err(|e| {
            fail(match &report {
                Some(r) => format!("cannot start `sh -c {command}`: {}", r.explain(&e)),
                None => format!("cannot start `sh -c {command}`: {e}"),
            })
        })?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        let stderr_reader = child.stderr.take().map(|e| read_stderr(e, stderr.clone()));
        Ok(Self {
            command: command.into(),
            _home: home,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
            stderr_reader,
            pending: None,
            gone: None,
            partial: Vec::new(),
        })
    }

    fn error(&self, message: impl Into<String>) -> AgentError {
        AgentError {
            agent: self.spec(),
            message: message.into(),
        }
    }

    /// Why the agent is gone: its exit status when it has one.
    fn gone_reason(&mut self, what: &str) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("the agent {what} and exited ({status})"),
            _ => format!("the agent {what}"),
        }
    }

    async fn send(&mut self, msg: &Value) -> Result<(), AgentError> {
        if let Some(why) = &self.gone {
            return Err(self.error(why.clone()));
        }
        let mut line = msg.to_string();
        line.push('\n');
        let res = match self.stdin.as_mut() {
            Some(w) => {
                let write = async {
                    w.write_all(line.as_bytes()).await?;
                    w.flush().await
                };
                match tokio::time::timeout(SEND_TIMEOUT, write).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::other(format!(
                        "nothing read for {} s",
                        SEND_TIMEOUT.as_secs()
                    ))),
                }
            }
            None => Err(std::io::Error::other("stdin closed")),
        };
        if let Err(e) = res {
            let why = self.gone_reason(&format!("stopped reading its input ({e})"));
            self.gone = Some(why.clone());
            return Err(self.error(why));
        }
        Ok(())
    }

    /// One line from the agent: Ok(None) at end of output. The line is built in `self.partial`, so
    /// a read cancelled by a deadline loses nothing.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        loop {
            let chunk = match self.stdout.fill_buf().await {
                Ok(c) => c,
                Err(e) => return Err(self.error(format!("reading the agent's output: {e}"))),
            };
            if chunk.is_empty() {
                let rest = std::mem::take(&mut self.partial);
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            // Past MAX_LINE only the head is kept (for the error); the rest is dropped.
            let room = (MAX_LINE + 1).saturating_sub(self.partial.len());
            self.partial.extend_from_slice(&chunk[..room.min(take)]);
            self.stdout.consume(take);
            if done {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }
}

impl ExecAgent {
    /// SIGKILL to the agent's process group (the agent and whatever it started).
    fn kill_group(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: a signal to a process group we created; no memory is involved.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for ExecAgent {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// What one line from the agent says (pure: unit-tested).
pub(crate) fn parse_line(line: &[u8]) -> (Option<Value>, Result<RawCall, String>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if line.len() > MAX_LINE {
        return (
            None,
            Err(format!("the line is longer than {MAX_LINE} bytes")),
        );
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, Err(format!("not JSON ({e})"))),
    };
    let id = v
        .get("id")
        .cloned()
        .filter(|i| i.is_string() || i.is_number());
    let expected = "expected {\"type\":\"call\",\"id\":s,\"tool\":s,\"args\":{...}}";
    if v.get("type").and_then(Value::as_str) != Some("call") {
        return (id, Err(format!("not a call: {expected}")));
    }
    if id.is_none() {
        return (
            None,
            Err(format!("a call needs a string \"id\": {expected}")),
        );
    }
    let Some(tool) = v.get("tool").and_then(Value::as_str) else {
        return (
            id,
            Err(format!("a call needs a string \"tool\": {expected}")),
        );
    };
    let args = v.get("args").cloned().unwrap_or(Value::Null);
    if !(args.is_object() || args.is_null()) {
        return (id, Err(format!("\"args\" must be an object: {expected}")));
    }
    (
        id,
        Ok(RawCall {
            tool: tool.into(),
            args,
            invalid: None,
        }),
    )
}

/// A shortened copy of a bad line for the trace.
fn head(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(1000)]);
    text.trim_end().to_string()
}

#[async_trait]
impl Agent for ExecAgent {
    fn spec(&self) -> String {
        format!("exec:{}", self.command)
    }

    /// Its own group (`process_group(0)`): the group's id is the pid of the process gptx started
    /// (the shell; for a confined agent, the parent that waits for it).
    fn process_group(&self) -> Option<u32> {
        self.child.id()
    }

    async fn begin_stage(&mut self, task: &StageTask) -> Result<(), AgentError> {
        self.pending = None;
        self.send(&json!({
            "type": "task",
            "stage": task.stage,
            "index": task.index,
            "instruction": task.instruction,
            "tools": task.tools,
            "limits": task.limits,
        }))
        .await
    }

    async fn next(&mut self) -> Result<Turn, AgentError> {
        if let Some(why) = &self.gone {
            return Err(self.error(why.clone()));
        }
        let line = loop {
            match self.read_line().await? {
                None => {
                    let why = self.gone_reason("closed its output");
                    self.gone = Some(why.clone());
                    return Err(self.error(why));
                }
                Some(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Some(l) => break l,
            }
        };
        let (id, parsed) = parse_line(&line);
        self.pending = Some(id.unwrap_or(Value::Null));
        Ok(Turn::Call(match parsed {
            Ok(call) => call,
            Err(why) => RawCall::invalid(why, json!({ "line": head(&line) })),
        }))
    }

    async fn observe(
        &mut self,
        _call: &RawCall,
        result: &Result<Value, ToolError>,
    ) -> Result<(), AgentError> {
        let id = self.pending.take().unwrap_or(Value::Null);
        let msg = match result {
            Ok(output) => json!({"type": "result", "id": id, "ok": true, "output": output}),
            Err(e) => json!({"type": "result", "id": id, "ok": false,
                             "error": {"code": e.code, "message": e.message}}),
        };
        self.send(&msg).await
    }

    async fn stopped(&mut self, reason: &str) {
        // The agent may already have sent its next call (it had its last result): answer it with an
        // error before the stop, so it does not run in the next stage.
        self.pending = None;
        if self.gone.is_none() {
            if let Ok(Ok(Some(line))) = tokio::time::timeout(STRAY_WAIT, self.read_line()).await {
                let (id, _) = parse_line(&line);
                let _ = self
                    .send(&json!({"type": "result", "id": id, "ok": false,
                        "error": {"code": "budget_exhausted",
                                  "message": format!("the stage ended ({reason}) before this call ran")}}))
                    .await;
            }
        }
        let _ = self.send(&json!({"type": "stop", "reason": reason})).await;
    }

    async fn done(&mut self, verdict: &Verdict) {
        let _ = self.send(&verdict.message()).await;
        self.stdin = None;
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.kill_group();
        }
        // Its last words: the stderr reader ends when the pipe closes.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    fn take_log(&mut self) -> Option<String> {
        let mut s = self.stderr.lock().expect("stderr lock");
        if s.text.is_empty() && s.dropped == 0 {
            return None;
        }
        let mut text = std::mem::take(&mut s.text);
        if s.dropped > 0 {
            text = format!("[{} bytes of stderr dropped]\n{text}", s.dropped);
            s.dropped = 0;
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_malformed_lines() {
        let (id, call) =
            parse_line(br#"{"type":"call","id":"c1","tool":"bash","args":{"cmd":"ls"}}"#);
        assert_eq!(id, Some(json!("c1")));
        assert_eq!(call.unwrap().tool, "bash");
        let (id, call) = parse_line(br#"{"type":"call","id":7,"tool":"submit"}"#);
        assert_eq!((id, call.unwrap().args), (Some(json!(7)), Value::Null));
        for (line, want, has_id) in [
            (&b"hello"[..], "not JSON", false),
            (br#"{"type":"result","id":"x"}"#, "not a call", true),
            (
                br#"{"type":"call","tool":"bash"}"#,
                "needs a string \"id\"",
                false,
            ),
            (
                br#"{"type":"call","id":"a"}"#,
                "needs a string \"tool\"",
                true,
            ),
            (
                br#"{"type":"call","id":"a","tool":"bash","args":[1]}"#,
                "must be an object",
                true,
            ),
        ] {
            let (id, call) = parse_line(line);
            assert!(
                call.unwrap_err().contains(want),
                "{}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(id.is_some(), has_id);
        }
    }
}
