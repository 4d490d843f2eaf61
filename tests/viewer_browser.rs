//! The viewer in a real browser: headless Debian `chromium` screenshots and the DOM after scripts ran.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`); without it this test fails on purpose.
//! The screenshots are kept under `target/viewer-screenshots/` and their paths printed.
mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gptx::serve::{serve, AppState};
use gptx::synth::Synth;
use gptx::trace::rundir::{RunDir, RunStatus};
use gptx::trace::{Event, StepRecord};
use tokio_util::sync::CancellationToken;

/// Longest one chromium call may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

fn chromium() -> PathBuf {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, so the viewer cannot be checked in a browser: \
             apt-get install -y chromium"
        )
    })
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("viewer-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs chromium headless with `args` and a fresh profile; returns its stdout. Killed (its whole
/// process group) after [`CHROMIUM_TIMEOUT`].
fn run_chromium(extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The browser's helpers share its process group: end them all, whether it exited or not.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
    let out = reader.join().unwrap();
    match status {
        Some(s) => assert!(s.success(), "chromium {extra:?} failed: {s}"),
        None => panic!("chromium {extra:?} took more than {CHROMIUM_TIMEOUT:?}; killed"),
    }
    out
}

fn screenshot(url: &str, png: &Path) {
    let _ = std::fs::remove_file(png);
    run_chromium(&[format!("--screenshot={}", png.display()), url.to_string()]);
    let bytes = std::fs::read(png)
        .unwrap_or_else(|e| panic!("chromium wrote no screenshot {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    // A blank 1280x1600 page compresses to a few KB; a rendered page is much larger.
    assert!(
        bytes.len() > 30_000,
        "{} is only {} bytes: an empty page?",
        png.display(),
        bytes.len()
    );
    println!("screenshot: {}", png.display());
}

fn dump_dom(url: &str, extra: &[&str]) -> String {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.push("--dump-dom".into());
    args.push(url.into());
    run_chromium(&args)
}

fn synth(runs: &Path, id: &str, f: impl FnOnce(&mut Synth)) -> RunDir {
    common::synth_run(runs, id, f)
}

fn append(dir: &RunDir, events: &[Event]) {
    common::append_events(dir, events)
}

fn steps(dir: &RunDir) -> u64 {
    gptx::trace::log::read_events(&dir.events())
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, Event::Step(_)))
        .count() as u64
}

#[test]
fn viewer_pages_render_in_headless_chromium() {
    chromium();
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    let done = "20260201-090000-a1b2c3";
    synth(runs, done, |s| {
        s.steps_per_stage = 12;
        s.output_bytes = 60_000;
    });
    synth(runs, "20260201-100000-d4e5f6", |s| {
        s.agent = "null".into();
        s.passed_stages = 0;
    });
    synth(runs, "20260201-110000-0a0b0c", |s| {
        s.agent = "openai:gpt-x-mini".into();
        s.passed_stages = 3;
        s.seed = 2;
    });
    let running = "20260201-120000-777777";
    let live_dir = synth(runs, running, |s| {
        s.status = RunStatus::Running;
        s.passed_stages = 2;
        s.steps_per_stage = 6;
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let (base, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(runs.to_path_buf(), None);
        (base, tokio::spawn(serve(listener, state, cancel.clone())))
    });
    let shots = screenshot_dir();

    // The runs page.
    let url = format!("{base}/");
    screenshot(&url, &shots.join("runs.png"));
    let dom = dump_dom(&url, &[]);
    for id in [
        done,
        running,
        "20260201-100000-d4e5f6",
        "20260201-110000-0a0b0c",
    ] {
        assert!(dom.contains(id), "run {id} in the list");
    }
    assert!(dom.contains("Bootstrap Index"));

    // The leaderboard of the three finished runs.
    let url = format!("{base}/leaderboard");
    screenshot(&url, &shots.join("leaderboard.png"));
    let dom = dump_dom(&url, &[]);
    assert!(dom.contains("Leaderboard"));
    assert!(dom.contains("openai:gpt-x-mini"), "the agents are ranked");

    // A finished run: stages, chart, timeline.
    let url = format!("{base}/runs/{done}");
    screenshot(&url, &shots.join("run.png"));
    let dom = dump_dom(&url, &[]);
    assert!(dom.contains("<h2>Stages</h2>"), "the stages table");
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert!(dom.contains(stage));
    }
    assert!(dom.contains("<svg"), "the ladder chart");
    assert!(dom.contains("id=\"timeline\""));
    assert!(dom.contains(&format!("/runs/{done}/steps/60\"")));

    // A step with a diff (step 1 writes crawl/run.sh) and one with a long output.
    let url = format!("{base}/runs/{done}/steps/1");
    screenshot(&url, &shots.join("step-diff.png"));
    let dom = dump_dom(&url, &[]);
    assert!(dom.contains("Workspace diff"));
    assert!(
        dom.contains("+# crawl: synthetic solution"),
        "the added line"
    );
    let url = format!("{base}/runs/{done}/steps/2");
    screenshot(&url, &shots.join("step-output.png"));
    let dom = dump_dom(&url, &[]);
    assert!(dom.contains("60000 bytes"));

    // A running run: the page's script appends a step that arrives while it is open.
    let url = format!("{base}/runs/{running}");
    screenshot(&url, &shots.join("run-live.png"));
    let n = steps(&live_dir) + 1;
    let appender = {
        let dir = live_dir.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            append(
                &dir,
                &[
                    Event::Step(StepRecord {
                        stage: "train".into(),
                        step: n,
                        stage_step: 3,
                        tool: "bash".into(),
                        args: serde_json::json!({"cmd": "python3 train.py --arrived-live"}),
                        ok: true,
                        result: serde_json::json!({"exit_code": 0, "stdout": "loss 1.5\n", "stderr": ""}),
                        started_at: chrono::Utc::now(),
                        duration_ms: 800.0,
                        sandbox_seconds: 0.8,
                        usage: None,
                        outputs: vec![],
                        commit: None,
                    }),
                    // The run ends, so the stream ends too (a virtual-time budget waits for open requests).
                    Event::RunFinished {
                        status: RunStatus::Done,
                        level: "L2".into(),
                        bootstrap_index: 31.5,
                        wall_seconds: 60.0,
                        assisted_level: None,
                    },
                ],
            );
        })
    };
    let dom = dump_dom(&url, &["--virtual-time-budget=10000"]);
    appender.join().unwrap();
    assert!(
        dom.contains("--arrived-live"),
        "the live step was appended by the page's script"
    );
    assert!(
        dom.contains("data-state=\"finished\""),
        "the script saw the run finish"
    );
    assert!(
        dom.contains("31.5"),
        "the header was reloaded with the Bootstrap Index of run_finished"
    );

    cancel.cancel();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    });
}
