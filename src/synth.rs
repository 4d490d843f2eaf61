//! Synthetic runs: a complete, valid run directory written without Docker, for tests, benches and demos.
//!
//! [`write_run`] records events through the real [`EventLog`] (so the hash chain verifies), commits a
//! small workspace through [`WorkspaceHistory`] after every step that changes it, keeps long outputs in
//! `outputs/` through [`OutputStore`] exactly as the runner cuts them (head + tail inline), and writes
//! `run.json` and `score.json` with levels and the Bootstrap Index from [`crate::stages::levels`]; the
//! stages' summaries, scores and rescues in `score.json` are read from the [`Replay`] of the events
//! written. Everything but the event envelopes' `ts` and the commit ids is a pure function of the
//! [`Synth`] spec.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::config::suite::Budgets;
use crate::stages::scale;
use crate::trace::replay::{Replay, StageState};
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus, StageSummary};
use crate::trace::{
    round, sha256_hex, EndReason, Event, EventLog, ModelCall, OutputRef, OutputStore, StageScore,
    StepRecord, StepUsage, WorkspaceHistory,
};
use crate::trace::{FULL_OUTPUT, INLINE_OUTPUT};

/// What run to write.
#[derive(Debug, Clone)]
pub struct Synth {
    pub run_id: String,
    pub agent: String,
    pub suite: String,
    pub seed: u64,
    pub world_hash: Option<String>,
    pub stages: Vec<String>,
    /// Tool calls per stage: a `write_file` first and a `submit` last when there are three or more,
    /// `bash` in between (with two: `bash`, `submit`; with one: `bash`).
    pub steps_per_stage: usize,
    /// Bytes of stdout of every `bash` step (beyond the runner's inline size it goes to `outputs/`).
    pub output_bytes: usize,
    /// `Done`: every stage runs and is scored. `Running`: the trace stops in the middle of the stage
    /// after the passed ones, with a step in flight, and there is no `run_finished` or `score.json`.
    /// `Interrupted` / `Failed`: that stage ends without a score and the run finishes there.
    pub status: RunStatus,
    /// The first this many stages pass; later ones fail with a reason.
    pub passed_stages: usize,
}

impl Default for Synth {
    fn default() -> Self {
        Self {
            run_id: "20261129-120000-abcdef".into(),
            agent: "reference".into(),
            suite: "mini".into(),
            seed: 1,
            world_hash: Some("w0".into()),
            stages: ["crawl", "tokenize", "train", "eval", "selfhost"]
                .map(String::from)
                .to_vec(),
            steps_per_stage: 3,
            output_bytes: 200,
            status: RunStatus::Done,
            passed_stages: 5,
        }
    }
}

/// SplitMix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The baseline ladder of the synthetic world (bits per byte on T).
const LADDER: [(&str, f64); 5] = [
    ("uniform", 8.0),
    ("unigram", 4.8163),
    ("gzip", 2.7362),
    ("xz", 2.6921),
    ("xz_conditional", 1.8324),
];

fn ladder_json() -> Value {
    Value::Object(
        LADDER
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

fn xz(name: &str) -> f64 {
    LADDER
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap_or(8.0)
}

fn budgets(stage: &str) -> Budgets {
    let (sandbox, wall, step) = match stage {
        "train" => (600.0, 900.0, 300.0),
        _ => (300.0, 600.0, 120.0),
    };
    Budgets {
        max_steps: 40,
        max_sandbox_seconds: sandbox,
        max_wall_seconds: wall,
        max_step_seconds: step,
        default_step_seconds: 60.0,
        max_tokens: None,
        max_cost_usd: None,
    }
}

/// Each stage's budgets, as run.json records them.
fn stage_budgets(stages: &[String]) -> BTreeMap<String, Budgets> {
    stages.iter().map(|s| (s.clone(), budgets(s))).collect()
}

/// The stage's script, as the first step writes it.
fn script(stage: &str) -> String {
    format!(
        "#!/bin/sh\n# {stage}: synthetic solution\nset -eu\ncd /workspace\necho \"{stage} starting\"\npython3 {stage}/main.py \"$@\"\n"
    )
}

/// The artifact the stage's last `bash` step leaves behind.
fn artifact(stage: &str) -> (&'static str, String) {
    match stage {
        "crawl" => (
            "data/corpus.jsonl",
            (0..4)
                .map(|i| {
                    json!({"url": format!("http://docs.gptx.test/page/{i}"), "text": format!("Page {i} of the documentation.")})
                        .to_string()
                        + "\n"
                })
                .collect(),
        ),
        "tokenize" => (
            "tokenizer/meta.json",
            "{\"vocab_size\": 4096, \"kind\": \"byte-bpe\"}\n".into(),
        ),
        "train" => (
            "model/config.json",
            "{\"order\": 5, \"smoothing\": \"kneser-ney\"}\n".into(),
        ),
        "eval" => (
            "eval/report.json",
            "{\"val_path\": \"data/val.jsonl\", \"val_bpb\": 1.47, \"notes\": \"held out by URL hash\"}\n"
                .into(),
        ),
        "selfhost" => (
            "bootstrap.sh",
            "#!/bin/sh\nset -eu\nfor s in crawl tokenize train eval; do sh $s/run.sh; done\n".into(),
        ),
        _ => ("result.txt", format!("{stage} done\n")),
    }
}

/// A command's stdout of exactly `bytes` bytes (ASCII), built once per stage.
fn body(stage: &str, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 128);
    let mut i = 0u64;
    while out.len() < bytes {
        let line = match stage {
            "crawl" => format!(
                "fetched http://docs.gptx.test/page/{i} 200 ({} bytes)\n",
                1000 + i * 37 % 4000
            ),
            "tokenize" => format!(
                "merge {i}: ({}, {}) -> {}\n",
                i % 256,
                (i * 7) % 256,
                256 + i
            ),
            "train" => format!(
                "epoch {} step {i} loss {:.4}\n",
                i / 100,
                3.0 / (1.0 + i as f64 / 500.0)
            ),
            _ => format!("{stage}: line {i} of the log\n"),
        };
        out.push_str(&line);
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// What the runner keeps of one output stream: the inline text and, when cut, the full bytes.
fn captured(full: &[u8]) -> (String, bool) {
    if full.len() <= INLINE_OUTPUT {
        return (String::from_utf8_lossy(full).into_owned(), false);
    }
    let half = INLINE_OUTPUT / 2;
    let text = format!(
        "{}\n[... {} bytes omitted by gptx; the full output is in the trace ...]\n{}",
        String::from_utf8_lossy(&full[..half]),
        full.len() - 2 * half,
        String::from_utf8_lossy(&full[full.len() - half..])
    );
    (text, true)
}

/// The metrics and verdict of `stage`, passing or not (shaped like the real scorers'), its
/// normalised score from `stages::scale` against mini's reference values.
fn stage_score(stage: &str, passed: bool, rng: &mut Rng) -> StageScore {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    let (quality, reason) = match stage {
        "crawl" => {
            let (recall, precision) = if passed {
                (rng.range(0.9, 1.0), rng.range(0.95, 1.0))
            } else {
                (rng.range(0.1, 0.4), rng.range(0.5, 0.7))
            };
            let f1 = 2.0 * recall * precision / (recall + precision);
            put("recall", json!(round(recall, 6)));
            put("precision", json!(round(precision, 6)));
            put("f1", json!(round(f1, 6)));
            put("documents", json!(if passed { 412 } else { 97 }));
            put("bytes", json!(if passed { 1_843_200 } else { 301_544 }));
            put("invalid_lines", json!(0));
            put("duplicate_documents", json!(if passed { 3 } else { 21 }));
            let dup_rate = if passed { 0.007282 } else { 0.216495 };
            put("duplicate_rate", json!(dup_rate));
            put("canaries_in_corpus", json!(0));
            put("disallowed_requests", json!(0));
            put("robots_violations", json!(0));
            put("trap_requests", json!(if passed { 2 } else { 140 }));
            put("requests", json!(if passed { 468 } else { 1210 }));
            put("rate_limited", json!(if passed { 0 } else { 37 }));
            put("not_found", json!(4));
            (
                scale::crawl(f1, Some(1.0)),
                format!("gate not met: recall {recall:.3} is below 0.5; precision {precision:.3} is below 0.8"),
            )
        }
        "tokenize" => {
            let bpt = if passed {
                rng.range(3.8, 4.2)
            } else {
                rng.range(1.0, 1.6)
            };
            put("vocab_size", json!(if passed { 4096 } else { 300 }));
            put("round_trip", json!(true));
            put("ids_in_vocab", json!(true));
            put("bytes_per_token", json!(round(bpt, 4)));
            put("test_bytes", json!(524_288));
            put("test_tokens", json!((524_288.0 / bpt) as u64));
            put("documents", json!(64));
            put("encode_seconds", json!(round(rng.range(0.2, 0.9), 3)));
            put("decode_seconds", json!(round(rng.range(0.05, 0.2), 3)));
            put("encode_mb_per_s", json!(round(rng.range(0.6, 2.5), 4)));
            (
                scale::tokenize(bpt, Some(4.1155)),
                format!("gate not met: {bpt:.3} bytes per token is below 2.0"),
            )
        }
        "train" => {
            let bpb = if passed {
                rng.range(1.40, 1.60)
            } else {
                rng.range(2.9, 3.4)
            };
            put("ladder", ladder_json());
            put("verified", json!(true));
            put("bpb", json!(round(bpb, 5)));
            put("ood_bpb", json!(round(bpb * 1.31, 5)));
            put("test_bytes", json!(524_288));
            put("tokens", json!(131_072));
            put("bytes_per_token", json!(4.0));
            let beats: Map<String, Value> = LADDER
                .iter()
                .map(|(k, x)| (k.to_string(), json!(bpb < *x)))
                .collect();
            put("beats", Value::Object(beats));
            put("beats_xz", json!(bpb < xz("xz")));
            put("beats_conditional_xz", json!(bpb < xz("xz_conditional")));
            put(
                "vs_conditional_xz",
                json!(round(bpb - xz("xz_conditional"), 5)),
            );
            put("score_seconds", json!(round(rng.range(2.0, 9.0), 3)));
            put(
                "samples",
                json!([
                    {"prompt": "The documentation ", "text": "describes how the server answers each request."},
                    {"prompt": "In the archive, ", "text": "older posts are grouped by month and year."},
                ]),
            );
            put(
                "verification",
                json!({"seed": 7, "positions": 64, "calls": 3, "repeated": true}),
            );
            (
                scale::model(bpb, xz("xz"), Some(1.42187)),
                format!(
                    "gate not met: verified bpb {bpb:.4} is not below per-document xz -9e ({:.4})",
                    xz("xz")
                ),
            )
        }
        "eval" => {
            let val = rng.range(1.45, 1.55);
            let test = val * rng.range(0.98, 1.02);
            let claimed = if passed { val * 1.01 } else { val * 0.7 };
            let claim_error = (claimed - val).abs() / val;
            let gap = (val - test).abs() / test;
            let error = claim_error + gap;
            put("val_path", json!("data/val.jsonl"));
            put("claimed_val_bpb", json!(round(claimed, 5)));
            put("val_documents", json!(40));
            put("val_bytes", json!(81_920));
            put("notes", json!("held out by URL hash"));
            put("verified", json!(true));
            put("val_bpb", json!(round(val, 5)));
            put("test_bpb", json!(round(test, 5)));
            put("claim_error", json!(round(claim_error, 5)));
            put("generalisation_gap", json!(round(gap, 5)));
            put("eval_error", json!(round(error, 5)));
            (
                scale::eval(error, Some(0.05208)),
                format!(
                    "gate not met: the report claims {claimed:.4} bpb on data/val.jsonl but bin/lm measures {val:.4} there ({:.1}% off; at most 5% allowed)",
                    claim_error * 100.0
                ),
            )
        }
        "selfhost" => {
            let orig = rng.range(1.40, 1.60);
            let new = if passed { orig * 1.002 } else { orig * 1.2 };
            let diff = (new - orig).abs() / orig;
            put("files_copied", json!(9));
            put("files_refused", json!(0));
            put("original_bpb", json!(round(orig, 5)));
            put("bpb", json!(round(new, 5)));
            put("relative_difference", json!(round(diff, 5)));
            put("beats_conditional_xz", json!(new < xz("xz_conditional")));
            put(
                "vs_conditional_xz",
                json!(round(new - xz("xz_conditional"), 5)),
            );
            put("rebuild_seconds", json!(round(rng.range(60.0, 150.0), 1)));
            (
                scale::model(new, xz("xz"), Some(1.42187)),
                format!(
                    "gate not met: the rebuilt model scores {new:.4} bpb against the original's {orig:.4} ({:.1}% apart; at most 3% allowed)",
                    diff * 100.0
                ),
            )
        }
        other => {
            put("documents", json!(10));
            (
                Some(if passed { 1.0 } else { 0.0 }),
                format!("stage {other} did not produce its artifact"),
            )
        }
    };
    StageScore {
        status: "scored".into(),
        passed,
        metrics: m,
        reason: (!passed).then_some(reason),
        normalized: Some(round(scale::score(passed, quality), 4)),
        public_reason: None,
    }
}

/// Writes `text` to `workspace/rel`, creating parent directories.
fn put_file(workspace: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    let path = workspace.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    std::fs::write(&path, text).with_context(|| path.display().to_string())
}

/// Appends a line to `workspace/rel` (the file grows, so every snapshot sees the change).
fn append_line(workspace: &Path, rel: &str, line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = workspace.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| path.display().to_string())?;
    writeln!(f, "{line}").with_context(|| path.display().to_string())
}

/// The commit message the runner writes for a step.
fn commit_message(step: u64, stage: &str, tool: &str, args: &Value) -> String {
    let summary: String = match args.get("cmd").or_else(|| args.get("path")) {
        Some(Value::String(s)) => s.lines().next().unwrap_or("").chars().take(72).collect(),
        _ => String::new(),
    };
    format!(
        "step {step} ({stage}): {tool} {summary}\n\n{{\"tool\":{},\"args\":{}}}\n",
        json!(tool),
        args
    )
}

/// When the run started: the time in its id (`YYYYmmdd-HHMMSS-…`), else a fixed time.
fn start_time(run_id: &str) -> DateTime<Utc> {
    run_id
        .get(..15)
        .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M%S").ok())
        .map(|t| t.and_utc())
        .unwrap_or_else(|| {
            DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default()
        })
}

/// The stages' scores, the rescued stages and the summaries of `score.json`, from the replay.
type StageResults = (
    BTreeMap<String, StageScore>,
    Vec<String>,
    BTreeMap<String, StageSummary>,
);

fn stage_results(replay: &Replay, priced: bool) -> StageResults {
    let stages = replay.stages();
    let scores = stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.score.clone()?)))
        .collect();
    let rescued = stages
        .iter()
        .filter(|s| s.rescued)
        .map(|s| s.name.clone())
        .collect();
    let summaries = stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), summary(s, priced)?)))
        .collect();
    (scores, rescued, summaries)
}

/// The model an LLM agent spec names (`openai:<model>`, `anthropic:<model>`), if it is one.
/// score.json's summary of a stage that ended, from the replay of the trace written; `priced`: an
/// LLM agent's stage, which counts its tokens and cost.
fn summary(s: &StageState, priced: bool) -> Option<StageSummary> {
    let e = s.ended?;
    let mut summary = match &s.score {
        Some(score) => StageSummary::from_score(score),
        None => StageSummary::from_score(&StageScore {
            status: "not_scored".into(),
            passed: false,
            metrics: Map::new(),
            reason: Some(format!("the stage ended by {:?}", e.by)),
            normalized: None,
            public_reason: None,
        }),
    };
    summary.ended_by = Some(e.by);
    summary.steps = e.steps;
    summary.sandbox_seconds = e.sandbox_seconds;
    summary.wall_seconds = e.wall_seconds;
    summary.cpu_seconds = Some(round(s.steps.cpu_seconds, 3));
    if priced {
        summary.tokens = Some(s.model.tokens());
        summary.cost_usd = Some(round(s.model.cost_usd.unwrap_or(0.0), 6));
    }
    summary.rescued = s.rescued;
    Some(summary)
}

fn llm_model(agent: &str) -> Option<&str> {
    (agent.starts_with("openai:") || agent.starts_with("anthropic:")).then_some(agent)
}

/// Writes the run `spec` describes under `runs_dir/<run_id>/` and returns its directory.
pub fn write_run(runs_dir: &Path, spec: &Synth) -> anyhow::Result<RunDir> {
    if spec.run_id.is_empty() || spec.run_id.contains('/') || spec.run_id.starts_with('.') {
        anyhow::bail!(
            "synthetic run: run_id {:?} is not a directory name",
            spec.run_id
        );
    }
    let dir = RunDir::new(runs_dir.join(&spec.run_id));
    if dir.path.exists() {
        anyhow::bail!(
            "{}: already exists; a synthetic run needs a fresh directory",
            dir.path.display()
        );
    }
    let ws = dir.workspace();
    std::fs::create_dir_all(&ws).with_context(|| ws.display().to_string())?;
    std::fs::create_dir_all(dir.outputs()).with_context(|| dir.outputs().display().to_string())?;

    let t0 = start_time(&spec.run_id);
    let mut meta = RunMeta {
        run_id: spec.run_id.clone(),
        agent: spec.agent.clone(),
        suite: spec.suite.clone(),
        suite_path: format!("tasks/suites/{}.toml", spec.suite),
        world_hash: spec.world_hash.clone(),
        seed: spec.seed,
        stages: spec.stages.clone(),
        budgets: stage_budgets(&spec.stages),
        gates: BTreeMap::new(),
        gptx_version: env!("CARGO_PKG_VERSION").into(),
        images: BTreeMap::from([(
            "agent".to_string(),
            format!("sha256:{}", sha256_hex(b"synthetic image")),
        )]),
        started_at: t0,
        ..Default::default()
    };
    rundir::write_json_atomic(&dir.run_json(), &meta)
        .with_context(|| dir.run_json().display().to_string())?;
    let mut log =
        EventLog::create(&dir.events()).with_context(|| dir.events().display().to_string())?;
    let mut history = WorkspaceHistory::create(&dir.git(), &ws)
        .with_context(|| dir.git().display().to_string())?;
    let outputs = OutputStore::new(&dir.outputs());
    let events_path = dir.events().display().to_string();
    // What the trace holds so far: score.json is read from it at the end.
    let mut replay = Replay::with_stages(&spec.stages);
    let emit = |log: &mut EventLog, replay: &mut Replay, e: Event| -> anyhow::Result<()> {
        log.append(&e)
            .map(|_| ())
            .with_context(|| events_path.clone())?;
        replay.apply(&e);
        Ok(())
    };

    let mut rng = Rng(spec.seed ^ 0x5eed_0000_6774_7078);
    let model = llm_model(&spec.agent);
    emit(
        &mut log,
        &mut replay,
        Event::RunStarted {
            run_id: spec.run_id.clone(),
            suite: spec.suite.clone(),
            agent: spec.agent.clone(),
            seed: spec.seed,
            gptx_version: env!("CARGO_PKG_VERSION").into(),
            world_hash: spec.world_hash.clone(),
            image: meta.images["agent"].clone(),
            stages: spec.stages.clone(),
        },
    )?;

    let n = spec.steps_per_stage;
    let mut now = t0 + Duration::milliseconds(850);
    let mut step_no = 0u64;
    let mut stop_status: Option<RunStatus> = None;
    let mut run_wall = 0.85f64;

    for (index, stage) in spec.stages.iter().enumerate() {
        let passes = index < spec.passed_stages;
        // The stage where a running, interrupted or failed run stops.
        let stops_here = spec.status != RunStatus::Done
            && index == spec.passed_stages.min(spec.stages.len().saturating_sub(1));
        let b = budgets(stage);
        emit(
            &mut log,
            &mut replay,
            Event::StageStarted {
                stage: stage.clone(),
                index,
                budgets: b.clone(),
                network: (stage == "crawl").then(|| format!("gptx-{}-world", spec.run_id)),
                instruction_sha256: sha256_hex(format!("instruction of stage {stage}").as_bytes()),
            },
        )?;
        let body = body(stage, spec.output_bytes);
        let steps_here = if stops_here && spec.status == RunStatus::Running {
            n.div_ceil(2)
        } else {
            n
        };
        let mut sandbox_seconds = 0.0;
        let mut wall = 0.0;
        for j in 1..=steps_here {
            step_no += 1;
            let (tool, args) = if n >= 3 && j == 1 {
                (
                    "write_file",
                    json!({"path": format!("{stage}/run.sh"), "content": script(stage)}),
                )
            } else if n >= 2 && j == n {
                ("submit", json!({}))
            } else {
                let cmd = if j + 1 >= n || n == 1 {
                    format!(
                        "sh {stage}/run.sh --final 2>&1 | tail -n 400\n# the last run of {stage}"
                    )
                } else {
                    format!("sh {stage}/run.sh --round {j}")
                };
                ("bash", json!({"cmd": cmd}))
            };
            if let Some(model) = model {
                let input = 1200 + 350 * j as u64;
                let output = 80 + (rng.next() % 120);
                let c = (input as f64 * 3.0 + output as f64 * 15.0) / 1e6;
                emit(
                    &mut log,
                    &mut replay,
                    Event::ModelCall {
                        stage: stage.clone(),
                        call: ModelCall {
                            model: model.to_string(),
                            input_tokens: input,
                            output_tokens: output,
                            latency_ms: round(rng.range(400.0, 2500.0), 1),
                            cost_usd: Some(round(c, 6)),
                            attempt: 1,
                            error: None,
                            reply: None,
                        },
                    },
                )?;
            }
            emit(
                &mut log,
                &mut replay,
                Event::StepStarted {
                    stage: stage.clone(),
                    step: step_no,
                    tool: tool.into(),
                    args: args.clone(),
                },
            )?;
            let mut usage = None;
            let mut refs = Vec::new();
            let mut step_sandbox = 0.0;
            let (ok, result) = match tool {
                "write_file" => {
                    let content = args["content"].as_str().unwrap_or_default();
                    put_file(&ws, &format!("{stage}/run.sh"), content)?;
                    (true, json!({"bytes_written": content.len()}))
                }
                "submit" => (true, json!({"submitted": true})),
                _ => {
                    // The failing stage's final run fails.
                    let fails = !passes && j + 1 >= n;
                    append_line(
                        &ws,
                        &format!("{stage}/log.txt"),
                        &format!("round {j}: step {step_no}"),
                    )?;
                    if j + 1 >= n || n == 1 {
                        let (path, text) = artifact(stage);
                        put_file(&ws, path, &text)?;
                    }
                    let mut full = format!("step {step_no}: {stage} round {j}\n").into_bytes();
                    full.extend_from_slice(body.as_bytes());
                    full.truncate(spec.output_bytes);
                    let stderr = if fails {
                        format!("Traceback (most recent call last):\n  File \"{stage}/main.py\", line 42, in <module>\n    main()\nRuntimeError: {stage} did not converge\n")
                    } else {
                        String::new()
                    };
                    let (stdout, cut) = captured(&full);
                    if cut {
                        let kept = &full[..full.len().min(FULL_OUTPUT)];
                        let sha = outputs
                            .put(kept)
                            .with_context(|| dir.outputs().display().to_string())?;
                        refs.push(OutputRef {
                            stream: "stdout".into(),
                            sha256: sha,
                            bytes_kept: kept.len() as u64,
                            bytes_total: full.len() as u64,
                        });
                    }
                    step_sandbox = round(rng.range(0.2, 6.0), 3);
                    let cpu = round(step_sandbox * rng.range(0.6, 0.98), 3);
                    // The runner counts the container's cgroup CPU where it is known.
                    let step_cpu = round(cpu + 0.01, 3);
                    usage = Some(StepUsage {
                        cpu_seconds: cpu,
                        max_rss_kb: 20_000 + rng.next() % 400_000,
                        container_cpu_seconds: Some(step_cpu),
                        container_peak_bytes: Some(
                            64 * 1024 * 1024 + rng.next() % (512 * 1024 * 1024),
                        ),
                        timed_out: false,
                        oom_killed: false,
                    });
                    (
                        true,
                        json!({
                            "exit_code": if fails { 1 } else { 0 },
                            "stdout": stdout,
                            "stderr": stderr,
                            "truncated": cut,
                            "duration_ms": round(step_sandbox * 1000.0, 1),
                        }),
                    )
                }
            };
            let commit = history
                .commit_if_changed(&commit_message(step_no, stage, tool, &args))
                .with_context(|| dir.git().display().to_string())?;
            let duration_ms = round(step_sandbox * 1000.0 + rng.range(3.0, 25.0), 3);
            emit(
                &mut log,
                &mut replay,
                Event::Step(StepRecord {
                    stage: stage.clone(),
                    step: step_no,
                    stage_step: j as u64,
                    tool: tool.into(),
                    args,
                    ok,
                    result,
                    started_at: now,
                    duration_ms,
                    sandbox_seconds: step_sandbox,
                    usage,
                    outputs: refs,
                    commit,
                }),
            )?;
            let spent = duration_ms / 1000.0 + 0.2;
            now += Duration::microseconds((spent * 1e6) as i64);
            sandbox_seconds += step_sandbox;
            wall += spent;
        }
        if stops_here && spec.status == RunStatus::Running {
            // A step in flight: started, not yet recorded.
            emit(
                &mut log,
                &mut replay,
                Event::StepStarted {
                    stage: stage.clone(),
                    step: step_no + 1,
                    tool: "bash".into(),
                    args: json!({"cmd": format!("sh {stage}/run.sh --round {}", steps_here + 1)}),
                },
            )?;
            return Ok(dir);
        }
        let ended_by = match (stops_here, spec.status) {
            (true, RunStatus::Interrupted) => EndReason::Interrupted,
            (true, _) => EndReason::AgentError,
            _ if n >= 2 => EndReason::Submit,
            _ => EndReason::AgentFinished,
        };
        let sandbox_seconds = round(sandbox_seconds, 3);
        let wall = round(wall + 0.3, 3);
        run_wall += wall;
        emit(
            &mut log,
            &mut replay,
            Event::StageEnded {
                stage: stage.clone(),
                ended_by,
                steps: steps_here as u64,
                sandbox_seconds,
                wall_seconds: wall,
            },
        )?;
        if stops_here {
            if spec.status == RunStatus::Failed {
                emit(
                    &mut log,
                    &mut replay,
                    Event::Warning {
                        message: format!("stage {stage}: the sandbox stopped answering"),
                    },
                )?;
            }
        } else {
            let score = stage_score(stage, passes, &mut rng);
            emit(
                &mut log,
                &mut replay,
                Event::StageScored {
                    stage: stage.clone(),
                    score,
                },
            )?;
        }
        let later = index + 1 < spec.stages.len();
        if !stops_here
            && !passes
            && later
            && crate::config::stages::find(stage).is_some_and(|d| d.rescuable)
        {
            let (path, text) = artifact(stage);
            put_file(&ws, path, &format!("{text}# handed over by the harness\n"))?;
            let detail = format!("wrote {path}: the reference artifact of stage {stage}");
            let commit = history
                .commit_if_changed(&format!(
                    "rescue ({stage}): the harness handed over the reference artifact\n\n{detail}\n"
                ))
                .with_context(|| dir.git().display().to_string())?;
            emit(
                &mut log,
                &mut replay,
                Event::Rescue {
                    stage: stage.clone(),
                    ok: true,
                    files: vec![path.to_string()],
                    detail,
                    seconds: 1.25,
                    commit,
                },
            )?;
        }
        if stops_here {
            stop_status = Some(spec.status);
            break;
        }
    }

    let status = stop_status.unwrap_or(RunStatus::Done);
    let (scores, rescued, summaries) = stage_results(&replay, model.is_some());
    let levels = crate::stages::levels::levels(&scores, &rescued);
    let bootstrap_index = round(crate::stages::levels::bootstrap_index(&scores), 4);
    let run_wall = round(run_wall + 0.4, 3);
    emit(
        &mut log,
        &mut replay,
        Event::RunFinished {
            status,
            level: levels.level.clone(),
            bootstrap_index,
            wall_seconds: run_wall,
            assisted_level: levels.assisted.clone(),
        },
    )?;
    meta.status = status;
    meta.error = (status == RunStatus::Failed).then(|| "the sandbox stopped answering".into());
    meta.ended_at = Some(t0 + Duration::milliseconds((run_wall * 1000.0) as i64));
    meta.trace_sha256 = Some(log.last_hash().to_string());
    meta.events = log.len();
    rundir::write_json_atomic(&dir.run_json(), &meta)
        .with_context(|| dir.run_json().display().to_string())?;
    let score = RunScore {
        run_id: spec.run_id.clone(),
        suite: spec.suite.clone(),
        agent: spec.agent.clone(),
        seed: spec.seed,
        world_hash: spec.world_hash.clone(),
        status,
        level: levels.level,
        assisted_level: levels.assisted,
        bootstrap_index,
        stages: summaries,
        integrity: vec![],
        resumed: 0,
        scoring: scale::SCORING,
    };
    rundir::write_json_atomic(&dir.score_json(), &score)
        .with_context(|| dir.score_json().display().to_string())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::log::read_events;

    fn steps(dir: &RunDir) -> Vec<StepRecord> {
        read_events(&dir.events())
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Step(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_written_run_verifies_with_real_commits_and_a_score() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_run(tmp.path(), &Synth::default()).unwrap();
        let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
        assert_eq!(meta.status, RunStatus::Done);
        let v = crate::trace::verify(&dir.events(), meta.trace_sha256.as_deref()).unwrap();
        assert_eq!(v.events, meta.events);
        let steps = steps(&dir);
        assert_eq!(steps.len(), 15);
        let repo = git2::Repository::open_bare(dir.git()).unwrap();
        let commits: Vec<&String> = steps.iter().filter_map(|s| s.commit.as_ref()).collect();
        assert_eq!(
            commits.len(),
            10,
            "write_file and bash change the workspace, submit does not"
        );
        for c in commits {
            repo.find_commit(git2::Oid::from_str(c).unwrap()).unwrap();
            let d = crate::trace::history::commit_diff(&dir.git(), c, 1 << 20).unwrap();
            assert!(!d.files.is_empty());
        }
        let score: RunScore = rundir::read_json(&dir.score_json()).unwrap();
        assert_eq!(
            score.level, "L6",
            "all five passed and the rebuilt model beats conditional xz"
        );
        assert_eq!(score.stages.len(), 5);
        assert!(score.stages.values().all(|s| s.passed && s.steps == 3));
        assert!(score.bootstrap_index > 50.0);
        assert!(
            write_run(tmp.path(), &Synth::default()).is_err(),
            "refuses an existing run"
        );
    }

    #[test]
    fn failures_rescues_and_long_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Synth {
            passed_stages: 1,
            output_bytes: 100_000,
            steps_per_stage: 4,
            agent: "openai:gpt-4o-mini".into(),
            ..Synth::default()
        };
        let dir = write_run(tmp.path(), &spec).unwrap();
        let score: RunScore = rundir::read_json(&dir.score_json()).unwrap();
        assert_eq!(score.level, "L1");
        assert!(score.stages["tokenize"].rescued);
        assert!(!score.stages["train"].passed);
        assert!(score.stages["train"]
            .reason
            .as_deref()
            .unwrap()
            .contains("gate not met"));
        assert!(score.stages["crawl"].tokens.unwrap() > 0);
        let steps = steps(&dir);
        let long = steps.iter().find(|s| s.tool == "bash").unwrap();
        let r = &long.outputs[0];
        assert_eq!(r.bytes_total, 100_000);
        let kept = std::fs::read(dir.outputs().join(&r.sha256)).unwrap();
        assert_eq!(kept.len(), 100_000);
        assert!(long.result["stdout"]
            .as_str()
            .unwrap()
            .contains("bytes omitted by gptx"));
        let failing = steps
            .iter()
            .rfind(|s| s.stage == "train" && s.tool == "bash")
            .unwrap();
        assert_eq!(failing.result["exit_code"], 1);
    }

    #[test]
    fn a_running_run_stops_mid_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Synth {
            status: RunStatus::Running,
            passed_stages: 2,
            ..Synth::default()
        };
        let dir = write_run(tmp.path(), &spec).unwrap();
        let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
        assert_eq!(meta.status, RunStatus::Running);
        assert!(meta.trace_sha256.is_none());
        assert!(!dir.score_json().exists());
        crate::trace::verify(&dir.events(), None).unwrap();
        let events = read_events(&dir.events()).unwrap();
        assert!(matches!(
            events.last().unwrap().event,
            Event::StepStarted { ref stage, .. } if stage == "train"
        ));
        assert!(!events
            .iter()
            .any(|e| matches!(e.event, Event::RunFinished { .. })));
    }

    #[test]
    fn an_interrupted_run_ends_where_it_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Synth {
            status: RunStatus::Interrupted,
            passed_stages: 3,
            ..Synth::default()
        };
        let dir = write_run(tmp.path(), &spec).unwrap();
        let score: RunScore = rundir::read_json(&dir.score_json()).unwrap();
        assert_eq!(score.status, RunStatus::Interrupted);
        assert_eq!(score.stages.len(), 4);
        assert_eq!(score.level, "L3");
        let meta: RunMeta = rundir::read_json(&dir.run_json()).unwrap();
        crate::trace::verify(&dir.events(), meta.trace_sha256.as_deref()).unwrap();
    }
}
