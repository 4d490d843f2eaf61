//! The Docker sandbox against the real engine: exec, timeouts, OOM, network, confinement, clean-up.

mod common;

use std::time::{Duration, Instant};

use gptx::sandbox::{ExecOutcome, Sandbox, SandboxError, WorkspacePath, WorkspaceRoot};

async fn run(sb: &dyn Sandbox, cmd: &str, timeout_s: f64) -> (ExecOutcome, String, String) {
    common::sh(sb, cmd, timeout_s).await
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_and_exit_codes_as_the_sandbox_user() {
    common::with_sandbox(
        "exec",
        |_| {},
        |sb, _ws| async move {
            let (o, out, err) = run(
                sb.as_ref(),
                "echo hello; echo oops >&2; id -u; pwd; exit 3",
                10.0,
            )
            .await;
            assert_eq!(o.exit_code, Some(3));
            assert_eq!(out, "hello\n1000\n/workspace\n");
            assert_eq!(err, "oops\n");
            assert!(!o.timed_out && !o.oom_killed);
            // Large output arrives whole and in order.
            let (o, out, _) = run(sb.as_ref(), "seq 1 200000", 30.0).await;
            assert_eq!(o.exit_code, Some(0));
            assert_eq!(out.lines().count(), 200000);
            assert!(out.ends_with("199999\n200000\n"));
            // CPU is measured per step.
            let (o, _, _) = run(sb.as_ref(), "python3 -c 'sum(range(30_000_000))'", 60.0).await;
            assert!(o.cpu_seconds > 0.1, "cpu {}", o.cpu_seconds);
            assert!(o.max_rss_kb > 1000);
            // Capabilities are gone and privileges cannot be regained.
            let (_, out, _) = run(
                sb.as_ref(),
                "grep -E 'CapEff|NoNewPrivs' /proc/self/status",
                10.0,
            )
            .await;
            assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
            assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    common::with_sandbox(
        "timeout",
        |_| {},
        |sb, _ws| async move {
            let t0 = Instant::now();
            let (o, out, _) = run(
                sb.as_ref(),
                "echo started; (sleep 300; echo child-survived > /workspace/late) & sleep 300",
                1.0,
            )
            .await;
            assert!(o.timed_out, "{o:?}");
            assert_eq!(o.signal, Some(9));
            assert_eq!(out, "started\n");
            assert!(
                t0.elapsed() < Duration::from_secs(8),
                "took {:?}",
                t0.elapsed()
            );
            let (o, out, _) = run(
                sb.as_ref(),
                "ps -eo args | grep -c '^sleep 300$' || true",
                10.0,
            )
            .await;
            assert_eq!(o.exit_code, Some(0));
            assert_eq!(out.trim(), "0", "sleep processes survived the timeout");
        },
    )
    .await;
}

/// A command that asks for 1 GiB at once.
const MEMORY_HOG: &str = "python3 -c 'x = bytearray(1 << 30); print(len(x))'";

/// Whether this rootless engine enforces no cgroup limits (a limit's test then says it is skipped).
fn no_cgroup_limits() -> bool {
    // Rootless Podman on cgroup v1 has no memory controller: no sandbox has a limit.
    let limits = gptx::docker::flavor::current().cgroup_limits;
    let none = !rustix::process::geteuid().is_root() && !limits;
    if none {
        eprintln!("skipped: this rootless engine enforces no cgroup limits");
    }
    none
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_oom_killed_and_the_sandbox_lives_on() {
    common::with_sandbox(
        "oom",
        |s| s.memory_bytes = 256 << 20,
        |sb, _ws| async move {
            if no_cgroup_limits() {
                return;
            }
            let (o, _, _) = run(sb.as_ref(), MEMORY_HOG, 60.0).await;
            assert!(o.oom_killed, "{o:?}");
            assert_eq!(o.signal, Some(9), "{o:?}");
            let (o, out, _) = run(sb.as_ref(), "echo alive", 10.0).await;
            assert_eq!((o.exit_code, out.as_str()), (Some(0), "alive\n"));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_supervisor_fails_one_step_not_the_sandbox() {
    common::with_sandbox(
        "supkill",
        |_| {},
        |sb, _ws| async move {
            let (o, _, _) = run(sb.as_ref(), "kill -9 -1", 10.0).await;
            assert!(o.error.is_some(), "{o:?}");
            let (o, out, _) = run(sb.as_ref(), "echo back", 10.0).await;
            assert_eq!((o.exit_code, out.as_str()), (Some(0), "back\n"));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_none_cannot_open_a_socket_to_anything() {
    common::with_sandbox(
        "net",
        |_| {},
        |sb, _ws| async move {
            let script = r#"
import socket
ok = []
for host in ["1.1.1.1", "172.17.0.1", "8.8.8.8", "10.0.0.1"]:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, 80)); ok.append(host)
    except OSError as e:
        pass
try:
    socket.getaddrinfo("deb.debian.org", 80)
    ok.append("dns")
except OSError:
    pass
print("reached:", ok)
"#;
            sb.write_file(&WorkspacePath::parse("net.py").unwrap(), script.as_bytes())
                .unwrap();
            let (o, out, err) = run(
                sb.as_ref(),
                "python3 net.py; ip -o link 2>/dev/null | cut -d: -f2 || cat /proc/net/dev",
                30.0,
            )
            .await;
            assert_eq!(o.exit_code, Some(0), "{err}");
            assert!(out.contains("reached: []"), "{out}");
            assert!(
                !out.contains("eth0"),
                "an interface besides loopback: {out}"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_are_refused_for_read_write_and_download() {
    common::with_sandbox("paths", |_| {}, |sb, _ws| async move {
        let (o, _, _) = run(sb.as_ref(), "ln -s /etc/passwd pw && ln -s / root && ln -s .. up && mkdir d && echo hi > d/f", 10.0).await;
        assert_eq!(o.exit_code, Some(0));
        let p = |s: &str| WorkspacePath::parse(s);
        assert!(p("../etc/passwd").is_err());
        assert!(p("/etc/passwd").is_err());
        for bad in ["pw", "root/etc/passwd", "up/etc/passwd"] {
            let e = sb.read_file(&p(bad).unwrap(), 1000).unwrap_err();
            assert!(matches!(e, SandboxError::Path(gptx::sandbox::PathError::SymlinkEscape(_))), "{bad}: {e}");
            let e = sb.write_file(&p(bad).unwrap(), b"x").unwrap_err();
            assert!(matches!(e, SandboxError::Path(_)), "{bad}: {e}");
        }
        let host = tempfile::tempdir().unwrap();
        let root = WorkspaceRoot::open(host.path(), None).unwrap();
        assert!(sb.download(&p("pw").unwrap(), &root, &p("copy").unwrap(), 1 << 20).is_err());
        assert_eq!(sb.download(&p("d/f").unwrap(), &root, &p("copy").unwrap(), 1 << 20).unwrap(), 3);
        // The host side is confined too: a symlink in the destination tree is not followed out.
        std::os::unix::fs::symlink("/tmp", host.path().join("out")).unwrap();
        assert!(sb.download(&p("d/f").unwrap(), &root, &p("out/f").unwrap(), 1 << 20).is_err());
        // Files the harness writes belong to the sandbox user and are visible inside.
        sb.write_file(&p("from/harness.txt").unwrap(), b"made by gptx").unwrap();
        let (o, out, _) = run(sb.as_ref(), "cat from/harness.txt && echo more >> from/harness.txt && stat -c %u from/harness.txt", 10.0).await;
        assert_eq!(o.exit_code, Some(0), "{out}");
        assert_eq!(out, "made by gptx1000\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_world_network_is_internal_and_leaving_it_leaves_only_loopback() {
    let (docker, _) = common::docker_and_image().await;
    let run = common::test_run_id("worldnet");
    let net = gptx::docker::engine::create_world_network(&docker, &run, "world")
        .await
        .unwrap();
    let net2 = net.clone();
    common::with_sandbox("world", move |s| s.network = Some(net2), move |sb, _ws| async move {
        let probe = "python3 -c \"\nimport socket\nr=[]\nfor h in ['1.1.1.1','8.8.8.8']:\n  s=socket.socket(); s.settimeout(2)\n  try: s.connect((h,80)); r.append(h)\n  except OSError: pass\nprint('reached', r)\n\"; awk 'NR > 2 && $1 != \"lo:\"' /proc/net/dev | wc -l";
        let (_, out, _) = run_cmd(sb.as_ref(), probe).await;
        assert!(out.contains("reached []"), "{out}");
        assert!(out.trim_end().ends_with('1'), "on the internal network there is one interface besides lo: {out}");
        sb.set_network(None).await.unwrap();
        let (_, out, _) = run_cmd(sb.as_ref(), "awk 'NR > 2 && $1 != \"lo:\"' /proc/net/dev | wc -l").await;
        assert_eq!(out.trim(), "0", "left the network but still has an interface");
        sb.set_network(Some(&net)).await.unwrap();
        let (_, out, _) = run_cmd(sb.as_ref(), "awk 'NR > 2 && $1 != \"lo:\"' /proc/net/dev | wc -l").await;
        assert_eq!(out.trim(), "1");
    })
    .await;
    docker
        .remove_network(&format!("gptx-{run}-world"))
        .await
        .unwrap();
    assert_eq!(common::leftovers(&docker, &run).await, 0);
}

async fn run_cmd(sb: &dyn Sandbox, cmd: &str) -> (ExecOutcome, String, String) {
    run(sb, cmd, 30.0).await
}

/// An image of Debian's `busybox-static` alone (no C library, no Python, no bash), imported for the
/// test: the injected supervisor runs commands there (with `/bin/sh`), feeds stdin, times a command
/// out, lists mapped files and sweeps the processes at a stage's end.
async fn busybox_image(docker: &bollard::Docker) -> String {
    let tag = "gptx-test/busybox:static";
    if gptx::docker::images::image_id(docker, tag)
        .await
        .unwrap()
        .is_some()
    {
        return tag.into();
    }
    let tmp = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh")
            .args(["-c", cmd])
            .current_dir(tmp.path())
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}: {st}");
    };
    sh("apt-get download -q busybox-static >/dev/null && dpkg-deb -x busybox-static_*.deb deb");
    sh("mkdir -p root/bin root/tmp root/etc root/workspace root/home/agent && chmod 1777 root/tmp \
        && cp deb/bin/busybox root/bin/ && for a in $(root/bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox root/bin/$a; done \
        && echo 'root:x:0:0::/:/bin/sh' > root/etc/passwd && echo 'agent:x:1000:1000::/home/agent:/bin/sh' >> root/etc/passwd \
        && tar -C root --numeric-owner --owner=0 --group=0 --exclude=./workspace --exclude=./home/agent -cf rootfs.tar . \
        && tar -C root --numeric-owner --owner=1000 --group=1000 -rf rootfs.tar ./workspace ./home/agent");
    let body = std::fs::read(tmp.path().join("rootfs.tar")).unwrap();
    import_rootfs(docker, tag, body).await;
    tag.into()
}

/// Imports the root file system tarred in `body` as the image `tag`, running `sleep infinity`.
async fn import_rootfs(docker: &bollard::Docker, tag: &str, body: Vec<u8>) {
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        // The whole reference as `repo` (the API allows a tag in it): Podman 4.3 ignores `tag`.
        repo: Some(tag.into()),
        changes: vec!["CMD [\"sleep\", \"infinity\"]".into()],
        ..Default::default()
    };
    use futures_util::StreamExt;
    let mut s = docker.create_image(Some(options), Some(bollard::body_full(body.into())), None);
    while let Some(item) = s.next().await {
        item.expect("import");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_supervisor_runs_in_an_image_with_no_c_library_and_no_python() {
    let docker = gptx::docker::engine::connect().await.unwrap();
    let image = busybox_image(&docker).await;
    let run_id = common::test_run_id("busybox");
    let ws = tempfile::tempdir().unwrap();
    let spec = common::spec(&run_id, &image, ws.path());
    let sb = std::sync::Arc::new(
        gptx::docker::sandbox::DockerSandbox::create(&docker, &spec)
            .await
            .expect("a sandbox on busybox alone"),
    );
    // Removed whatever the checks do.
    let checks = tokio::spawn(busybox_checks(sb.clone())).await;
    sb.remove().await.unwrap();
    assert_eq!(common::leftovers(&docker, &run_id).await, 0);
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn busybox_checks(sb: std::sync::Arc<gptx::docker::sandbox::DockerSandbox>) {
    let sb = sb.as_ref();
    let (o, out, _) = run(
        sb,
        "ls /lib /usr/lib 2>&1 | head -3; command -v python3 bash; id -u; echo hi > f; cat f",
        10.0,
    )
    .await;
    assert_eq!(o.exit_code, Some(0), "{o:?} {out}");
    assert!(out.ends_with("1000\nhi\n"), "{out}");
    assert!(out.contains("No such file"), "no libraries at all: {out}");
    let req = gptx::sandbox::ExecRequest {
        cmd: "wc -c".into(),
        timeout: Duration::from_secs(10),
        env: vec![],
        stdin: Some(vec![b'x'; 300_000]),
    };
    let mut got = Vec::new();
    sb.exec(&req, &mut |_, d| got.extend_from_slice(d))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got).trim(), "300000");
    let t0 = Instant::now();
    let (o, _, _) = run(sb, "sleep 60 & sleep 60", 1.0).await;
    assert!(
        o.timed_out && t0.elapsed() < Duration::from_secs(8),
        "{o:?}"
    );
    assert_eq!(sb.mapped_files().await, Ok(Default::default()));
    run(sb, "(sleep 100 &) ; true", 5.0).await;
    let swept = sb.end_stage().await.expect("sweep");
    assert!(swept.killed >= 1, "{swept:?}");
}

/// A whole stage in `minimal` (no Python in the agent's image): the agent's steps run, the world's
/// web server (in `base`) answers over bash's /dev/tcp, and the run ends cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_runs_in_an_image_without_python() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let suite = std::fs::read_to_string(common::home().tasks().join("suites/mini.toml"))
        .unwrap()
        .replace("image = \"base\"", "image = \"minimal\"");
    let suite_path = runs.path().join("mini-minimal.toml");
    std::fs::write(&suite_path, suite).unwrap();
    let fetch = "command -v python3 python || echo no-python; \
        h=$(grep -o '[a-z0-9.-]*gptx.test' /etc/hosts | head -1); \
        exec 3<>/dev/tcp/$h/80 && printf 'GET /robots.txt HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' $h >&3 && head -1 <&3";
    let calls = [
        serde_json::json!({"tool": "bash", "args": {"cmd": fetch}}),
        serde_json::json!({"tool": "submit", "args": {}}),
    ];
    let agent = runs.path().join("agent.jsonl");
    let text: String = calls.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&agent, text).unwrap();
    let v = common::run_json(
        &[
            "--suite",
            suite_path.to_str().unwrap(),
            "--stages",
            "crawl",
            "--agent",
            &format!("script:{}", agent.display()),
        ],
        runs.path(),
    );
    let step = common::events(&v)
        .into_iter()
        .find(|e| e["type"] == "step")
        .expect("a step");
    let out = step["result"]["stdout"].as_str().unwrap();
    assert!(out.starts_with("no-python\nHTTP/1."), "{step}");
    assert!(out.contains(" 200"), "{step}");
    common::assert_nothing_left(&docker, &v).await;
}

/// A command that stops its own supervisor (SIGSTOP: same uid) costs that step, not the harness:
/// the step ends past its timeout as "stopped answering", every process in the sandbox is killed
/// (a stopped process too), and the next command runs under a new supervisor.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_supervisor_fails_one_step_and_the_next_runs() {
    common::with_sandbox(
        "stopped",
        |_| {},
        |sb, _ws| async move {
            let sb = sb.as_ref();
            let t0 = Instant::now();
            let (o, _, _) = run(sb, "kill -STOP $PPID; sleep 0.2", 1.0).await;
            let why = o.error.clone().unwrap_or_default();
            assert!(o.timed_out && why.contains("stopped answering"), "{o:?}");
            assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
            let (o, out, err) = run(sb, "echo alive", 10.0).await;
            assert_eq!((o.exit_code, out.trim()), (Some(0), "alive"), "{err}");
        },
    )
    .await;
}

/// Holds 64 connections to the harness's socket that show no token, in the background.
const FLOOD: &str = r#"python3 - <<'PY' > /dev/null 2>&1 &
import socket, time
held = []
for _ in range(64):
    s = socket.socket(socket.AF_UNIX); s.settimeout(0.5)
    try:
        s.connect("/.gptx/io.sock"); held.append(s)
    except OSError:
        pass
open("flooding", "w").close()
time.sleep(120)
PY
while [ ! -e flooding ]; do sleep 0.01; done"#;

/// The agent floods the harness's socket (connections that show no token hold its 8 handshake
/// slots), then kills its supervisor: the next one cannot reach the socket in time, so it is
/// dropped and a new one runs the command over the attach stream, output whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_the_supervisor_socket_leaves_commands_running() {
    common::with_sandbox(
        "flood",
        |_| {},
        |sb, _ws| async move {
            let sb = sb.as_ref();
            let (o, _, err) = run(sb, FLOOD, 60.0).await;
            assert_eq!(o.exit_code, Some(0), "{err}");
            let (o, _, _) = run(sb, "kill -9 $PPID", 10.0).await;
            assert!(o.error.is_some(), "{o:?}");
            let t0 = Instant::now();
            let (o, out, err) = run(sb, "seq 200000 | tail -1", 60.0).await;
            assert_eq!((o.exit_code, out.trim()), (Some(0), "200000"), "{err}");
            assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
        },
    )
    .await;
}

/// Maps `m3` shared (through the C library: Python's own map keeps a descriptor open for
/// writing), closes its descriptor, makes the map read-only, and once `go3` appears makes it
/// writable, writes through it and makes it read-only again: no snapshot sees it writable.
const MPROTECT: &str = r#"head -c 4096 /dev/zero > m3 && python3 - <<'PY' > /dev/null 2>&1 &
import ctypes, os, time
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
fd = os.open("m3", os.O_RDWR)
addr = libc.mmap(None, 4096, 3, 1, fd, 0)
os.close(fd)
libc.mprotect(addr, 4096, 1)
open("m3.ready", "w").close()
while not os.path.exists("go3"): time.sleep(0.01)
libc.mprotect(addr, 4096, 3); ctypes.memmove(addr, b"EVIL", 4); libc.mprotect(addr, 4096, 1)
time.sleep(30)
PY
while [ ! -e m3.ready ]; do sleep 0.01; done"#;

/// A workspace history snapshotted as the runner does it: after each command, the mapped files
/// asked of the supervisor first. No snapshot after the first may walk the whole workspace.
struct Steps<'a> {
    sb: &'a dyn Sandbox,
    history: gptx::trace::WorkspaceHistory,
    git: std::path::PathBuf,
    n: usize,
}

impl<'a> Steps<'a> {
    fn new(sb: &'a dyn Sandbox, ws: &std::path::Path) -> Self {
        let git = ws.parent().unwrap().join(format!("{}.git", sb.id()));
        let history = gptx::trace::WorkspaceHistory::create(&git, ws).unwrap();
        Self {
            sb,
            history,
            git,
            n: 0,
        }
    }

    /// Runs `cmd`, waits `wait_ms`, and snapshots.
    async fn step(&mut self, cmd: &str, wait_ms: u64) {
        use gptx::trace::history::Mapped;
        let (o, _, err) = run(self.sb, cmd, 20.0).await;
        assert_eq!(o.exit_code, Some(0), "{cmd}: {err}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let mapped = match self.sb.mapped_files().await {
            Ok(m) => Mapped::Known {
                paths: m.paths.into_iter().map(Into::into).collect(),
                inodes: m.inodes,
            },
            Err(e) => Mapped::Unknown(e),
        };
        let h = &mut self.history;
        h.note_mapped(mapped);
        h.commit_if_changed(&format!("step {}", self.n)).unwrap();
        let note = h.take_walk_note();
        assert!(self.n == 0 || note.is_none(), "step {}: {note:?}", self.n);
        self.n += 1;
    }

    /// What `path` holds in the last commit (None: not there, or not a file).
    fn at(&self, path: &str) -> Option<String> {
        let repo = git2::Repository::open_bare(&self.git).unwrap();
        let head = self.history.head()?;
        let head = repo.find_commit(git2::Oid::from_str(&head).unwrap());
        let entry = head.unwrap().tree().unwrap().get_path(path.as_ref()).ok()?;
        let blob = entry.to_object(&repo).ok()?.into_blob().ok()?;
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }
}

/// Snapshots through a real sandbox, as the runner takes them, miss no change: from a background
/// process between steps, a command that runs past its step, writes through mmap (with the
/// descriptor closed, and kept open), renames across folders, hard links, and a file replaced by
/// a directory. The test never reads the workspace itself: every reading marks files to look at.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_through_a_real_sandbox_miss_no_change() {
    common::with_sandbox(
        "snapshots",
        |_| {},
        |sb, ws| async move {
            let mut s = Steps::new(sb.as_ref(), &ws);
            s.step("echo a > f && mkdir -p d a b && echo x > d/y && printf 00000000 > m1 && printf 00000000 > m2", 0).await;
            assert_eq!(s.at("d/y").as_deref(), Some("x\n"));
            // Past the step, and between steps.
            s.step("(sleep 0.3; echo bg > bg.txt; sleep 0.6; echo late > late.txt) > /dev/null 2>&1 &", 600).await;
            assert_eq!(s.at("bg.txt").as_deref(), Some("bg\n"));
            s.step("true", 800).await;
            assert_eq!(s.at("late.txt").as_deref(), Some("late\n"));
            // mmap: one writer closes its descriptor before writing, one keeps it and unmaps.
            let mmap = r#"python3 - <<'PY' > /dev/null 2>&1 &
import mmap, os, time
fd = os.open("m1", os.O_RDWR); m1 = mmap.mmap(fd, 8); os.close(fd)
fd2 = os.open("m2", os.O_RDWR)
time.sleep(0.3); m1[:8] = b"11111111"; m1.flush()
time.sleep(1.0); m1[:8] = b"22222222"
m2 = mmap.mmap(fd2, 8); m2[:8] = b"33333333"; m2.close()
time.sleep(30)
PY"#;
            s.step(mmap, 800).await;
            assert_eq!(s.at("m1").as_deref(), Some("11111111"));
            s.step("true", 1000).await;
            assert_eq!(s.at("m1").as_deref(), Some("22222222"));
            assert_eq!(s.at("m2").as_deref(), Some("33333333"));
            // A shared map made read-only (`r--s` in maps) between its writes.
            s.step(MPROTECT, 0).await;
            s.step("touch go3", 500).await;
            let m3 = s.at("m3").unwrap_or_default();
            assert!(m3.starts_with("EVIL"), "m3 begins {:?}", &m3[..m3.len().min(8)]);
            // Renames across folders: a file, and a whole directory.
            s.step("echo r > a/r && mv a/r b/r && mv d a/d", 0).await;
            assert_eq!((s.at("b/r").as_deref(), s.at("a/r")), (Some("r\n"), None));
            assert_eq!((s.at("a/d/y").as_deref(), s.at("d/y")), (Some("x\n"), None));
            // A hard link in another folder, written through that name.
            s.step("echo h > h1 && mkdir -p l && ln h1 l/h2", 0).await;
            s.step("echo z > l/h2", 0).await;
            assert_eq!(s.at("h1").as_deref(), Some("z\n"));
            // A file replaced by a directory, and a directory by a file.
            s.step("rm f && mkdir f && echo in > f/g && rm -r a && echo file > a", 0).await;
            assert_eq!((s.at("f/g").as_deref(), s.at("a/d/y")), (Some("in\n"), None));
            assert_eq!(s.at("a").as_deref(), Some("file\n"));
            assert_eq!(s.n, 11, "every step was snapshotted");
            let _ = sb.end_stage().await;
        },
    )
    .await;
}

/// inotify tells a file's new link only to a watch on the file itself, so a link made after a
/// file's last snapshot must still take that file along: made in a watched folder and written
/// through at once, made inside `.git` or a folder whose name is not UTF-8 (not recorded, but
/// walked and watched), and a descriptor kept open on a name that is then removed (the sandbox
/// names the open file by inode).
#[tokio::test(flavor = "multi_thread")]
async fn links_made_after_a_files_last_snapshot_are_followed_through_a_real_sandbox() {
    common::with_sandbox("links", |_| {}, links_made_after_a_files_last_snapshot).await;
}

/// The same on a workspace that is an ext4 file system of its own (as a root run's is): the
/// snapshots' inode feed then stands in for the sweeps of every recorded file.
#[tokio::test(flavor = "multi_thread")]
async fn links_made_after_a_files_last_snapshot_are_followed_on_a_file_system_of_its_own() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: a loop-mounted ext4 workspace needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    // The sandbox user's, as every workspace's root is.
    let owner = (1000, 1000);
    let quota = gptx::sandbox::quota::Quota::mount(&ws, &tmp.path().join("ws.img"), 64, owner);
    let quota = quota.expect("a loop-mounted ext4 workspace (root)");
    let body = links_made_after_a_files_last_snapshot;
    common::with_sandbox_at("links-ext4", &ws, |_| {}, body).await;
    quota.release(false).unwrap();
}

/// Links made, written through and removed by the sandbox's commands, with decoys; each snapshot
/// must hold what a whole walk would.
async fn links_made_after_a_files_last_snapshot(
    sb: std::sync::Arc<gptx::docker::sandbox::DockerSandbox>,
    ws: std::path::PathBuf,
) {
    let mut s = Steps::new(sb.as_ref(), &ws);
    s.step("mkdir -p l .git/objects \"$(printf 'odd\\377')\" && echo o > o1 && echo g > g1 && echo c > c1 && echo 1 > k1 && echo one > p1", 0).await;
    s.step("ln o1 l/o2 && echo w >> l/o2 && ln g1 .git/objects/g2 && ln c1 \"$(printf 'odd\\377')/c2\"", 0).await;
    assert_eq!(s.at("o1").as_deref(), Some("o\nw\n"));
    s.step(
        "echo G > .git/objects/g2 && echo C > \"$(printf 'odd\\377')/c2\"",
        0,
    )
    .await;
    assert_eq!(
        (s.at("g1").as_deref(), s.at("c1").as_deref()),
        (Some("G\n"), Some("C\n"))
    );
    let held = "(exec 3>>k1; ln k1 k2; rm k1; while [ ! -e go ]; do sleep 0.01; done; echo 2 >&3; exec 3>&-; sleep 30) > /dev/null 2>&1 & while [ -e k1 ]; do sleep 0.01; done";
    s.step(held, 0).await;
    s.step("touch go", 300).await;
    assert_eq!(s.at("k2").as_deref(), Some("1\n2\n"));
    // A name made, written through and removed in one step.
    s.step("ln o1 t && echo T >> t && rm t", 0).await;
    assert_eq!(s.at("o1").as_deref(), Some("o\nw\nT\n"));
    // A read-only descriptor, reopened for writing through /proc once its name is gone.
    let ro = "(exec 4<p1; while [ ! -e go2 ]; do sleep 0.01; done; echo evil >> /proc/self/fd/4; sleep 30) > /dev/null 2>&1 & ln p1 p2";
    s.step(ro, 0).await;
    s.step("rm p1", 0).await;
    s.step("touch go2", 300).await;
    assert_eq!(s.at("p2").as_deref(), Some("one\nevil\n"));
    // Decoys at the removed name: a FIFO and a folder are there (so the event's path is
    // not gone), and the write through the held descriptor names only that path.
    let hold = |f: &str, x: &str, go: &str| {
        format!("echo one > {f} && ln {f} {x} && (exec 4<{x}; while [ ! -e {go} ]; do sleep 0.01; done; echo evil >> /proc/self/fd/4; sleep 30) > /dev/null 2>&1 &")
    };
    s.step(&hold("q1", "qx", "go4"), 0).await;
    s.step(&hold("r1", "rx", "go5"), 0).await;
    s.step("rm qx && mkfifo qx && rm rx && mkdir rx", 0).await;
    s.step("touch go4 go5", 300).await;
    assert_eq!(s.at("q1").as_deref(), Some("one\nevil\n"), "FIFO decoy");
    assert_eq!(s.at("r1").as_deref(), Some("one\nevil\n"), "folder decoy");
    let _ = sb.end_stage().await;
}

/// An attacker hides a shared writable mapping behind a thread group whose leader has exited (its
/// `/proc/<pid>/maps` is then empty while a thread keeps writing): the sandbox must not answer
/// that no file is mapped, so the snapshot walks everything instead of missing the writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_hidden_behind_an_exited_leader_makes_the_mapped_list_unknown() {
    common::with_sandbox(
        "zombie-leader",
        |_| {},
        |sb, _ws| async move {
            let hide = r#"printf 00000000 > m && python3 - <<'PY' > /dev/null 2>&1 &
import ctypes, mmap, os, threading, time
fd = os.open("m", os.O_RDWR); mm = mmap.mmap(fd, 8); os.close(fd)
def write():
    while True:
        mm[:8] = b"%08d" % (int(time.time()) % 10**8); time.sleep(0.2)
threading.Thread(target=write).start()
ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: the leader alone ends
PY"#;
            let (o, _, err) = run(sb.as_ref(), hide, 10.0).await;
            assert_eq!(o.exit_code, Some(0), "{err}");
            tokio::time::sleep(Duration::from_millis(800)).await;
            let mapped = sb.mapped_files().await;
            assert!(
                mapped.is_err(),
                "the hidden mapping passed unseen: {mapped:?}"
            );
            let _ = sb.end_stage().await;
        },
    )
    .await;
}
