//! One tool call executed against the sandbox: output capture (inline head and tail, full output kept), files, checks, snapshots.

use super::*;

use crate::sandbox::MappedFiles;
use crate::trace::history::Mapped;
use crate::trace::{FULL_OUTPUT, INLINE_OUTPUT};
/// Most bytes `read_file` returns.
pub(crate) const READ_LIMIT: u64 = 1024 * 1024;
/// `write_file` contents larger than this are kept in `outputs/` and referenced from the event.
pub(crate) const INLINE_ARG: usize = 64 * 1024;

/// Captures one output stream: its inline head and tail in memory, and up to [`FULL_OUTPUT`] of it
/// written to `outputs/` as it arrives (only once it is longer than the inline part).
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
    file: Option<crate::trace::OutputWriter>,
}

impl Capture {
    fn push(&mut self, data: &[u8], outputs: &crate::trace::OutputStore) {
        let before = self.total;
        self.total += data.len() as u64;
        self.keep_inline(data);
        if self.truncated() {
            self.keep_whole(before, data, outputs);
        }
    }

    /// The head (the first [`INLINE_OUTPUT`] bytes) and the running tail.
    fn keep_inline(&mut self, data: &[u8]) {
        let room = INLINE_OUTPUT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        let half = INLINE_OUTPUT / 2;
        self.tail
            .extend_from_slice(&data[data.len().saturating_sub(half)..]);
        if self.tail.len() > half {
            self.tail.drain(..self.tail.len() - half);
        }
    }

    /// Writes `data` (the bytes after the first `before`) to `outputs/`, up to [`FULL_OUTPUT`].
    fn keep_whole(&mut self, before: u64, data: &[u8], outputs: &crate::trace::OutputStore) {
        let file = self.file.get_or_insert_with(|| {
            let mut w = outputs.writer();
            w.write(&self.head[..(before as usize).min(self.head.len())]);
            w
        });
        let take = (FULL_OUTPUT as u64).saturating_sub(before) as usize;
        file.write(&data[..take.min(data.len())]);
    }

    fn truncated(&self) -> bool {
        self.total > INLINE_OUTPUT as u64
    }

    /// What the agent sees: all of it, or head + marker + tail.
    fn inline(&self) -> String {
        if !self.truncated() {
            return String::from_utf8_lossy(&self.head).into_owned();
        }
        let half = INLINE_OUTPUT / 2;
        format!(
            "{}\n[... {} bytes omitted by gptx; the full output is in the trace ...]\n{}",
            String::from_utf8_lossy(&self.head[..half]),
            self.total - (2 * half) as u64,
            String::from_utf8_lossy(&self.tail)
        )
    }

    /// The output's entry in `outputs/`, when it was longer than the inline part.
    fn keep(&mut self, stream: &str) -> Option<OutputRef> {
        let file = self.file.take()?;
        match file.finish() {
            Ok(sha) => Some(OutputRef {
                stream: stream.into(),
                sha256: sha,
                bytes_kept: self.total.min(FULL_OUTPUT as u64),
                bytes_total: self.total,
            }),
            Err(e) => {
                tracing::warn!("could not keep full {stream}: {e}");
                None
            }
        }
    }
}

/// A step's commit message: the call in one line, then the call as JSON (args cut at 4 KiB).
fn commit_message(step: u64, stage: &str, call: &RawCall) -> String {
    let mut args = serde_json::to_string(&call.args).unwrap_or_default();
    if args.len() > 4096 {
        let mut cut = 4096;
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        args.truncate(cut);
        args.push('…');
    }
    let summary: String = match call.args.get("cmd").or_else(|| call.args.get("path")) {
        Some(Value::String(s)) => s.lines().next().unwrap_or("").chars().take(72).collect(),
        _ => String::new(),
    };
    format!(
        "step {step} ({stage}): {} {summary}\n\n{{\"tool\":{},\"args\":{args}}}\n",
        call.tool,
        serde_json::to_string(&call.tool).unwrap_or_default()
    )
}

/// What came of one tool call, before it is recorded.
pub(super) struct StepResult {
    pub(super) result: Result<Value, ToolError>,
    pub(super) usage: Option<StepUsage>,
    pub(super) outputs: Vec<OutputRef>,
    pub(super) sandbox_seconds: f64,
    /// Args as recorded (large write_file contents replaced by a reference).
    pub(super) recorded_args: Value,
    /// The harness could not run the command as asked (its supervisor died or stopped answering):
    /// the agent's doing, or a sign that the engine went away.
    pub(super) harness_fault: Option<String>,
}

/// The sandbox's list of mapped files, as the history takes it.
fn known(m: MappedFiles) -> Mapped {
    Mapped::Known {
        paths: m.paths.into_iter().map(Into::into).collect(),
        inodes: m.inodes,
    }
}

impl Runner {
    /// Commits the workspace after a step, on a blocking thread (a snapshot reads files; one run's
    /// large workspace never stalls the others of a batch).
    pub(super) async fn snapshot(
        &mut self,
        step: u64,
        stage: &str,
        call: &RawCall,
    ) -> Option<String> {
        let mut history = self.history.take()?;
        let message = commit_message(step, stage, call);
        // A write through a shared mapping raises no file event: the sandbox names those files.
        let mapped = (self.sandbox.mapped_files().await).map_or_else(Mapped::Unknown, known);
        let joined = tokio::task::spawn_blocking(move || {
            history.note_mapped(mapped);
            let r = history.commit_if_changed(&message);
            (history, r)
        })
        .await;
        let result = match joined {
            Ok((mut history, r)) => {
                let note = history.take_walk_note();
                self.history = Some(history);
                r.map(|c| (c, note)).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the snapshot task failed: {e}")),
        };
        match result {
            Ok((c, note)) => {
                if let Some(w) = note {
                    self.warn(format!("step {step}: {w}"));
                }
                c
            }
            Err(e) => {
                self.warn(format!(
                    "step {step}: could not record the workspace in git: {e}"
                ));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute(
        &self,
        parsed: &Result<ToolCall, ToolError>,
        call: &RawCall,
        budgets: &Budgets,
        remaining_sandbox: f64,
        remaining_wall: Duration,
        stage: &Stage,
        scorer: &dyn Scorer,
    ) -> StepResult {
        let mut out = StepResult {
            result: Err(ToolError::bad_request("unreachable")),
            usage: None,
            outputs: Vec::new(),
            sandbox_seconds: 0.0,
            recorded_args: call.args.clone(),
            harness_fault: None,
        };
        let call_parsed = match parsed {
            Ok(c) => c,
            Err(e) => {
                out.result = Err(e.clone());
                return out;
            }
        };
        match call_parsed {
            ToolCall::Bash { cmd, timeout_s } => {
                let asked = timeout_s.unwrap_or(budgets.default_step_seconds);
                let secs = asked
                    .min(budgets.max_step_seconds)
                    .min(remaining_sandbox.max(0.001))
                    .min(remaining_wall.as_secs_f64().max(0.001));
                let req = ExecRequest {
                    cmd: cmd.clone(),
                    timeout: Duration::from_secs_f64(secs),
                    env: vec![],
                    stdin: None,
                };
                let (mut stdout, mut stderr) = (Capture::default(), Capture::default());
                let outputs = self.outputs.clone();
                let res = {
                    let mut sink = |s: OutStream, d: &[u8]| match s {
                        OutStream::Stdout => stdout.push(d, &outputs),
                        OutStream::Stderr => stderr.push(d, &outputs),
                    };
                    self.sandbox.exec(&req, &mut sink).await
                };
                let kept = [stdout.keep("stdout"), stderr.keep("stderr")];
                match res {
                    Ok(o) => {
                        out.sandbox_seconds = o.duration_ms / 1000.0;
                        out.outputs.extend(kept.into_iter().flatten());
                        let mut v = json!({
                            "exit_code": o.shell_code(),
                            "stdout": stdout.inline(),
                            "stderr": stderr.inline(),
                            "truncated": stdout.truncated() || stderr.truncated(),
                            "duration_ms": (o.duration_ms * 10.0).round() / 10.0,
                        });
                        if o.timed_out {
                            v["timed_out"] = json!(true);
                            v["timeout_s"] = json!(secs);
                        }
                        if o.oom_killed {
                            v["oom_killed"] = json!(true);
                        }
                        if let Some(sig) = o.signal {
                            v["signal"] = json!(sig);
                        }
                        if let Some(err) = &o.error {
                            v["error"] = json!(err);
                            out.harness_fault = Some(err.clone());
                        }
                        out.usage = Some(StepUsage {
                            cpu_seconds: o.cpu_seconds,
                            max_rss_kb: o.max_rss_kb,
                            container_cpu_seconds: o.container_cpu_seconds,
                            container_peak_bytes: o.container_peak_bytes,
                            timed_out: o.timed_out,
                            oom_killed: o.oom_killed,
                        });
                        out.result = Ok(v);
                    }
                    Err(e) => out.result = Err(ToolError::new("sandbox_error", e.to_string())),
                }
            }
            ToolCall::ReadFile { path } => {
                out.result = match self.sandbox.read_file(path, READ_LIMIT) {
                    Ok((bytes, size)) => {
                        let truncated = size > bytes.len() as u64;
                        Ok(file_content(&bytes, truncated, size))
                    }
                    Err(e) => Err(sandbox_tool_error(e)),
                }
            }
            ToolCall::WriteFile { path, content } => {
                if content.len() > INLINE_ARG {
                    if let Ok(sha) = self.outputs.put(content) {
                        out.recorded_args["content"] =
                            json!(format!("[{} bytes, kept in outputs/{sha}]", content.len()));
                        out.recorded_args["content_sha256"] = json!(sha);
                    }
                }
                out.result = match self.sandbox.write_file(path, content) {
                    Ok(n) => Ok(json!({"bytes_written": n})),
                    Err(e) => Err(sandbox_tool_error(e)),
                }
            }
            ToolCall::Check { rebuild } => {
                let req = CheckRequest {
                    rebuild: *rebuild,
                    remaining_sandbox_seconds: remaining_sandbox.max(0.0),
                };
                match scorer.check_with(&self.score_context(stage), &req).await {
                    Ok(c) => {
                        out.sandbox_seconds = c.sandbox_seconds;
                        out.result = Ok(c.output);
                    }
                    Err(e) => out.result = Err(e),
                }
            }
            ToolCall::Submit => out.result = Ok(json!({"submitted": true})),
        }
        out
    }
}

fn sandbox_tool_error(e: crate::sandbox::SandboxError) -> ToolError {
    match e {
        crate::sandbox::SandboxError::Path(p) => p.into(),
        other => ToolError::new("sandbox_error", other.to_string()),
    }
}

/// A read_file result: UTF-8 text as is, anything else as base64.
fn file_content(bytes: &[u8], truncated: bool, size: u64) -> Value {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => Some(t),
        // A cut in the middle of a character at the very end is still text.
        Err(e) if truncated && e.error_len().is_none() => {
            Some(std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix"))
        }
        Err(_) => None,
    };
    match text {
        Some(t) => json!({"content": t, "truncated": truncated, "size": size}),
        None => json!({
            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
            "encoding": "base64",
            "truncated": truncated,
            "size": size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let (_dir, outputs) = store();
        let mut c = Capture::default();
        c.push(&vec![b'a'; INLINE_OUTPUT], &outputs);
        c.push(b"END", &outputs);
        assert!(c.truncated());
        let s = c.inline();
        assert!(s.starts_with("aaaa") && s.ends_with("aEND"), "{s:.10}");
        assert!(s.contains("3 bytes omitted"));
        let mut small = Capture::default();
        small.push(b"hi", &outputs);
        assert_eq!(small.inline(), "hi");
        assert!(!small.truncated() && small.keep("stdout").is_none());
    }

    fn store() -> (tempfile::TempDir, crate::trace::OutputStore) {
        let dir = tempfile::tempdir().unwrap();
        let outputs = crate::trace::OutputStore::new(dir.path());
        (dir, outputs)
    }

    #[test]
    fn capture_keeps_the_whole_output_in_outputs() {
        let (_dir, outputs) = store();
        let mut c = Capture::default();
        let mut whole = vec![b'a'; INLINE_OUTPUT];
        c.push(&whole, &outputs);
        c.push(b"END", &outputs);
        whole.extend_from_slice(b"END");
        let kept = c.keep("stdout").unwrap();
        assert_eq!(std::fs::read(outputs.path(&kept.sha256)).unwrap(), whole);
        let n = whole.len() as u64;
        assert_eq!((kept.bytes_kept, kept.bytes_total), (n, n));
    }

    #[test]
    fn capture_keeps_the_first_full_output_bytes_and_counts_the_rest() {
        let (_dir, outputs) = store();
        let mut c = Capture::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(FULL_OUTPUT >> 20) + 3 {
            c.push(&chunk, &outputs);
        }
        c.push(b"tail!", &outputs);
        assert!(c.inline().ends_with("tail!"));
        let kept = c.keep("stdout").unwrap();
        assert_eq!(kept.bytes_kept, FULL_OUTPUT as u64);
        assert_eq!(kept.bytes_total, FULL_OUTPUT as u64 + (3 << 20) + 5);
        let on_disk = std::fs::metadata(outputs.path(&kept.sha256)).unwrap().len();
        assert_eq!(on_disk, FULL_OUTPUT as u64);
    }

    #[test]
    fn binary_files_come_back_as_base64() {
        let v = file_content(&[0xff, 0x00], false, 2);
        assert_eq!(v["encoding"], "base64");
        let v = file_content("é".as_bytes()[..1].as_ref(), true, 2);
        assert_eq!(v["content"], "");
        assert_eq!(v["truncated"], true);
    }
}
