//! One tool call executed against the sandbox: output capture (inline head and tail, full output kept), files, checks, snapshots.

use super::*;

use crate::trace::{FULL_OUTPUT, INLINE_OUTPUT};
/// Most bytes `read_file` returns.
pub(crate) const READ_LIMIT: u64 = 1024 * 1024;
/// `write_file` contents larger than this are kept in `outputs/` and referenced from the event.
pub(crate) const INLINE_ARG: usize = 64 * 1024;

/// Captures one output stream: everything up to [`FULL_OUTPUT`], plus a running tail.
#[derive(Default)]
struct Capture {
    full: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

impl Capture {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = FULL_OUTPUT.saturating_sub(self.full.len());
        self.full.extend_from_slice(&data[..data.len().min(room)]);
        let half = INLINE_OUTPUT / 2;
        self.tail
            .extend_from_slice(&data[data.len().saturating_sub(half)..]);
        if self.tail.len() > half {
            self.tail.drain(..self.tail.len() - half);
        }
    }

    fn truncated(&self) -> bool {
        self.total > INLINE_OUTPUT as u64
    }

    /// What the agent sees: all of it, or head + marker + tail.
    fn inline(&self) -> String {
        if !self.truncated() {
            return String::from_utf8_lossy(&self.full).into_owned();
        }
        let half = INLINE_OUTPUT / 2;
        format!(
            "{}\n[... {} bytes omitted by gptx; the full output is in the trace ...]\n{}",
            String::from_utf8_lossy(&self.full[..half]),
            self.total - (2 * half) as u64,
            String::from_utf8_lossy(&self.tail)
        )
    }
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
        let message = format!(
            "step {step} ({stage}): {} {summary}\n\n{{\"tool\":{},\"args\":{args}}}\n",
            call.tool,
            serde_json::to_string(&call.tool).unwrap_or_default()
        );
        let joined = tokio::task::spawn_blocking(move || {
            let r = history.commit_if_changed(&message);
            (history, r)
        })
        .await;
        let result = match joined {
            Ok((history, r)) => {
                self.history = Some(history);
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the snapshot task failed: {e}")),
        };
        match result {
            Ok(c) => {
                if let Some(w) = self.history.as_mut().and_then(|h| h.take_walk_note()) {
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
                let mut stdout = Capture::default();
                let mut stderr = Capture::default();
                let res = {
                    let mut sink = |s: OutStream, d: &[u8]| match s {
                        OutStream::Stdout => stdout.push(d),
                        OutStream::Stderr => stderr.push(d),
                    };
                    self.sandbox.exec(&req, &mut sink).await
                };
                match res {
                    Ok(o) => {
                        out.sandbox_seconds = o.duration_ms / 1000.0;
                        for (name, cap) in [("stdout", &stdout), ("stderr", &stderr)] {
                            if cap.truncated() {
                                match self.outputs.put(&cap.full) {
                                    Ok(sha) => out.outputs.push(OutputRef {
                                        stream: name.into(),
                                        sha256: sha,
                                        bytes_kept: cap.full.len() as u64,
                                        bytes_total: cap.total,
                                    }),
                                    Err(e) => tracing::warn!("could not keep full {name}: {e}"),
                                }
                            }
                        }
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
        let mut c = Capture::default();
        c.push(&vec![b'a'; INLINE_OUTPUT]);
        c.push(b"END");
        assert!(c.truncated());
        let s = c.inline();
        assert!(
            s.starts_with("aaaa") && s.ends_with("aEND"),
            "{}",
            &s[s.len() - 10..]
        );
        assert!(s.contains("3 bytes omitted"));
        let mut small = Capture::default();
        small.push(b"hi");
        assert_eq!(small.inline(), "hi");
        assert!(!small.truncated());
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
