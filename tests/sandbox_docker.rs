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

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_oom_killed_and_the_sandbox_lives_on() {
    common::with_sandbox(
        "oom",
        |s| s.memory_bytes = 256 << 20,
        |sb, _ws| async move {
            let (o, _, _) = run(
                sb.as_ref(),
                "python3 -c 'x = bytearray(1 << 30); print(len(x))'",
                60.0,
            )
            .await;
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
