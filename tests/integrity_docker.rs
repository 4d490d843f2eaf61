//! A hostile agent on `mini`, on the real engine: one test per attack on the grade, each asserting the
//! harness's answer (a refusal or a clean-up in the trace and the integrity ledger, the grade and the
//! host untouched).

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Writes a script agent (one `{"tool","args"}` per line) into `dir`.
fn script(dir: &Path, calls: &[Value]) -> String {
    let path = dir.join("agent.jsonl");
    let text: String = calls.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&path, text).unwrap();
    format!("script:{}", path.display())
}

fn steps(v: &Value) -> Vec<Value> {
    common::events(v)
        .into_iter()
        .filter(|e| e["type"] == "step")
        .collect()
}

fn ledger(v: &Value, kind: &str) -> Vec<Value> {
    common::events(v)
        .into_iter()
        .filter(|e| e["type"] == "integrity" && e["kind"] == kind)
        .collect()
}

fn score_json(v: &Value) -> Value {
    let dir = Path::new(v["dir"].as_str().unwrap());
    serde_json::from_str(&std::fs::read_to_string(dir.join("score.json")).unwrap()).unwrap()
}

/// A guarantee of the run by name, as run.json's `isolation.guarantees` records it (where a
/// rootless run says what is not in force).
fn guarantee(v: &Value, name: &str) -> Value {
    let dir = Path::new(v["dir"].as_str().unwrap());
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    let all = meta["isolation"]["guarantees"].as_array().cloned();
    let found = all
        .unwrap_or_default()
        .into_iter()
        .find(|g| g["name"] == name);
    found.unwrap_or_else(|| panic!("no guarantee {name} in run.json: {meta}"))
}

/// A heartbeat started in one stage must be dead in the next, and before the first is graded.
#[tokio::test(flavor = "multi_thread")]
async fn processes_do_not_outlive_their_stage() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd":
                "setsid nohup sh -c 'while :; do date +%s%N >> /workspace/hb; sleep 0.1; done' >/dev/null 2>&1 < /dev/null &\n(trap '' TERM HUP; while :; do sleep 0.1; done) >/dev/null 2>&1 &\nsleep 0.5; wc -l < hb"}}),
            json!({"tool": "submit", "args": {}}),
            json!({"tool": "bash", "args": {"cmd":
                "a=$(wc -l < hb); sleep 1; b=$(wc -l < hb); echo \"$a $b\"; ps -eo args | grep -c '^sh -c while' || true"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "crawl,tokenize",
            "--rescue",
            "false",
            "--agent",
            &agent,
        ],
        runs.path(),
    );
    let s = steps(&v);
    let later = s[2]["result"]["stdout"].as_str().unwrap().to_string();
    let mut lines = later.lines();
    let counts: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(counts[0] > 0, "{later}");
    assert_eq!(counts[0], counts[1], "the heartbeat still beats: {later}");
    assert_eq!(lines.next(), Some("0"), "{later}");
    let killed = ledger(&v, "processes_killed");
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!(killed[0]["stage"], "crawl");
    assert!(killed[0]["count"].as_u64().unwrap() >= 2, "{killed:?}");
    assert!(killed[0]["detail"].as_str().unwrap().contains("while :"));
    // The ledger is in score.json too.
    assert_eq!(score_json(&v)["integrity"][0]["kind"], "processes_killed");
    common::assert_nothing_left(&docker, &v).await;
}

/// Every way in to forge a frame: the supervisor's descriptors, its file, and its socket with a
/// wrong token.
const FORGE: &str = r#"
# An exit frame for ids 1..200: kind 18, id, length 53, then a zero payload (exit code 0).
forged() { python3 -c 'import struct,sys
for i in range(1, 201): sys.stdout.buffer.write(struct.pack("<BQI", 18, i, 53) + bytes([1]) + bytes(52))'; }
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
    "/.gptx/supervisor"*)
      for fd in 0 1 2 3 4 5 6; do forged > $p/fd/$fd 2>/dev/null && echo "forged into $p/fd/$fd"; done
      cat $p/fd/0 > /dev/null 2>&1 && echo "read its stdin"
      ls -l $p/fd/ 2>&1 | head -1 >&2;;
  esac
done
cp /bin/true /.gptx/supervisor 2>/dev/null && echo "replaced the supervisor"
cat /.gptx/supervisor > /dev/null 2>&1 && echo "read the supervisor's file"
# Rootless, keep-id makes the sandbox user the host copy's owner: only the read-only mount keeps
# it from making the file readable (and so the supervisor dumpable at its next start).
chmod 755 /.gptx/supervisor 2>/dev/null; cat /.gptx/supervisor > /dev/null 2>&1 && echo "read the supervisor's file after chmod"
python3 - <<'PY'
import socket, struct
for token in (bytes(32), b"x" * 32):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/.gptx/io.sock")
        s.sendall(token + b"".join(struct.pack("<BQI", 18, i, 53) + bytes([1]) + bytes(52) for i in range(1, 201)))
        s.settimeout(3)
        d = s.recv(10)
        print("socket answered" if d else "socket closed", d)
    except OSError as e:
        print("socket:", type(e).__name__)
PY
sleep 1.5
exit 7
"#;

/// A command cannot forge the supervisor's frames: it cannot write into (or read) any of the
/// supervisor's fds through /proc (it is non-dumpable), it cannot replace the binary (a read-only
/// mount of root's file), and the harness's socket drops a connection without the token (which is
/// only on the supervisor's stdin). Ids are random besides.
#[tokio::test(flavor = "multi_thread")]
async fn supervisor_frames_cannot_be_forged() {
    let forge = FORGE;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();

    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": forge}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "tokenize", "--agent", &agent],
        runs.path(),
    );
    let s = steps(&v);
    let r = &s[0]["result"];
    assert_eq!(r["exit_code"], 7, "{r}");
    let out = r["stdout"].as_str().unwrap();
    for what in [
        "forged",
        "read its stdin",
        "replaced",
        "read the supervisor's file",
        "socket answered",
    ] {
        assert!(!out.contains(what), "{what}: {r}");
    }
    assert!(
        r["stderr"].as_str().unwrap().contains("Permission denied"),
        "{r}"
    );
    // The harness measured the duration itself: the forged 1 ms would not count.
    assert!(s[0]["sandbox_seconds"].as_f64().unwrap() >= 1.5, "{}", s[0]);
    common::assert_nothing_left(&docker, &v).await;
}

/// The selfhost copy: a symlink to a host file is refused, not followed; a swapper that would
/// replace a file after selection is dead before selection; nothing over the caps is copied.
#[tokio::test(flavor = "multi_thread")]
async fn the_recipe_copy_follows_no_link_and_no_swap() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let secret = runs.path().join("host-secret.txt");
    std::fs::write(&secret, "HOST-ONLY-CANARY-1f3a").unwrap();
    let model = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/lm/model.py"
    ))
    .unwrap();
    let swapper = format!(
        "sleep 1.5; rm -f recipe/blob; ln -s {} recipe/blob; head -c 5000000 /dev/zero | tr '\\0' x > recipe/big",
        secret.display()
    );
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "write_file", "args": {"path": "src/model.py", "content": model}}),
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content":
                "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/../src/model.py\" honest \"$@\"\n"}}),
            json!({"tool": "write_file", "args": {"path": "bootstrap.sh", "content":
                "#!/bin/sh\necho \"blob: $(cat recipe/blob recipe/link 2>&1)\"\necho \"big: $(wc -c < recipe/big)\"\n"}}),
            json!({"tool": "write_file", "args": {"path": "recipe/blob", "content": "agent text"}}),
            json!({"tool": "write_file", "args": {"path": "recipe/big", "content": "small"}}),
            json!({"tool": "bash", "args": {"cmd": format!(
                "chmod +x bin/lm bootstrap.sh && ln -s {} recipe/link && (setsid nohup sh -c '{swapper}' >/dev/null 2>&1 < /dev/null &)",
                secret.display())}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "selfhost", "--agent", &agent],
        runs.path(),
    );
    let m = &v["stages"]["selfhost"]["metrics"];
    let dir = Path::new(v["dir"].as_str().unwrap());
    let log = std::fs::read_to_string(dir.join("selfhost/bootstrap.log")).unwrap();
    assert!(!log.contains("HOST-ONLY-CANARY"), "{log}");
    assert!(log.contains("blob: agent text"), "{log}");
    assert!(log.contains("big: 5"), "{log}");
    let refused = m["recipe"]["refused"].as_array().unwrap();
    assert!(
        refused.iter().any(
            |r| r["path"] == "recipe/link" && r["reason"].as_str().unwrap().contains("symlink")
        ),
        "{refused:?}"
    );
    assert!(!ledger(&v, "processes_killed").is_empty());
    let refused = ledger(&v, "files_refused");
    assert!(
        refused.len() == 1
            && refused[0]["detail"]
                .as_str()
                .unwrap()
                .contains("recipe/link"),
        "{refused:?}"
    );
    // The grade went on as for an honest recipe of this kind.
    assert_eq!(m["bootstrap"]["exit_code"], 0, "{m}");
    // Nothing of the host got into the rebuild or its trace.
    let trace = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(!trace.contains("HOST-ONLY-CANARY"));
    common::assert_nothing_left(&docker, &v).await;
}

/// An external agent that goes looking: the hidden documents in the world cache, another run's
/// score, the harness's environment. It runs as `nobody` with a cleared environment and finds none.
const SNOOP: &str = r#"
import json, os, sys
def log(*a):
    print(*a, file=sys.stderr, flush=True)
hidden, other, = sys.argv[1], sys.argv[2]
for path in (hidden, other):
    try:
        open(path, "rb").read(10)
        log("READ", path)
    except OSError as e:
        log("DENIED", path, e.strerror)
log("UID", os.getuid())
log("SECRET", os.environ.get("GPTX_TEST_SECRET", "absent"))
log("PASSED", os.environ.get("GPTX_TEST_PASSED", "absent"))
log("ENVKEYS", ",".join(sorted(os.environ)))
n = 0
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "task":
        n += 1
        print(json.dumps({"type": "call", "id": str(n), "tool": "submit", "args": {}}), flush=True)
    elif msg["type"] == "done":
        break
"#;

/// One of the hidden documents of a world already built on this machine.
fn a_hidden_document() -> std::path::PathBuf {
    let worlds = common::home().cache().join("worlds");
    std::fs::read_dir(&worlds)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("hidden"))
        .find(|p| p.is_dir())
        .and_then(|d| std::fs::read_dir(d).unwrap().flatten().next())
        .map(|e| e.path())
        .expect("a built world with hidden documents")
}

/// A directory anyone may read; without root outside /tmp (a confined agent has its own /tmp).
fn readable_code_dir(root: bool) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let code = match root {
        true => tempfile::tempdir(),
        false => tempfile::tempdir_in(std::env::var_os("HOME").expect("HOME")),
    }
    .unwrap();
    std::fs::set_permissions(code.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    code
}

#[tokio::test(flavor = "multi_thread")]
async fn external_agents_run_unprivileged_with_a_cleared_environment() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    // Another run's score (a real one, in a runs directory anyone may list), and the world's hidden
    // documents, both on this machine.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(runs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let first = common::run_json(
        &["--suite", "mini", "--stages", "tokenize", "--agent", "null"],
        runs.path(),
    );
    let other = Path::new(first["dir"].as_str().unwrap()).to_path_buf();
    assert!(other.join("score.json").exists());
    let hidden = a_hidden_document();
    // The agent's own program sits where anyone may read it.
    let root = rustix::process::geteuid().is_root();
    let code = readable_code_dir(root);
    let script = code.path().join("snoop.py");
    std::fs::write(&script, SNOOP).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = format!(
        "exec:python3 {} {} {}",
        script.display(),
        hidden.display(),
        other.join("score.json").display()
    );
    let (v, _) = common::run_json_with(
        &[
            "--suite",
            "mini",
            "--stages",
            "tokenize",
            "--agent",
            &agent,
            "--agent-env",
            "GPTX_TEST_PASSED",
        ],
        runs.path(),
        &[
            ("GPTX_TEST_SECRET", "s3cret"),
            ("GPTX_TEST_PASSED", "given"),
        ],
    );
    let logs: String = common::events(&v)
        .iter()
        .filter(|e| e["type"] == "agent_log")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    // As root the agent is nobody; without root it is the harness's user, confined in namespaces
    // of its own, and run.json says so. Either way it reads neither file.
    if root {
        assert!(logs.contains("UID 65534"), "{logs}");
    } else {
        assert_eq!(guarantee(&v, "exec_agent")["held"], true, "{logs}");
    }
    assert!(!logs.contains("READ "), "{logs}");
    assert!(
        logs.contains(&format!("DENIED {}", hidden.display())),
        "{logs}"
    );
    assert!(logs.contains("SECRET absent"), "{logs}");
    assert!(logs.contains("PASSED given"), "{logs}");
    assert!(
        logs.contains("ENVKEYS GPTX_PROTOCOL,GPTX_TEST_PASSED,HOME,")
            || logs.contains("ENVKEYS GPTX_PROTOCOL,GPTX_TEST_PASSED,HOME\n"),
        "{logs}"
    );
    common::assert_nothing_left(&docker, &v).await;
}

/// A 40 GB sparse file and a FIFO in the workspace: the next snapshot lists the file without
/// reading it and never opens the FIFO. And what the agent prints reaches `gptx show` escaped.
#[tokio::test(flavor = "multi_thread")]
async fn huge_sparse_files_fifos_and_escape_sequences_are_harmless() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": "truncate -s 40G huge.bin && mkfifo pipe && echo done"}}),
            json!({"tool": "bash", "args": {"cmd": "printf 'a\\033]0;pwned\\007\\033[2J\\rb\\n' >&2; exit 3"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "tokenize", "--agent", &agent],
        runs.path(),
    );
    let s = steps(&v);
    assert_eq!(s[0]["result"]["exit_code"], 0, "{}", s[0]);
    let commit = s[0]["commit"].as_str().expect("the step was committed");
    let dir = Path::new(v["dir"].as_str().unwrap());
    let git = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir.join("workspace.git"))
        .args(["show", &format!("{commit}:.gptx-large-files.json")])
        .output()
        .unwrap();
    let manifest: Value = serde_json::from_slice(&git.stdout).unwrap();
    let big = &manifest["large_files"][0];
    assert_eq!(big["path"], "huge.bin");
    assert_eq!(big["size"], 40u64 << 30);
    assert!(
        big["note"].as_str().unwrap().contains("not hashed"),
        "{big}"
    );
    // `gptx show` prints the agent's escape sequences as text.
    let out = common::gptx()
        .args([
            "show",
            v["run_id"].as_str().unwrap(),
            "--color",
            "never",
            "--runs-dir",
        ])
        .arg(runs.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\\x1b]0;pwned\\x07\\x1b[2J\\rb"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
    common::assert_nothing_left(&docker, &v).await;
}

/// A trace whose disk fills: the file is cut back to its last whole line, takes no more, and what
/// was written still verifies. (Needs root for the small tmpfs; skipped otherwise.)
#[test]
fn a_full_disk_never_leaves_a_partial_trace_line() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(mounted.success());
    let path = dir.path().join("events.jsonl");
    let result = std::panic::catch_unwind(|| {
        let mut log = gptx::trace::EventLog::create(&path).unwrap();
        let mut wrote = 0;
        let mut failed = None;
        for i in 0..10_000 {
            let ev = gptx::trace::Event::Warning {
                message: format!("{i} {}", "x".repeat(700)),
            };
            match log.append(&ev) {
                Ok(_) => wrote += 1,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        assert!(failed.is_some() && wrote > 10, "{wrote} {failed:?}");
        assert!(log.broken().is_some());
        // No more lines once broken, even if room came back.
        assert!(log
            .append(&gptx::trace::Event::Warning {
                message: "x".into()
            })
            .is_err());
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.last(), Some(&b'\n'));
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), wrote);
        let v = gptx::trace::verify(&path, None).unwrap();
        assert_eq!(v.events as usize, wrote);
    });
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    result.unwrap();
}

/// A program that prints the hidden documents it is given to its stderr, then fails: nothing of them
/// reaches the trace, the score or what the agent is told.
#[tokio::test(flavor = "multi_thread")]
async fn stderr_on_hidden_data_is_never_recorded() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content":
                "#!/bin/sh\n# echo every input line back on stderr, base64 decoded\npython3 -c 'import sys, json, base64\nfor l in sys.stdin:\n    d = json.loads(l)\n    sys.stderr.write(base64.b64decode(d.get(\"text_b64\", \"\")).decode(\"utf-8\", \"replace\"))\n'\nexit 1\n"}}),
            json!({"tool": "bash", "args": {"cmd": "chmod +x bin/lm"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "train", "--agent", &agent],
        runs.path(),
    );
    assert_eq!(v["stages"]["train"]["passed"], false);
    let reason = v["stages"]["train"]["reason"].as_str().unwrap();
    assert!(reason.contains("its stderr is not shown"), "{reason}");
    // Every hidden document's opening words, looked for in everything the run wrote.
    let worlds = common::home().cache().join("worlds");
    let test = std::fs::read_dir(&worlds)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("hidden/test.jsonl"))
        .find(|p| p.exists())
        .unwrap();
    let snippets: Vec<String> = std::fs::read_to_string(test)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|d| {
            d["text"]
                .as_str()
                .map(|t| t.chars().skip(20).take(40).collect())
        })
        .filter(|s: &String| s.len() >= 30)
        .collect();
    assert!(!snippets.is_empty());
    let dir = Path::new(v["dir"].as_str().unwrap());
    for f in ["events.jsonl", "score.json"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for s in &snippets {
            assert!(!text.contains(s.as_str()), "{f} holds hidden text {s:?}");
        }
    }
    common::assert_nothing_left(&docker, &v).await;
}

/// Programs that print the hidden documents they are given on stdout, in lines that are not the
/// protocol: the reasons say what was wrong and quote nothing of them, so no hidden text reaches the
/// trace, the score or what the agent is told.
#[tokio::test(flavor = "multi_thread")]
async fn stdout_on_hidden_data_is_never_quoted() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let echo = |answer: &str| {
        format!("#!/bin/sh\nexec python3 -c 'import sys, json, base64\nfor l in sys.stdin:\n    d = json.loads(l)\n    t = base64.b64decode(d.get(\"text_b64\", \"\")).decode(\"utf-8\", \"replace\")\n    print({answer}, flush=True)\n'\n")
    };
    let agent = script(
        runs.path(),
        &[
            // encode: "ids" is the text (serde's message would quote it); score: the text itself.
            json!({"tool": "write_file", "args": {"path": "bin/tokenize", "content":
                echo("json.dumps({\"id\": d[\"id\"], \"ids\": t})")}}),
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content": echo("t")}}),
            json!({"tool": "write_file", "args": {"path": "tokenizer/meta.json", "content": "{\"vocab_size\": 256}"}}),
            json!({"tool": "bash", "args": {"cmd": "chmod +x bin/tokenize bin/lm"}}),
            json!({"tool": "submit", "args": {}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &[
            "--suite",
            "mini",
            "--stages",
            "tokenize,train",
            "--agent",
            &agent,
        ],
        runs.path(),
    );
    for stage in ["tokenize", "train"] {
        assert_eq!(v["stages"][stage]["passed"], false, "{stage}");
        let reason = v["stages"][stage]["reason"].as_str().unwrap();
        assert!(
            reason.contains("output line 1 is not the protocol"),
            "{reason}"
        );
    }
    // Runs of plain words from every hidden document, looked for in everything the run wrote.
    let worlds = common::home().cache().join("worlds");
    let hidden = std::fs::read_dir(&worlds)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("hidden"))
        .find(|p| p.join("test.jsonl").exists())
        .unwrap();
    let mut snippets: Vec<String> = vec![];
    for f in ["test.jsonl", "ood.jsonl"] {
        for l in std::fs::read_to_string(hidden.join(f)).unwrap().lines() {
            let d: Value = serde_json::from_str(l).unwrap();
            let t: Vec<char> = d["text"].as_str().unwrap().chars().collect();
            let plain = |c: &char| c.is_ascii_alphanumeric() || *c == ' ';
            let first = (0..t.len().saturating_sub(30)).find(|&i| t[i..i + 30].iter().all(plain));
            snippets.extend(first.map(|i| t[i..i + 30].iter().collect::<String>()));
        }
    }
    assert!(snippets.len() >= 10, "{}", snippets.len());
    let dir = Path::new(v["dir"].as_str().unwrap());
    for f in ["events.jsonl", "score.json"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for s in &snippets {
            assert!(!text.contains(s.as_str()), "{f} holds hidden text {s:?}");
        }
    }
    common::assert_nothing_left(&docker, &v).await;
}

/// The bytes allocated on disk to `p` and, for a directory, everything below it.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    let own = m.blocks() * 512;
    if m.is_dir() {
        own + std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| allocated(&e.path()))
            .sum::<u64>()
    } else {
        own
    }
}

/// Filling the disk: the workspace and /tmp each stop at their limit inside the sandbox (ENOSPC),
/// the root filesystem is read-only, and the host loses no more than the workspace's image.
#[tokio::test(flavor = "multi_thread")]
async fn the_disk_has_limits_that_hold_inside_the_sandbox() {
    let root = rustix::process::geteuid().is_root();
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let suite = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tasks/suites/mini.toml"
    ))
    .unwrap()
    .replace("disk_mb = 2048", "disk_mb = 64")
    .replace("tmp_mb = 512", "tmp_mb = 32");
    let suite_path = runs.path().join("small-disk.toml");
    std::fs::write(&suite_path, suite).unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": "head -c 300M /dev/zero > /workspace/fill; echo ws=$?; head -c 300M /dev/zero > /tmp/fill; echo tmp=$?; touch /etc/x 2>&1; echo etc=$?; df -m /workspace | tail -1"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &[
            "--suite",
            suite_path.to_str().unwrap(),
            "--stages",
            "tokenize",
            "--agent",
            &agent,
        ],
        runs.path(),
    );
    let r = &steps(&v)[0]["result"];
    let out = r["stdout"].as_str().unwrap();
    if !root {
        // The workspace's limit is a loop-mounted image, root's alone: run.json says it is not in
        // force; /tmp still stops at its limit and the root file system is still read-only.
        assert_eq!(guarantee(&v, "disk_limit")["held"], false);
        assert!(out.contains("tmp=1") && !out.contains("etc=0"), "{r}");
        assert!(out.contains("Read-only file system"), "{r}");
        let err = r["stderr"].as_str().unwrap();
        assert!(err.contains("No space left on device"), "{r}");
        common::assert_nothing_left(&docker, &v).await;
        return;
    }
    assert!(out.contains("ws=1") && out.contains("tmp=1"), "{r}");
    assert!(!out.contains("etc=0"), "{r}");
    let err = r["stderr"].as_str().unwrap();
    assert!(err.contains("No space left on device"), "{r}");
    assert!(out.contains("Read-only file system"), "{r}");
    // What the run left on the host: the workspace's 64 MiB at most (it is kept), and the trace;
    // the 300 MB written to /tmp never reached the host's disk.
    let used = allocated(Path::new(v["dir"].as_str().unwrap()));
    assert!(used < 80 << 20, "the run holds {} MiB", used >> 20);
    let dir = Path::new(v["dir"].as_str().unwrap());
    assert!(!dir.join("workspace.img").exists());
    assert!(dir.join("workspace/fill").exists());
    assert!(gptx::sandbox::quota::mounts_below(runs.path()).is_empty());
    // The full disk is in the ledger.
    assert_eq!(ledger(&v, "disk_full").len(), 1, "the disk limit was hit");
    common::assert_nothing_left(&docker, &v).await;
}

/// MCP over HTTP: no token, no answer; a silent connection is closed; past the cap, 503.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_over_http_needs_its_token_and_caps_connections() {
    use std::io::{BufRead, Read, Write};
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let mut server = common::gptx()
        .args([
            "mcp",
            "--suite",
            "mini",
            "--stages",
            "tokenize",
            "--http",
            "127.0.0.1:0",
            "--runs-dir",
        ])
        .arg(runs.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut url = String::new();
    while !url.contains("listening on ") {
        url.clear();
        assert!(err.read_line(&mut url).unwrap() > 0, "no listening line");
    }
    let url = url
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let (addr, token) = {
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, q) = rest.split_once("/mcp?token=").unwrap();
        (addr.to_string(), q.to_string())
    };
    let post = |path: &str, auth: Option<&str>| {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let auth = auth
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head[9..12]).to_string()
    };
    assert_eq!(post("/mcp", None), "401");
    assert_eq!(post("/mcp?token=0000", None), "401");
    assert_eq!(post("/mcp", Some("wrong")), "401");
    assert_eq!(post("/mcp", Some(&token)), "200");
    // Silent connections take every place; the ones past the cap are turned away at once.
    let idle: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = idle
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut got = [0u8; 12];
            let mut r: &std::net::TcpStream = c;
            r.read_exact(&mut got).is_ok() && got.starts_with(b"HTTP/1.1 503")
        })
        .count();
    // A connection of the requests above may still hold its place for a moment, so fewer than
    // `cap` may be served; never more.
    let cap = gptx::agent::mcp::HTTP_CONNECTIONS;
    let served = 40 - refused;
    assert!(
        served <= cap && served + 4 >= cap,
        "{served} of 40 served, the cap is {cap}"
    );
    drop(idle);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    );
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let run = std::fs::read_dir(runs.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().join("run.json").exists())
        .unwrap()
        .file_name();
    assert_eq!(common::leftovers(&docker, &run.to_string_lossy()).await, 0);
}

/// `gptx verify` checks more than the chain: `outputs/` by hash, the step commits, and `score.json`
/// against the trace; the leaderboard ranks only runs that pass it.
#[test]
fn verify_catches_edited_scores_and_outputs_and_the_leaderboard_ranks_only_verified_runs() {
    let runs = tempfile::tempdir().unwrap();
    let good = common::synth_run(runs.path(), "20261201-000000-aaaaaa", |_| {});
    let bad = common::synth_run(runs.path(), "20261201-000000-bbbbbb", |s| s.seed = 2);
    let verify = |id: &str| {
        common::gptx()
            .args(["verify", id, "--runs-dir"])
            .arg(runs.path())
            .output()
            .unwrap()
    };
    let ok = verify("20261201-000000-aaaaaa");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("score.json agrees with the trace"));
    // A score raised by hand after the run.
    let mut score: Value =
        serde_json::from_str(&std::fs::read_to_string(bad.score_json()).unwrap()).unwrap();
    let stage = score["stages"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    score["stages"][&stage]["normalized"] = json!(9.0);
    std::fs::write(bad.score_json(), serde_json::to_vec(&score).unwrap()).unwrap();
    let out = verify("20261201-000000-bbbbbb");
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("score.json: stage {stage}")),
        "{text}"
    );
    // An output file changed after the run.
    if let Some(f) = std::fs::read_dir(good.outputs()).unwrap().flatten().next() {
        let kept = std::fs::read(f.path()).unwrap();
        std::fs::write(f.path(), b"edited").unwrap();
        let out = verify("20261201-000000-aaaaaa");
        assert_eq!(out.status.code(), Some(4));
        assert!(String::from_utf8_lossy(&out.stdout).contains("hashes to"));
        std::fs::write(f.path(), kept).unwrap();
    }
    let boards =
        gptx::report::leaderboard::collect(runs.path(), None, &Default::default()).unwrap();
    let b = &boards[0];
    assert_eq!(b.entries.len(), 1, "only the verified run is ranked");
    assert_eq!(b.entries[0].run_id, "20261201-000000-aaaaaa");
    let u = &b.unfinished[0];
    assert_eq!(u.run_id, "20261201-000000-bbbbbb");
    assert_eq!(u.status, "done, does not verify");
    assert!(u.error.as_deref().unwrap().contains("score.json"));
}

/// The engine's version, and whether it is a Docker Engine without the CVE-2024-29018 fix.
async fn engine_lacks_dns_fix(docker: &bollard::Docker) -> (String, bool) {
    let engine = docker.version().await.unwrap();
    let version = engine.version.clone().unwrap();
    // Podman's versions are its own, and its networks have no DNS server to fix: no warning there.
    let components = engine.components.unwrap_or_default();
    let podman = components.iter().any(|c| c.name == "Podman Engine");
    let lacks = !podman && gptx::docker::engine::lacks_dns_fix(&version);
    (version, lacks)
}

/// World names resolve from host entries, not DNS; anything else goes to an upstream routed nowhere;
/// on this engine (before the CVE-2024-29018 fix) the trace says which mitigation is in force.
#[tokio::test(flavor = "multi_thread")]
async fn world_names_resolve_without_dns_and_nothing_else_resolves() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": "grep gptx.test /etc/hosts | wc -l; python3 -c 'import socket; print(socket.gethostbyname(\"docs.gptx.test\"))'; python3 -c 'import socket\ntry:\n    print(socket.gethostbyname(\"example.com\"))\nexcept OSError as e:\n    print(\"unresolved\")'"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let (v, stderr) = common::run_json_with(
        &[
            "--suite", "mini", "--stages", "crawl", "--rescue", "false", "--agent", &agent,
        ],
        runs.path(),
        &[],
    );
    let out = steps(&v)[0]["result"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().trim().parse::<u32>().unwrap() >= 3,
        "{out}"
    );
    assert!(lines.next().unwrap().contains('.'), "{out}");
    assert_eq!(lines.next(), Some("unresolved"), "{out}");
    let (version, lacks_fix) = engine_lacks_dns_fix(&docker).await;
    let warned = stderr.contains("CVE-2024-29018") && stderr.contains("192.0.2.53");
    assert_eq!(warned, lacks_fix, "{version}");
    common::assert_nothing_left(&docker, &v).await;
}

/// The grade runs the agent's programs on a private copy of the workspace, not the live one: here
/// the live workspace is its own loop-mounted disk, and `bin/lm` refuses to run from it.
#[tokio::test(flavor = "multi_thread")]
async fn grading_reads_a_private_copy_of_the_workspace() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the live workspace is a loop mount only as root");
        return;
    }
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let model = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/lm/model.py"
    ))
    .unwrap();
    let lm = "#!/bin/sh\n# Which filesystem is /workspace? The live one is a loop device.\nif grep -q ' /workspace .* /dev/loop' /proc/self/mountinfo; then echo 'live workspace' >&2; exit 9; fi\nexec python3 \"$(dirname \"$0\")/../src/model.py\" honest \"$@\"\n";
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "write_file", "args": {"path": "src/model.py", "content": model}}),
            json!({"tool": "write_file", "args": {"path": "bin/lm", "content": lm}}),
            json!({"tool": "bash", "args": {"cmd": "chmod +x bin/lm; grep ' /workspace ' /proc/self/mountinfo | grep -c /dev/loop"}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "train", "--agent", &agent],
        runs.path(),
    );
    // The agent's own sandbox does see the loop device...
    assert_eq!(
        steps(&v)[2]["result"]["stdout"].as_str().unwrap().trim(),
        "1"
    );
    // ...and the grade ran the model anyway: it was not on the live workspace.
    let t = &v["stages"]["train"];
    assert_eq!(t["metrics"]["verified"], true, "{t}");
    let dir = Path::new(v["dir"].as_str().unwrap());
    assert!(
        !dir.join("graded").exists(),
        "the graded copy is removed after scoring"
    );
    common::assert_nothing_left(&docker, &v).await;
}

/// An agent that knows where the host keeps the world's gold text links its corpus to it: the
/// grade reads the corpus through the confined reader, from the graded copy, and refuses the link.
#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_linked_to_the_hosts_gold_text_is_refused() {
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let gold = std::fs::read_dir(common::home().cache().join("worlds"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("gold.jsonl"))
        .find(|p| p.exists())
        .expect("a built world");
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": format!(
                "mkdir -p data && ln -s {} data/corpus.jsonl && ln -s ../../../../../../../..{} data/rel.jsonl; ls -l data",
                gold.display(), gold.display())}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &[
            "--suite", "mini", "--stages", "crawl", "--rescue", "false", "--agent", &agent,
        ],
        runs.path(),
    );
    let c = &v["stages"]["crawl"];
    assert_eq!(c["passed"], false, "{c}");
    assert_eq!(c["status"], "rejected", "{c}");
    assert_ne!(c["metrics"]["recall"], 1.0, "{c}");
    common::assert_nothing_left(&docker, &v).await;
}

/// An agent that writes hidden test documents from memory (here: the test reads them from the
/// built world, the agent only writes them) into its corpus through a bash heredoc: the crawl is
/// rejected unscored, the ledger says where, and nothing the harness wrote holds their text.
#[tokio::test(flavor = "multi_thread")]
async fn text_of_the_hidden_documents_in_the_corpus_rejects_the_crawl() {
    use gptx::stages::contamination::SpanIndex;
    let (docker, _) = common::docker_and_image().await;
    let runs = tempfile::tempdir().unwrap();
    let world = gptx::world::ensure(&common::home(), "mini", 1, &gptx::world::Quiet)
        .unwrap()
        .0;
    // Three documents of a few KB (one bash argument holds at most 128 KiB).
    let mut test = world.test_docs().unwrap();
    test.sort_by_key(|d| (d.text.len() < 2000, d.text.len()));
    let (written, kept) = test.split_at(3);
    assert!(written.iter().map(|d| d.text.len()).sum::<usize>() < 100_000);
    let corpus: String = written
        .iter()
        .map(|d| {
            json!({"url": format!("http://docs.gptx.test/{}", d.id), "text": d.text}).to_string()
                + "\n"
        })
        .collect();
    let agent = script(
        runs.path(),
        &[
            json!({"tool": "bash", "args": {"cmd": format!(
                "mkdir -p data && cat > data/corpus.jsonl <<'EOF'\n{corpus}EOF\nwc -l data/corpus.jsonl")}}),
            json!({"tool": "submit", "args": {}}),
        ],
    );
    let v = common::run_json(
        &["--suite", "mini", "--stages", "crawl", "--agent", &agent],
        runs.path(),
    );
    assert_eq!(
        steps(&v)[0]["result"]["stdout"].as_str().unwrap().trim(),
        "3 data/corpus.jsonl"
    );
    let c = &v["stages"]["crawl"];
    assert_eq!(c["status"], "rejected", "{c}");
    assert_eq!(c["passed"], false);
    assert!(
        c["metrics"].as_object().is_none_or(|m| m.is_empty()),
        "not scored: {c}"
    );
    let notes = ledger(&v, "t_text_in_workspace");
    assert_eq!(notes.len(), 1, "{notes:?}");
    let index = SpanIndex::of_world(&world, &common::home()).unwrap().0;
    let spans = index.find(corpus.as_bytes()).len() as u64;
    assert_eq!(notes[0]["count"], spans, "{}", notes[0]);
    let detail = notes[0]["detail"].as_str().unwrap();
    for place in [
        "data/corpus.jsonl in the graded copy",
        "step 1's bash arguments",
        "(data/corpus.jsonl)",
    ] {
        assert!(detail.contains(place), "{detail}");
    }
    let score = score_json(&v);
    assert_eq!(score["integrity"][0]["kind"], "t_text_in_workspace");
    // Nothing the harness wrote holds text of T: not score.json, not its notes and scores, and the
    // trace has none of the documents the agent did not write.
    let dir = Path::new(v["dir"].as_str().unwrap());
    let score_text = std::fs::read_to_string(dir.join("score.json")).unwrap();
    assert!(index.find(score_text.as_bytes()).is_empty());
    for e in common::events(&v) {
        if e["type"] == "integrity" || e["type"] == "stage_scored" || e["type"] == "run_finished" {
            assert!(index.find(e.to_string().as_bytes()).is_empty(), "{e}");
        }
    }
    let mut others = SpanIndex::builder(kept.iter().map(|d| d.text.as_str()));
    for d in written {
        others.served(d.text.as_bytes());
    }
    let others = others.finish();
    let trace = std::fs::read(dir.join("events.jsonl")).unwrap();
    assert!(
        others.find(&trace).is_empty(),
        "the trace holds text of T the agent never wrote"
    );
    common::assert_nothing_left(&docker, &v).await;
}
