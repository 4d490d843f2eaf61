//! The real sandbox: a hardened Docker container driven through bollard, commands run by an in-box supervisor.
//!
//! The static supervisor (`supervisor/main.rs`) is bind-mounted read-only into every sandbox; one
//! `docker exec` per sandbox starts it with stdin attached, and each command is then one binary frame
//! in and its output frames out, so a step costs a fork, not a runc exec. If the supervisor dies (the agent killed it, the
//! OOM killer took it) the next command starts a new one; if it stops answering past a command's timeout
//! the harness kills every process of the sandbox user and starts over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, ExecConfig, HostConfig, NetworkConnectRequest,
    NetworkDisconnectRequest, VolumeCreateRequest,
};
use bollard::query_parameters::CreateContainerOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use crate::config::suite::{Gpus, SandboxLimits};
use crate::docker::engine::{self, BLACKHOLE_DNS as BLACKHOLE};
use crate::docker::flavor;
use crate::docker::supervisor::{self as sv, Frame};
use crate::sandbox::{
    ExecOutcome, ExecRequest, MappedFiles, OutStream, OutputSink, Sandbox, SandboxError,
    WorkspaceRoot,
};

/// How long a one-off exec (the sweep) may take before the harness gives up on it.
const ONE_OFF: Duration = Duration::from_secs(60);
/// How long writing a frame to the supervisor may take (it may have been stopped).
const SEND: Duration = Duration::from_secs(30);

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
    /// The GPUs it is given (None: none, and no device request is made).
    pub gpus: Option<Gpus>,
}

impl DockerSandboxSpec {
    /// A sandbox of the agent's profile with the suite's `[sandbox]` limits (memory, CPUs,
    /// processes, `/tmp`, GPUs): the agent's own, and the selfhost rebuild's. No network, no
    /// workspace yet (set them, and what else differs, over it).
    pub fn agent(run_id: &str, image: &str, limits: &SandboxLimits) -> Self {
        Self {
            run_id: run_id.to_string(),
            role: "agent".into(),
            image: image.to_string(),
            memory_bytes: (limits.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (limits.cpus * 1e9) as i64,
            pids: limits.pids as i64,
            network: None,
            workspace_host: PathBuf::new(),
            workspace_readonly: false,
            env: vec![],
            instance: None,
            tmp_mb: limits.tmp_mb,
            extra_hosts: vec![],
            gpus: limits.gpus.clone(),
        }
    }
}

struct Supervisor {
    /// Where requests go: the attach stream's stdin, or the socket once the supervisor reached it.
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The attach stream's stdin, kept open (unused) once requests go through the socket: its end
    /// would look to the supervisor like the harness gone.
    attach_input: Option<AttachInput>,
    rx: mpsc::Receiver<Frame>,
    /// The attach stream's reader, and the socket's once the supervisor reached it.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Frames in flight between the reader and the command's consumer: with output frames of at most
/// 1 MiB, the harness holds a few MiB of a command's output at most, however fast it prints.
const FRAMES_IN_FLIGHT: usize = 4;

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.readers.iter().for_each(|r| r.abort());
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
    /// The socket the supervisor sends its frames through (None: the attach stream carries them).
    channel: Option<sv::Channel>,
    sup_stderr: Arc<StdMutex<String>>,
    /// Supervisor lines that were not the protocol (not JSON, or too long), since the last stage end.
    bad_lines: Arc<std::sync::atomic::AtomicU64>,
    removed: std::sync::atomic::AtomicBool,
}

/// The container's environment: the thread counts of its CPUs and what its GPUs need, then the
/// spec's own (which win).
fn with_threads(spec: &DockerSandboxSpec) -> Vec<String> {
    let threads = crate::config::suite::thread_env(spec.nano_cpus as f64 / 1e9);
    let gpus = crate::config::suite::gpu_env(spec.gpus.as_ref());
    [threads, gpus, spec.env.clone()].concat()
}

/// A labelled local volume `name` that is the host directory `host` (the workspace).
async fn bind_volume(
    docker: &Docker,
    name: &str,
    host: &std::path::Path,
    labels: &HashMap<String, String>,
) -> Result<(), SandboxError> {
    let opts = [
        ("type", "none"),
        ("o", "bind"),
        ("device", &*host.to_string_lossy()),
    ];
    let request = VolumeCreateRequest {
        name: Some(name.into()),
        driver: Some("local".into()),
        driver_opts: Some(opts.map(|(k, v)| (k.into(), v.into())).into()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    docker
        .create_volume(request)
        .await
        .map_err(err("create volume"))?;
    Ok(())
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
        bind_volume(docker, &volume, &host, &labels).await?;
        let (binds, channel) = binds(spec, &name, &volume)?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // PID 1 (docker-init + the supervisor idling) runs as root without capabilities, so the agent's
            // `kill -9 -1` cannot take the container down; every exec runs as the sandbox user.
            user: Some("0:0".into()),
            working_dir: Some(crate::sandbox::WORKSPACE.into()),
            // The supervisor is the entrypoint whatever the image says (an image's own ENTRYPOINT
            // would otherwise run first, as root).
            entrypoint: Some(vec![sv::IN_SANDBOX.into()]),
            cmd: Some(vec!["idle".into()]),
            // Nor does its HEALTHCHECK (it would run as root, reading what the agent wrote).
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            env: Some(with_threads(spec)),
            labels: Some(labels),
            network_disabled: None,
            host_config: Some(host_config(spec, binds)),
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
        let root = rustix::process::geteuid().is_root();
        let owner = root.then_some((SANDBOX_UID, SANDBOX_GID));
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
            channel,
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
        send(&mut sup, sv::PING, id, &[]).await?;
        let pong = tokio::time::timeout(Duration::from_secs(30), recv_id(&mut sup, id)).await;
        let stderr = self.sup_stderr.lock().unwrap().clone();
        check_pong(pong.ok().flatten(), &stderr)?;
        *guard = Some(sup);
        Ok(())
    }

    /// The container's name (`gptx-<run>-<role>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn start_supervisor(&self) -> Result<Supervisor, SandboxError> {
        if let Some(c) = &self.channel {
            let (mut sup, tx, on_socket) = self.attached().await?;
            match self.reach_socket(&mut sup, c, tx).await {
                Ok(()) => {
                    on_socket.store(true, Ordering::SeqCst);
                    return Ok(sup);
                }
                // That supervisor may be on the socket or not: it goes, and a new one keeps to the
                // attach stream (it ends at the end of its stdin or of its socket).
                Err(e) => {
                    tracing::warn!("commands go through the engine's attach stream: {e}")
                }
            }
        }
        Ok(self.attached().await?.0)
    }

    /// A new supervisor on the attach stream, its reader started: the sender its socket reader is
    /// to share, and the flag that makes frames on the attach stream not the protocol.
    async fn attached(&self) -> Result<(Supervisor, mpsc::Sender<Frame>, OnSocket), SandboxError> {
        let (output, input) = self.attach_supervisor().await?;
        let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
        // Once the supervisor is on the socket, nothing on its stdout is a frame of its.
        let on_socket = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = tokio::spawn(read_frames(
            Box::pin(output.map(|item| item.map_err(|e| e.to_string()))),
            (tx.clone(), on_socket.clone()),
            self.sup_stderr.clone(),
            self.bad_lines.clone(),
        ));
        let sup = Supervisor {
            input,
            attach_input: None,
            rx,
            readers: vec![reader],
        };
        Ok((sup, tx, on_socket))
    }

    /// A new supervisor exec as the sandbox user, attached: its output stream and its stdin.
    async fn attach_supervisor(&self) -> Result<(AttachStreamRaw, AttachInput), SandboxError> {
        let config = ExecConfig {
            cmd: Some(vec![sv::IN_SANDBOX.into()]),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
            working_dir: Some(crate::sandbox::WORKSPACE.into()),
            ..Default::default()
        };
        let fail = err("start supervisor");
        let exec = self
            .docker
            .create_exec(&self.id, config)
            .await
            .map_err(&fail)?;
        let options = bollard::exec::StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(1 << 20),
        };
        match self
            .docker
            .start_exec(&exec.id, Some(options))
            .await
            .map_err(fail)?
        {
            bollard::exec::StartExecResults::Attached { output, input } => Ok((output, input)),
            _ => Err(SandboxError::other("supervisor", "exec started detached")),
        }
    }

    /// Has the supervisor send its frames through the channel's socket, and take its requests from
    /// there, from now on.
    async fn reach_socket(
        &self,
        sup: &mut Supervisor,
        channel: &sv::Channel,
        tx: mpsc::Sender<Frame>,
    ) -> Result<(), String> {
        let (token, arrived) = channel.expect();
        let id = rand::random::<u64>() >> 11;
        send(sup, sv::HELLO, id, &sv::hello_payload(&token))
            .await
            .map_err(|e| e.to_string())?;
        let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), arrived).await else {
            return Err("the supervisor did not reach the harness's socket".into());
        };
        let (read, write) = stream.into_split();
        sup.readers
            .push(tokio::spawn(read_socket(read, tx, self.bad_lines.clone())));
        let ready = tokio::time::timeout(Duration::from_secs(10), recv_id(sup, id)).await;
        if !matches!(ready, Ok(Some(ref f)) if f.kind == sv::READY) {
            return Err("the supervisor did not say it uses the socket".into());
        }
        sup.attach_input = Some(std::mem::replace(&mut sup.input, Box::pin(write)));
        Ok(())
    }

    /// Runs `cmd` as the sandbox user in a fresh exec and gives back its stdout (at most 1 MiB);
    /// Err if it has not ended within [`ONE_OFF`] (a process of the agent's can stop it).
    async fn exec_once(&self, cmd: Vec<String>) -> Result<Vec<u8>, SandboxError> {
        let what = cmd.join(" ");
        let config = ExecConfig {
            cmd: Some(cmd),
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_GID}")),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let docker = &self.docker;
        let exec = docker.create_exec(&self.id, config).await;
        let started = docker
            .start_exec(&exec.map_err(err("exec"))?.id, None)
            .await;
        let read = stdout_of(started.map_err(err("exec"))?);
        tokio::time::timeout(ONE_OFF, read).await.map_err(|_| {
            let secs = ONE_OFF.as_secs();
            SandboxError::other("exec", format!("`{what}` did not end within {secs} s"))
        })
    }

    /// Kills every process of the sandbox user (the supervisor included), from a fresh exec.
    async fn kill_everything(&self) -> Result<(), SandboxError> {
        let sweep = vec![sv::IN_SANDBOX.into(), "sweep".into(), "0".into()];
        self.exec_once(sweep).await.map(|_| ())
    }
}

/// What an attached exec gives back: its output, and its stdin.
type AttachStreamRaw = Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
            > + Send,
    >,
>;
type AttachInput = Pin<Box<dyn AsyncWrite + Send>>;
/// Set once a supervisor's frames come through the socket.
type OnSocket = Arc<std::sync::atomic::AtomicBool>;

type AttachStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, String>> + Send>>;

/// Splits the supervisor's stdout into frames for the command's consumer (waiting while it is
/// behind, so the command waits too) and keeps the last 4 KiB of its stderr. A stream that is not
/// the protocol ends the reader, which the consumer sees as the supervisor gone.
async fn read_frames(
    mut output: AttachStream,
    (tx, on_socket): (mpsc::Sender<Frame>, Arc<std::sync::atomic::AtomicBool>),
    stderr: Arc<StdMutex<String>>,
    bad_lines: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut decoder = sv::Decoder::default();
    while let Some(item) = output.next().await {
        match item {
            Ok(bollard::container::LogOutput::StdOut { message }) => {
                decoder.push(&message);
                let drop = on_socket.load(Ordering::SeqCst);
                if !pass_on(&mut decoder, &tx, &bad_lines, drop).await {
                    return;
                }
            }
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                keep_tail(&stderr, &String::from_utf8_lossy(&message))
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("supervisor stream ended: {e}");
                return;
            }
        }
    }
}

/// Hands every whole frame the decoder holds to the consumer (or, `drop`ped, counts it as not
/// the protocol); false when the reader must stop: the consumer is gone, or the stream is not frames.
async fn pass_on(
    decoder: &mut sv::Decoder,
    tx: &mpsc::Sender<Frame>,
    bad_lines: &std::sync::atomic::AtomicU64,
    drop: bool,
) -> bool {
    loop {
        match decoder.next() {
            Ok(None) => return true,
            Ok(Some(_)) if drop => {
                bad_lines.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(f)) => {
                if tx.send(f).await.is_err() {
                    return false;
                }
            }
            Err(e) => {
                bad_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the sandbox supervisor's output is not the protocol: {e}");
                return false;
            }
        }
    }
}

/// Reads frames from the supervisor's socket straight into the decoder's buffer.
async fn read_socket(
    mut stream: tokio::net::unix::OwnedReadHalf,
    tx: mpsc::Sender<Frame>,
    bad_lines: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncReadExt;
    let mut decoder = sv::Decoder::default();
    loop {
        let buf = decoder.buf_mut();
        if buf.capacity() - buf.len() < 64 << 10 {
            buf.reserve(1 << 20);
        }
        if matches!(stream.read_buf(buf).await, Ok(0) | Err(_)) {
            return;
        }
        if !pass_on(&mut decoder, &tx, &bad_lines, false).await {
            return;
        }
    }
}

fn keep_tail(stderr: &StdMutex<String>, text: &str) {
    tracing::debug!("supervisor stderr: {text}");
    let mut s = stderr.lock().unwrap();
    s.push_str(text);
    if s.len() > 4096 {
        let cut = s.len() - 4096;
        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.drain(..cut);
    }
}

async fn send(sup: &mut Supervisor, kind: u8, id: u64, payload: &[u8]) -> Result<(), SandboxError> {
    let write = async {
        sup.input.write_all(&sv::frame(kind, id, payload)).await?;
        sup.input.flush().await
    };
    let why = match tokio::time::timeout(SEND, write).await {
        Ok(r) => return r.map_err(|e| SandboxError::other("supervisor", format!("write: {e}"))),
        Err(_) => format!("it took no request in {} s", SEND.as_secs()),
    };
    Err(SandboxError::other("supervisor", why))
}

/// The next frame of request `id` (late frames of an abandoned request are dropped); None when
/// the supervisor is gone.
async fn recv_id(sup: &mut Supervisor, id: u64) -> Option<Frame> {
    loop {
        let f = sup.rx.recv().await?;
        if f.id == id {
            return Some(f);
        }
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
        // Ids are drawn at random, so a frame cannot be forged for a request not yet made.
        let id = rand::random::<u64>() >> 11;
        let payload = sv::exec_payload(req, crate::sandbox::WORKSPACE);
        // A dead supervisor shows up as a failed write; start a new one and try once more.
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.start_supervisor().await?);
            }
            match send(guard.as_mut().unwrap(), sv::EXEC, id, &payload).await {
                Ok(()) => break,
                Err(e) if attempt == 0 => {
                    tracing::debug!("supervisor write failed ({e}); restarting it");
                    *guard = None;
                }
                Err(e) => return Err(e),
            }
        }
        let deadline = tokio::time::Instant::now() + req.timeout + GRACE;
        let elapsed_ms = || started.elapsed().as_secs_f64() * 1000.0;
        loop {
            let sup = guard.as_mut().unwrap();
            match tokio::time::timeout_at(deadline, recv_id(sup, id)).await {
                Ok(Some(f)) => match f.kind {
                    sv::STDOUT => sink(OutStream::Stdout, &f.data),
                    sv::STDERR => sink(OutStream::Stderr, &f.data),
                    sv::EXIT => {
                        let mut o = sv::parse_exit(&f.data).unwrap_or_else(|e| ExecOutcome {
                            error: Some(format!("the supervisor's exit frame was bad: {e}")),
                            ..Default::default()
                        });
                        // The budget counts the time the harness measured, not what the sandbox says.
                        o.duration_ms = elapsed_ms();
                        return Ok(o);
                    }
                    _ => {}
                },
                Ok(None) => {
                    // The supervisor is gone mid-command: the command (or the OOM killer) took it down.
                    *guard = None;
                    let oom = self.container_oom_count().await.unwrap_or(0) > 0;
                    return Ok(supervisor_died(oom, elapsed_ms()));
                }
                Err(_) => {
                    *guard = None;
                    self.kill_everything().await?;
                    return Ok(ExecOutcome {
                        exit_code: None,
                        signal: Some(9),
                        timed_out: true,
                        duration_ms: elapsed_ms(),
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
        let mut skip = 0u32;
        if let Some(sup) = guard.as_mut() {
            let id = rand::random::<u64>() >> 11;
            if send(sup, sv::PING, id, &[]).await.is_ok() {
                let pong = tokio::time::timeout(Duration::from_secs(5), recv_id(sup, id)).await;
                if let Ok(Some(f)) = pong {
                    skip = sv::parse_pong(&f.data).map_or(0, |p| p.1);
                }
            }
        }
        *guard = None;
        let out = self
            .exec_once(vec![
                sv::IN_SANDBOX.into(),
                "sweep".into(),
                skip.to_string(),
            ])
            .await?;
        let (killed, left, commands) =
            sv::parse_sweep(&out).map_err(|e| SandboxError::other("end of stage", e))?;
        if left != 0 {
            return Err(SandboxError::other(
                "end of stage",
                format!("{left} processes of the agent survived the sweep"),
            ));
        }
        Ok(crate::sandbox::Swept {
            bad_lines: self.bad_lines.swap(0, Ordering::Relaxed),
            killed,
            commands,
        })
    }

    async fn mapped_files(&self) -> Result<MappedFiles, String> {
        let mut guard = self.sup.lock().await;
        if guard.is_none() {
            *guard = Some(self.start_supervisor().await.map_err(|e| e.to_string())?);
        }
        let sup = guard.as_mut().expect("started");
        let id = rand::random::<u64>() >> 11;
        send(sup, sv::MAPPED, id, &[])
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(10), recv_id(sup, id)).await;
        let f = match answer {
            Ok(Some(f)) if f.kind == sv::MAPS => f,
            _ => return Err("the supervisor did not list the mapped files".into()),
        };
        sv::parse_maps(&f.data)?.known()
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

/// The workspace's volume, the supervisor and its socket, as bind mounts; and the socket's channel
/// (None: frames stay on the engine's attach stream).
fn binds(
    spec: &DockerSandboxSpec,
    name: &str,
    volume: &str,
) -> Result<(Vec<String>, Option<sv::Channel>), SandboxError> {
    let mode = if spec.workspace_readonly { "ro" } else { "rw" };
    let supervisor = sv::host_copy().map_err(|e| SandboxError::other("supervisor", e))?;
    let mut binds = vec![
        format!("{volume}:{}:{mode}", crate::sandbox::WORKSPACE),
        // Root's file, read-only: the agent's uid can neither replace nor change it.
        format!("{}:{}:ro", supervisor.display(), sv::IN_SANDBOX),
    ];
    let channel = sv::Channel::open(name)
        .inspect_err(|e| {
            tracing::warn!("command output goes through the engine's attach stream: {e}")
        })
        .ok();
    if let Some(c) = &channel {
        let socket = c.host_path().display();
        binds.push(format!("{socket}:{}:ro", sv::SOCKET_IN_SANDBOX));
    }
    Ok((binds, channel))
}

/// The SPEC §5 profile: no capabilities, no new privileges, the limits, a read-only root with
/// tmpfs `/tmp` and home, names of the world only.
fn host_config(spec: &DockerSandboxSpec, binds: Vec<String>) -> HostConfig {
    HostConfig {
        binds: Some(binds),
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
        dns: spec.network.as_ref().map(|_| vec![BLACKHOLE.into()]),
        tmpfs: (spec.tmp_mb > 0).then(|| tmpfs(spec.tmp_mb)),
        network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
        privileged: Some(false),
        device_requests: spec.gpus.as_ref().map(device_requests),
        userns_mode: userns(&flavor::current()),
        ..Default::default()
    }
}

/// Rootless Podman maps the container's users into the user's subordinate ids, so the sandbox
/// user's files would belong to an id the harness cannot manage; `keep-id` makes the sandbox user
/// the harness's own user on the host (and the container's root a subordinate id).
pub(crate) fn userns(engine: &crate::docker::flavor::EngineFacts) -> Option<String> {
    (engine.podman() && engine.rootless)
        .then(|| format!("keep-id:uid={SANDBOX_UID},gid={SANDBOX_GID}"))
}

/// `/tmp` and the sandbox user's home, `mb` MiB each. The home is the user's (Docker's tmpfs
/// takes `uid=`), or, on Podman, which knows no such option, sticky and writable by all.
fn tmpfs(mb: u64) -> HashMap<String, String> {
    let opts = |extra: &str| format!("rw,nosuid,nodev,size={mb}m{extra}");
    let home = match crate::docker::flavor::current().podman() {
        true => opts(",mode=1777"),
        false => opts(&format!(",mode=0755,uid={SANDBOX_UID},gid={SANDBOX_GID}")),
    };
    HashMap::from([
        ("/tmp".to_string(), opts(",mode=1777")),
        ("/home/agent".to_string(), home),
    ])
}

/// The device request `docker run --gpus` makes: any driver that has the `gpu` capability (the
/// NVIDIA runtime's), for every GPU (count -1), a number of them, or the ones with these ids.
fn device_requests(gpus: &Gpus) -> Vec<DeviceRequest> {
    let (count, device_ids) = match gpus {
        Gpus::All => (Some(-1), None),
        Gpus::Count(n) => (Some(i64::from(*n)), None),
        Gpus::Devices(ids) => (None, Some(ids.clone())),
    };
    vec![DeviceRequest {
        driver: Some(String::new()),
        count,
        device_ids,
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        options: None,
    }]
}

/// What an exec printed on stdout, its first MiB.
async fn stdout_of(started: bollard::exec::StartExecResults) -> Vec<u8> {
    let mut out = Vec::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
        while let Some(item) = output.next().await {
            if let Ok(bollard::container::LogOutput::StdOut { message }) = item {
                let room = (1usize << 20).saturating_sub(out.len());
                out.extend_from_slice(&message[..message.len().min(room)]);
            }
        }
    }
    out
}

/// A new supervisor's pong, checked: it answered, speaks this protocol, and is non-dumpable.
fn check_pong(pong: Option<Frame>, stderr: &str) -> Result<(), SandboxError> {
    let fail = |why: String| {
        Err(SandboxError::other(
            "supervisor",
            format!("{why}; stderr: {stderr}"),
        ))
    };
    let (version, _, undumpable) = match pong {
        Some(f) if f.kind == sv::PONG => sv::parse_pong(&f.data)
            .map_err(|e| SandboxError::other("supervisor", format!("a bad pong: {e}")))?,
        _ => {
            return fail(format!(
                "did not answer a ping (is {} executable in the image?)",
                sv::IN_SANDBOX
            ))
        }
    };
    if version != sv::VERSION {
        return fail(format!("speaks protocol {version}, not {}", sv::VERSION));
    }
    if !undumpable {
        return fail(
            "could not make itself non-dumpable, so commands could forge its output".into(),
        );
    }
    Ok(())
}

/// The outcome of a command whose supervisor died under it.
fn supervisor_died(oom: bool, duration_ms: f64) -> ExecOutcome {
    ExecOutcome {
        exit_code: None,
        signal: Some(9),
        oom_killed: oom,
        duration_ms,
        error: Some(
            "the sandbox's command supervisor died during this command (killed by the command or the OOM killer); it has been restarted".into(),
        ),
        ..Default::default()
    }
}

impl DockerSandbox {
    async fn container_oom_count(&self) -> Option<u64> {
        let info = self.docker.inspect_container(&self.id, None).await.ok()?;
        Some(u64::from(info.state?.oom_killed.unwrap_or(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gpus: Option<Gpus>) -> DockerSandboxSpec {
        let limits = SandboxLimits {
            gpus,
            ..SandboxLimits::default()
        };
        DockerSandboxSpec::agent("r1", "gptx/base", &limits)
    }

    /// `[sandbox] gpus` becomes the device request `docker run --gpus` makes, in each of its forms;
    /// without it the container has none and no cuBLAS setting.
    #[test]
    fn gpus_become_device_requests_and_none_leaves_the_container_as_it_was() {
        let request = |g: Gpus| {
            let hc = host_config(&spec(Some(g)), vec![]);
            let mut r = hc.device_requests.expect("a device request");
            assert_eq!(r.len(), 1);
            r.remove(0)
        };
        let all = request(Gpus::All);
        assert_eq!(all.driver.as_deref(), Some(""));
        assert_eq!(all.count, Some(-1));
        assert_eq!(all.device_ids, None);
        assert_eq!(all.capabilities, Some(vec![vec!["gpu".to_string()]]));
        let two = request(Gpus::Count(2));
        assert_eq!((two.count, two.device_ids), (Some(2), None));
        assert_eq!(two.capabilities, Some(vec![vec!["gpu".to_string()]]));
        let ids = request(Gpus::Devices(vec!["0".into(), "1".into()]));
        assert_eq!(ids.count, None);
        assert_eq!(ids.device_ids, Some(vec!["0".to_string(), "1".to_string()]));
        assert_eq!(ids.capabilities, Some(vec![vec!["gpu".to_string()]]));
        let cublas = "CUBLAS_WORKSPACE_CONFIG=:4096:8".to_string();
        assert!(with_threads(&spec(Some(Gpus::All))).contains(&cublas));

        let none = spec(None);
        let hc = host_config(&none, vec![]);
        assert_eq!(hc.device_requests, None);
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert!(!with_threads(&none).contains(&cublas));
        assert_eq!(with_threads(&none), crate::config::suite::thread_env(1.0));
    }
}
