//! The real sandbox: a hardened Docker container driven through bollard, commands run by an in-box supervisor.
//!
//! One `docker exec` per sandbox starts `supervisor.py` with stdin attached; each command is then one JSON
//! line each way, so a step costs a fork, not a runc exec. If the supervisor dies (the agent killed it, the
//! OOM killer took it) the next command starts a new one; if it stops answering past a command's timeout
//! the harness kills every process of the sandbox user and starts over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, NetworkConnectRequest, NetworkDisconnectRequest,
    VolumeCreateRequest,
};
use bollard::query_parameters::CreateContainerOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use crate::docker::engine;
use crate::sandbox::{
    ExecOutcome, ExecRequest, OutStream, OutputSink, Sandbox, SandboxError, WorkspaceRoot,
};

const SUPERVISOR: &str = include_str!("supervisor.py");
/// Kills every process of its own uid but itself, again and again until none is left (a process that
/// forks while it is killed is caught by the next round); prints the count it found (the pid in argv[1],
/// the supervisor, not counted), how many are left, and up to 20 of their command lines.
const SWEEPER: &str = r#"
import json, os, signal, sys, time
uid, me, skip = os.getuid(), os.getpid(), int(sys.argv[1])
def alive():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                st = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            if st.get("State", "").strip().startswith("Z") or int(st["Uid"].split()[0]) != uid:
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read(300).replace(b"\0", b" ").decode("utf-8", "replace").strip()
            except OSError:
                cmd = ""
            out[int(d)] = cmd or st.get("Name", "").strip()
        except (OSError, KeyError, ValueError):
            continue
    return out
seen = {}
for _ in range(500):
    now = alive()
    if not now:
        break
    seen.update(now)
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    time.sleep(0.005)
seen.pop(skip, None)
print(json.dumps({"killed": len(seen), "left": len(alive()), "commands": list(seen.values())[:20]}))
"#;

/// The longest line the supervisor sends (an output chunk is 32 KiB before base64); longer is dropped.
const MAX_LINE: usize = 1 << 20;

/// How long past a command's own timeout the harness waits for the supervisor before killing everything.
const GRACE: Duration = Duration::from_secs(10);

/// The sandbox user inside every gptx image.
pub(crate) const SANDBOX_UID: u32 = 1000;
pub(crate) const SANDBOX_GID: u32 = 1000;

/// How to make a sandbox (SPEC §5 profile).
#[derive(Debug, Clone)]
pub struct DockerSandboxSpec {
    pub run_id: String,
    /// agent, scorer, web, build or bench; also part of the container's name.
    pub role: String,
    pub image: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
    /// The network to join at start; None = no network but loopback.
    pub network: Option<String>,
    /// Host directory mounted at /workspace (through a labelled local volume).
    pub workspace_host: PathBuf,
    pub workspace_readonly: bool,
    pub env: Vec<String>,
    /// Tells apart several sandboxes of one role in a run (scoring sandboxes): `gptx-<run>-<role>-<instance>`.
    pub instance: Option<String>,
    /// MiB of `/tmp` and of the sandbox user's home (tmpfs); the root filesystem is then read-only.
    /// 0 leaves the root filesystem writable (image builds and tools).
    pub tmp_mb: u64,
    /// `name:ip` host entries (the world's sites): names resolve without any DNS.
    pub extra_hosts: Vec<String>,
}

struct Supervisor {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    rx: mpsc::UnboundedReceiver<serde_json::Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A running container with its workspace volume.
pub struct DockerSandbox {
    docker: Docker,
    id: String,
    name: String,
    volume: String,
    workspace: WorkspaceRoot,
    network: StdMutex<Option<String>>,
    sup: Mutex<Option<Supervisor>>,
    sup_stderr: Arc<StdMutex<String>>,
    /// Supervisor lines that were not the protocol (not JSON, or too long), since the last stage end.
    bad_lines: Arc<std::sync::atomic::AtomicU64>,
    removed: std::sync::atomic::AtomicBool,
}

fn err(what: &'static str) -> impl Fn(bollard::errors::Error) -> SandboxError {
    move |e| SandboxError::other(what, e.to_string())
}

impl DockerSandbox {
    /// Creates and starts the container, then checks the supervisor answers.
    pub async fn create(docker: &Docker, spec: &DockerSandboxSpec) -> Result<Self, SandboxError> {
        let name = match &spec.instance {
            Some(i) => format!("gptx-{}-{}-{i}", spec.run_id, spec.role),
            None => format!("gptx-{}-{}", spec.run_id, spec.role),
        };
        let volume = format!("{name}-ws");
        let labels = engine::labels(&spec.run_id, &spec.role);
        let host = spec.workspace_host.canonicalize().map_err(|e| {
            SandboxError::other(
                "workspace",
                format!("{}: {e}", spec.workspace_host.display()),
            )
        })?;
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                driver: Some("local".into()),
                driver_opts: Some(HashMap::from([
                    ("type".into(), "none".into()),
                    ("o".into(), "bind".into()),
                    ("device".into(), host.display().to_string()),
                ])),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(err("create volume"))?;
        let mode = if spec.workspace_readonly { "ro" } else { "rw" };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // PID 1 (docker-init + sleep) runs as root without capabilities, so the agent's
            // `kill -9 -1` cannot take the container down; every exec runs as the sandbox user.
            user: Some("0:0".into()),
            working_dir: Some(crate::sandbox::WORKSPACE.into()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            network_disabled: None,
            host_config: Some(HostConfig {
                binds: Some(vec![format!(
                    "{volume}:{}:{mode}",
                    crate::sandbox::WORKSPACE
                )]),
                init: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(spec.memory_bytes),
                memory_swap: Some(spec.memory_bytes),
                nano_cpus: Some(spec.nano_cpus),
                pids_limit: Some(spec.pids),
                readonly_rootfs: Some(spec.tmp_mb > 0),
                extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
                // What Docker's embedded resolver cannot answer it forwards here: nowhere.
                dns: spec
                    .network
                    .is_some()
                    .then(|| vec![crate::docker::engine::BLACKHOLE_DNS.to_string()]),
                tmpfs: (spec.tmp_mb > 0).then(|| {
                    let opts =
                        |extra: &str| format!("rw,nosuid,nodev,size={}m{extra}", spec.tmp_mb);
                    HashMap::from([
                        ("/tmp".to_string(), opts(",mode=1777")),
                        (
                            "/home/agent".to_string(),
                            opts(&format!(",mode=0755,uid={SANDBOX_UID},gid={SANDBOX_GID}")),
                        ),
                    ])
                }),
                network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
                privileged: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        let id = match created {
            Ok(c) => c.id,
            Err(e) => {
                let _ = docker
                    .remove_volume(
                        &volume,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
                return Err(SandboxError::other("create container", e.to_string()));
            }
        };
        let owner = if rustix::process::geteuid().is_root() {
            Some((SANDBOX_UID, SANDBOX_GID))
        } else {
            None
        };
        let workspace = WorkspaceRoot::open(&host, owner)
            .map_err(|e| SandboxError::other("workspace", format!("{}: {e}", host.display())))?;
        let sandbox = Self {
            docker: docker.clone(),
            id,
            name,
            volume,
            workspace,
            network: StdMutex::new(spec.network.clone()),
            sup: Mutex::new(None),
            sup_stderr: Arc::new(StdMutex::new(String::new())),
            bad_lines: Arc::default(),
            removed: false.into(),
        };
        if let Err(e) = sandbox.start_and_ping().await {
            let _ = sandbox.remove().await;
            return Err(e);
        }
        Ok(sandbox)
    }

    async fn start_and_ping(&self) -> Result<(), SandboxError> {
        self.docker
            .start_container(&self.id, None)
            .await
            .map_err(err("start container"))?;
        let mut guard = self.sup.lock().await;
        let mut sup = self.start_supervisor().await?;
        let id = rand::random::<u64>() >> 11;
        send(&mut sup, &serde_json::json!({"op": "ping", "id": id})).await?;
        match tokio::time::timeout(Duration::from_secs(30), sup.rx.recv()).await {
            Ok(Some(v)) if v["ev"] == "pong" && v["undumpable"] != true => {
                return Err(SandboxError::other(
                    "supervisor",
                    format!(
                        "could not make itself non-dumpable, so commands could forge its output; stderr: {}",
                        self.sup_stderr.lock().unwrap()
                    ),
                ))
            }
            Ok(Some(v)) if v["ev"] == "pong" => {}
            _ => {
                return Err(SandboxError::other(
                    "supervisor",
                    format!(
                        "did not answer a ping; does the image have python3? stderr: {}",
                        self.sup_stderr.lock().unwrap()
                    ),
                ))
            }
        }
        *guard = Some(sup);
        Ok(())
    }

    /// The container's name (`gptx-<run>-<role>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn start_supervisor(&self) -> Result<Supervisor, SandboxError> {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    cmd: Some(vec![
                        "python3".into(),
                        "-u".into(),
                        "-c".into(),
                        SUPERVISOR.into(),
                    ]),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
                    working_dir: Some(crate::sandbox::WORKSPACE.into()),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("start supervisor"))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(1 << 20),
                }),
            )
            .await
            .map_err(err("start supervisor"))?;
        let bollard::exec::StartExecResults::Attached { mut output, input } = started else {
            return Err(SandboxError::other("supervisor", "exec started detached"));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stderr = self.sup_stderr.clone();
        let bad_lines = self.bad_lines.clone();
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while let Some(item) = output.next().await {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        buf.extend_from_slice(&message);
                        if buf.len() > MAX_LINE && !buf.contains(&b'\n') {
                            bad_lines.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                "sandbox supervisor sent {} bytes without a newline; dropped",
                                buf.len()
                            );
                            buf.clear();
                        }
                        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            match serde_json::from_slice::<serde_json::Value>(&line) {
                                Ok(v) => {
                                    if tx.send(v).is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    bad_lines.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(
                                        "sandbox supervisor sent a line that is not JSON ({e}): {:?}",
                                        String::from_utf8_lossy(&line[..line.len().min(200)])
                                    )
                                }
                            }
                        }
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        let text = String::from_utf8_lossy(&message);
                        tracing::debug!("supervisor stderr: {text}");
                        let mut s = stderr.lock().unwrap();
                        s.push_str(&text);
                        if s.len() > 4096 {
                            let cut = s.len() - 4096;
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("supervisor stream ended: {e}");
                        return;
                    }
                }
            }
        });
        Ok(Supervisor { input, rx, reader })
    }

    /// Runs `cmd` as the sandbox user in a fresh exec and gives back its stdout.
    async fn exec_once(&self, cmd: Vec<String>) -> Result<Vec<u8>, SandboxError> {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    cmd: Some(cmd),
                    user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("exec"))?;
        let mut out = Vec::new();
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(err("exec"))?
        {
            while let Some(item) = output.next().await {
                if let Ok(bollard::container::LogOutput::StdOut { message }) = item {
                    if out.len() < 1 << 20 {
                        out.extend_from_slice(&message);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Kills every process of the sandbox user (the supervisor included), from a fresh exec.
    async fn kill_everything(&self) -> Result<(), SandboxError> {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    cmd: Some(vec!["kill".into(), "-9".into(), "-1".into()]),
                    user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("kill"))?;
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(err("kill"))?
        {
            while output.next().await.is_some() {}
        }
        Ok(())
    }
}

async fn send(sup: &mut Supervisor, msg: &serde_json::Value) -> Result<(), SandboxError> {
    let mut line = serde_json::to_vec(msg).expect("json");
    line.push(b'\n');
    sup.input
        .write_all(&line)
        .await
        .map_err(|e| SandboxError::other("supervisor", format!("write: {e}")))?;
    sup.input
        .flush()
        .await
        .map_err(|e| SandboxError::other("supervisor", format!("write: {e}")))
}

/// Reads the supervisor's `exit` line into an outcome.
fn outcome_from(v: &serde_json::Value) -> ExecOutcome {
    ExecOutcome {
        exit_code: v["code"].as_i64().map(|c| c as i32),
        signal: v["signal"].as_i64().map(|c| c as i32),
        timed_out: v["timed_out"].as_bool().unwrap_or(false),
        oom_killed: v["oom"].as_bool().unwrap_or(false),
        duration_ms: v["duration_ms"].as_f64().unwrap_or(0.0),
        cpu_seconds: v["cpu_s"].as_f64().unwrap_or(0.0),
        max_rss_kb: v["max_rss_kb"].as_u64().unwrap_or(0),
        container_cpu_seconds: v["cg_cpu_s"].as_f64(),
        container_peak_bytes: v["cg_peak_bytes"].as_u64(),
        error: v["error"].as_str().map(str::to_string),
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn workspace(&self) -> &WorkspaceRoot {
        &self.workspace
    }

    async fn exec(
        &self,
        req: &ExecRequest,
        sink: OutputSink<'_>,
    ) -> Result<ExecOutcome, SandboxError> {
        let started = std::time::Instant::now();
        let mut guard = self.sup.lock().await;
        let env: serde_json::Map<String, serde_json::Value> = req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        // Ids are drawn at random, so a line cannot be forged for a request not yet made.
        let id = rand::random::<u64>() >> 11;
        let mut msg = serde_json::json!({
            "op": "exec", "id": id, "cmd": req.cmd,
            "timeout_ms": req.timeout.as_millis() as u64, "cwd": crate::sandbox::WORKSPACE, "env": env,
        });
        if let Some(stdin) = &req.stdin {
            msg["stdin_b64"] = base64::engine::general_purpose::STANDARD
                .encode(stdin)
                .into();
        }
        // A dead supervisor shows up as a failed write; start a new one and try once more.
        let mut attempts = 0;
        loop {
            if guard.is_none() {
                *guard = Some(self.start_supervisor().await?);
            }
            match send(guard.as_mut().unwrap(), &msg).await {
                Ok(()) => break,
                Err(e) if attempts == 0 => {
                    tracing::debug!("supervisor write failed ({e}); restarting it");
                    *guard = None;
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
        let deadline = tokio::time::Instant::now() + req.timeout + GRACE;
        loop {
            let sup = guard.as_mut().unwrap();
            let next = tokio::time::timeout_at(deadline, sup.rx.recv()).await;
            match next {
                Ok(Some(v)) => {
                    if v["id"].as_u64() != Some(id) {
                        continue; // a late line of an earlier, abandoned command
                    }
                    match v["ev"].as_str() {
                        Some("out") => {
                            let stream = if v["s"] == "e" {
                                OutStream::Stderr
                            } else {
                                OutStream::Stdout
                            };
                            match base64::engine::general_purpose::STANDARD
                                .decode(v["d"].as_str().unwrap_or_default())
                            {
                                Ok(bytes) => sink(stream, &bytes),
                                Err(e) => tracing::warn!("supervisor sent bad base64: {e}"),
                            }
                        }
                        Some("exit") => {
                            let mut o = outcome_from(&v);
                            // The budget counts the time the harness measured, not what the sandbox says.
                            o.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                            return Ok(o);
                        }
                        _ => {}
                    }
                }
                Ok(None) => {
                    // The supervisor is gone mid-command: the command (or the OOM killer) took it down.
                    *guard = None;
                    let oom = self.container_oom_count().await.unwrap_or(0) > 0;
                    return Ok(ExecOutcome {
                        exit_code: None,
                        signal: Some(9),
                        oom_killed: oom,
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        error: Some(
                            "the sandbox's command supervisor died during this command (killed by the command or the OOM killer); it has been restarted".into(),
                        ),
                        ..Default::default()
                    });
                }
                Err(_) => {
                    *guard = None;
                    self.kill_everything().await?;
                    return Ok(ExecOutcome {
                        exit_code: None,
                        signal: Some(9),
                        timed_out: true,
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        error: Some(
                            "the command supervisor stopped answering; every process in the sandbox was killed".into(),
                        ),
                        ..Default::default()
                    });
                }
            }
        }
    }

    async fn engine_lost(&self) -> Option<String> {
        match tokio::time::timeout(Duration::from_secs(5), self.docker.ping()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer in 5 s".into()),
        }
    }

    async fn end_stage(&self) -> Result<crate::sandbox::Swept, SandboxError> {
        // The supervisor goes too; the next command starts a new one. Its pid is left out of the count.
        let mut guard = self.sup.lock().await;
        let mut skip = 0u64;
        if let Some(sup) = guard.as_mut() {
            let id = rand::random::<u64>() >> 11;
            if send(sup, &serde_json::json!({"op": "ping", "id": id}))
                .await
                .is_ok()
            {
                let pong = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(v) = sup.rx.recv().await {
                        if v["id"].as_u64() == Some(id) {
                            return v["pid"].as_u64();
                        }
                    }
                    None
                })
                .await;
                skip = pong.ok().flatten().unwrap_or(0);
            }
        }
        *guard = None;
        let out = self
            .exec_once(vec![
                "python3".into(),
                "-c".into(),
                SWEEPER.into(),
                skip.to_string(),
            ])
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            SandboxError::other(
                "end of stage",
                format!(
                    "the process sweep printed {:?}: {e}",
                    String::from_utf8_lossy(&out[..out.len().min(200)])
                ),
            )
        })?;
        let left = v["left"].as_u64().unwrap_or(u64::MAX);
        if left != 0 {
            return Err(SandboxError::other(
                "end of stage",
                format!("{left} processes of the agent survived the sweep"),
            ));
        }
        Ok(crate::sandbox::Swept {
            bad_lines: self.bad_lines.swap(0, Ordering::Relaxed),
            killed: v["killed"].as_u64().unwrap_or(0),
            commands: v["commands"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn set_network(&self, network: Option<&str>) -> Result<(), SandboxError> {
        let current = self.network.lock().unwrap().clone();
        if current.as_deref() == network {
            return Ok(());
        }
        if let Some(old) = current {
            self.docker
                .disconnect_network(
                    &old,
                    NetworkDisconnectRequest {
                        container: self.id.clone(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(err("leave network"))?;
            *self.network.lock().unwrap() = None;
        }
        if let Some(new) = network {
            self.docker
                .connect_network(
                    new,
                    NetworkConnectRequest {
                        container: self.id.clone(),
                        endpoint_config: None,
                    },
                )
                .await
                .map_err(err("join network"))?;
            *self.network.lock().unwrap() = Some(new.to_string());
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), SandboxError> {
        if self.removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Ok(mut g) = self.sup.try_lock() {
            *g = None;
        }
        engine::remove_container(&self.docker, &self.id)
            .await
            .map_err(|e| SandboxError::other("remove container", e.to_string()))?;
        engine::remove_volume(&self.docker, &self.volume)
            .await
            .map_err(|e| SandboxError::other("remove volume", e.to_string()))
    }
}

impl DockerSandbox {
    async fn container_oom_count(&self) -> Option<u64> {
        let info = self.docker.inspect_container(&self.id, None).await.ok()?;
        Some(u64::from(info.state?.oom_killed.unwrap_or(false)))
    }
}
