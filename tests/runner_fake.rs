//! The run loop against the recording fake sandbox: budgets, tool errors, commits, the trace.

use std::sync::Arc;

use gptx::agent::ScriptAgent;
use gptx::config::suite::Suite;
use gptx::runner::Runner;
use gptx::sandbox::fake::{Recorded, RecordingSandbox, Reply};
use gptx::trace::replay::{Phase, Replay};
use gptx::trace::rundir::RunStatus;
use gptx::trace::{self, EndReason, Event, EventLog, EventSink, Recorder, WorkspaceHistory};
use tokio_util::sync::CancellationToken;

mod common;

const SUITE: &str = r#"
name = "fake"
image = "base"
[budgets]
max_steps = 4
[[stages]]
name = "crawl"
[[stages]]
name = "tokenize"
[[stages]]
name = "train"
budgets = { max_sandbox_seconds = 1.5 }
"#;

struct Fixture {
    _tmp: tempfile::TempDir,
    run_dir: std::path::PathBuf,
    sandbox: Arc<RecordingSandbox>,
    runner: Runner,
}

fn fixture(replies: Vec<Reply>) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let ws = run_dir.join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let sandbox = Arc::new(RecordingSandbox::with_workspace(&ws, replies).unwrap());
    let suite = Suite::parse(SUITE, std::path::Path::new("fake.toml")).unwrap();
    let recorder = Recorder::new(EventLog::create(&run_dir.join("events.jsonl")).unwrap());
    let history = WorkspaceHistory::create(&run_dir.join("workspace.git"), &ws).unwrap();
    let runner = Runner::new(
        common::home(),
        suite,
        "fake-run".into(),
        run_dir.clone(),
        sandbox.clone(),
        EventSink::new(recorder, vec![]),
        Some(history),
        CancellationToken::new(),
    );
    Fixture {
        _tmp: tmp,
        run_dir,
        sandbox,
        runner,
    }
}

fn script(lines: &[&str]) -> ScriptAgent {
    ScriptAgent::parse(&lines.join("\n"), "script:test", "test.jsonl").unwrap()
}

fn events(run_dir: &std::path::Path) -> Vec<Event> {
    trace::log::read_events(&run_dir.join("events.jsonl"))
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

#[tokio::test]
async fn stages_budgets_errors_commits_and_trace() {
    let mut write_reply = Reply::ok("made\n");
    write_reply.writes = vec![("made_by_bash.txt".into(), b"x".to_vec())];
    let mut slow = Reply::ok("");
    slow.outcome.duration_ms = 2000.0;
    let mut f = fixture(vec![write_reply, Reply::ok("nothing changes\n"), slow]);
    let mut agent = script(&[
        // crawl: a write, a bash that writes, a bash that does not, a bad call, then max_steps (4) ends it.
        r#"{"tool":"write_file","args":{"path":"a/b.txt","content":"hello"}}"#,
        r#"{"tool":"bash","args":{"cmd":"make it"}}"#,
        r#"{"tool":"bash","args":{"cmd":"look","timeout_s":99999}}"#,
        r#"{"tool":"fly","args":{}}"#,
        r#"{"tool":"bash","args":{"cmd":"never runs"}}"#,
        r#"{"tool":"submit"}"#,
        // tokenize: a path escape, then submit.
        r#"{"tool":"read_file","args":{"path":"../../etc/passwd"}}"#,
        r#"{"tool":"submit"}"#,
        // train: one slow command uses up the sandbox budget.
        r#"{"tool":"bash","args":{"cmd":"train"}}"#,
        r#"{"tool":"bash","args":{"cmd":"never runs either"}}"#,
        r#"{"tool":"submit"}"#,
    ]);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Done);
    let ended: Vec<_> = result
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.ended_by, s.steps))
        .collect();
    assert_eq!(
        ended,
        [
            ("crawl", EndReason::MaxSteps, 4),
            ("tokenize", EndReason::Submit, 2),
            ("train", EndReason::MaxSandboxSeconds, 1),
        ]
    );
    assert_eq!(result.level, "L0");

    // The sandbox saw exactly the commands that ran, with timeouts capped by the stage.
    let execs: Vec<_> = f
        .sandbox
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Recorded::Exec { cmd, timeout_ms } => Some((cmd, timeout_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(execs[0], ("make it".to_string(), 120_000));
    assert_eq!(execs[1], ("look".to_string(), 600_000));
    assert_eq!(execs[2], ("train".to_string(), 1_500));
    assert_eq!(execs.len(), 3);

    let evs = events(&f.run_dir);
    let steps: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 7);
    // One commit per step that changed the workspace: the write and the bash that wrote.
    let commits: Vec<bool> = steps.iter().map(|s| s.commit.is_some()).collect();
    assert_eq!(commits, [true, true, false, false, false, false, false]);
    assert_eq!(steps[3].result["code"], "bad_request");
    assert!(steps[3].result["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
    assert_eq!(steps[4].result["code"], "path_refused");
    assert_eq!(steps[2].result["stdout"], "nothing changes\n");

    let repo = git2::Repository::open_bare(f.run_dir.join("workspace.git")).unwrap();
    let mut walk = repo.revwalk().unwrap();
    walk.push_head().unwrap();
    assert_eq!(walk.count(), 2);
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    assert!(head
        .message()
        .unwrap()
        .starts_with("step 2 (crawl): bash make it"));

    // Every stage was started, ended and scored, and the trace ends with run_finished.
    let kinds: Vec<&str> = evs.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "stage_scored").count(), 3);
    assert_eq!(*kinds.last().unwrap(), "run_finished");
    let ok = trace::verify(
        &f.run_dir.join("events.jsonl"),
        result.trace_sha256.as_deref(),
    )
    .unwrap();
    assert_eq!(ok.events as usize, evs.len());
}

#[tokio::test]
async fn large_outputs_are_cut_for_the_agent_and_kept_whole_in_outputs() {
    let big = "x".repeat(100_000) + "TAIL";
    let mut f = fixture(vec![Reply::ok(&big)]);
    let mut agent = script(&[
        r#"{"tool":"bash","args":{"cmd":"big"}}"#,
        r#"{"tool":"submit"}"#,
    ]);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    let step = events(&f.run_dir)
        .into_iter()
        .find_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(step.result["truncated"], true);
    let inline = step.result["stdout"].as_str().unwrap();
    assert!(inline.len() < 40_000 && inline.ends_with("TAIL"));
    let out = &step.outputs[0];
    assert_eq!(out.bytes_total, big.len() as u64);
    let kept = std::fs::read(f.run_dir.join("outputs").join(&out.sha256)).unwrap();
    assert_eq!(kept, big.as_bytes());
}

#[tokio::test]
async fn cancelling_ends_the_run_as_interrupted_without_scoring() {
    let mut f = fixture(vec![]);
    f.runner.cancel.cancel();
    let mut agent = script(&[r#"{"tool":"bash","args":{"cmd":"x"}}"#]);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Interrupted);
    assert_eq!(result.stages.len(), 1);
    assert_eq!(result.stages[0].ended_by, EndReason::Interrupted);
    assert!(result.stages[0].score.is_none());
}

#[tokio::test]
async fn rescue_hands_over_the_reference_tokenizer_and_records_it() {
    let mut trained = Reply::ok("tokenize: {\"vocab_size\": 300}, round trip ok\n");
    trained.writes = vec![(
        "tokenizer/meta.json".into(),
        b"{\"vocab_size\": 300}".to_vec(),
    )];
    let mut f = fixture(vec![trained]);
    f.runner.rescue = true;
    let mut agent = script(&[
        r#"{"tool":"submit"}"#,
        r#"{"tool":"submit"}"#,
        r#"{"tool":"submit"}"#,
    ]);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    // No world in this suite: crawl cannot be rescued (and says why); tokenize can.
    type Row = (String, bool, Vec<String>, String, Option<String>);
    let rescues: Vec<Row> = events(&f.run_dir)
        .into_iter()
        .filter_map(|e| match e {
            Event::Rescue {
                stage,
                ok,
                files,
                detail,
                commit,
                ..
            } => Some((stage, ok, files, detail, commit)),
            _ => None,
        })
        .collect();
    assert_eq!(rescues.len(), 2, "{rescues:?}");
    assert_eq!((rescues[0].0.as_str(), rescues[0].1), ("crawl", false));
    assert_eq!(rescues[0].3, "this run has no world");
    let (stage, ok, files, detail, commit) = &rescues[1];
    assert_eq!((stage.as_str(), *ok), ("tokenize", true));
    assert!(
        files.contains(&"gptx-rescue/tokenize/run.sh".to_string()),
        "{files:?}"
    );
    assert!(detail.contains("round trip ok"), "{detail}");
    assert!(commit.is_some());
    let ws = f.run_dir.join("workspace");
    assert!(ws.join("gptx-rescue/tokenize/train_bpe.py").is_file());
    assert!(ws.join("tokenizer/meta.json").is_file());
    let execs: Vec<String> = f
        .sandbox
        .calls()
        .into_iter()
        .filter_map(|r| match r {
            Recorded::Exec { cmd, .. } => Some(cmd),
            _ => None,
        })
        .collect();
    assert_eq!(execs.len(), 1);
    assert!(
        execs[0].ends_with("sh gptx-rescue/tokenize/run.sh"),
        "{}",
        execs[0]
    );
    assert!(!result.stages[0].rescued);
    assert!(result.stages[1].rescued);
    assert!(!result.stages[2].rescued, "the last stage is never rescued");
    // The help did not let the agent pass anything: no assisted level.
    assert_eq!(result.level, "L0");
    assert_eq!(result.assisted_level, None);
}

#[tokio::test]
async fn the_replay_of_the_trace_agrees_with_what_the_runner_measured() {
    let mut f = fixture(vec![Reply::ok("made\n"), Reply::ok("x\n")]);
    f.runner.rescue = true;
    let mut agent = script(&[
        r#"{"tool":"write_file","args":{"path":"a.txt","content":"hello"}}"#,
        r#"{"tool":"bash","args":{"cmd":"make it"}}"#,
        r#"{"tool":"fly","args":{}}"#,
        r#"{"tool":"submit"}"#,
        r#"{"tool":"bash","args":{"cmd":"tokenize"}}"#,
        r#"{"tool":"submit"}"#,
        r#"{"tool":"submit"}"#,
    ]);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    let events = trace::log::read_events(&f.run_dir.join("events.jsonl")).unwrap();
    let replay = Replay::of(&events);
    let names: Vec<&str> = replay.stages().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["crawl", "tokenize", "train"]);
    for (name, want) in result.summaries() {
        let got = replay.stage(&name).unwrap();
        assert_eq!(got.phase, Phase::Scored, "{name}");
        let ended = got.ended.unwrap();
        assert_eq!(Some(ended.by), want.ended_by, "{name}");
        assert_eq!(ended.steps, want.steps, "{name}");
        assert_eq!(
            got.steps.count, want.steps,
            "{name}: one step event per step"
        );
        assert_eq!(ended.sandbox_seconds, want.sandbox_seconds, "{name}");
        assert_eq!(ended.wall_seconds, want.wall_seconds, "{name}");
        assert_eq!(
            Some(trace::round(got.steps.cpu_seconds, 3)),
            want.cpu_seconds,
            "{name}"
        );
        let score = got.score.as_ref().unwrap();
        assert_eq!(
            (score.status.as_str(), score.passed, score.normalized),
            (want.status.as_str(), want.passed, want.normalized),
            "{name}"
        );
        assert_eq!(got.rescued, want.rescued, "{name}");
    }
    assert_eq!(replay.steps().count, 7);
    assert_eq!(replay.steps().failed, 1, "the unknown tool");
    assert_eq!(
        replay.steps().commits,
        1,
        "the write (the fake's bash writes nothing)"
    );
    assert!(replay.pending().is_none());
    let finished = replay.finished().unwrap();
    assert_eq!(finished.status, result.status);
    assert_eq!(finished.level, result.level);
    assert_eq!(finished.bootstrap_index, result.bootstrap_index);
    assert_eq!(finished.wall_seconds, result.wall_seconds);
    assert_eq!(replay.wall_seconds(), result.wall_seconds);
}

/// An agent that breaks its own sandbox (a command the sandbox fails, as when the agent's container
/// dies) gains nothing: the engine still answers, so the run goes on and every stage is graded. Only
/// a lost engine stops the run, leaving the stage ungraded.
#[tokio::test]
async fn a_failed_sandbox_is_the_agents_unless_the_engine_is_gone() {
    let calls = [
        r#"{"tool":"bash","args":{"cmd":"break the box"}}"#,
        r#"{"tool":"submit"}"#,
        r#"{"tool":"submit"}"#,
        r#"{"tool":"submit"}"#,
    ];
    let mut f = fixture(vec![Reply::sandbox_failure(
        "the sandbox stopped answering",
    )]);
    let mut result = f.runner.run(&mut script(&calls), "img").await;
    f.runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Done);
    assert_eq!(result.stages.len(), 3);
    assert!(result.stages.iter().all(|s| s.score.is_some()));
    assert!(f.runner.lost.is_none());

    let mut f = fixture(vec![Reply::sandbox_failure(
        "the sandbox stopped answering",
    )]);
    f.sandbox.lose_engine("connection refused");
    let mut result = f.runner.run(&mut script(&calls), "img").await;
    f.runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Interrupted);
    assert_eq!(result.stages.len(), 1);
    assert_eq!(result.stages[0].ended_by, EndReason::Interrupted);
    assert!(
        result.stages[0].score.is_none(),
        "no grade for a lost engine"
    );
    assert!(f
        .runner
        .lost
        .as_deref()
        .is_some_and(|w| w.contains("connection refused")));
}

/// A runner on `run_dir` whose trace goes on (a resumed run), with a fresh fake sandbox on its
/// workspace and its history reopened at `head`.
fn reopened(run_dir: &std::path::Path, head: Option<&str>) -> (Runner, Arc<RecordingSandbox>) {
    let ws = run_dir.join("workspace");
    let sandbox = Arc::new(RecordingSandbox::with_workspace(&ws, vec![]).unwrap());
    let suite = Suite::parse(SUITE, std::path::Path::new("fake.toml")).unwrap();
    let log = EventLog::open_existing(&run_dir.join("events.jsonl")).unwrap();
    let history = WorkspaceHistory::open(&run_dir.join("workspace.git"), &ws, head).unwrap();
    let runner = Runner::new(
        common::home(),
        suite,
        "fake-run".into(),
        run_dir.to_path_buf(),
        sandbox.clone(),
        EventSink::new(Recorder::new(log), vec![]),
        Some(history),
        CancellationToken::new(),
    );
    (runner, sandbox)
}

const RESUMED_SCRIPT: &[&str] = &[
    r#"{"tool":"bash","args":{"cmd":"echo a > a"}}"#,
    r#"{"tool":"bash","args":{"cmd":"echo b > b"}}"#,
    r#"{"tool":"submit"}"#,
    r#"{"tool":"write_file","args":{"path":"t.txt","content":"t"}}"#,
    r#"{"tool":"bash","args":{"cmd":"echo d"}}"#,
    r#"{"tool":"bash","args":{"cmd":"echo e"}}"#,
    r#"{"tool":"submit"}"#,
    r#"{"tool":"bash","args":{"cmd":"echo f"}}"#,
    r#"{"tool":"submit"}"#,
];

fn commands(s: &RecordingSandbox) -> Vec<String> {
    s.calls()
        .into_iter()
        .filter_map(|c| match c {
            Recorded::Exec { cmd, .. } => Some(cmd),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_script_run_interrupted_and_resumed_ends_as_the_uninterrupted_one() {
    // The run without an interrupt.
    let mut whole = fixture(vec![]);
    let mut agent = script(RESUMED_SCRIPT);
    let mut expected = whole.runner.run(&mut agent, "img").await;
    whole.runner.finish(&mut expected);
    let expected_cmds = commands(&whole.sandbox);

    // The same run, interrupted after its 5th step (in tokenize), then resumed.
    let mut f = fixture(vec![]);
    f.runner
        .events
        .reporters
        .push(Box::new(common::CancelAfter {
            after: 5,
            seen: 0,
            cancel: f.runner.cancel.clone(),
        }));
    let mut agent = script(RESUMED_SCRIPT);
    let mut first = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut first);
    assert_eq!(first.status, RunStatus::Interrupted);
    let before = commands(&f.sandbox);
    let from = common::resume_from(&f.run_dir);
    assert_eq!(from.state.step, 5);
    assert_eq!(from.state.done.len(), 1);
    assert_eq!(from.state.current.as_ref().map(|c| c.steps), Some(2));
    let head = from.state.last_commit.clone();
    let (mut runner, sandbox) = reopened(&f.run_dir, head.as_deref());
    let mut agent = script(RESUMED_SCRIPT);
    let mut result = runner.resume(&mut agent, "img", from).await;
    runner.finish(&mut result);

    assert_eq!(result.status, RunStatus::Done);
    assert_eq!(result.level, expected.level);
    assert_eq!(result.bootstrap_index, expected.bootstrap_index);
    let steps = |r: &gptx::runner::RunResult| {
        r.stages
            .iter()
            .map(|o| (o.stage.clone(), o.steps, o.ended_by))
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&result), steps(&expected));
    // No command ran twice, none was skipped.
    let mut all = before;
    all.extend(commands(&sandbox));
    assert_eq!(all, expected_cmds);
    // One trace, its chain whole, steps numbered on, the resume in it.
    let tail = result.trace_sha256.clone().unwrap();
    trace::verify(&f.run_dir.join("events.jsonl"), Some(&tail)).unwrap();
    let evs = events(&f.run_dir);
    let numbers: Vec<(u64, u64)> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some((s.step, s.stage_step)),
            _ => None,
        })
        .collect();
    assert_eq!(
        numbers,
        [
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 1),
            (5, 2),
            (6, 3),
            (7, 4),
            (8, 1),
            (9, 2)
        ]
    );
    let resumed: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::RunResumed(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].after_step, 5);
    assert_eq!(resumed[0].stage.as_deref(), Some("tokenize"));
    assert_eq!(resumed[0].agent, "rebuilt");
    let replay = Replay::of(&trace::log::read_events(&f.run_dir.join("events.jsonl")).unwrap());
    assert_eq!(replay.resumes().len(), 1);
    assert_eq!(replay.stage("tokenize").unwrap().steps.count, 4);
    assert_eq!(replay.stage("tokenize").unwrap().phase, Phase::Scored);
    assert_eq!(replay.finished().map(|f| f.status), Some(RunStatus::Done));
}

/// An agent that cannot rebuild its state, as an external program: it records the tasks given.
struct Fresh {
    tasks: Arc<std::sync::Mutex<Vec<gptx::agent::StageTask>>>,
}

#[async_trait::async_trait]
impl gptx::agent::Agent for Fresh {
    fn spec(&self) -> String {
        "exec:fresh".into()
    }
    async fn begin_stage(
        &mut self,
        task: &gptx::agent::StageTask,
    ) -> Result<(), gptx::agent::AgentError> {
        self.tasks.lock().unwrap().push(task.clone());
        Ok(())
    }
    async fn next(&mut self) -> Result<gptx::agent::Turn, gptx::agent::AgentError> {
        Ok(gptx::agent::Turn::Call(gptx::agent::tools::RawCall::new(
            "submit",
            serde_json::json!({}),
        )))
    }
}

#[tokio::test]
async fn an_agent_that_cannot_be_rebuilt_gets_the_stage_again_with_what_is_left() {
    let mut f = fixture(vec![]);
    f.runner
        .events
        .reporters
        .push(Box::new(common::CancelAfter {
            after: 2,
            seen: 0,
            cancel: f.runner.cancel.clone(),
        }));
    let mut agent = script(RESUMED_SCRIPT);
    let mut first = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut first);
    let from = common::resume_from(&f.run_dir);
    let (mut runner, _) = reopened(&f.run_dir, from.state.last_commit.as_deref());
    let tasks = Arc::default();
    let mut agent = Fresh {
        tasks: Arc::clone(&tasks),
    };
    let mut result = runner.resume(&mut agent, "img", from).await;
    runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Done);
    let tasks = tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0].stage, "crawl");
    assert!(tasks[0].instruction.contains("This stage was interrupted"));
    assert!(tasks[0]
        .instruction
        .contains("Left of this stage's budgets: 2 tool calls"));
    assert_eq!(tasks[0].limits.max_steps, 2);
    assert!(!tasks[1].instruction.contains("interrupted"));
    assert_eq!(tasks[1].limits.max_steps, 4);
    // The stage went on counting: its two steps before and the submit after.
    assert_eq!(result.stages[0].steps, 3);
    let evs = events(&f.run_dir);
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::RunResumed(r) if r.agent == "fresh")));
}

/// The built mini world, once for this binary.
fn mini() -> Arc<gptx::world::World> {
    static W: std::sync::OnceLock<Arc<gptx::world::World>> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let w = gptx::world::ensure(&common::home(), "mini", 1, &gptx::world::Quiet)
            .expect("the mini world builds")
            .0;
        Arc::new(w)
    })
    .clone()
}

/// The spans of T in the mini world, as the runner's ledger has them.
fn mini_index() -> &'static gptx::stages::contamination::SpanIndex {
    static I: std::sync::OnceLock<gptx::stages::contamination::SpanIndex> =
        std::sync::OnceLock::new();
    I.get_or_init(|| {
        gptx::stages::contamination::SpanIndex::of_world(&mini(), &common::home())
            .unwrap()
            .0
    })
}

/// A hidden document of the mini world that has many spans.
fn hidden_text() -> String {
    let docs = mini().test_docs().unwrap();
    let d = docs
        .iter()
        .max_by_key(|d| mini_index().find(d.text.as_bytes()).len())
        .unwrap();
    // A few KB is plenty and keeps the trace small.
    let mut cut = d.text.len().min(4000);
    while !d.text.is_char_boundary(cut) {
        cut -= 1;
    }
    d.text[..cut].to_string()
}

const LEDGER_SUITE: &str = r#"
name = "ledger"
image = "base"
world = "mini"
[budgets]
max_steps = 6
[[stages]]
name = "crawl"
[[stages]]
name = "tokenize"
"#;

/// Runs a script agent over mini's crawl and tokenize on the fake sandbox (bash replies scripted).
async fn ledger_run(
    lines: &[String],
    replies: Vec<Reply>,
) -> (Fixture, gptx::runner::RunResult, Vec<Event>) {
    let mut f = fixture(replies);
    f.runner.suite = Suite::parse(LEDGER_SUITE, std::path::Path::new("ledger.toml")).unwrap();
    f.runner.world = Some(mini());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut agent = script(&lines);
    let mut result = f.runner.run(&mut agent, "img").await;
    f.runner.finish(&mut result);
    let evs = events(&f.run_dir);
    (f, result, evs)
}

fn call(tool: &str, args: serde_json::Value) -> String {
    serde_json::json!({"tool": tool, "args": args}).to_string()
}

fn contamination_notes(evs: &[Event]) -> Vec<trace::IntegrityNote> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Integrity(n) if n.kind == "t_text_in_workspace" => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn scores(evs: &[Event]) -> Vec<(String, trace::StageScore)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::StageScored { stage, score } => Some((stage.clone(), score.clone())),
            _ => None,
        })
        .collect()
}

/// What the harness itself wrote of a hit (the note, the score) holds no text of T.
fn assert_rejected_without_hidden_text(evs: &[Event], stage: &str, count: u64) {
    let (_, s) = scores(evs).into_iter().find(|(n, _)| n == stage).unwrap();
    assert_eq!(s.status, "rejected", "{s:?}");
    assert!(!s.passed);
    assert_eq!(s.normalized, Some(0.0));
    assert!(s.metrics.is_empty(), "not graded on hidden data: {s:?}");
    assert!(s
        .reason
        .as_deref()
        .unwrap()
        .contains(&format!("{count} distinct spans")));
    let public = s.public_reason.clone().unwrap();
    assert!(public.contains("hidden test documents"), "{public}");
    assert!(!public.chars().any(|c| c.is_ascii_digit()), "{public}");
    for n in contamination_notes(evs) {
        let json = serde_json::to_string(&n).unwrap();
        assert!(mini_index().find(json.as_bytes()).is_empty(), "{json}");
    }
    let json = serde_json::to_string(&s).unwrap();
    assert!(mini_index().find(json.as_bytes()).is_empty(), "{json}");
}

#[tokio::test]
async fn text_of_t_written_with_write_file_rejects_the_stage() {
    let text = hidden_text();
    let spans = mini_index().find(text.as_bytes()).len() as u64;
    assert!(spans > 100, "{spans}");
    let (_f, result, evs) = ledger_run(
        &[
            call(
                "write_file",
                serde_json::json!({"path": "data/mem.txt", "content": text}),
            ),
            call("submit", serde_json::json!({})),
            call("submit", serde_json::json!({})),
        ],
        vec![],
    )
    .await;
    let notes = contamination_notes(&evs);
    // Crawl's note; tokenize (the file still in the workspace) is rejected for crawl's finding.
    assert_eq!(notes.len(), 1, "{notes:?}");
    let crawl = &notes[0];
    assert_eq!(
        (crawl.stage.as_deref(), crawl.count),
        (Some("crawl"), spans)
    );
    assert!(
        crawl.detail.contains("data/mem.txt in the workspace"),
        "{}",
        crawl.detail
    );
    assert!(
        crawl.detail.contains("step 1's write_file arguments"),
        "{}",
        crawl.detail
    );
    assert!(crawl.detail.contains("(data/mem.txt)"), "{}", crawl.detail);
    assert_rejected_without_hidden_text(&evs, "crawl", spans);
    assert_rejected_after(&evs, "tokenize", "crawl");
    assert_eq!(result.integrity.len(), 1, "in score.json's ledger too");
    assert_eq!(result.level, "L0");
}

/// Attack: T sent base64-encoded through `write_file` (so its arguments hold no text of T), then
/// overwritten by the next step (so the graded copy holds none either). The step's commit has it.
#[tokio::test]
async fn text_of_t_sent_base64_encoded_and_overwritten_is_found_in_the_history() {
    use base64::Engine;
    let text = hidden_text();
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    assert!(
        mini_index().find(encoded.as_bytes()).len() < 4,
        "the arguments hide it"
    );
    let write = |content: &str, encoding: Option<&str>| {
        let mut args = serde_json::json!({"path": "data/b64.txt", "content": content});
        if let Some(e) = encoding {
            args["encoding"] = e.into();
        }
        call("write_file", args)
    };
    let (_f, _result, evs) = ledger_run(
        &[
            write(&encoded, Some("base64")),
            write("nothing to see", None),
            call("submit", serde_json::json!({})),
            call("submit", serde_json::json!({})),
        ],
        vec![],
    )
    .await;
    let notes = contamination_notes(&evs);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let d = &notes[0].detail;
    assert!(
        d.contains("(data/b64.txt)"),
        "found in the step's commit: {d}"
    );
    assert!(
        !d.contains("arguments") && !d.contains("in the workspace"),
        "{d}"
    );
    assert_rejected_without_hidden_text(&evs, "crawl", notes[0].count);
}

#[tokio::test]
async fn text_of_t_in_a_bash_heredoc_is_found_in_the_arguments() {
    let text = hidden_text();
    let spans = mini_index().find(text.as_bytes()).len() as u64;
    let cmd = format!("mkdir -p data && cat > data/x.txt <<'EOF'\n{text}\nEOF");
    // The fake runs nothing: the text is only in the call's arguments.
    let (_f, _, evs) = ledger_run(
        &[
            call("bash", serde_json::json!({ "cmd": cmd })),
            call("submit", serde_json::json!({})),
            call("submit", serde_json::json!({})),
        ],
        vec![Reply::ok("")],
    )
    .await;
    let notes = contamination_notes(&evs);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].count, spans);
    assert_eq!(notes[0].detail, "step 1's bash arguments");
    assert_rejected_without_hidden_text(&evs, "crawl", spans);
    // Tokenize wrote nothing of T, but the text may be kept where no scan looks: rejected too,
    // with no note of its own.
    assert_rejected_after(&evs, "tokenize", "crawl");
}

/// A stage rejected because an earlier stage's scan found text of T: unscored, and told why.
fn assert_rejected_after(evs: &[Event], stage: &str, found_in: &str) {
    let (_, s) = scores(evs).into_iter().find(|(n, _)| n == stage).unwrap();
    assert_eq!(
        (s.status.as_str(), s.passed, s.normalized),
        ("rejected", false, Some(0.0)),
        "{s:?}"
    );
    assert!(s.metrics.is_empty(), "not graded on hidden data: {s:?}");
    let why = format!(
        "text of the hidden test documents was found in stage {found_in}; every later stage is rejected"
    );
    assert!(s.reason.as_deref().unwrap().contains(&why), "{s:?}");
    assert_eq!(
        s.public_reason.as_deref(),
        Some(format!("rejected: {why}").as_str())
    );
}

/// Putting T where no scan looks (the sandbox's `/tmp`) in one stage and training on it in the
/// next costs every stage after the first: the rule holds across `gptx resume` (the finding is in
/// the trace).
#[tokio::test]
async fn after_a_hit_every_later_stage_is_rejected_across_a_resume() {
    let cmd = format!("cat > /tmp/mem.txt <<'EOF'\n{}\nEOF", hidden_text());
    let lines = [
        call("bash", serde_json::json!({ "cmd": cmd })),
        call("submit", serde_json::json!({})),
        call(
            "bash",
            serde_json::json!({"cmd": "python3 train.py /tmp/mem.txt"}),
        ),
        call("bash", serde_json::json!({"cmd": "rm /tmp/mem.txt"})),
        call("submit", serde_json::json!({})),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let suite = || Suite::parse(LEDGER_SUITE, std::path::Path::new("ledger.toml")).unwrap();
    let mut f = fixture(vec![]);
    (f.runner.suite, f.runner.world) = (suite(), Some(mini()));
    f.runner
        .events
        .reporters
        .push(Box::new(common::CancelAfter {
            after: 3,
            seen: 0,
            cancel: f.runner.cancel.clone(),
        }));
    let mut first = f.runner.run(&mut script(&lines), "img").await;
    f.runner.finish(&mut first);
    assert_eq!(first.status, RunStatus::Interrupted);
    let evs = events(&f.run_dir);
    assert_eq!(scores(&evs).len(), 1, "crawl was graded before the stop");
    assert_eq!(contamination_notes(&evs).len(), 1);

    let from = common::resume_from(&f.run_dir);
    let (mut runner, _) = reopened(&f.run_dir, from.state.last_commit.as_deref());
    (runner.suite, runner.world) = (suite(), Some(mini()));
    let mut result = runner.resume(&mut script(&lines), "img", from).await;
    runner.finish(&mut result);
    assert_eq!(result.status, RunStatus::Done);
    let evs = events(&f.run_dir);
    let notes = contamination_notes(&evs);
    assert_eq!(notes.len(), 1, "one note is the finding: {notes:?}");
    assert_eq!(notes[0].stage.as_deref(), Some("crawl"));
    assert_eq!(scores(&evs)[0].1.status, "rejected");
    assert_rejected_after(&evs, "tokenize", "crawl");
    assert_eq!(result.integrity.len(), 1, "{:?}", result.integrity);
}

#[tokio::test]
async fn text_of_t_written_and_deleted_later_is_found_in_the_history() {
    let text = hidden_text();
    let spans = mini_index().find(text.as_bytes()).len() as u64;
    let mut generated = Reply::ok("");
    generated.writes = vec![("data/mem.txt".into(), text.clone().into_bytes())];
    let (_f, _, evs) = ledger_run(
        &[
            call("bash", serde_json::json!({"cmd": "python3 remember.py"})),
            call(
                "bash",
                serde_json::json!({"cmd": "python3 train.py data/mem.txt"}),
            ),
            call(
                "write_file",
                serde_json::json!({"path": "data/mem.txt", "content": "gone"}),
            ),
            call("submit", serde_json::json!({})),
            call("submit", serde_json::json!({})),
        ],
        vec![generated, Reply::ok("")],
    )
    .await;
    let notes = contamination_notes(&evs);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].count, spans);
    let commit = evs
        .iter()
        .find_map(|e| match e {
            Event::Step(s) if s.step == 1 => s.commit.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        notes[0].detail,
        format!("commit {} (data/mem.txt)", &commit[..10])
    );
    assert_rejected_without_hidden_text(&evs, "crawl", spans);
    // Tokenize's commits never had it; it is rejected for crawl's finding.
    assert_rejected_after(&evs, "tokenize", "crawl");
}

#[tokio::test]
async fn text_of_t_left_from_an_earlier_stage_rejects_the_stage_that_used_it() {
    let text = hidden_text();
    let spans = mini_index().find(text.as_bytes()).len() as u64;
    let mut generated = Reply::ok("");
    generated.writes = vec![("data/mem.txt".into(), text.clone().into_bytes())];
    // Tokenize's first step uses the text and removes it: none of its commits has it.
    let mut used = Reply::ok("");
    used.writes = vec![("data/mem.txt".into(), b"gone".to_vec())];
    let (_f, _, evs) = ledger_run(
        &[
            call("bash", serde_json::json!({"cmd": "python3 remember.py"})),
            call("submit", serde_json::json!({})),
            call(
                "bash",
                serde_json::json!({"cmd": "python3 use.py && rm data/mem.txt"}),
            ),
            call("submit", serde_json::json!({})),
        ],
        vec![generated, used],
    )
    .await;
    // Crawl's scan found it; tokenize, which used it, is rejected for that finding (the scan of
    // the commit a stage began from is `contamination::tests::the_history_is_read_per_stage…`).
    let notes = contamination_notes(&evs);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        (notes[0].stage.as_deref(), notes[0].count),
        (Some("crawl"), spans)
    );
    assert_rejected_without_hidden_text(&evs, "crawl", spans);
    assert_rejected_after(&evs, "tokenize", "crawl");
}

#[tokio::test]
async fn the_null_agent_and_the_served_web_are_no_contamination() {
    let (_f, result, evs) = ledger_run(
        &[
            call("submit", serde_json::json!({})),
            call("submit", serde_json::json!({})),
        ],
        vec![],
    )
    .await;
    assert!(contamination_notes(&evs).is_empty());
    assert!(result.integrity.is_empty(), "{:?}", result.integrity);
    assert!(scores(&evs).iter().all(|(_, s)| s.status != "rejected"));
    // Served text written as the corpus is graded, not rejected.
    let corpus: String = mini()
        .gold()
        .unwrap()
        .iter()
        .take(40)
        .map(|(url, text)| serde_json::json!({"url": url, "text": text}).to_string() + "\n")
        .collect();
    let (_f, _, evs) = ledger_run(
        &[
            call(
                "write_file",
                serde_json::json!({"path": "data/corpus.jsonl", "content": corpus}),
            ),
            call("submit", serde_json::json!({})),
        ],
        vec![],
    )
    .await;
    assert!(contamination_notes(&evs).is_empty());
    let (_, crawl) = &scores(&evs)[0];
    assert_ne!(crawl.status, "rejected", "{crawl:?}");
    assert!(
        crawl.metrics.contains_key("recall"),
        "graded on its merits: {crawl:?}"
    );
}
