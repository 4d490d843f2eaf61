//! `gptx serve` over HTTP: the runs, run, step and error pages, filters, escaping, damaged traces, live runs.

mod common;

use std::path::Path;
use std::time::Duration;

use gptx::serve::{serve, AppState};
use gptx::synth::Synth;
use gptx::trace::rundir::{RunDir, RunStatus};
use gptx::trace::{Event, StepRecord, StepUsage};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    state: AppState,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(runs: &Path) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(runs.to_path_buf(), None);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state.clone(), cancel.clone()));
    Server {
        base,
        state,
        cancel,
        task,
    }
}

impl Server {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops after cancel")
            .unwrap()
            .unwrap();
    }
}

fn synth(runs: &Path, id: &str, f: impl FnOnce(&mut Synth)) -> RunDir {
    common::synth_run(runs, id, f)
}

fn append(dir: &RunDir, events: &[Event]) {
    common::append_events(dir, events)
}

fn bash_step(stage: &str, step: u64, cmd: &str, stdout: &str) -> Event {
    Event::Step(StepRecord {
        stage: stage.into(),
        step,
        stage_step: step,
        tool: "bash".into(),
        args: serde_json::json!({ "cmd": cmd }),
        ok: true,
        result: serde_json::json!({"exit_code": 0, "stdout": stdout, "stderr": "", "truncated": false}),
        started_at: chrono::Utc::now(),
        duration_ms: 120.0,
        sandbox_seconds: 0.12,
        usage: Some(StepUsage {
            cpu_seconds: 0.1,
            max_rss_kb: 4096,
            ..Default::default()
        }),
        outputs: vec![],
        commit: None,
    })
}

fn step_count(dir: &RunDir) -> u64 {
    gptx::trace::log::read_events(&dir.events())
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, Event::Step(_)))
        .count() as u64
}

#[tokio::test]
async fn runs_page_lists_runs_and_filters_them() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path();
    synth(runs, "20260101-100000-aaaaaa", |_| {});
    synth(runs, "20260101-110000-bbbbbb", |s| {
        s.agent = "null".into();
        s.passed_stages = 0;
        s.status = RunStatus::Failed;
    });
    synth(runs, "20260101-120000-cccccc", |s| {
        s.suite = "full".into();
        s.status = RunStatus::Running;
        s.passed_stages = 2;
    });
    let srv = start(runs).await;

    let (status, page) = srv.get("/").await;
    assert_eq!(status, 200);
    for id in ["aaaaaa", "bbbbbb", "cccccc"] {
        assert!(
            page.contains("/runs/20260101-1") && page.contains(id),
            "{id} missing"
        );
    }
    assert!(page.contains("live"), "a running run is marked live");
    assert!(
        page.contains("<option value=\"null\">"),
        "agents to filter on"
    );
    // Newest first.
    assert!(page.find("cccccc").unwrap() < page.find("aaaaaa").unwrap());

    let (_, only_null) = srv.get("/?agent=null").await;
    assert!(only_null.contains("bbbbbb"));
    assert!(!only_null.contains("aaaaaa") && !only_null.contains("cccccc"));
    let (_, running) = srv.get("/?status=running").await;
    assert!(running.contains("cccccc") && !running.contains("bbbbbb"));
    let (_, full) = srv.get("/?suite=full&agent=reference").await;
    assert!(full.contains("cccccc") && !full.contains("aaaaaa"));
    let (_, none) = srv.get("/?suite=nothing").await;
    assert!(none.contains("No run matches"));

    let (status, bad) = srv.get("/?status=sideways").await;
    assert_eq!(status, 400);
    assert!(bad.contains("?status=sideways"), "{bad}");

    let (status, board) = srv.get("/leaderboard").await;
    assert_eq!(status, 200, "{board}");
    assert!(board.contains("Leaderboard") && board.contains("null"));
    let (status, _) = srv.get("/leaderboard?suite=mini").await;
    assert_eq!(status, 200);

    let (status, json) = srv.get("/api/runs?status=done").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    assert_eq!(v["runs"][0]["run_id"], "20260101-100000-aaaaaa");
    assert_eq!(v["runs"][0]["level"], "L6");
    srv.stop().await;
}

#[tokio::test]
async fn run_page_shows_header_stages_chart_and_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260102-100000-abcdef";
    let dir = synth(tmp.path(), id, |s| {
        s.steps_per_stage = 30;
        s.passed_stages = 3;
    });
    let steps = step_count(&dir);
    assert_eq!(steps, 150);
    synth(tmp.path(), "20260102-110000-abcdef", |s| {
        s.passed_stages = 0
    });
    let srv = start(tmp.path()).await;

    let (status, page) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200, "{page}");
    for stage in ["crawl", "tokenize", "train", "eval", "selfhost"] {
        assert!(page.contains(stage), "stage {stage}");
    }
    assert!(page.contains("Bootstrap Index"));
    assert!(page.contains("L3"), "the level");
    assert!(page.contains("<svg"), "the ladder chart");
    assert!(page.contains("rebuilt bpb") || page.contains("train bpb"));
    assert!(
        page.contains("describes how the server answers"),
        "model samples"
    );
    assert!(
        page.contains("max_steps") || page.contains("/ 40"),
        "budgets"
    );
    assert!(page.contains(&format!("/runs/{id}/steps/1\"")));
    assert!(page.contains(&format!("/runs/{id}/steps/100\"")));
    assert!(
        !page.contains(&format!("/runs/{id}/steps/101\"")),
        "100 steps a page"
    );
    assert!(page.contains("page 1 of 2"));

    let (status, page2) = srv.get(&format!("/runs/{id}?page=2")).await;
    assert_eq!(status, 200);
    assert!(page2.contains(&format!("/runs/{id}/steps/150\"")));
    assert!(!page2.contains(&format!("/runs/{id}/steps/100\"")));

    let (status, _) = srv.get(&format!("/runs/{id}?page=3")).await;
    assert_eq!(status, 404);
    let (status, bad) = srv.get(&format!("/runs/{id}?page=zero")).await;
    assert_eq!(status, 400);
    assert!(bad.contains("?page=zero"));

    // A failed crawl rescued by the harness: the rescue and the assisted level.
    let (status, rescued) = srv.get("/runs/20260102-110000-abcdef").await;
    assert_eq!(status, 200);
    assert!(rescued.contains("Rescue after crawl"), "{rescued}");
    assert!(rescued.contains("class=\"assisted\""));

    let (status, json) = srv.get(&format!("/api/runs/{id}/steps?page=2")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["total_steps"], 150);
    assert_eq!(v["steps"].as_array().unwrap().len(), 50);
    assert_eq!(v["steps"][0]["step"], 101);
    srv.stop().await;
}

#[tokio::test]
async fn step_page_shows_full_output_and_the_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260103-100000-abcdef";
    // 100 KB of output: more than the event keeps inline, all of it in outputs/.
    synth(tmp.path(), id, |s| {
        s.steps_per_stage = 4;
        s.output_bytes = 100_000;
    });
    let big = "20260103-110000-abcdef";
    synth(tmp.path(), big, |s| {
        s.steps_per_stage = 3;
        s.stages = vec!["crawl".into()];
        s.output_bytes = 3 << 20;
    });
    let srv = start(tmp.path()).await;

    // Step 1 writes crawl/run.sh.
    let (status, page) = srv.get(&format!("/runs/{id}/steps/1")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("crawl/run.sh"), "the file list");
    assert!(
        page.contains("+# crawl: synthetic solution"),
        "an added line of the file the step wrote"
    );
    assert!(page.contains("class=\"add\""), "coloured diff");
    assert!(page.contains(&format!("/runs/{id}/steps/2\"")), "next link");

    // Step 2 is a bash step: the whole output, including what the event cut out.
    let (status, page) = srv.get(&format!("/runs/{id}/steps/2")).await;
    assert_eq!(status, 200);
    assert!(page.contains("sh crawl/run.sh"), "the command");
    assert!(
        page.contains("docs.gptx.test/page/1000 200"),
        "the middle of the output"
    );
    assert!(!page.contains("omitted by gptx"), "not the inline copy");
    assert!(page.contains("100000 bytes"));
    assert!(
        page.contains(&format!("/runs/{id}/steps/1\"")),
        "previous link"
    );
    let sha = page
        .split(&format!("/runs/{id}/outputs/"))
        .nth(1)
        .map(|s| &s[..64])
        .expect("a link to the full output");
    let r = reqwest::get(format!("{}/runs/{id}/outputs/{sha}", srv.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);

    // 3 MiB of output: the page shows the first MiB and says so.
    let (status, page) = srv.get(&format!("/runs/{big}/steps/2")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("showing {} of {} bytes", 1 << 20, 3 << 20)),
        "the cut is stated"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unknown_runs_steps_and_pages_are_404_and_bad_input_400() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260104-100000-abcdef";
    synth(tmp.path(), id, |_| {});
    let srv = start(tmp.path()).await;
    for (path, status, text) in [
        ("/runs/nope", 404, "There is no run"),
        ("/runs/nope/steps/1", 404, "There is no run"),
        ("/runs/a%2Fb", 404, "There is no run"),
        (&format!("/runs/{id}/steps/999") as &str, 404, "no step 999"),
        (&format!("/runs/{id}/steps/two"), 400, "a step is a number"),
        (&format!("/runs/{id}/outputs/..%2Frun.json"), 400, "SHA-256"),
        (
            &format!("/runs/{id}/outputs/{}", "0".repeat(64)),
            404,
            "No such output",
        ),
        ("/no/such/page", 404, "Not found"),
        (&format!("/runs/{id}/live?after=x"), 400, "?after=x"),
    ] {
        let (got, body) = srv.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(text), "{path}: {body}");
        assert!(body.contains("<!DOCTYPE html>"), "{path}: an error page");
    }
    // A unique prefix of an id names the run, as on the command line; an ambiguous one does not.
    let (got, body) = srv.get("/runs/20260104-100000-ab").await;
    assert_eq!(got, 200, "{body}");
    assert!(body.contains(id), "{body}");
    synth(tmp.path(), "20260104-100000-abffff", |_| {});
    let (got, body) = srv.get("/runs/20260104-100000-ab").await;
    assert_eq!(got, 404, "{body}");
    assert!(body.contains("give more of the id"), "{body}");
    let (got, body) = srv.get("/api/runs/nope/steps").await;
    assert_eq!(got, 404);
    assert!(body.starts_with('{'), "JSON errors under /api: {body}");
    srv.stop().await;
}

#[tokio::test]
async fn agent_output_is_shown_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260105-100000-abcdef";
    let dir = synth(tmp.path(), id, |s| {
        s.status = RunStatus::Running;
        s.passed_stages = 1;
    });
    let n = step_count(&dir) + 1;
    append(
        &dir,
        &[bash_step(
            "tokenize",
            n,
            "echo '<script>alert(1)</script>'",
            "<script>alert(\"pwned\")</script><img src=x onerror=alert(2)>",
        )],
    );
    let srv = start(tmp.path()).await;
    let (status, page) = srv.get(&format!("/runs/{id}/steps/{n}")).await;
    assert_eq!(status, 200);
    assert!(!page.contains("<script>alert"), "markup from the agent ran");
    assert!(!page.contains("<img src=x"));
    assert!(page.contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;"));
    assert!(page.contains("echo &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;"));
    let (_, run_page) = srv.get(&format!("/runs/{id}")).await;
    assert!(!run_page.contains("<script>alert"));
    assert!(run_page.contains("&lt;script&gt;alert(1)"));
    srv.stop().await;
}

#[tokio::test]
async fn a_damaged_trace_gives_an_error_page_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260106-100000-abcdef";
    let dir = synth(tmp.path(), id, |_| {});
    let text = std::fs::read_to_string(dir.events()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Line 3 becomes garbage; the first step's line loses its end.
    lines[2] = "{this is not json".into();
    let first_step = lines
        .iter()
        .position(|l| l.contains("\"type\":\"step\""))
        .unwrap();
    let half = lines[first_step].len() / 2;
    lines[first_step].truncate(half);
    std::fs::write(dir.events(), lines.join("\n") + "\n").unwrap();
    let srv = start(tmp.path()).await;

    let (status, page) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 500, "{page}");
    assert!(page.contains("events.jsonl line 3"), "{page}");
    assert!(page.contains("not a trace event"));
    assert!(
        page.contains(&format!("events.jsonl line {}", first_step + 1)),
        "the cut step line is named"
    );
    let (status, page) = srv.get(&format!("/runs/{id}/steps/1")).await;
    assert_eq!(status, 500);
    assert!(page.contains(&format!("line {}", first_step + 1)), "{page}");
    // The rest still works.
    let (status, _) = srv.get(&format!("/runs/{id}/steps/2")).await;
    assert_eq!(status, 200);
    let (status, _) = srv.get("/").await;
    assert_eq!(status, 200);

    // A run.json that is not JSON.
    std::fs::write(dir.run_json(), "{").unwrap();
    let (status, page) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 500);
    assert!(page.contains("run.json"), "{page}");
    let (status, page) = srv.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Skipped"), "the unreadable run is reported");
    srv.stop().await;
}

/// Reads server-sent events until `until` is among them (or the stream ends), with a deadline.
async fn read_events(resp: &mut reqwest::Response, until: &str, secs: u64) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !text.contains(until) {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("the stream failed: {e}"),
            Err(_) => panic!("no {until:?} within {secs} s; got:\n{text}"),
        }
    }
    text
}

#[tokio::test]
async fn a_running_run_streams_new_steps_and_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260107-100000-abcdef";
    let dir = synth(tmp.path(), id, |s| {
        s.status = RunStatus::Running;
        s.passed_stages = 2;
    });
    let srv = start(tmp.path()).await;
    let (status, page) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"live\""),
        "the live hook is on a running run's page"
    );
    let after = page
        .split("data-after=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let n = step_count(&dir) + 1;
    // The step the run is in the middle of is on the page, marked running.
    assert!(
        page.contains(&format!("id=\"inflight\" data-step=\"{n}\"")),
        "the step in flight is shown: {page}"
    );
    let (_, api) = srv
        .get(&format!("/api/runs/{id}/events?after={after}"))
        .await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["in_flight"]["step"], n, "{api}");

    let mut resp = reqwest::get(format!("{}/runs/{id}/live?after={after}", srv.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(srv.state.live_streams(), 1);
    // The stream's first look at the trace sends the step in flight.
    let got = read_events(&mut resp, "event: inflight", 10).await;
    assert!(got.contains(&format!("data-step=\\\"{n}\\\"")), "{got}");

    append(
        &dir,
        &[bash_step(
            "train",
            n,
            "python3 train.py --live",
            "loss 1.23",
        )],
    );
    let got = read_events(&mut resp, "python3 train.py --live", 10).await;
    assert!(got.contains("event: step"), "{got}");
    assert!(got.contains(&format!("/runs/{id}/steps/{n}")));

    append(
        &dir,
        &[
            bash_step("train", n + 1, "python3 eval.py", "ok"),
            Event::StageEnded {
                stage: "train".into(),
                ended_by: gptx::trace::EndReason::Submit,
                steps: 3,
                sandbox_seconds: 1.0,
                wall_seconds: 2.0,
            },
            Event::RunFinished {
                status: RunStatus::Done,
                level: "L2".into(),
                bootstrap_index: 30.0,
                wall_seconds: 9.0,
                assisted_level: None,
            },
        ],
    );
    let got = read_events(&mut resp, "event: finished", 10).await;
    assert!(got.contains("python3 eval.py"));
    let (_, api) = srv
        .get(&format!("/api/runs/{id}/events?after={after}"))
        .await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert!(
        api["in_flight"].is_null(),
        "nothing runs after the end: {api}"
    );
    assert!(got.contains("event: event"), "the stage's end: {got}");
    // The server ends the stream after `finished`.
    let rest = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the stream ends");
    assert!(matches!(rest, Ok(None)), "{rest:?}");

    // The same through JSON polling, and the header now says L2 (from run_finished).
    let (status, json) = srv
        .get(&format!("/api/runs/{id}/events?after={after}"))
        .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["finished"], true);
    let kinds: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["step", "step", "stage_ended", "run_finished"]);
    let (_, summary) = srv.get(&format!("/runs/{id}/summary")).await;
    assert!(summary.starts_with("<section id=\"summary\">"));
    assert!(summary.contains("L2"));
    let (_, page) = srv.get(&format!("/runs/{id}")).await;
    assert!(page.contains(&format!("/runs/{id}/steps/{}\"", n + 1)));
    srv.stop().await;
}

#[tokio::test]
async fn live_streams_end_when_the_client_goes_or_the_server_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "20260108-100000-abcdef";
    synth(tmp.path(), id, |s| {
        s.status = RunStatus::Running;
        s.passed_stages = 1;
    });
    let srv = start(tmp.path()).await;
    let url = format!("{}/runs/{id}/live", srv.base);

    // A client that goes away: its stream is dropped within a keep-alive interval.
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(srv.state.live_streams(), 1);
    drop(resp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while srv.state.live_streams() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream of a gone client is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client that stays: shutdown ends its stream and the server returns promptly.
    let mut resp = reqwest::get(&url).await.unwrap();
    let state = srv.state.clone();
    let started = std::time::Instant::now();
    srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(state.live_streams(), 0);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended with the server");
}

/// A page from another site that rebinds its name to 127.0.0.1 is refused: the Host names it. Every
/// response carries the CSP, and no page has an inline script.
#[tokio::test]
async fn foreign_hosts_are_refused_and_every_page_has_a_csp() {
    let runs = tempfile::tempdir().unwrap();
    synth(runs.path(), "20261201-000000-aaaaaa", |_| {});
    let s = start(runs.path()).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/", s.base))
        .header("Host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    assert!(r.headers().contains_key("content-security-policy"));
    for path in ["/", "/runs/20261201-000000-aaaaaa", "/leaderboard", "/nope"] {
        let r = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let body = r.text().await.unwrap();
        assert!(!body.contains("<script>"), "{path}: an inline script");
    }
    s.stop().await;
}

/// An interrupted run says how to resume it; a resumed run says when and after which step, on its
/// page and in the runs list.
#[tokio::test]
async fn interrupted_and_resumed_runs_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    synth(tmp.path(), "r-stopped", |s| {
        s.status = RunStatus::Interrupted
    });
    let resumed = synth(tmp.path(), "r-resumed", |_| {});
    let mut meta: gptx::trace::rundir::RunMeta =
        gptx::trace::rundir::read_json(&resumed.run_json()).unwrap();
    meta.resumes.push(gptx::trace::rundir::ResumeRecord {
        at: meta.started_at,
        after_step: 3,
        reason: "owner process gone".into(),
    });
    gptx::trace::rundir::write_json_atomic(&resumed.run_json(), &meta).unwrap();
    let s = start(tmp.path()).await;
    let (code, list) = s.get("/").await;
    assert_eq!(code, 200);
    assert!(list.contains("resumed 1×"), "{list}");
    assert!(list.contains("resumable"), "{list}");
    let (_, page) = s.get("/runs/r-stopped").await;
    assert!(page.contains("gptx resume r-stopped"), "{page}");
    let (_, page) = s.get("/runs/r-resumed").await;
    assert!(page.contains("<b>Resumed</b>"), "{page}");
    assert!(page.contains("after step 3"), "{page}");
    assert!(page.contains("owner process gone"), "{page}");
    s.stop().await;
}
