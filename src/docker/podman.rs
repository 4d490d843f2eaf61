//! Podman: its own API beside its Docker one, and a rootless service of gptx's own for a process that names no engine socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A `podman system service` this process started (`--engine podman`): stopped when dropped, and
/// killed by the kernel if gptx dies first.
pub struct Service {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.socket.with_extension("log"));
    }
}

/// What `--engine` names: `docker` (DOCKER_HOST, else the local socket), `podman` (a rootless
/// service of this process's own), or an address (`unix:///path`, `tcp://host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Docker,
    Podman,
    Address(String),
}

impl std::str::FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Self::Docker),
            "podman" => Ok(Self::Podman),
            a if a.starts_with("unix:///") || a.starts_with("tcp://") => {
                Ok(Self::Address(a.into()))
            }
            other => Err(format!(
                "{other:?} is not an engine: use docker, podman, unix:///PATH or tcp://HOST:PORT"
            )),
        }
    }
}

/// Points DOCKER_HOST at the chosen engine, starting a Podman service for `podman`. Must run
/// before any other thread exists (it sets the environment); the service lives as long as the
/// value returned.
pub fn select(choice: &Choice) -> Result<Option<Service>, String> {
    let address = match choice {
        Choice::Docker => return Ok(None),
        Choice::Address(a) => a.clone(),
        Choice::Podman => {
            let service = start()?;
            let address = format!("unix://{}", service.socket.display());
            set_host(&address);
            return Ok(Some(service));
        }
    };
    set_host(&address);
    Ok(None)
}

/// DOCKER_HOST for this process, and GPTX_ENGINE for the gptx processes it starts (they use the
/// same engine, not a service each).
fn set_host(address: &str) {
    // SAFETY: `select` runs before any other thread exists.
    unsafe {
        std::env::set_var("DOCKER_HOST", address);
        std::env::set_var("GPTX_ENGINE", address);
    }
}

/// Starts `podman system service` on a socket of this process's own under the user's runtime
/// directory, in a process group of its own (a Ctrl-C for gptx must not stop the engine before
/// gptx has removed its containers), dying with gptx; waits until it answers.
fn start() -> Result<Service, String> {
    use std::os::unix::process::CommandExt;
    let dir = crate::docker::supervisor::runtime_dir();
    crate::docker::supervisor::make_private_dir(&dir)?;
    let socket = dir.join(format!("podman-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    // Its log lines (warnings about systemd it does not have, say) are not gptx's output.
    let log = std::fs::File::create(socket.with_extension("log")).map_err(|e| {
        format!(
            "--engine podman: {}: {e}",
            socket.with_extension("log").display()
        )
    })?;
    let mut cmd = std::process::Command::new("podman");
    cmd.args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    // SAFETY: only prctl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "--engine podman: podman is not installed (apt-get install -y podman uidmap slirp4netns fuse-overlayfs catatonit)".to_string(),
        _ => format!("--engine podman: cannot start `podman system service`: {e}"),
    })?;
    let mut service = Service { child, socket };
    wait_until_answering(&mut service)?;
    Ok(service)
}

/// Waits (at most 30 s) for the service to answer `/_ping` on its socket.
fn wait_until_answering(service: &mut Service) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = service.child.try_wait() {
            let log = std::fs::read_to_string(service.socket.with_extension("log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(format!("--engine podman: `podman system service` exited ({status}) before it answered:\n{tail}"));
        }
        if ping(&service.socket) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "--engine podman: `podman system service` did not answer on {} within 30 s",
        service.socket.display()
    ))
}

/// Whether an API answers `OK` to `/_ping` on this socket (within a second).
fn ping(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = Vec::new();
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .is_ok()
        && s.take(4096).read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.")
        && answer.ends_with(b"OK")
}

/// Creates a network through Podman's own API: internal, and without its DNS server (its Docker
/// API would start one, on an address every member reaches, that forwards names it does not know
/// to the host's resolvers).
pub(crate) async fn network(
    name: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), bollard::errors::Error> {
    let body = serde_json::json!({
        "name": name, "driver": "bridge", "internal": true, "dns_enabled": false, "labels": labels,
    });
    let path = "/v4.0.0/libpod/networks/create";
    let message = match request("POST", path, Some(body.to_string())).await {
        Ok((200 | 201, _)) => return Ok(()),
        Ok((status, body)) => format!(
            "Podman answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ),
        Err(e) => e,
    };
    let message = format!("creating network {name}: {message}");
    Err(bollard::errors::Error::DockerResponseServerError {
        status_code: 500,
        message,
    })
}

/// One request to Podman's API on the unix socket `DOCKER_HOST` names (HTTP/1.0, so the server
/// closes the connection): its status and body (at most 4 MiB), within 30 s.
pub(crate) async fn request(
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Vec<u8>), String> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let socket = host
        .strip_prefix("unix://")
        .ok_or_else(|| format!("Podman's own API needs a unix socket, not DOCKER_HOST={host}"))?;
    let exchange = exchange(socket, method, path, body.unwrap_or_default());
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer in 30 s"))?
        .map_err(|e| format!("{method} {path} on {socket}: {e}"))
}

async fn exchange(
    socket: &str,
    method: &str,
    path: &str,
    body: String,
) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut out = Vec::new();
    s.take(4 << 20).read_to_end(&mut out).await?;
    parse_response(out).ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// An HTTP/1 response's status and body.
fn parse_response(mut out: Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let at = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let body = out.split_off(at + 4);
    let status = out.split(|b| *b == b' ').nth(1)?;
    let status = std::str::from_utf8(status).ok()?.parse().ok()?;
    out.starts_with(b"HTTP/1.").then_some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_give_status_and_body() {
        let r = b"HTTP/1.0 201 Created\r\nA: b\r\n\r\n{}".to_vec();
        assert_eq!(parse_response(r), Some((201, b"{}".to_vec())));
        assert_eq!(parse_response(b"HTTP/1.0 200 OK".to_vec()), None);
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n".to_vec()), None);
    }

    #[test]
    fn engines_are_docker_podman_or_an_address() {
        assert_eq!("docker".parse::<Choice>(), Ok(Choice::Docker));
        assert_eq!("podman".parse::<Choice>(), Ok(Choice::Podman));
        let unix = "unix:///run/user/1/podman/podman.sock";
        assert_eq!(unix.parse::<Choice>(), Ok(Choice::Address(unix.into())));
        let e = "kubernetes".parse::<Choice>().unwrap_err();
        assert!(e.contains("docker, podman, unix:///PATH"), "{e}");
    }
}
