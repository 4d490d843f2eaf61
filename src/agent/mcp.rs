//! `gptx mcp`: an MCP server on stdio (JSON-RPC 2.0, written by hand) exposing the benchmark's tools for one run whose agent is the MCP client.
//!
//! The server and the run meet in [`McpAgent`]: `tools/call` sends the call through a channel to the
//! agent the runner drives and waits for its result. Stage instructions reach the client in the
//! server's `instructions` (the goal and the first stage) and in tool results: after `submit`, and
//! whenever a budget moved the run to the next stage, the result carries the next stage's instruction
//! or the run's final level.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::agent::tools::{RawCall, ToolError};
use crate::agent::{Agent, AgentError, StageTask, Turn, Verdict};

/// The MCP revision this server speaks when the client asks for one it does not know.
pub(crate) const PROTOCOL_VERSION: &str = "2025-03-26";
const KNOWN_VERSIONS: [&str; 3] = ["2024-11-05", "2025-03-26", "2025-06-18"];
/// How long `initialize` waits for the run to reach its first stage (image, world, sandbox).
const FIRST_STAGE_WAIT: Duration = Duration::from_secs(600);
/// How long a `submit` waits for the stage to be scored and the next to begin.
const NEXT_STAGE_WAIT: Duration = Duration::from_secs(7200);

/// Where the run stands, as the server tells the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Starting,
    Stage {
        index: usize,
        name: String,
        instruction: String,
    },
    /// A budget ended the stage; the next one has not begun.
    Stopped {
        index: usize,
        reason: String,
    },
    Done {
        level: String,
        bootstrap_index: f64,
        /// Which stages passed, and why the others did not.
        summary: String,
    },
}

type Pending = (RawCall, oneshot::Sender<Result<Value, ToolError>>);

/// The run's side: the agent the runner drives.
pub struct McpAgent {
    calls: mpsc::Receiver<Pending>,
    reply: Option<oneshot::Sender<Result<Value, ToolError>>>,
    phase: watch::Sender<Phase>,
}

/// The server's side.
#[derive(Clone)]
pub struct McpServer {
    calls: mpsc::Sender<Pending>,
    phase: watch::Receiver<Phase>,
    /// The stage index the client last heard of.
    seen: Arc<Mutex<Option<usize>>>,
}

/// A connected pair.
pub fn pair() -> (McpAgent, McpServer) {
    let (tx, rx) = mpsc::channel(1);
    let (ptx, prx) = watch::channel(Phase::Starting);
    (
        McpAgent {
            calls: rx,
            reply: None,
            phase: ptx,
        },
        McpServer {
            calls: tx,
            phase: prx,
            seen: Arc::new(Mutex::new(None)),
        },
    )
}

#[async_trait]
impl Agent for McpAgent {
    fn spec(&self) -> String {
        "mcp".into()
    }

    async fn begin_stage(&mut self, task: &StageTask) -> Result<(), AgentError> {
        self.phase.send_replace(Phase::Stage {
            index: task.index,
            name: task.stage.clone(),
            instruction: task.instruction.clone(),
        });
        Ok(())
    }

    async fn next(&mut self) -> Result<Turn, AgentError> {
        match self.calls.recv().await {
            Some((call, reply)) => {
                self.reply = Some(reply);
                Ok(Turn::Call(call))
            }
            None => Err(AgentError {
                agent: "mcp".into(),
                message: "the MCP client disconnected".into(),
            }),
        }
    }

    async fn observe(
        &mut self,
        _call: &RawCall,
        result: &Result<Value, ToolError>,
    ) -> Result<(), AgentError> {
        if let Some(r) = self.reply.take() {
            let _ = r.send(result.clone());
        }
        Ok(())
    }

    async fn stopped(&mut self, reason: &str) {
        let index = match &*self.phase.borrow() {
            Phase::Stage { index, .. } => *index,
            _ => 0,
        };
        self.phase.send_replace(Phase::Stopped {
            index,
            reason: reason.into(),
        });
    }

    async fn done(&mut self, verdict: &Verdict) {
        self.phase.send_replace(Phase::Done {
            level: verdict.level.clone(),
            bootstrap_index: verdict.bootstrap_index,
            summary: verdict.summary(),
        });
    }
}

/// Why the MCP client (process `client`) could read the world cache's hidden documents, if it
/// could: it runs as root, or as the cache's owner, or the cache is open to others. An MCP client
/// is the agent, and must run as an unprivileged user that cannot read `<cache>/worlds`.
pub fn client_warning(
    client: Option<rustix::process::Pid>,
    home: &crate::config::suite::Home,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let pid = client?.as_raw_nonzero().get();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let worlds = home.cache().join("worlds");
    let meta = std::fs::metadata(&worlds).ok();
    let readable = uid == 0
        || meta
            .as_ref()
            .is_some_and(|m| m.uid() == uid || m.mode() & 0o005 == 0o005);
    readable.then(|| {
        format!(
            "the MCP client (pid {pid}, uid {uid}) can read the world cache at {}, which holds the hidden test documents; run the client as an unprivileged user that cannot (gptx makes the cache root-only when it runs as root)",
            worlds.display()
        )
    })
}

/// Connections MCP over HTTP serves at once; more are answered 503 and closed.
pub const HTTP_CONNECTIONS: usize = 16;
/// How long an MCP HTTP connection may stay silent (between requests, or within one).
pub(crate) const HTTP_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A fresh token for MCP over HTTP: 128 random bits in hex.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Compares two tokens in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn tools() -> Vec<Value> {
    crate::agent::tools::schemas()
        .into_iter()
        .map(|t| json!({"name": t["name"], "description": t["description"], "inputSchema": t["parameters"]}))
        .collect()
}

/// What the client is told when the run moved on.
fn news(phase: &Phase) -> String {
    match phase {
        Phase::Stage {
            name, instruction, ..
        } => format!("Now stage {name}. Its instruction:\n\n{instruction}"),
        Phase::Done {
            level,
            bootstrap_index,
            summary,
        } => format!(
            "The run is over: level {level}, Bootstrap Index {bootstrap_index:.1}. {summary}. Further tool calls do nothing."
        ),
        Phase::Stopped { reason, .. } => format!("The stage ended: budget {reason} ran out."),
        Phase::Starting => "The run is starting.".into(),
    }
}

fn rpc_error(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

impl McpServer {
    /// Waits until `ready` holds for the phase, or `limit` passes; returns the phase then.
    async fn wait_for(&mut self, limit: Duration, ready: impl Fn(&Phase) -> bool) -> Phase {
        let _ = tokio::time::timeout(limit, self.phase.wait_for(|p| ready(p))).await;
        self.phase.borrow().clone()
    }

    /// The answer to one request (None for a notification).
    pub(crate) async fn handle(&mut self, msg: &Value) -> Option<Value> {
        let id = msg.get("id").cloned();
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let Some(id) = id else {
            return None; // notifications/initialized, cancelled, ...: nothing to answer
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let result = match method {
            "initialize" => {
                let asked = params["protocolVersion"]
                    .as_str()
                    .unwrap_or(PROTOCOL_VERSION);
                let version = if KNOWN_VERSIONS.contains(&asked) {
                    asked
                } else {
                    PROTOCOL_VERSION
                };
                let phase = self
                    .wait_for(FIRST_STAGE_WAIT, |p| !matches!(p, Phase::Starting))
                    .await;
                if let Phase::Stage { index, .. } = &phase {
                    *self.seen.lock().await = Some(*index);
                }
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "gptx", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": format!("{}\n\n{}", crate::agent::llm::system_prompt(), news(&phase)),
                })
            }
            "ping" => json!({}),
            "tools/list" => json!({"tools": tools()}),
            "tools/call" => self.call(&params).await,
            other => {
                return Some(rpc_error(
                    id,
                    -32601,
                    format!("method {other:?} is not supported (gptx serves tools only)"),
                ))
            }
        };
        Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    async fn call(&mut self, params: &Value) -> Value {
        let text_result = |text: String, error: bool| json!({"content": [{"type": "text", "text": text}], "isError": error});
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return text_result("tools/call needs a tool \"name\"".into(), true);
        };
        let args = params.get("arguments").cloned().unwrap_or(json!({}));
        let phase = self.phase.borrow().clone();
        if matches!(phase, Phase::Done { .. }) {
            return text_result(news(&phase), true);
        }
        // A budget may have moved the run on since the client last heard: say so first.
        let mut preface = String::new();
        if matches!(phase, Phase::Stopped { .. }) {
            preface = format!("{}\n", news(&phase));
        }
        let phase = self
            .wait_for(NEXT_STAGE_WAIT, |p| {
                matches!(p, Phase::Stage { .. } | Phase::Done { .. })
            })
            .await;
        if let Phase::Stage { index, .. } = &phase {
            let mut seen = self.seen.lock().await;
            if *seen != Some(*index) {
                preface.push_str(&format!("{}\n\n", news(&phase)));
                *seen = Some(*index);
            }
        }
        let (tx, rx) = oneshot::channel();
        if self
            .calls
            .send((RawCall::new(name, args), tx))
            .await
            .is_err()
        {
            return text_result("the run is over".into(), true);
        }
        let Ok(result) = rx.await else {
            // The stage ended before the call ran (a budget).
            let now = self.phase.borrow().clone();
            return text_result(
                format!("{preface}The call did not run. {}", news(&now)),
                true,
            );
        };
        let (mut text, error) = match &result {
            Ok(v) => (v.to_string(), false),
            Err(e) => (
                json!({"code": e.code, "message": e.message}).to_string(),
                true,
            ),
        };
        text = format!("{preface}{text}");
        if name == "submit" && !error {
            let before = *self.seen.lock().await;
            let next = self
                .wait_for(NEXT_STAGE_WAIT, |p| match p {
                    Phase::Stage { index, .. } => Some(*index) != before,
                    Phase::Done { .. } => true,
                    _ => false,
                })
                .await;
            if let Phase::Stage { index, .. } = &next {
                *self.seen.lock().await = Some(*index);
            }
            text.push_str(&format!("\n\n{}", news(&next)));
        }
        text_result(text, error)
    }

    /// Serves MCP's streamable HTTP transport on `listener` (loopback): `POST /mcp` with one
    /// JSON-RPC message, answered as `application/json` (202 for a notification); `GET` is 405 (no
    /// server-initiated stream). A request whose `Origin` is not a loopback address is refused (DNS
    /// rebinding). Runs until the task is dropped.
    /// Serves MCP's streamable HTTP at `/mcp`: every request must carry `token` (as `?token=` or
    /// `Authorization: Bearer`), at most [`HTTP_CONNECTIONS`] connections are served at once, and a
    /// connection that sends nothing for [`HTTP_READ_TIMEOUT`] is closed.
    pub async fn serve_http(self, listener: tokio::net::TcpListener, token: String) {
        let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS));
        let token: Arc<str> = token.into();
        while let Ok((mut sock, _)) = listener.accept().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let _ = sock
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                continue;
            };
            let mut server = self.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let _ = server.http_connection(sock, &token).await;
                drop(permit);
            });
        }
    }

    async fn http_connection(
        &mut self,
        mut sock: tokio::net::TcpStream,
        token: &str,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "client silent");
        loop {
            // One request per turn of the loop (keep-alive).
            let start = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = tokio::time::timeout(HTTP_READ_TIMEOUT, sock.read(&mut chunk))
                    .await
                    .map_err(|_| timed_out())??;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 1 << 20 {
                    return Ok(());
                }
            };
            let head = String::from_utf8_lossy(&buf[..start]).to_string();
            let mut lines = head.lines();
            let request = lines.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if len > 64 << 20 {
                return Ok(());
            }
            while buf.len() < start + len {
                let n = tokio::time::timeout(HTTP_READ_TIMEOUT, sock.read(&mut chunk))
                    .await
                    .map_err(|_| timed_out())??;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[start..start + len].to_vec();
            buf.drain(..start + len);
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let origin_ok = header("origin").is_none_or(|o| {
                let host = o
                    .split("://")
                    .nth(1)
                    .unwrap_or("")
                    .split(':')
                    .next()
                    .unwrap_or("");
                matches!(host, "127.0.0.1" | "localhost" | "[::1]")
            });
            let query_token = path
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="));
            let bearer =
                header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
            let token_ok = query_token.is_some_and(|t| crate::agent::mcp::same(t, token))
                || bearer.is_some_and(|t| crate::agent::mcp::same(&t, token));
            let (status, reply) = if !origin_ok {
                ("403 Forbidden", None)
            } else if !token_ok {
                ("401 Unauthorized", None)
            } else if path.split('?').next() != Some("/mcp") {
                ("404 Not Found", None)
            } else if method != "POST" {
                // GET (a server-initiated stream) and DELETE (ending a session) are not offered.
                ("405 Method Not Allowed", None)
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(msg) => match self.handle(&msg).await {
                        Some(r) => ("200 OK", Some(r)),
                        None => ("202 Accepted", None),
                    },
                    Err(e) => (
                        "400 Bad Request",
                        Some(rpc_error(Value::Null, -32700, format!("parse error: {e}"))),
                    ),
                }
            };
            let body = reply.map(|r| r.to_string()).unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nallow: POST\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
        }
    }

    /// Serves JSON-RPC lines from `input` to `output` until the input ends.
    pub async fn serve<R, W>(mut self, input: R, output: W)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut lines = tokio::io::BufReader::new(input).lines();
        let mut out = output;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let reply = match serde_json::from_str::<Value>(&line) {
                Ok(msg) => self.handle(&msg).await,
                Err(e) => Some(rpc_error(Value::Null, -32700, format!("parse error: {e}"))),
            };
            if let Some(r) = reply {
                let mut text = r.to_string();
                text.push('\n');
                if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_get_answers_and_notifications_none() {
        let (_agent, mut server) = pair();
        assert_eq!(
            server
                .handle(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await,
            None
        );
        let list = server
            .handle(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await
            .unwrap();
        let names: Vec<&str> = list["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["bash", "read_file", "write_file", "check", "submit"]
        );
        assert!(list["result"]["tools"][0]["inputSchema"]["properties"]["cmd"].is_object());
        let bad = server
            .handle(&json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}))
            .await
            .unwrap();
        assert_eq!(bad["error"]["code"], -32601);
    }
}
