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
