//! `gptx show` on synthetic runs: the run view, one step with its output and diff, colours, errors.

use gptx::report::show::{render_run, render_step};
use gptx::synth::{write_run, Synth};
use gptx::trace::rundir::{RunDir, RunStatus};
use gptx::trace::{log::read_events, Event};

/// Commit ids depend on the time of the commit; everything else in a synthetic run is fixed.
fn redact(dir: &RunDir, text: &str) -> String {
    let mut commits = Vec::new();
    for env in read_events(&dir.events()).unwrap() {
        match env.event {
            Event::Step(s) => commits.extend(s.commit),
            Event::Rescue { commit, .. } => commits.extend(commit),
            _ => {}
        }
    }
    let mut out = text.to_string();
    for c in &commits {
        out = out.replace(c.as_str(), "<commit>");
        out = out.replace(&c[..10], "<commit>");
    }
    out
}

fn synth(dir: &std::path::Path, spec: Synth) -> RunDir {
    write_run(dir, &spec).unwrap()
}

#[test]
fn run_view_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(
        tmp.path(),
        Synth {
            passed_stages: 3,
            ..Synth::default()
        },
    );
    let text = render_run(&dir, false).unwrap();
    assert!(!text.contains('\x1b'), "no colour codes when not asked");
    insta::assert_snapshot!("run_view_plain", redact(&dir, &text));
}

#[test]
fn step_view_plain_with_its_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(tmp.path(), Synth::default());
    // Step 5: the tokenize stage's bash step (appends to its log, writes tokenizer/meta.json).
    let text = render_step(&dir, 5, false).unwrap();
    assert!(text.contains("diff --git a/tokenizer/meta.json"), "{text}");
    insta::assert_snapshot!("step_view_plain", redact(&dir, &text));
    // A step that changed nothing says so.
    let submit = render_step(&dir, 6, false).unwrap();
    assert!(submit.contains("tool submit"), "{submit}");
    assert!(
        submit.contains("unchanged by this step (no commit)"),
        "{submit}"
    );
}

#[test]
fn a_cut_output_is_shown_in_full_from_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(
        tmp.path(),
        Synth {
            output_bytes: 100_000,
            ..Synth::default()
        },
    );
    let text = render_step(&dir, 2, false).unwrap();
    assert!(
        text.contains(
            "100000 bytes; the trace's inline copy kept 32768 bytes (head and tail) and cut 67232; shown in full from outputs/"
        ),
        "{}",
        &text[..2000.min(text.len())]
    );
    assert!(!text.contains("bytes omitted by gptx"));
    // The line at the middle of the output, which the inline copy lost, is there.
    assert!(text.contains("fetched http://docs.gptx.test/page/1000 200"));
}

#[test]
fn colours_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(
        tmp.path(),
        Synth {
            passed_stages: 2,
            ..Synth::default()
        },
    );
    let plain = render_run(&dir, false).unwrap();
    let coloured = render_run(&dir, true).unwrap();
    assert!(!plain.contains('\x1b'));
    assert!(coloured.contains("\x1b[32m"), "green for passing");
    assert!(coloured.contains("\x1b[31m"), "red for failing");
    let step_plain = render_step(&dir, 2, false).unwrap();
    let step_coloured = render_step(&dir, 2, true).unwrap();
    assert!(!step_plain.contains('\x1b'));
    assert!(step_coloured.contains("\x1b[32m+"), "added lines in green");
}

#[test]
fn a_step_out_of_range_names_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(tmp.path(), Synth::default());
    let err = render_step(&dir, 99, false).unwrap_err().to_string();
    assert_eq!(
        err,
        "--step 99: run 20261129-120000-abcdef has 15 steps (steps are numbered from 1)"
    );
    assert!(render_step(&dir, 0, false).is_err());
}

#[test]
fn a_running_run_shows_the_step_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(
        tmp.path(),
        Synth {
            status: RunStatus::Running,
            passed_stages: 1,
            ..Synth::default()
        },
    );
    let text = render_run(&dir, false).unwrap();
    assert!(text.contains("status running"), "{text}");
    assert!(text.contains("chain intact so far"), "{text}");
    assert!(text.contains("running… (tokenize) bash"), "{text}");
    assert!(!text.contains("gptx scorecard"), "{text}");
    let err = render_step(&dir, 6, false).unwrap_err().to_string();
    assert!(err.contains("has started and not finished yet"), "{err}");
}

#[test]
fn an_edited_trace_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(tmp.path(), Synth::default());
    let text = std::fs::read_to_string(dir.events()).unwrap();
    std::fs::write(
        dir.events(),
        text.replacen("crawl/run.sh", "crawl/RUN.sh", 1),
    )
    .unwrap();
    let view = render_run(&dir, false).unwrap();
    assert!(view.contains("trace: DOES NOT VERIFY"), "{view}");
}

#[test]
fn llm_runs_total_their_tokens_and_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(
        tmp.path(),
        Synth {
            agent: "openai:gpt-4o-mini".into(),
            ..Synth::default()
        },
    );
    let text = render_run(&dir, false).unwrap();
    assert!(text.contains("model openai:gpt-4o-mini (try 1)"), "{text}");
    assert!(text.contains("15 model calls"), "{text}");
}

/// The scorecard names the GPUs a run had: their models when nvidia-smi listed them, the request
/// alone when it did not, and no line at all without GPUs.
#[test]
fn the_scorecard_names_the_gpus() {
    use gptx::config::suite::Gpus;
    use gptx::trace::rundir::{read_json, GpuDevice, GpuRecord, RunMeta, RunScore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(tmp.path(), Synth::default());
    let mut meta: RunMeta = read_json(&dir.run_json()).unwrap();
    let score: RunScore = read_json(&dir.score_json()).unwrap();
    let card = gptx::report::show::scorecard(&meta, &score);
    assert!(!card.contains("GPU"), "{card}");
    let h100 = |index| GpuDevice {
        index,
        name: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: Some(81559),
    };
    let mut record = GpuRecord::asked(Gpus::Devices(vec!["0".into(), "1".into()]));
    meta.gpus = Some(record.clone());
    let card = gptx::report::show::scorecard(&meta, &score);
    let unknown = "GPUs: --gpus device=0,1 · the model is not known (nvidia-smi listed none)";
    assert!(card.lines().any(|l| l == unknown), "{card}");
    record.devices = Some(vec![h100(0), h100(1)]);
    meta.gpus = Some(record);
    let card = gptx::report::show::scorecard(&meta, &score);
    let known = "GPUs: 2 × NVIDIA H100 80GB HBM3 (81559 MiB) · --gpus device=0,1";
    assert!(card.lines().any(|l| l == known), "{card}");
}

/// The scorecard names the engine and the guarantees that did not hold (run.json's `isolation`),
/// and says nothing for a run that did not record them.
#[test]
fn the_scorecard_names_the_engine_and_the_guarantees_not_in_force() {
    use gptx::trace::rundir::{read_json, Guarantee, Isolation, RunMeta, RunScore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = synth(tmp.path(), Synth::default());
    let mut meta: RunMeta = read_json(&dir.run_json()).unwrap();
    let score: RunScore = read_json(&dir.score_json()).unwrap();
    let card = gptx::report::show::scorecard(&meta, &score);
    assert!(!card.contains("engine:"), "{card}");
    let g = |name: &str, held| Guarantee {
        name: name.into(),
        held,
        detail: String::new(),
    };
    meta.isolation = Some(Isolation {
        engine: "podman 4.3.1, rootless, overlay storage, cgroup v1".into(),
        rootless: true,
        guarantees: vec![
            g("cgroup_limits", false),
            g("agent_uid", false),
            g("exec_agent", true),
        ],
    });
    let card = gptx::report::show::scorecard(&meta, &score);
    let line = "engine: podman 4.3.1, rootless, overlay storage, cgroup v1 · not in force: cgroup_limits, agent_uid";
    assert!(card.lines().any(|l| l == line), "{card}");
}
