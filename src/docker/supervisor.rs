//! The in-sandbox supervisor as the harness sees it: the embedded static executable, its read-only host copy, and the binary frames spoken with it.
//!
//! A frame is `kind: u8, id: u64 LE, len: u32 LE`, then `len` bytes; the kinds and payloads are
//! defined once, in `supervisor/main.rs`, and mirrored here. Output bytes travel as they are.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use bytes::{Buf, Bytes, BytesMut};

use crate::sandbox::{ExecOutcome, ExecRequest, MappedFiles};

/// The supervisor, built static by `build.rs`.
pub(crate) const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gptx-supervisor"));
/// Where every sandbox sees it (a read-only bind mount of [`host_copy`]).
pub(crate) const IN_SANDBOX: &str = "/.gptx/supervisor";
/// The protocol version this harness speaks; the supervisor says its own in every pong.
pub(crate) const VERSION: u32 = 3;

pub(crate) const EXEC: u8 = 1;
pub(crate) const PING: u8 = 2;
pub(crate) const MAPPED: u8 = 3;
pub(crate) const HELLO: u8 = 4;
pub(crate) const STDOUT: u8 = 16;
pub(crate) const STDERR: u8 = 17;
pub(crate) const EXIT: u8 = 18;
pub(crate) const PONG: u8 = 19;
pub(crate) const MAPS: u8 = 20;
pub(crate) const READY: u8 = 21;
/// Where every sandbox sees its [`Channel`]'s socket.
pub(crate) const SOCKET_IN_SANDBOX: &str = "/.gptx/io.sock";

/// The largest frame the harness accepts (an output frame is at most 1 MiB).
const MAX_FRAME: usize = 4 << 20;
const HEADER: usize = 13;

/// The host copy's mode: its owner's to read (root's), anyone's to run. Without root the owner is
/// the harness's user, which rootless Podman's keep-id makes the sandbox user: then no one may read
/// it (a bind mount read-only, so no chmod), and each process writes it afresh.
fn mode() -> u32 {
    match rustix::process::geteuid().is_root() {
        true => 0o711,
        false => 0o111,
    }
}

/// The host path of the supervisor's copy, written once per process: root-owned (or the user's),
/// mode 0711, in a directory only its owner can write, named by the binary's hash.
pub(crate) fn host_copy() -> Result<&'static Path, String> {
    static COPY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    COPY.get_or_init(write_host_copy)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

pub(crate) fn runtime_dir() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/gptx");
    }
    // Only a runtime directory that is there and the user's: a Slurm job may carry the login
    // node's `XDG_RUNTIME_DIR` to a node where it does not exist.
    let mine = |d: &Path| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == uid.as_raw());
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() && mine(&d) => d.join("gptx"),
        _ => std::env::temp_dir().join(format!("gptx-{}", uid.as_raw())),
    }
}

/// Writes the supervisor to `tmp` with its mode, and renames it to `path` (`tmp` is removed on
/// failure).
fn install(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode())
        .open(tmp)?;
    f.write_all(BINARY)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode())))
        .and_then(|()| std::fs::rename(tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(tmp);
        })
}

fn write_host_copy() -> Result<PathBuf, String> {
    let dir = runtime_dir();
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    make_private_dir(&dir)?;
    let hash = crate::trace::sha256_hex(BINARY);
    let path = dir.join(format!("supervisor-{}", &hash[..16]));
    // Execute-only for everyone else: a process that cannot read its own executable is made
    // non-dumpable by the kernel at exec, before its first instruction, so no command can open its
    // /proc/<pid>/fd/* even in the moment before it calls prctl.
    let mode_ok = std::fs::metadata(&path).is_ok_and(|m| m.mode() & 0o7777 == mode());
    if mode_ok && std::fs::read(&path).is_ok_and(|b| b == BINARY) {
        return Ok(path);
    }
    install(
        &dir.join(format!(".supervisor-{}.tmp", rand::random::<u64>())),
        &path,
    )
    .map_err(|e| fail("writing the supervisor into", e))?;
    Ok(path)
}

/// The fast way out of the sandbox: a Unix socket of the harness's, bind-mounted into the sandbox,
/// that takes only the connection showing the token just given to the supervisor on its stdin (which
/// no command can read: the supervisor is non-dumpable). Every other connection is dropped. Output
/// then skips the engine's attach stream, which tops out far below the machine's pipe speed.
pub(crate) struct Channel {
    path: PathBuf,
    waiting: Arc<StdMutex<Option<Waiting>>>,
    task: tokio::task::JoinHandle<()>,
}

type Waiting = (
    [u8; 32],
    tokio::sync::oneshot::Sender<tokio::net::UnixStream>,
);

/// Connections being checked at once; more are dropped unread.
const HANDSHAKES: usize = 8;

impl Channel {
    /// Listens on a new socket in the runtime directory, open to any uid (the sandbox user is one)
    /// in a directory only its owner can change.
    pub(crate) fn open(name: &str) -> Result<Self, String> {
        let dir = runtime_dir().join("io");
        make_private_dir(&dir)?;
        let path = dir.join(format!("{name}-{:016x}.sock", rand::random::<u64>()));
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("listening on {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let waiting: Arc<StdMutex<Option<Waiting>>> = Arc::default();
        let task = tokio::spawn(accept(listener, waiting.clone()));
        Ok(Self {
            path,
            waiting,
            task,
        })
    }

    pub(crate) fn host_path(&self) -> &Path {
        &self.path
    }

    /// A fresh token, and where the connection that shows it will arrive.
    pub(crate) fn expect(
        &self,
    ) -> (
        [u8; 32],
        tokio::sync::oneshot::Receiver<tokio::net::UnixStream>,
    ) {
        let token: [u8; 32] = rand::random();
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.waiting.lock().expect("channel") = Some((token, tx));
        (token, rx)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: tokio::net::UnixListener, waiting: Arc<StdMutex<Option<Waiting>>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    loop {
        let stream = next_connection(&listener).await;
        // Too many at once: dropped.
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            tokio::spawn(handshake_in(slot, stream, waiting.clone()));
        }
    }
}

/// [`handshake`], holding one of the [`HANDSHAKES`] slots while it runs.
async fn handshake_in(
    slot: tokio::sync::OwnedSemaphorePermit,
    stream: tokio::net::UnixStream,
    waiting: Arc<StdMutex<Option<Waiting>>>,
) {
    handshake(stream, &waiting).await;
    drop(slot);
}

/// The next connection; after a failed accept (EMFILE, ECONNABORTED) it waits a moment and goes
/// on listening.
async fn next_connection(listener: &tokio::net::UnixListener) -> tokio::net::UnixStream {
    loop {
        match listener.accept().await {
            Ok((s, _)) => return s,
            Err(e) => tracing::debug!("the supervisor socket's accept failed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn handshake(mut stream: tokio::net::UnixStream, waiting: &StdMutex<Option<Waiting>>) {
    use tokio::io::AsyncReadExt;
    let mut got = [0u8; 32];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_exact(&mut got),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let mut w = waiting.lock().expect("channel");
    let matches = w
        .as_ref()
        .is_some_and(|(t, _)| t.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
    if matches {
        if let Some((_, tx)) = w.take() {
            let _ = tx.send(stream);
        }
    }
}

pub(crate) fn make_private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(format!("creating {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory of uid {me} that no one else can write; it is not, so the \
             sandbox supervisor is not put there",
            dir.display()
        ));
    }
    Ok(())
}

/// A hello's payload: the token, then the socket's path in the sandbox.
pub(crate) fn hello_payload(token: &[u8; 32]) -> Vec<u8> {
    let mut p = token.to_vec();
    p.extend_from_slice(SOCKET_IN_SANDBOX.as_bytes());
    p
}

/// One frame, encoded.
pub(crate) fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.push(kind);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

/// An exec request's payload: timeout, command, working directory, environment, stdin.
pub(crate) fn exec_payload(req: &ExecRequest, cwd: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + req.cmd.len() + req.stdin.as_ref().map_or(0, Vec::len));
    p.extend_from_slice(&(req.timeout.as_millis() as u64).to_le_bytes());
    put_bytes(&mut p, req.cmd.as_bytes());
    put_bytes(&mut p, cwd.as_bytes());
    p.extend_from_slice(&(req.env.len() as u32).to_le_bytes());
    for (k, v) in &req.env {
        put_bytes(&mut p, k.as_bytes());
        put_bytes(&mut p, v.as_bytes());
    }
    match &req.stdin {
        None => p.push(0),
        Some(data) => {
            p.push(1);
            put_bytes(&mut p, data);
        }
    }
    p
}

/// A frame from the supervisor.
#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: u8,
    pub id: u64,
    pub data: Bytes,
}

/// Splits the supervisor's stdout into frames, whatever the chunks it arrives in.
#[derive(Default)]
pub(crate) struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The buffer to read more bytes straight into.
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next whole frame; Err when the stream is not the protocol (a frame too long to be one).
    pub(crate) fn next(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[9..13].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "a frame of {len} bytes (kind {}), more than {MAX_FRAME}",
                self.buf[0]
            ));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        let kind = self.buf[0];
        let id = u64::from_le_bytes(self.buf[1..9].try_into().expect("8 bytes"));
        self.buf.advance(HEADER);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Frame { kind, id, data }))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err(format!("{} bytes short", N - self.0.len()));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    /// A u32 count, then that many items (at most 2^20).
    fn list<T>(&mut self, item: fn(&mut Self) -> Result<T, String>) -> Result<Vec<T>, String> {
        let n = self.u32()?;
        (0..n.min(1 << 20)).map(|_| item(self)).collect()
    }
    /// A device (major u32, minor u32) and an inode (u64), as `st_dev` and `st_ino`.
    fn inode(&mut self) -> Result<(u64, u64), String> {
        let dev = rustix::fs::makedev(self.u32()?, self.u32()?);
        Ok((dev, u64::from_le_bytes(self.take()?)))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(format!("a string of {n} bytes in {} left", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(String::from_utf8_lossy(a).into_owned())
    }
}

/// An exit frame's payload as an outcome (see `exit_payload` in `supervisor/main.rs`).
pub(crate) fn parse_exit(p: &[u8]) -> Result<ExecOutcome, String> {
    let mut r = Reader(p);
    let [flags] = r.take::<1>()?;
    let code = i32::from_le_bytes(r.take()?);
    let signal = i32::from_le_bytes(r.take()?);
    let cpu = f64::from_le_bytes(r.take()?);
    let rss = u64::from_le_bytes(r.take()?);
    let cg_cpu = f64::from_le_bytes(r.take()?);
    let cg_peak = u64::from_le_bytes(r.take()?);
    let duration_ms = f64::from_le_bytes(r.take()?);
    let error = r.string()?;
    let on = |bit: u8| flags & bit != 0;
    Ok(ExecOutcome {
        exit_code: on(1).then_some(code),
        signal: on(2).then_some(signal),
        timed_out: on(4),
        oom_killed: on(8),
        duration_ms,
        cpu_seconds: cpu,
        max_rss_kb: rss,
        container_cpu_seconds: on(16).then_some(cg_cpu),
        container_peak_bytes: on(32).then_some(cg_peak),
        error: (!error.is_empty()).then_some(error),
    })
}

/// A pong: the supervisor's protocol version, its pid, whether it made itself non-dumpable.
pub(crate) fn parse_pong(p: &[u8]) -> Result<(u32, u32, bool), String> {
    let mut r = Reader(p);
    let (version, pid) = (r.u32()?, r.u32()?);
    let [undumpable] = r.take::<1>()?;
    Ok((version, pid, undumpable == 1))
}

/// A maps answer: how many processes could not be looked at, and the mapped workspace paths.
pub(crate) fn parse_maps(p: &[u8]) -> Result<Maps, String> {
    let mut r = Reader(p);
    Ok(Maps {
        unreadable: r.u32()?,
        paths: r.list(Reader::string)?,
        inodes: r.list(Reader::inode)?,
    })
}

/// A `MAPS` answer: how many processes could not be read, and the workspace files the others map
/// shared and writable or hold open for writing, by name and by (device, inode).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Maps {
    pub unreadable: u32,
    pub paths: Vec<String>,
    pub inodes: Vec<(u64, u64)>,
}

impl Maps {
    /// The files, or why they cannot be known (a process whose maps could not be read).
    pub fn known(self) -> Result<MappedFiles, String> {
        match self.unreadable {
            0 => Ok(MappedFiles {
                paths: self.paths,
                inodes: self.inodes,
            }),
            n => Err(format!(
                "the memory maps of {n} processes of the agent could not be read"
            )),
        }
    }
}

/// What `supervisor sweep` printed: `killed N left M`, then up to 20 command lines.
pub(crate) fn parse_sweep(out: &[u8]) -> Result<(u64, u64, Vec<String>), String> {
    let text = String::from_utf8_lossy(out);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let nums: Vec<&str> = first.split_whitespace().collect();
    match nums[..] {
        ["killed", k, "left", l] => {
            let n = |s: &str| s.parse::<u64>().map_err(|e| format!("{first:?}: {e}"));
            Ok((n(k)?, n(l)?, lines.map(str::to_string).collect()))
        }
        _ => Err(format!(
            "the process sweep printed {:?}",
            text.chars().take(200).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(o: usize) -> usize {
        u64::from_le_bytes(BINARY[o..o + 8].try_into().unwrap()) as usize
    }

    /// An ELF64 file's program headers: (type, file offset, file size).
    fn program_headers(elf: &[u8]) -> Vec<(u32, usize, usize)> {
        let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        (0..phnum)
            .map(|i| {
                let o = phoff + i * phentsize;
                let kind = u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
                (kind, u64_at(o + 8), u64_at(o + 32))
            })
            .collect()
    }

    #[test]
    fn the_embedded_supervisor_is_a_static_executable() {
        // ELF, and no program header asks for an interpreter (PT_INTERP = 3): the kernel runs it
        // as it is, in an image without a C library.
        assert_eq!(&BINARY[..4], b"\x7fELF");
        assert_eq!(BINARY[4], 2, "64-bit");
        let headers = program_headers(BINARY);
        assert!(
            headers.iter().all(|h| h.0 != 3),
            "program headers {headers:?} include PT_INTERP"
        );
        // And its dynamic section (a static-pie has one, for relocations) needs no library.
        for &(_, offset, size) in headers.iter().filter(|h| h.0 == 2) {
            let tags: Vec<usize> = (offset..offset + size).step_by(16).map(u64_at).collect();
            assert!(!tags.contains(&1), "DT_NEEDED in {tags:?}");
        }
    }

    #[test]
    fn frames_split_across_chunks_come_out_whole_and_a_huge_length_is_refused() {
        let mut wire = frame(STDOUT, 7, b"hello");
        wire.extend(frame(EXIT, 7, &[0u8; 3]));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            d.push(b);
            while let Some(f) = d.next().unwrap() {
                got.push((f.kind, f.id, f.data.to_vec()));
            }
        }
        assert_eq!(
            got,
            vec![(STDOUT, 7, b"hello".to_vec()), (EXIT, 7, vec![0; 3])]
        );
        let mut bad = Decoder::default();
        bad.push(&frame(STDOUT, 1, &[])[..9]);
        bad.push(&u32::MAX.to_le_bytes());
        assert!(bad.next().unwrap_err().contains("more than"));
    }

    #[test]
    fn a_maps_answer_names_files_by_device_and_inode() {
        let mut p = vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        p.extend_from_slice(&[8, 0, 0, 0, 1, 0, 0, 0]);
        p.extend_from_slice(&42u64.to_le_bytes());
        assert_eq!(parse_maps(&p).unwrap().inodes, vec![(0x801, 42)]);
        assert!(parse_maps(&p[..p.len() - 1]).is_err());
        let unknown = Maps {
            unreadable: 2,
            ..parse_maps(&p).unwrap()
        };
        assert!(unknown.known().unwrap_err().contains("2 processes"));
    }

    #[test]
    fn short_or_odd_payloads_are_errors_not_panics() {
        assert!(parse_exit(&[1, 2, 3]).is_err() && parse_pong(&[]).is_err());
        assert!(parse_maps(&[0, 0, 0, 0, 5, 0, 0, 0]).is_err());
        let m = parse_maps(&[0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, 0, 0, 0]).unwrap();
        assert_eq!((m.unreadable, m.paths), (0, vec!["a".to_string()]));
        assert!(parse_sweep(b"nonsense").is_err());
        assert_eq!(
            parse_sweep(b"killed 2 left 0\nsleep 100\nbash\n").unwrap(),
            (2, 0, vec!["sleep 100".into(), "bash".into()])
        );
    }
}
