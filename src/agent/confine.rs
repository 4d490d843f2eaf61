//! Confines an `exec:` agent run without root: its own user, mount and PID namespaces, the filesystem read-only, the harness's secrets hidden.
//!
//! Run by an ordinary user (rootless Podman), gptx cannot give the agent another uid: the agent
//! shares its uid with gptx, Podman and the sandboxes' processes. [`install`] makes the child that
//! becomes the agent, before it execs `sh -c`, do what an ordinary user may do with user namespaces:
//!
//! 1. new user, mount, PID and IPC namespaces, in which it is root over the user's one uid;
//! 2. a fork: the agent is PID 1 of the new PID namespace, its parent (the process gptx tracks, in
//!    the agent's process group) waits for it and exits with its status; the agent dies with it
//!    (`PR_SET_PDEATHSIG`), and every process of the namespace dies with the agent;
//! 3. mounts made private, every path of [`secret_paths`] covered by an empty read-only tmpfs (a
//!    socket by `/dev/null`), the whole tree made read-only, then a fresh `/proc` (only the
//!    namespace's own processes: not gptx, Podman or the sandboxes'), fresh tmpfs on `/tmp`, the
//!    scratch HOME and `/dev/shm`, and a new `/dev/pts` instance;
//! 4. a nested user and mount namespace mapping the user's uid back: every mount above is locked
//!    (it cannot be unmounted to show what it covers, nor made writable), the agent is not root in
//!    it and so holds no capability after exec; `PR_SET_NO_NEW_PRIVS`; no controlling terminal.
//!
//! Everything the child uses is allocated before the fork ([`Plan`]): in the child only raw system
//! calls run. A failed step is written to a pipe as its [`Step`] and errno, which [`Report::explain`]
//! turns into words once `spawn` has failed. A host that forbids unprivileged user namespaces makes
//! `ExecAgent::spawn` fail unless [`OPT_OUT`] is set.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libc::{c_int, c_ulong};

/// Set to `1`, exec agents of a gptx run without root start unconfined (where the host forbids
/// unprivileged user namespaces); they can then read hidden data and talk to the engine.
pub const OPT_OUT: &str = "GPTX_UNCONFINED_AGENTS";

/// Runs directories registered by the harness ([`hide`]), hidden from every later agent.
static HIDDEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Hides `path` (a runs directory, say) from every exec agent started after this call.
pub fn hide(path: &Path) {
    let mut h = HIDDEN.lock().unwrap_or_else(|e| e.into_inner());
    if !h.iter().any(|p| p == path) {
        h.push(path.to_path_buf());
    }
}

/// How exec agents of this process are kept from the harness's secrets, for run.json: `nobody`
/// (gptx runs as root), `namespaces` (rootless, confined here) or `none` (rootless, [`OPT_OUT`]).
pub fn isolation() -> &'static str {
    if rustix::process::geteuid().is_root() {
        "nobody"
    } else if opted_out() {
        "none"
    } else {
        "namespaces"
    }
}

/// Whether the user said to run agents unconfined ([`OPT_OUT`]` = 1`).
pub(crate) fn opted_out() -> bool {
    std::env::var_os(OPT_OUT).is_some_and(|v| v == "1")
}

/// Makes this process non-dumpable, so a process of the same uid can neither ptrace it nor read
/// its `/proc/<pid>/mem`, `environ` or `fd/` (Podman's and the sandboxes' processes stay
/// dumpable: the agent's PID namespace is what keeps it from them).
pub(crate) fn protect_harness() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// What the agent must not see: `cache` (the world cache), the user's gptx cache, runs
/// directories (`<cwd>/runs`, `$GPTX_RUNS_DIR`, those given to [`hide`]), the runtime directories
/// (`$XDG_RUNTIME_DIR`, `/run/user/<uid>`, gptx's own), the engine's socket or its directory, and
/// Podman's storage and configuration.
pub(crate) fn secret_paths(cache: &Path) -> Vec<PathBuf> {
    let env = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let uid = rustix::process::geteuid().as_raw();
    let home = env("HOME");
    let mut out = vec![cache.to_path_buf()];
    out.extend(crate::config::embedded::user_cache());
    out.extend(env("GPTX_CACHE_DIR"));
    out.extend(env("GPTX_RUNS_DIR"));
    out.extend(std::env::current_dir().ok().map(|d| d.join("runs")));
    out.extend(env("XDG_RUNTIME_DIR"));
    out.push(PathBuf::from(format!("/run/user/{uid}")));
    out.push(std::env::temp_dir().join(format!("gptx-{uid}")));
    let data = env("XDG_DATA_HOME").or_else(|| home.as_ref().map(|h| h.join(".local/share")));
    let config = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    out.extend(
        [data, config]
            .into_iter()
            .flatten()
            .map(|d| d.join("containers")),
    );
    for var in ["DOCKER_HOST", "CONTAINER_HOST"] {
        out.extend(env(var).as_deref().and_then(engine_socket));
    }
    out.extend(["/var/run/docker.sock", "/run/docker.sock"].map(PathBuf::from));
    out.extend(
        HIDDEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    out
}

/// What to hide of an engine address: the directory of a `unix://` socket, or the socket alone
/// when that directory is one the system shares (`/run`, `/tmp`...).
fn engine_socket(address: &Path) -> Option<PathBuf> {
    let bytes = address.as_os_str().as_bytes().strip_prefix(b"unix://")?;
    let socket = Path::new(std::ffi::OsStr::from_bytes(bytes));
    let shared = ["/", "/run", "/var/run", "/tmp", "/var/tmp", "/var", "/dev"];
    match socket.parent() {
        Some(dir) if !shared.iter().any(|s| dir == Path::new(s)) => Some(dir.to_path_buf()),
        _ => Some(socket.to_path_buf()),
    }
}

/// A path to cover: a directory by an empty read-only tmpfs, anything else by `/dev/null`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hidden {
    path: PathBuf,
    dir: bool,
}

/// The paths that exist, resolved, each once, none below another directory of the list (whose
/// mount already covers it). `/` cannot be hidden.
fn covering(paths: &[PathBuf]) -> io::Result<Vec<Hidden>> {
    let mut found: Vec<Hidden> = paths
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .map(|path| Hidden {
            dir: path.is_dir(),
            path,
        })
        .collect();
    // A parent sorts before what is below it.
    found.sort();
    found.dedup();
    let mut kept: Vec<Hidden> = Vec::new();
    for h in found {
        if h.path == Path::new("/") {
            return Err(io::Error::other("cannot hide / from the agent"));
        }
        if !kept.iter().any(|k| k.dir && h.path.starts_with(&k.path)) {
            kept.push(h);
        }
    }
    Ok(kept)
}

/// One step of the child's work, as the report pipe names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Dumpable = 1,
    Unshare,
    Setgroups,
    UidMap,
    GidMap,
    Fork,
    Parent,
    Private,
    Hide,
    ReadOnly,
    Proc,
    Tmp,
    Home,
    Shm,
    Pts,
    Chdir,
    Nest,
    NestSetgroups,
    NestUidMap,
    NestGidMap,
    NoNewPrivs,
}

impl Step {
    const ALL: [Step; 21] = [
        Step::Dumpable,
        Step::Unshare,
        Step::Setgroups,
        Step::UidMap,
        Step::GidMap,
        Step::Fork,
        Step::Parent,
        Step::Private,
        Step::Hide,
        Step::ReadOnly,
        Step::Proc,
        Step::Tmp,
        Step::Home,
        Step::Shm,
        Step::Pts,
        Step::Chdir,
        Step::Nest,
        Step::NestSetgroups,
        Step::NestUidMap,
        Step::NestGidMap,
        Step::NoNewPrivs,
    ];

    /// The step of a report's first byte.
    fn of(code: u8) -> Option<Step> {
        Self::ALL.into_iter().find(|s| *s as u8 == code)
    }

    /// What the step does, in words.
    fn what(self) -> &'static str {
        match self {
            Step::Dumpable => "making the child dumpable (PR_SET_DUMPABLE)",
            Step::Unshare => "creating user, mount, PID and IPC namespaces (unshare)",
            Step::Setgroups => "writing /proc/self/setgroups",
            Step::UidMap => "writing /proc/self/uid_map",
            Step::GidMap => "writing /proc/self/gid_map",
            Step::Fork => "forking the PID namespace's first process",
            Step::Parent => "tying the agent to its parent (PR_SET_PDEATHSIG)",
            Step::Private => "making the mounts private",
            Step::Hide => "covering a hidden path with an empty mount",
            Step::ReadOnly => "making the filesystem read-only (mount_setattr)",
            Step::Proc => "mounting a fresh /proc",
            Step::Tmp => "mounting a tmpfs on /tmp",
            Step::Home => "making the scratch HOME",
            Step::Shm => "mounting a tmpfs on /dev/shm",
            Step::Pts => "mounting a new /dev/pts",
            Step::Chdir => "entering the working directory",
            Step::Nest => "creating the nested user and mount namespaces",
            Step::NestSetgroups => "writing the nested /proc/self/setgroups",
            Step::NestUidMap => "writing the nested /proc/self/uid_map",
            Step::NestGidMap => "writing the nested /proc/self/gid_map",
            Step::NoNewPrivs => "setting PR_SET_NO_NEW_PRIVS",
        }
    }
}

/// Everything the child needs, made before the fork.
struct Plan {
    /// `0 <euid> 1` and `0 <egid> 1`: root over the user's ids in the first namespace.
    outer: (Vec<u8>, Vec<u8>),
    /// `<euid> 0 1` and `<egid> 0 1`: the user's ids again in the nested one.
    inner: (Vec<u8>, Vec<u8>),
    hidden: Vec<(CString, bool)>,
    home: CString,
    /// The directories to make in the fresh /tmp down to the home, when it is below /tmp.
    home_in_tmp: Option<Vec<CString>>,
    tmp: bool,
    shm: bool,
    pts: bool,
    cwd: CString,
    /// The write end of the report pipe (close-on-exec).
    report: OwnedFd,
}

/// The read end of the report pipe and the hidden paths, to explain a failed spawn.
pub(crate) struct Report {
    pipe: OwnedFd,
    hidden: Vec<PathBuf>,
}

/// A path as a C string (a path from the OS holds no NUL byte).
fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// The directories from below /tmp down to `home`, when `home` is below /tmp.
fn below_tmp(home: &Path) -> io::Result<Option<Vec<CString>>> {
    let Ok(rest) = home.strip_prefix("/tmp") else {
        return Ok(None);
    };
    let mut dirs = Vec::new();
    let mut at = PathBuf::from("/tmp");
    for part in rest.components() {
        at.push(part);
        dirs.push(c_path(&at)?);
    }
    Ok(Some(dirs))
}

impl Plan {
    /// The plan for an agent with its scratch `home`, started in `cwd`, kept from `hidden`.
    fn new(home: &Path, cwd: &Path, hidden: &[PathBuf]) -> io::Result<(Self, Report)> {
        let (euid, egid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let covered = covering(hidden)?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let plan = Plan {
            outer: (format!("0 {euid} 1").into(), format!("0 {egid} 1").into()),
            inner: (format!("{euid} 0 1").into(), format!("{egid} 0 1").into()),
            hidden: covered
                .iter()
                .map(|h| Ok((c_path(&h.path)?, h.dir)))
                .collect::<io::Result<_>>()?,
            home: c_path(home)?,
            home_in_tmp: below_tmp(home)?,
            tmp: Path::new("/tmp").is_dir(),
            shm: Path::new("/dev/shm").is_dir(),
            pts: Path::new("/dev/pts").is_dir(),
            cwd: c_path(cwd)?,
            report: write,
        };
        let report = Report {
            pipe: read,
            hidden: covered.into_iter().map(|h| h.path).collect(),
        };
        Ok((plan, report))
    }
}

/// Makes `cmd`'s child confine itself before it execs (see the module's documentation): `home` is
/// the agent's scratch HOME, `cwd` the directory it starts in, `hidden` what it must not see
/// ([`secret_paths`]). The returned [`Report`] explains a spawn that fails.
pub(crate) fn install(
    cmd: &mut std::process::Command,
    home: &Path,
    cwd: &Path,
    hidden: &[PathBuf],
) -> io::Result<Report> {
    use std::os::unix::process::CommandExt;
    let (plan, report) = Plan::new(home, cwd, hidden)?;
    // SAFETY: the closure runs in the forked child of a possibly multi-threaded process: it only
    // makes system calls on data allocated before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || plan.enter());
    }
    Ok(report)
}

impl Plan {
    /// In the forked child: the namespaces, the fork, then [`Plan::confine`] in the grandchild. The
    /// child itself never returns: it waits for the grandchild and exits with its status.
    fn enter(&self) -> io::Result<()> {
        // gptx is non-dumpable, which would leave this child's /proc/self/*_map to root.
        self.step(Step::Dumpable, prctl(libc::PR_SET_DUMPABLE, 1))?;
        // SAFETY: resets a disposition; no handler of gptx's runs in this child.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        let flags =
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
        self.step(Step::Unshare, unshare(flags))?;
        self.step(
            Step::Setgroups,
            write_file(c"/proc/self/setgroups", b"deny"),
        )?;
        self.step(
            Step::UidMap,
            write_file(c"/proc/self/uid_map", &self.outer.0),
        )?;
        self.step(
            Step::GidMap,
            write_file(c"/proc/self/gid_map", &self.outer.1),
        )?;
        let mut alive = [0 as c_int; 2];
        // SAFETY: pipe2 writes two fds into the array.
        let piped = check(unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) }.into());
        self.step(Step::Fork, piped)?;
        // SAFETY: fork in a single-threaded child; both sides only make system calls.
        let pid = self.step(Step::Fork, check(unsafe { libc::fork() }.into()))?;
        if pid != 0 {
            wait_and_exit(pid as libc::pid_t, alive[1]);
        }
        // SAFETY: closes this process's copy of the parent's end.
        unsafe { libc::close(alive[1]) };
        self.step(
            Step::Parent,
            prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong),
        )?;
        self.step(Step::Parent, parent_alive(alive[0]))?;
        drop_terminal();
        self.confine()
    }

    /// In the grandchild, PID 1 of the new namespace: the mounts, then the nested namespace.
    fn confine(&self) -> io::Result<()> {
        let private = mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None);
        self.step(Step::Private, private)?;
        for (i, (path, dir)) in self.hidden.iter().enumerate() {
            self.step_at(Step::Hide, i, cover(path, *dir))?;
        }
        self.step(Step::ReadOnly, read_only_tree())?;
        let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let proc = mount(Some(c"proc"), c"/proc", Some(c"proc"), noexec, None);
        self.step(Step::Proc, proc)?;
        self.scratch()?;
        // A working directory below a hidden path would still reach under its cover.
        // SAFETY: chdir to paths allocated before the fork.
        let entered = check(unsafe { libc::chdir(self.cwd.as_ptr()) }.into())
            .or_else(|_| check(unsafe { libc::chdir(self.home.as_ptr()) }.into()));
        self.step(Step::Chdir, entered)?;
        self.nest()
    }

    /// Fresh writable tmpfs on /tmp, the scratch HOME and /dev/shm, and a new /dev/pts.
    fn scratch(&self) -> io::Result<()> {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        if self.tmp {
            let tmp = mount(
                Some(c"tmpfs"),
                c"/tmp",
                Some(c"tmpfs"),
                flags,
                Some(c"mode=1777"),
            );
            self.step(Step::Tmp, tmp)?;
        }
        match &self.home_in_tmp {
            Some(dirs) if self.tmp => {
                for d in dirs {
                    // SAFETY: mkdir of a path allocated before the fork.
                    self.step(
                        Step::Home,
                        check(unsafe { libc::mkdir(d.as_ptr(), 0o700) }.into()),
                    )?;
                }
            }
            _ => {
                let fs = Some(c"tmpfs");
                let home = mount(fs, &self.home, fs, flags, Some(c"mode=0700"));
                self.step(Step::Home, home)?;
            }
        }
        if self.shm {
            let shm = mount(
                Some(c"tmpfs"),
                c"/dev/shm",
                Some(c"tmpfs"),
                flags,
                Some(c"mode=1777"),
            );
            self.step(Step::Shm, shm)?;
        }
        if self.pts {
            self.step(Step::Pts, new_pts())?;
        }
        Ok(())
    }

    /// The nested user and mount namespace over the user's own ids, and no new privileges.
    fn nest(&self) -> io::Result<()> {
        self.step(Step::Nest, unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
        let setgroups = write_file(c"/proc/self/setgroups", b"deny");
        self.step(Step::NestSetgroups, setgroups)?;
        let uid = write_file(c"/proc/self/uid_map", &self.inner.0);
        self.step(Step::NestUidMap, uid)?;
        let gid = write_file(c"/proc/self/gid_map", &self.inner.1);
        self.step(Step::NestGidMap, gid)?;
        self.step(Step::NoNewPrivs, prctl(libc::PR_SET_NO_NEW_PRIVS, 1))
    }

    /// `result`, its failure reported as `step`.
    fn step<T>(&self, step: Step, result: io::Result<T>) -> io::Result<T> {
        self.step_at(step, 0, result)
    }

    /// `result`, its failure reported as `step` of the `index`-th hidden path: on the report pipe
    /// and on stderr.
    fn step_at<T>(&self, step: Step, index: usize, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
            let i = index.min(u16::MAX as usize) as u16;
            let mut msg = [0u8; 7];
            msg[0] = step as u8;
            msg[1..3].copy_from_slice(&i.to_le_bytes());
            msg[3..].copy_from_slice(&errno.to_le_bytes());
            write_all(self.report.as_raw_fd(), &msg);
            let mut digits = [0u8; 12];
            for part in [
                &b"gptx: confining the agent failed: "[..],
                step.what().as_bytes(),
                b": errno ",
                decimal(errno, &mut digits),
                b"\n",
            ] {
                write_all(2, part);
            }
        }
        result
    }
}

/// The parent's side of the fork: nothing of gptx's kept open but stderr and the pipe that tells
/// the child it lives; waits for the child and exits with its status (128 + signal if killed).
fn wait_and_exit(child: libc::pid_t, alive: c_int) -> ! {
    // SAFETY: system calls on this process's own fds and child; _exit never returns.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::close(0);
        libc::close(1);
        let alive = alive as libc::c_uint;
        if alive > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                alive - 1,
                0 as libc::c_uint,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            alive + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        let mut status: c_int = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            libc::_exit(128 + libc::WTERMSIG(status));
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// Whether the parent still holds its end of `alive` (checked after `PR_SET_PDEATHSIG`, so a
/// parent killed before it cannot leave the child running); closes the child's end.
fn parent_alive(alive: c_int) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: alive,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one fd of this process, without waiting; then closes it.
    let polled = check(unsafe { libc::poll(&mut fd, 1, 0) }.into());
    unsafe { libc::close(alive) };
    polled?;
    if fd.revents & libc::POLLHUP != 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Gives up the controlling terminal (the process stays in its group and session), so the agent
/// cannot read gptx's terminal or push input into it.
fn drop_terminal() {
    // SAFETY: open, ioctl and close of /dev/tty; a failure means there is no terminal to drop.
    unsafe {
        let fd = libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::ioctl(fd, libc::TIOCNOTTY);
            libc::close(fd);
        }
    }
}

/// Covers `path`: an empty read-only tmpfs over a directory, `/dev/null` over anything else.
fn cover(path: &CStr, dir: bool) -> io::Result<()> {
    let locked = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if dir {
        let fs = Some(c"tmpfs");
        mount(fs, path, fs, locked, Some(c"mode=0755,size=4k"))
    } else {
        mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None)
    }
}

/// A new `devpts` instance on /dev/pts (the user's terminals gone from view), else an empty
/// read-only tmpfs there.
fn new_pts() -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    let opts = Some(c"newinstance,ptmxmode=0666,mode=0620");
    mount(Some(c"devpts"), c"/dev/pts", Some(c"devpts"), flags, opts)
        .or_else(|_| cover(c"/dev/pts", true))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Every mount of the tree read-only (`mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, RDONLY)`).
fn read_only_tree() -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the attr struct lives across the call, and its size is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r as i64).map(drop)
}

/// `mount(2)` with optional source, type and data.
fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a C string alive across the call.
    let r = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    check(r.into()).map(drop)
}

/// `unshare(2)`.
fn unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: no memory is involved.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// `prctl(2)` with one argument.
fn prctl(option: c_int, arg: c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take a plain number.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) }.into()).map(drop)
}

/// Writes `data` to the file at `path` in one write (the way /proc's id maps want it).
fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: open of a C string; write from a live slice; close of the fd opened here.
    unsafe {
        let fd =
            check(libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC).into())? as c_int;
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let written = check(n as i64);
        libc::close(fd);
        match written? as usize == data.len() {
            true => Ok(()),
            false => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// Writes `data` to `fd`, ignoring failures (a report nobody reads).
fn write_all(fd: c_int, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: a write from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return;
        }
        data = &data[n as usize..];
    }
}

/// `n` in decimal, in `buf`, without allocating.
fn decimal(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// A system call's -1 as the thread's errno.
fn check(r: i64) -> io::Result<i64> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Unprivileged user namespaces are off: how to turn them on, or opt out.
const NO_USERNS: &str = "this host does not let an ordinary user create user namespaces, which \
    gptx needs to keep an exec: agent run without root from the hidden data, other runs and the \
    engine. Allow them (sysctl user.max_user_namespaces=15000; on Debian kernels \
    kernel.unprivileged_userns_clone=1; on Ubuntu 23.10+ kernel.apparmor_restrict_unprivileged_userns=0), \
    run gptx as root, or set GPTX_UNCONFINED_AGENTS=1 to run exec: agents unconfined (they can \
    then read what gptx can)";

impl Report {
    /// Why the spawn failed with `err`: the step the child reported, in words, with a fix for a
    /// host without unprivileged user namespaces.
    pub(crate) fn explain(&self, err: &io::Error) -> String {
        let mut msg = [0u8; 7];
        let fd = self.pipe.as_raw_fd();
        // SAFETY: a non-blocking read into a local buffer: the child wrote before it failed.
        let n = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::read(fd, msg.as_mut_ptr().cast(), msg.len())
        };
        if n != msg.len() as isize {
            return format!("confining the agent: {err}");
        }
        self.describe(msg)
    }

    /// The words for a report's bytes: step, hidden path index, errno.
    fn describe(&self, msg: [u8; 7]) -> String {
        let errno = i32::from_le_bytes([msg[3], msg[4], msg[5], msg[6]]);
        let os = io::Error::from_raw_os_error(errno);
        let Some(step) = Step::of(msg[0]) else {
            return format!("confining the agent: {os}");
        };
        let userns = [libc::EPERM, libc::EINVAL, libc::ENOSPC, libc::EACCES].contains(&errno);
        let what = match step {
            Step::Hide => {
                let i = u16::from_le_bytes([msg[1], msg[2]]) as usize;
                let path = self.hidden.get(i).map(|p| p.display().to_string());
                format!("{} ({})", step.what(), path.unwrap_or_default())
            }
            _ => step.what().to_string(),
        };
        match step {
            Step::Unshare | Step::Setgroups | Step::UidMap | Step::GidMap if userns => {
                format!("confining the agent: {what}: {os}: {NO_USERNS}")
            }
            Step::Proc if errno == libc::EPERM => format!(
                "confining the agent: {what}: {os}: gptx seems to run in a container that masks \
                 parts of /proc; run it on the host, as root, or set {OPT_OUT}=1"
            ),
            _ => format!("confining the agent: {what}: {os}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn hidden_paths_that_exist_are_covered_once_and_never_below_another() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        std::fs::create_dir_all(cache.join("worlds")).unwrap();
        std::fs::write(d.path().join("sock"), "").unwrap();
        let got = covering(&[
            cache.join("worlds"),
            d.path().join("missing"),
            cache.clone(),
            d.path().join("cache/../cache"),
            d.path().join("sock"),
        ])
        .unwrap();
        let root = d.path().canonicalize().unwrap();
        let want = [(root.join("cache"), true), (root.join("sock"), false)];
        let got: Vec<_> = got.into_iter().map(|h| (h.path, h.dir)).collect();
        assert_eq!(got, want);
        assert!(covering(&[PathBuf::from("/")]).is_err());
    }

    #[test]
    fn an_engine_socket_is_hidden_with_its_directory_unless_the_system_shares_it() {
        let of = |a: &str| engine_socket(Path::new(a));
        let user = of("unix:///run/user/2000/podman/podman.sock");
        assert_eq!(user, Some(PathBuf::from("/run/user/2000/podman")));
        let docker = of("unix:///var/run/docker.sock");
        assert_eq!(docker, Some(PathBuf::from("/var/run/docker.sock")));
        assert_eq!(of("tcp://127.0.0.1:2375"), None);
        let paths = secret_paths(Path::new("/nonexistent/cache"));
        assert!(paths.contains(&PathBuf::from("/nonexistent/cache")));
    }

    #[test]
    fn a_report_names_the_step_the_path_and_the_fix() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        let report = Report {
            pipe: read,
            hidden: vec![PathBuf::from("/c"), PathBuf::from("/r")],
        };
        let msg = |step: Step, i: u16, errno: i32| {
            let mut m = [step as u8, 0, 0, 0, 0, 0, 0];
            m[1..3].copy_from_slice(&i.to_le_bytes());
            m[3..].copy_from_slice(&errno.to_le_bytes());
            report.describe(m)
        };
        let userns = msg(Step::Unshare, 0, libc::ENOSPC);
        assert!(
            userns.contains("unshare") && userns.contains(OPT_OUT),
            "{userns}"
        );
        assert!(userns.contains("user.max_user_namespaces"), "{userns}");
        let hide = msg(Step::Hide, 1, libc::ENOENT);
        assert!(hide.contains("(/r)"), "{hide}");
        assert!(!hide.contains(OPT_OUT), "{hide}");
        // Nothing written: the spawn's own error.
        let e = io::Error::from_raw_os_error(libc::EPERM);
        assert!(report.explain(&e).starts_with("confining the agent: "));
        assert!(Step::ALL.iter().all(|s| Step::of(*s as u8) == Some(*s)));
        assert_eq!(decimal(-12, &mut [0; 12]), b"-12");
        assert_eq!(decimal(i32::MIN, &mut [0; 12]), b"-2147483648");
    }

    /// What a confined agent looks at, one `key value` line each.
    const PROBE: &str = r#"
echo "uid $(id -u)"
echo "cache_entries $(ls -A "$CACHE" | wc -l)"
cat "$CACHE/worlds/w/hidden/doc.txt" >/dev/null 2>&1 && echo "hidden_doc read" || echo "hidden_doc unreadable"
echo "runs_entries $(ls -A "$RUNS" | wc -l)"
echo "xdg_entries $(ls -A "${XDG_RUNTIME_DIR:-/nonexistent}" 2>/dev/null | wc -l)"
test -S "${XDG_RUNTIME_DIR:-/nonexistent}/podman.sock" && echo "podman_socket seen" || echo "podman_socket unseen"
echo "procs $(ls /proc | grep -c '^[0-9]')"
test -e "/proc/$HARNESS" && echo "harness seen" || echo "harness unseen"
echo "self $$"
echo "checkout_write $( (echo x > "$CHECKOUT/new") 2>&1 | grep -c 'Read-only file system')"
echo x > "$HOME/x" && echo "home writable"
echo x > /tmp/x && echo "tmp writable"
echo "tmp_entries $(ls -A /tmp | wc -l)"
umount "$CACHE" 2>/dev/null && echo "umount done" || echo "umount refused"
unshare -Urm umount "$CACHE" 2>/dev/null && echo "nested_umount done" || echo "nested_umount refused"
echo "capeff $(awk '/^CapEff/ {print $2}' /proc/self/status)"
echo "cwd $(pwd)"
"#;

    /// A checkout with a cache holding a hidden document and a runs directory, out of /tmp (which
    /// the agent gets afresh anyway) when HOME allows; None (with a note) when the test runs as root.
    fn checkout() -> Option<tempfile::TempDir> {
        if rustix::process::geteuid().is_root() {
            println!("root: exec agents run as nobody, not confined; tests/rootless/confine-check.sh runs this as a user");
            return None;
        }
        let base = std::env::var_os("HOME").map(PathBuf::from);
        let dir = match base.filter(|h| h.is_dir()) {
            Some(h) => tempfile::tempdir_in(h).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
            None => tempfile::tempdir().unwrap(),
        };
        let doc = dir.path().join(".gptx-cache/worlds/w/hidden/doc.txt");
        std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
        std::fs::write(&doc, "hidden").unwrap();
        std::fs::create_dir_all(dir.path().join("runs/r1")).unwrap();
        std::fs::write(dir.path().join("runs/r1/run.json"), "{}").unwrap();
        Some(dir)
    }

    /// `sh -c script`, confined, in `checkout` with a scratch `home`, its own process group.
    fn confined(script: &str, checkout: &Path, home: &Path) -> (Command, Report) {
        let (cache, runs) = (checkout.join(".gptx-cache"), checkout.join("runs"));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .current_dir(checkout)
            .env("CACHE", &cache)
            .env("RUNS", &runs)
            .env("CHECKOUT", checkout)
            .env("HOME", home)
            .env("HARNESS", std::process::id().to_string())
            .process_group(0);
        let mut hidden = secret_paths(&cache);
        hidden.push(runs);
        let report = install(&mut cmd, home, checkout, &hidden).unwrap();
        (cmd, report)
    }

    #[test]
    fn a_confined_agent_sees_nothing_hidden_and_cannot_write_or_unmount() {
        let Some(dir) = checkout() else { return };
        let home = tempfile::tempdir().unwrap();
        let (mut cmd, report) = confined(PROBE, dir.path(), home.path());
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("{}", report.explain(&e)),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{:?}", out.status);
        let seen: std::collections::HashMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once(' ')).collect();
        let uid = rustix::process::geteuid().as_raw().to_string();
        let checkout = dir.path().display().to_string();
        for (k, v) in [
            ("uid", uid.as_str()),
            ("cache_entries", "0"),
            ("hidden_doc", "unreadable"),
            ("runs_entries", "0"),
            ("xdg_entries", "0"),
            ("podman_socket", "unseen"),
            ("harness", "unseen"),
            ("self", "1"),
            ("checkout_write", "1"),
            ("home", "writable"),
            ("tmp", "writable"),
            ("umount", "refused"),
            ("nested_umount", "refused"),
            ("capeff", "0000000000000000"),
            ("cwd", checkout.as_str()),
        ] {
            assert_eq!(seen.get(k), Some(&v), "{k}: {text}");
        }
        let procs: u32 = seen["procs"].parse().unwrap();
        assert!(procs <= 6, "{procs} processes in /proc: {text}");
        assert!(!dir.path().join("new").exists());
    }

    /// Reads `out` to its end in a thread: true when every holder of the pipe is gone in time.
    fn closes_within(mut out: std::process::ChildStdout, secs: u64) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = tx.send(out.read_to_end(&mut sink).is_ok());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .unwrap_or(false)
    }

    #[test]
    fn killing_the_agents_group_or_its_parent_ends_every_process_it_started() {
        let Some(dir) = checkout() else { return };
        let home = tempfile::tempdir().unwrap();
        // One sleeper in the group, one that left it (setsid), both holding stdout.
        let script = "sleep 600 & setsid sleep 600 & echo started; wait";
        for whole_group in [true, false] {
            let (mut cmd, _) = confined(script, dir.path(), home.path());
            let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
            let pid = child.id() as i32;
            let mut out = child.stdout.take().unwrap();
            let mut first = [0u8; 8];
            out.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"started\n");
            // The agent (PID 1 of its namespace) is in the group gptx kills.
            let children = format!("/proc/{pid}/task/{pid}/children");
            let agent = std::fs::read_to_string(children).unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.trim())).unwrap();
            let pgrp = stat.rsplit(')').next().unwrap().split_whitespace().nth(2);
            assert_eq!(pgrp, Some(pid.to_string().as_str()), "{stat}");
            let target = if whole_group { -pid } else { pid };
            // SAFETY: a signal to the test's own child (or its group).
            unsafe { libc::kill(target, libc::SIGKILL) };
            let status = child.wait().unwrap();
            assert!(!status.success());
            assert!(closes_within(out, 10), "whole group: {whole_group}");
        }
    }
}
