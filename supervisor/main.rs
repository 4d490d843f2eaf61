//! The in-sandbox command supervisor: a static executable with no dependency but the C library it is linked with.
//!
//! The harness bind-mounts this program read-only into every sandbox and starts it once per sandbox
//! (one `docker exec` with stdin attached, as the sandbox user). It then speaks length-prefixed binary
//! frames both ways: `kind: u8, id: u64 LE, len: u32 LE`, then `len` bytes. See `docs` below for each
//! kind's payload; output bytes are sent as they are, never encoded.
//!
//! `gptx-supervisor idle` sleeps forever: the sandbox container's main process.
//! `gptx-supervisor sweep PID` is the end-of-stage sweep: it kills every process of its own uid but
//! itself, again and again until none is left, and prints what it found (PID, the supervisor, not counted).
//!
//! It keeps these duties: a session and process group per command, the timeout kill of the whole tree,
//! the OOM score of commands, rusage and the cgroup's CPU and peak memory, stdin feeding, and
//! non-dumpability (no command can open its `/proc/<pid>/fd/*`, so no command can forge a frame).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The protocol's version, sent in every pong.
const VERSION: u32 = 3;
/// Harness to supervisor: run a command (payload: [`ExecReq`]).
const EXEC: u8 = 1;
/// Harness to supervisor: answer with a pong.
const PING: u8 = 2;
/// Harness to supervisor: list the workspace files mapped shared and writable by a live process.
const MAPPED: u8 = 3;
/// Harness to supervisor: `token: [u8; 32]`, then the path of the harness's socket. The supervisor
/// connects, sends the token, and from then on sends every frame there and takes every request from
/// there (the harness's listener takes only the connection that shows the token, which no other
/// process can read), answering `READY`. The request path then skips the engine's attach stream.
const HELLO: u8 = 4;
/// Supervisor to harness: bytes of the command's stdout / stderr, as they came.
const STDOUT: u8 = 16;
const STDERR: u8 = 17;
/// Supervisor to harness: the command ended (payload: see [`exit_payload`]).
const EXIT: u8 = 18;
/// Supervisor to harness: `version: u32, pid: u32, undumpable: u8`.
const PONG: u8 = 19;
/// Supervisor to harness: `unreadable: u32, count: u32`, then `count` strings (u32 length, bytes).
const MAPS: u8 = 20;
/// Supervisor to harness, the first frame on the socket: it is in use.
const READY: u8 = 21;
/// The largest request frame (a command with its stdin).
const MAX_REQUEST: u32 = 256 << 20;
/// Bytes read from a command's pipe at once, and the pipe size asked for.
const CHUNK: usize = 1 << 20;
/// A frame leaves once this much is gathered ...
const FLUSH_AT: usize = CHUNK / 2;
/// ... or once the pipe stays empty this long ...
const GATHER: Duration = Duration::from_millis(1);
/// ... or once it has gathered this long (a trickle never holds output, or the timeout, back).
const GATHER_AT_MOST: Duration = Duration::from_millis(20);
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
const WORKSPACE: &str = "/workspace";

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    rest: [i64; 13],
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    fn prctl(option: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> i32;
    fn setsid() -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
    fn poll(fds: *mut PollFd, n: u64, timeout: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, arg: i64) -> i32;
    fn getpid() -> i32;
    fn getuid() -> u32;
    fn syscall(n: i64, a1: i64, a2: i64) -> i64;
    fn open(path: *const u8, flags: i32, mode: u32) -> i32;
    fn write(fd: i32, buf: *const u8, n: usize) -> isize;
    fn read(fd: i32, buf: *mut u8, n: usize) -> isize;
    fn close(fd: i32) -> i32;
}

const PR_SET_DUMPABLE: i32 = 4;
const SIGKILL: i32 = 9;
const WNOHANG: i32 = 1;
const POLLIN: i16 = 1;
const POLLOUT: i16 = 4;
const F_GETFL: i32 = 3;
const F_SETFL: i32 = 4;
const F_SETPIPE_SZ: i32 = 1031;
const O_NONBLOCK: i64 = 0o4000;
const O_WRONLY: i32 = 1;
const SYS_PIDFD_OPEN: i64 = 434;

/// `idle` and `sweep PID`; true when one of them ran.
fn one_off() -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // The container's main process, under the engine's init: an image needs no `sleep` of its own.
        Some("idle") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Some("sweep") => sweep(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0)),
        _ => return false,
    }
    true
}

fn main() {
    if one_off() {
        return;
    }
    // SAFETY: a plain prctl on this process.
    let undumpable = unsafe { prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    if !undumpable {
        eprintln!("supervisor: could not make itself undumpable");
    }
    let stdin = std::io::stdin();
    let mut input = In::Stdin(stdin.lock());
    let mut out = Out::Stdout(std::io::stdout().lock());
    loop {
        let (kind, id, payload) = match read_frame(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                eprintln!("supervisor: bad request frame: {e}");
                return;
            }
        };
        let sent = match kind {
            PING => {
                let mut p = Vec::with_capacity(9);
                p.extend_from_slice(&VERSION.to_le_bytes());
                p.extend_from_slice(&(std::process::id()).to_le_bytes());
                p.push(u8::from(undumpable));
                send(&mut out, PONG, id, &p)
            }
            EXEC => match ExecReq::parse(&payload) {
                Some(req) => run(&mut out, id, req),
                None => send(
                    &mut out,
                    EXIT,
                    id,
                    &exit_error("the request could not be read"),
                ),
            },
            MAPPED => send(&mut out, MAPS, id, &mapped()),
            HELLO => match connect(&payload).and_then(|s| Ok((s.try_clone()?, s))) {
                Ok((reader, socket)) => {
                    // Requests come through the socket from now on; stdin stays open, unread.
                    input = In::Socket(reader);
                    out = Out::Socket(socket);
                    send(&mut out, READY, id, &[])
                }
                Err(e) => {
                    eprintln!("supervisor: could not reach the harness's socket: {e}");
                    Ok(())
                }
            },
            other => {
                eprintln!("supervisor: unknown request kind {other}");
                Ok(())
            }
        };
        if sent.is_err() {
            return; // the harness is gone
        }
    }
}

/// Where requests come from: the exec's stdin until the harness's socket is reached, then the socket.
enum In<'a> {
    Stdin(std::io::StdinLock<'a>),
    Socket(std::os::unix::net::UnixStream),
}

impl Read for In<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            In::Stdin(i) => i.read(b),
            In::Socket(s) => s.read(b),
        }
    }
}

/// Where frames go: the exec's stdout until the harness's socket is reached, then the socket.
enum Out<'a> {
    Stdout(std::io::StdoutLock<'a>),
    Socket(std::os::unix::net::UnixStream),
}

impl Write for Out<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Stdout(o) => o.write(b),
            Out::Socket(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(o) => o.flush(),
            Out::Socket(s) => s.flush(),
        }
    }
}

/// Connects to the harness's socket (the path after the 32-byte token) and shows the token.
fn connect(payload: &[u8]) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    if payload.len() <= 32 {
        return Err(std::io::Error::other("a hello without a path"));
    }
    let path = std::ffi::OsStr::from_bytes(&payload[32..]);
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(&payload[..32])?;
    Ok(s)
}

/// Reads one frame; None at a clean end of input.
fn read_frame(input: &mut impl Read) -> std::io::Result<Option<(u8, u64, Vec<u8>)>> {
    let mut head = [0u8; 13];
    match input.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let id = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
    if len > MAX_REQUEST {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload)?;
    Ok(Some((head[0], id, payload)))
}

fn send(out: &mut impl Write, kind: u8, id: u64, payload: &[u8]) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(13 + payload.len());
    f.push(kind);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    out.write_all(&f)?;
    out.flush()
}

/// A command to run, as the harness encodes it: `timeout_ms: u64`, `cmd`, `cwd`, `env count: u32`
/// and that many `key`, `value`, then `has_stdin: u8` and, when 1, `stdin`; every string is
/// `u32` length then bytes.
struct ExecReq {
    timeout: Duration,
    cmd: Vec<u8>,
    cwd: Vec<u8>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    stdin: Option<Vec<u8>>,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

impl ExecReq {
    fn parse(p: &[u8]) -> Option<Self> {
        let mut c = Cursor(p);
        let timeout = Duration::from_millis(c.u64()?.max(1));
        let (cmd, cwd) = (c.bytes()?, c.bytes()?);
        let n = c.u32()?;
        let mut env = Vec::new();
        for _ in 0..n {
            env.push((c.bytes()?, c.bytes()?));
        }
        let stdin = match c.take(1)?[0] {
            0 => None,
            _ => Some(c.bytes()?),
        };
        Some(Self {
            timeout,
            cmd,
            cwd,
            env,
            stdin,
        })
    }
}

/// What a command's run measured, for the exit frame.
#[derive(Default)]
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    oom: bool,
    cpu_s: f64,
    max_rss_kb: u64,
    cg_cpu_s: Option<f64>,
    cg_peak: Option<u64>,
    duration_ms: f64,
    error: String,
}

/// `flags: u8` (1 code, 2 signal, 4 timed out, 8 oom, 16 cg cpu, 32 cg peak), `code: i32`,
/// `signal: i32`, `cpu_s: f64`, `max_rss_kb: u64`, `cg_cpu_s: f64`, `cg_peak: u64`,
/// `duration_ms: f64`, `error` (u32 length, UTF-8; empty for none).
fn exit_payload(e: &Ended) -> Vec<u8> {
    let flags = u8::from(e.code.is_some())
        | u8::from(e.signal.is_some()) << 1
        | u8::from(e.timed_out) << 2
        | u8::from(e.oom) << 3
        | u8::from(e.cg_cpu_s.is_some()) << 4
        | u8::from(e.cg_peak.is_some()) << 5;
    let mut p = vec![flags];
    p.extend_from_slice(&e.code.unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&e.signal.unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&e.cpu_s.to_le_bytes());
    p.extend_from_slice(&e.max_rss_kb.to_le_bytes());
    p.extend_from_slice(&e.cg_cpu_s.unwrap_or(0.0).to_le_bytes());
    p.extend_from_slice(&e.cg_peak.unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&e.duration_ms.to_le_bytes());
    p.extend_from_slice(&(e.error.len() as u32).to_le_bytes());
    p.extend_from_slice(e.error.as_bytes());
    p
}

fn exit_error(why: &str) -> Vec<u8> {
    exit_payload(&Ended {
        error: why.to_string(),
        ..Default::default()
    })
}

/// The shell commands run under: bash where the image has it, else `/bin/sh`.
/// `/bin/bash`, or `/bin/sh` where there is no bash: looked up once (each lookup goes through
/// the image's file system, which may be a slow FUSE one).
fn shell() -> &'static str {
    static SHELL: std::sync::OnceLock<&str> = std::sync::OnceLock::new();
    SHELL.get_or_init(|| match std::path::Path::new("/bin/bash").exists() {
        true => "/bin/bash",
        false => "/bin/sh",
    })
}

/// A command's stdin when it is given none: a duplicate of `/dev/null`, opened once.
fn null_stdin() -> Stdio {
    thread_local! {
        static NULL: Option<std::fs::File> = std::fs::File::open("/dev/null").ok();
    }
    NULL.with(|f| f.as_ref().and_then(|f| f.try_clone().ok()))
        .map_or_else(Stdio::null, Stdio::from)
}

fn spawn(req: &ExecReq) -> std::io::Result<std::process::Child> {
    use std::os::unix::ffi::OsStrExt;
    let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    let mut cmd = Command::new(shell());
    cmd.arg("-c").arg(os(&req.cmd));
    let cwd = if req.cwd.is_empty() {
        WORKSPACE.as_bytes()
    } else {
        &req.cwd
    };
    cmd.current_dir(os(cwd));
    for (k, v) in &req.env {
        cmd.env(os(k), os(v));
    }
    cmd.stdin(if req.stdin.is_some() {
        Stdio::piped()
    } else {
        null_stdin()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec: setsid, open, write, close.
    unsafe {
        cmd.pre_exec(|| {
            setsid();
            // The command, not the supervisor, is the OOM killer's first choice.
            let fd = open(c"/proc/self/oom_score_adj".as_ptr().cast(), O_WRONLY, 0);
            if fd >= 0 {
                write(fd, b"1000".as_ptr(), 4);
                close(fd);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let fl = fcntl(fd, F_GETFL, 0);
        fcntl(fd, F_SETFL, i64::from(fl) | O_NONBLOCK);
    }
}

/// One command from start to its exit frame.
fn run(out: &mut impl Write, id: u64, req: ExecReq) -> std::io::Result<()> {
    let (cpu0, oom0) = (cgroup_cpu_s(), cgroup_oom_kills());
    let start = Instant::now();
    let mut child = match spawn(&req) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("could not start the command: {e}");
            return send(out, EXIT, id, &exit_error(&why));
        }
    };
    let pid = child.id() as i32;
    let mut pump = Pump::new(&mut child, req.stdin, pid);
    let (status, rusage, timed_out) = pump.until_exit(out, id, start + req.timeout)?;
    drop(pump);
    let (cpu1, oom1) = (cgroup_cpu_s(), cgroup_oom_kills());
    let mut e = Ended {
        timed_out,
        oom: matches!((oom0, oom1), (Some(a), Some(b)) if b > a),
        cpu_s: (rusage.utime.sec + rusage.stime.sec) as f64
            + (rusage.utime.usec + rusage.stime.usec) as f64 / 1e6,
        max_rss_kb: rusage.maxrss.max(0) as u64,
        cg_cpu_s: cpu0.zip(cpu1).map(|(a, b)| (b - a).max(0.0)),
        cg_peak: cgroup_peak_bytes(),
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        ..Default::default()
    };
    if status & 0x7f == 0 {
        e.code = Some((status >> 8) & 0xff);
    } else {
        e.signal = Some(status & 0x7f);
    }
    send(out, EXIT, id, &exit_payload(&e))
}

/// The command's pipes and its exit, polled together.
struct Pump {
    pid: i32,
    pidfd: Option<std::os::fd::OwnedFd>,
    pipes: Vec<(Option<std::os::fd::OwnedFd>, u8)>,
    stdin: Option<(std::os::fd::OwnedFd, Vec<u8>, usize)>,
    buf: Vec<u8>,
}

impl Pump {
    fn new(child: &mut std::process::Child, stdin: Option<Vec<u8>>, pid: i32) -> Self {
        let owned = |fd: Option<std::os::fd::OwnedFd>| {
            if let Some(f) = &fd {
                set_nonblocking(f.as_raw_fd());
            }
            fd
        };
        let so = owned(child.stdout.take().map(Into::into));
        let se = owned(child.stderr.take().map(Into::into));
        if let Some(f) = &so {
            // SAFETY: fcntl on our own pipe; a refused size leaves the default.
            unsafe { fcntl(f.as_raw_fd(), F_SETPIPE_SZ, CHUNK as i64) };
        }
        let si = owned(child.stdin.take().map(Into::into));
        let stdin = match (si, stdin) {
            (Some(fd), Some(data)) if !data.is_empty() => Some((fd, data, 0)),
            _ => None, // an empty stdin: the pipe is closed here, so the command reads EOF
        };
        Self {
            pid,
            pidfd: pidfd_open(pid),
            pipes: vec![(so, STDOUT), (se, STDERR)],
            stdin,
            buf: vec![0u8; 13 + CHUNK],
        }
    }

    /// Forwards output until the command has exited and its pipes are drained (or the drain time is
    /// up); kills the whole tree at `deadline`.
    fn until_exit(
        &mut self,
        out: &mut impl Write,
        id: u64,
        deadline: Instant,
    ) -> std::io::Result<(i32, Rusage, bool)> {
        let mut timed_out = false;
        let mut exited: Option<(i32, Rusage, Instant)> = None;
        loop {
            if exited.is_none() {
                exited = self.reap(timed_out);
            }
            if exited.is_none() && !timed_out && Instant::now() >= deadline {
                timed_out = true;
                kill_tree(self.pid);
            }
            let open = self.pipes.iter().any(|p| p.0.is_some());
            if let Some((st, ru, until)) = &exited {
                if !open || Instant::now() >= *until {
                    return Ok((*st, ru_copy(ru), timed_out));
                }
            }
            let until = match &exited {
                Some((_, _, u)) => *u,
                None if timed_out => Instant::now() + Duration::from_millis(20),
                None => deadline,
            };
            self.wait_once(out, id, until)?;
        }
    }

    fn reap(&mut self, timed_out: bool) -> Option<(i32, Rusage, Instant)> {
        let mut status = 0;
        let mut ru = Rusage::default();
        // SAFETY: waiting for our own child.
        let r = unsafe { wait4(self.pid, &mut status, WNOHANG, &mut ru) };
        (r == self.pid).then(|| {
            let drain = if timed_out {
                DRAIN_AFTER_KILL
            } else {
                DRAIN_AFTER_EXIT
            };
            self.pidfd = None;
            (status, ru, Instant::now() + drain)
        })
    }

    /// One poll of the pipes (and the pidfd), up to `until`; forwards what is there.
    fn wait_once(&mut self, out: &mut impl Write, id: u64, until: Instant) -> std::io::Result<()> {
        let mut fds: Vec<PollFd> = Vec::with_capacity(4);
        for (fd, _) in &self.pipes {
            if let Some(f) = fd {
                fds.push(PollFd {
                    fd: f.as_raw_fd(),
                    events: POLLIN,
                    revents: 0,
                });
            }
        }
        if let Some((f, _, _)) = &self.stdin {
            fds.push(PollFd {
                fd: f.as_raw_fd(),
                events: POLLOUT,
                revents: 0,
            });
        }
        let no_pidfd = self.pidfd.is_none();
        if let Some(f) = &self.pidfd {
            fds.push(PollFd {
                fd: f.as_raw_fd(),
                events: POLLIN,
                revents: 0,
            });
        }
        let left = until.saturating_duration_since(Instant::now());
        // Without a pidfd the exit is noticed by polling: often at first, then every 20 ms.
        let cap = if no_pidfd {
            Duration::from_millis(2)
        } else {
            left
        };
        let ms = left.min(cap).as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of its length.
        let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, ms) };
        if n <= 0 {
            return Ok(());
        }
        for p in fds.iter().filter(|p| p.revents != 0) {
            self.ready(out, id, p.fd)?;
        }
        Ok(())
    }

    fn ready(&mut self, out: &mut impl Write, id: u64, fd: RawFd) -> std::io::Result<()> {
        if let Some((f, data, at)) = &mut self.stdin {
            if f.as_raw_fd() == fd {
                // SAFETY: writing from our own buffer, within its length.
                let w = unsafe { write(fd, data[*at..].as_ptr(), (data.len() - *at).min(CHUNK)) };
                if w > 0 {
                    *at += w as usize;
                }
                let would_block = w < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
                if *at >= data.len() || (w < 0 && !would_block) {
                    self.stdin = None; // all written, or the command stopped reading: closed
                }
                return Ok(());
            }
        }
        if let Some(i) = self
            .pipes
            .iter()
            .position(|p| p.0.as_ref().is_some_and(|f| f.as_raw_fd() == fd))
        {
            return self.forward(out, id, i);
        }
        Ok(()) // the pidfd: the next reap sees the exit
    }
}

impl Pump {
    /// Forwards what pipe `i` holds as one frame. A small read waits up to [`GATHER`] for more, so
    /// a command writing in small pieces still leaves in large frames (a pipe's end sends at once).
    fn forward(&mut self, out: &mut impl Write, id: u64, i: usize) -> std::io::Result<()> {
        let (Some(f), kind) = &self.pipes[i] else {
            return Ok(());
        };
        let (fd, kind) = (f.as_raw_fd(), *kind);
        let mut filled = 0usize;
        let mut closed = false;
        let until = Instant::now() + GATHER_AT_MOST;
        loop {
            // Read after room for the header, so header and bytes leave in one write.
            let room = self.buf.len() - 13 - filled;
            // SAFETY: reading into our own buffer, within its length.
            let n = unsafe { read(fd, self.buf[13 + filled..].as_mut_ptr(), room) };
            if n > 0 {
                filled += n as usize;
                if filled >= FLUSH_AT || Instant::now() >= until || !more_within(fd, GATHER) {
                    break;
                }
                continue;
            }
            let would_block =
                n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
            closed = !would_block;
            break;
        }
        if closed {
            self.pipes[i].0 = None;
        }
        if filled > 0 {
            self.buf[0] = kind;
            self.buf[1..9].copy_from_slice(&id.to_le_bytes());
            self.buf[9..13].copy_from_slice(&(filled as u32).to_le_bytes());
            out.write_all(&self.buf[..13 + filled])?;
            out.flush()?;
        }
        Ok(())
    }
}

/// Whether `fd` has more to read (or its end) within `wait`.
fn more_within(fd: RawFd, wait: Duration) -> bool {
    let mut p = PollFd {
        fd,
        events: POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { poll(&mut p, 1, wait.as_millis() as i32) > 0 }
}

fn ru_copy(r: &Rusage) -> Rusage {
    Rusage {
        utime: Timeval {
            sec: r.utime.sec,
            usec: r.utime.usec,
        },
        stime: Timeval {
            sec: r.stime.sec,
            usec: r.stime.usec,
        },
        maxrss: r.maxrss,
        rest: r.rest,
    }
}

/// A descriptor that becomes readable when `pid` exits (None where the kernel or seccomp refuses).
fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: the raw syscall returns a new descriptor or an error.
    let fd = unsafe { syscall(SYS_PIDFD_OPEN, i64::from(pid), 0) };
    // SAFETY: a fresh descriptor, owned from here.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The first of `paths` that can be read and parsed.
fn read_first<T>(paths: &[&'static str], parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    paths.iter().find_map(|p| parse(&read_cached(p)?))
}

/// What the file at `path` holds now. Each file is opened once and read again from its start (a
/// cgroup file gives its current value at every read from offset 0): an open costs far more
/// than a read here.
fn read_cached(path: &'static str) -> Option<String> {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static OPEN: std::cell::RefCell<std::collections::HashMap<&'static str, Option<std::fs::File>>> =
            std::cell::RefCell::default();
    }
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let f = open
            .entry(path)
            .or_insert_with(|| std::fs::File::open(path).ok());
        let f = f.as_ref()?;
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], n as u64).ok()? {
                0 => break,
                k => n += k,
            }
        }
        String::from_utf8(buf[..n].to_vec()).ok()
    })
}

fn keyed(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name)).then(|| parts.next()?.parse().ok())?
    })
}

fn cgroup_cpu_s() -> Option<f64> {
    let v1 = [
        "/sys/fs/cgroup/cpuacct/cpuacct.usage",
        "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage",
    ];
    read_first(&v1, |t| {
        t.trim().parse::<u64>().ok().map(|n| n as f64 / 1e9)
    })
    .or_else(|| {
        read_first(&["/sys/fs/cgroup/cpu.stat"], |t| keyed(t, "usage_usec")).map(|u| u as f64 / 1e6)
    })
}

fn cgroup_oom_kills() -> Option<u64> {
    let paths = [
        "/sys/fs/cgroup/memory/memory.oom_control",
        "/sys/fs/cgroup/memory.events",
    ];
    read_first(&paths, |t| keyed(t, "oom_kill"))
}

fn cgroup_peak_bytes() -> Option<u64> {
    let paths = [
        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
        "/sys/fs/cgroup/memory.peak",
    ];
    read_first(&paths, |t| t.trim().parse().ok())
}

/// Every visible process: (pid, ppid, session, uid).
fn processes() -> Vec<(i32, i32, i32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        if fields.first() == Some(&"Z") {
            return None;
        }
        Some((
            pid,
            fields.get(1)?.parse().ok()?,
            fields.get(3)?.parse().ok()?,
            uid,
        ))
    })
    .collect()
}

/// SIGKILLs the command's process group, its session and every descendant still attached.
fn kill_tree(root: i32) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { getpid() };
    let table = processes();
    let mut doomed = vec![root];
    let mut changed = true;
    while changed {
        changed = false;
        for &(pid, ppid, sid, _) in &table {
            if pid != me && !doomed.contains(&pid) && (doomed.contains(&ppid) || sid == root) {
                doomed.push(pid);
                changed = true;
            }
        }
    }
    // SAFETY: signals to processes by pid; errors (already gone) are ignored.
    unsafe {
        kill(-root, SIGKILL);
        for pid in doomed {
            kill(pid, SIGKILL);
        }
    }
}

/// The workspace files some live process of this uid maps shared and writable, or holds open for
/// writing (it could map them later): a write through a mapping raises no file event, so the
/// snapshot must look at them. A process whose maps or descriptors cannot be read (made
/// non-dumpable) is counted as unreadable, and so is a path the kernel escaped (a name with a newline).
fn mapped() -> Vec<u8> {
    // A process that exits before it is read may have forked the holder of a map after `/proc`
    // was listed: `/proc` is listed again until it shows no process not yet looked at (a few
    // times, then the answer is unknown).
    let (mut found, mut seen) = (Found::default(), std::collections::HashSet::new());
    if (0..8).all(|_| look_at_new(&mut seen, &mut found)) {
        (found, found.unreadable) = (Found::default(), 1);
    }
    found.encode()
}

/// Reads the processes of this uid not in `seen` yet; whether there were any.
fn look_at_new(seen: &mut std::collections::HashSet<i32>, found: &mut Found) -> bool {
    // SAFETY: getpid and getuid have no preconditions.
    let (me, uid) = unsafe { (getpid(), getuid()) };
    let mut any = false;
    for (pid, zombie, threads) in own_processes(uid, me) {
        if !seen.insert(pid) {
            continue;
        }
        any = true;
        // A zombie leader with threads left: their maps read empty, so cannot be seen.
        if zombie {
            found.unreadable += u32::from(threads > 1);
        } else if !(shared_writable_maps(pid, found) && writable_fds(pid, found) || exiting(pid)) {
            found.unreadable += 1;
        }
    }
    any
}

/// The processes of `uid` but `me`, each with whether it is a zombie and its thread count, from
/// one read of each one's `status` (a process gone by then is left out).
fn own_processes(uid: u32, me: i32) -> Vec<(i32, bool, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let field = |status: &str, key: &str| -> Option<String> {
        let v = status.lines().find_map(|l| l.strip_prefix(key))?;
        Some(v.split_whitespace().next()?.to_string())
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let status = read_proc(&format!("/proc/{pid}/status"))?;
        let puid = field(&status, "Uid:")?.parse::<u32>().ok()?;
        let threads = field(&status, "Threads:").and_then(|t| t.parse().ok());
        let zombie = field(&status, "State:").as_deref() == Some("Z");
        (pid != me && puid == uid).then_some((pid, zombie, threads.unwrap_or(1)))
    })
    .collect()
}

/// Whether `pid` is gone, or so far into its exit that its memory is released: its `/proc` files
/// are then root's (unreadable here), but it can write nothing more (a child it forked shows up
/// when `/proc` is listed again).
fn exiting(pid: i32) -> bool {
    read_proc(&format!("/proc/{pid}/status")).is_none_or(|s| exited_alone(&s))
}

/// Whether a `status` says its process has released its memory (no `VmSize:`) or is a zombie,
/// and has no other thread: a leader that exits while its threads go on shows the same, but
/// its threads still hold its maps (which then read empty).
fn exited_alone(status: &str) -> bool {
    let gone = !status.contains("\nVmSize:") || status.contains("\nState:\tZ");
    gone && status.contains("\nThreads:\t1\n")
}

/// A small `/proc` file read whole with as few reads as it takes (one, for most).
fn read_proc(path: &str) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if buf.len() - len < 4096 {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// A file's device (major, minor) and inode.
type Inode = (u32, u32, u64);

#[derive(Default)]
struct Found {
    unreadable: u32,
    paths: Vec<String>,
    seen: std::collections::HashSet<String>,
    /// Each file's device (major, minor) and inode: a name may be gone while the file has others.
    inodes: Vec<Inode>,
    seen_inodes: std::collections::HashSet<Inode>,
    bytes: usize,
}

/// The most path bytes one answer carries; past it the answer is "unreadable" (a whole walk).
const MAPPED_BYTES: usize = 2 << 20;

impl Found {
    /// Notes a path as the kernel names it in the sandbox (only those in the workspace count),
    /// with the file's device and inode when known.
    fn add(&mut self, path: &str, inode: Option<Inode>) {
        let Some(rel) = path.strip_prefix("/workspace/") else {
            return;
        };
        if rel.contains('\\') {
            self.unreadable += 1;
            return;
        }
        if let Some(i) = inode.filter(|i| self.seen_inodes.insert(*i)) {
            self.bytes += 16;
            self.inodes.push(i);
        }
        // "x (deleted)" is a deleted x, or a file of that very name: both are looked at.
        for p in std::iter::once(rel).chain(rel.strip_suffix(" (deleted)")) {
            self.name(p);
        }
    }

    fn name(&mut self, p: &str) {
        if self.bytes > MAPPED_BYTES {
            self.unreadable += 1;
        } else if self.seen.insert(p.to_string()) {
            self.bytes += p.len() + 4;
            self.paths.push(p.to_string());
        }
    }

    /// The `MAPS` payload: unreadable u32; the names (u32 count, each u32 length and bytes); the
    /// inodes (u32 count, each major u32, minor u32, inode u64).
    fn encode(self) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&self.unreadable.to_le_bytes());
        p.extend_from_slice(&(self.paths.len() as u32).to_le_bytes());
        for path in self.paths {
            p.extend_from_slice(&(path.len() as u32).to_le_bytes());
            p.extend_from_slice(path.as_bytes());
        }
        p.extend_from_slice(&(self.inodes.len() as u32).to_le_bytes());
        for (major, minor, ino) in self.inodes {
            p.extend_from_slice(&major.to_le_bytes());
            p.extend_from_slice(&minor.to_le_bytes());
            p.extend_from_slice(&ino.to_le_bytes());
        }
        p
    }
}

/// Adds the files `pid` maps shared and writable, or shared and able to be made writable again
/// (`mprotect`: such a map shows as `r--s` but keeps `mw`, may-write, in its smaps flags); false
/// when its maps cannot be read.
fn shared_writable_maps(pid: i32, found: &mut Found) -> bool {
    let maps = read_proc(&format!("/proc/{pid}/maps"));
    let Some(maps) = maps else { return false };
    let mut may_write = MayWrite { pid, inodes: None };
    for (path, inode, writable) in maps.lines().filter_map(shared_map) {
        if path.starts_with("/workspace/") && (writable || may_write.has(inode)) {
            found.add(path, inode);
        }
    }
    true
}

/// The files a process maps shared and may make writable, read from its smaps when first asked.
/// By file, not address: a map moved with `mremap` between the two reads is still found.
struct MayWrite {
    pid: i32,
    /// None: not read yet; Some(None): unreadable, so every map counts as may-write.
    inodes: Option<Option<std::collections::HashSet<Inode>>>,
}

impl MayWrite {
    fn has(&mut self, inode: Option<Inode>) -> bool {
        let pid = self.pid;
        let inodes = self.inodes.get_or_insert_with(|| may_write_inodes(pid));
        match (inodes, inode) {
            (Some(set), Some(i)) => set.contains(&i),
            _ => true,
        }
    }
}

/// A shared map's path, device and inode, and whether it is writable now, from a maps line
/// (`address perms offset dev inode path`).
fn shared_map(line: &str) -> Option<(&str, Option<Inode>, bool)> {
    let mut f = line.splitn(6, ' ');
    let perms = f.nth(1)?.as_bytes();
    if perms.get(3) != Some(&b's') {
        return None;
    }
    let (major, minor) = f.nth(1)?.split_once(':')?;
    let ino = f.next()?.parse::<u64>().ok();
    let path = f.next().unwrap_or("").trim_start();
    let hex = |x| u32::from_str_radix(x, 16).ok();
    let inode = hex(major).zip(hex(minor)).zip(ino);
    let writable = perms.get(1) == Some(&b'w');
    Some((path, inode.map(|((a, b), i)| (a, b, i)), writable))
}

/// The files `pid` maps shared with flags that say the map may be made writable (`mw`).
fn may_write_inodes(pid: i32) -> Option<std::collections::HashSet<Inode>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut out = std::collections::HashSet::new();
    let mut file = None;
    for line in smaps.lines() {
        match line.strip_prefix("VmFlags:") {
            Some(flags) if flags.split_whitespace().any(|f| f == "mw") => out.extend(file),
            Some(_) => {}
            // A map's first line starts with its range; its fields ("Size:") have no '-'.
            None if line.split(' ').next().is_some_and(|w| w.contains('-')) => {
                file = shared_map(line).and_then(|m| m.1);
            }
            None => {}
        }
    }
    Some(out)
}

/// Adds the files `pid` holds open for writing; false when its descriptors cannot be read.
fn writable_fds(pid: i32, found: &mut Found) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        // O_WRONLY or O_RDWR; an unreadable flags line counts as writable.
        if fd_flags(pid, &fd.file_name()).is_none_or(|f| f & 3 != 0) {
            found.add(&target.to_string_lossy(), inode_of(&fd.path()));
        }
    }
    true
}

/// The open flags of descriptor `fd` of `pid`, from its fdinfo.
fn fd_flags(pid: i32, fd: &std::ffi::OsStr) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()));
    let v = info
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))?
        .trim()
        .to_string();
    u32::from_str_radix(&v, 8).ok()
}

/// The device (major, minor) and inode of the file at `path` (an open descriptor: the file
/// itself, whatever its name now).
fn inode_of(path: &std::path::Path) -> Option<Inode> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let dev = m.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some((major as u32, minor as u32, m.ino()))
}

/// `sweep PID`: kills every process of this uid but itself until none is left, then prints
/// `killed N left M` and up to 20 command lines of what it killed, one per line.
fn sweep(skip: i32) {
    // SAFETY: getpid and getuid have no preconditions.
    let (me, uid) = unsafe { (getpid(), getuid()) };
    let alive = || -> Vec<(i32, String)> {
        processes()
            .into_iter()
            .filter(|&(pid, _, _, u)| pid != me && u == uid)
            .map(|(pid, ..)| (pid, command_line(pid)))
            .collect()
    };
    let mut seen: Vec<(i32, String)> = Vec::new();
    for _ in 0..500 {
        let now = alive();
        if now.is_empty() {
            break;
        }
        for p in now {
            if !seen.iter().any(|s| s.0 == p.0) {
                seen.push(p);
            }
        }
        // SAFETY: kill(-1) signals every process this uid may signal, never this one.
        unsafe { kill(-1, SIGKILL) };
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.retain(|s| s.0 != skip);
    let left = alive().len();
    println!("killed {} left {left}", seen.len());
    for (_, cmd) in seen.iter().take(20) {
        println!("{cmd}");
    }
}

fn command_line(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&raw[..raw.len().min(300)])
        .replace(['\0', '\n', '\r'], " ")
        .trim()
        .to_string();
    if !text.is_empty() {
        return text;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `status` with the given state, memory line and thread count.
    fn status(state: &str, vm: bool, threads: u32) -> String {
        let vm = if vm { "VmSize:\t  2048 kB\n" } else { "" };
        format!("Name:\tx\nState:\t{state}\nUid:\t1000\t1000\t1000\t1000\n{vm}Threads:\t{threads}\nSigQ:\t0/1\n")
    }

    #[test]
    fn only_a_process_alone_past_its_exit_is_taken_as_gone() {
        assert!(exited_alone(&status("Z (zombie)", false, 1)));
        assert!(
            exited_alone(&status("R (running)", false, 1)),
            "memory released"
        );
        assert!(!exited_alone(&status("S (sleeping)", true, 1)), "alive");
        assert!(
            !exited_alone(&status("Z (zombie)", false, 2)),
            "a leader whose threads go on"
        );
        assert!(
            !exited_alone(&status("R (running)", false, 3)),
            "its exit under way, threads on"
        );
    }
}
