//! A scripted OpenAI- or Anthropic-compatible HTTP server on loopback, for tests and benchmarks: each request gets the next reply from the script, and every request body is kept.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The reply to the n-th request (from 0): HTTP status and JSON body.
pub type Script = Box<dyn FnMut(usize) -> (u16, Value) + Send>;

/// Starts the server; returns its base URL (`http://127.0.0.1:<port>/v1`) and the request bodies.
pub async fn serve(mut script: Script) -> std::io::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            let Some(body) = read_request(&mut sock).await else {
                continue;
            };
            log.lock()
                .expect("request log")
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let (status, reply) = script(n);
            n += 1;
            let reply = reply.to_string();
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    Ok((format!("http://{addr}/v1"), seen))
}

/// The body of one HTTP/1.1 request (None when the connection broke first).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let start = loop {
        let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..start]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < start + len {
        let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[start..start + len].to_vec())
}

/// A script that plays `replies` in order, then answers 500.
pub fn replies(replies: Vec<(u16, Value)>) -> Script {
    let mut it = replies.into_iter();
    Box::new(move |_| {
        it.next()
            .unwrap_or((500, json!({"error": "the script is exhausted"})))
    })
}
