//! What each page shows, gathered from run.json, score.json, the trace index, outputs/ and workspace.git.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::index::{Counts, LineRef, Problem, StepSummary, PAGE_SIZE};
use super::{lock, AppState, PageError};
use crate::config::suite::Budgets;
use crate::trace::history::{commit_diff, CommitDiff};
use crate::trace::replay::{Phase, Replay, Rescue};
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus};
use crate::trace::{EndReason, StepRecord};

/// Bytes of one output stream shown on a step page (the rest is a link away).
pub(crate) const SHOW_BYTES: u64 = 1 << 20;
/// Bytes of patch text shown on a step page.
pub const DIFF_BYTES: usize = 1 << 20;

/// `?suite=&agent=&status=` on the runs page.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub suite: Option<String>,
    pub agent: Option<String>,
    pub status: Option<String>,
}

impl Filter {
    fn keeps(&self, r: &RunRow) -> bool {
        self.suite.as_ref().is_none_or(|s| *s == r.suite)
            && self.agent.as_ref().is_none_or(|a| *a == r.agent)
            && self.status.as_ref().is_none_or(|s| *s == r.status)
    }
    pub fn is_empty(&self) -> bool {
        self.suite.is_none() && self.agent.is_none() && self.status.is_none()
    }
}

/// One line of the runs page.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunRow {
    pub run_id: String,
    pub status: String,
    pub suite: String,
    pub agent: String,
    pub seed: u64,
    pub level: Option<String>,
    pub assisted_level: Option<String>,
    pub bootstrap_index: Option<f64>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub wall_seconds: Option<f64>,
    /// Times the run was resumed after a fault.
    pub resumed: usize,
    /// It was interrupted and `gptx resume` can take it up.
    pub resumable: bool,
}

/// The runs page: the rows that pass the filter, newest first, and the values to filter on.
pub(crate) struct RunList {
    pub rows: Vec<RunRow>,
    pub total: usize,
    pub problems: Vec<String>,
    pub suites: Vec<String>,
    pub agents: Vec<String>,
    pub statuses: Vec<String>,
    pub filter: Filter,
}

fn wall(meta: &RunMeta) -> Option<f64> {
    let end = match (meta.ended_at, meta.status) {
        (Some(e), _) => e,
        (None, RunStatus::Running) => chrono::Utc::now(),
        (None, _) => return None,
    };
    Some((end - meta.started_at).num_milliseconds() as f64 / 1000.0)
}

/// The runs of every directory in `runs_dirs` (a run found in two counts once).
pub fn runs(runs_dirs: &[std::path::PathBuf], filter: &Filter) -> RunList {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for runs_dir in runs_dirs {
        let (listed, p) = rundir::list_runs(runs_dir);
        problems.extend(p);
        if !runs_dir.is_dir() {
            problems.push(format!("{}: not a directory", runs_dir.display()));
        }
        found.extend(
            listed
                .into_iter()
                .filter(|(_, m)| seen.insert(m.run_id.clone())),
        );
    }
    found.sort_by_key(|(_, m)| m.started_at);
    let mut all = Vec::new();
    for (dir, meta) in found {
        let score = read_score(&dir);
        if let Err(e) = &score {
            problems.push(e.clone());
        }
        let score = score.ok().flatten();
        all.push(RunRow {
            status: meta.status.to_string(),
            suite: meta.suite.clone(),
            agent: meta.agent.clone(),
            seed: meta.seed,
            level: score.as_ref().map(|s| s.level.clone()),
            assisted_level: score.as_ref().and_then(|s| s.assisted_level.clone()),
            bootstrap_index: score.as_ref().map(|s| s.bootstrap_index),
            started_at: meta.started_at,
            ended_at: meta.ended_at,
            wall_seconds: wall(&meta),
            resumed: meta.resumes.len(),
            resumable: meta.resumable(),
            run_id: meta.run_id,
        });
    }
    let set = |f: fn(&RunRow) -> &String| -> Vec<String> {
        all.iter()
            .map(|r| f(r).clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let suites = set(|r| &r.suite);
    let agents = set(|r| &r.agent);
    let statuses = set(|r| &r.status);
    let total = all.len();
    let mut rows: Vec<RunRow> = all.into_iter().filter(|r| filter.keeps(r)).collect();
    rows.reverse();
    RunList {
        rows,
        total,
        problems,
        suites,
        agents,
        statuses,
        filter: filter.clone(),
    }
}

/// score.json, None when the run has none yet; errors name the file.
fn read_score(dir: &RunDir) -> Result<Option<RunScore>, String> {
    if !dir.score_json().exists() {
        return Ok(None);
    }
    rundir::read_json(&dir.score_json())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// One stage as the run page shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct StageRow {
    pub name: String,
    /// scored, failed, ..., or `running` / `ended` / `not run` before a score exists.
    pub status: String,
    pub passed: Option<bool>,
    pub rescued: bool,
    pub ended_by: Option<EndReason>,
    pub steps: Option<u64>,
    pub sandbox_seconds: Option<f64>,
    pub wall_seconds: Option<f64>,
    pub normalized: Option<f64>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub reason: Option<String>,
    pub budgets: Option<Budgets>,
    pub tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

/// The bpb ladder: the world's baselines and the run's verified numbers.
#[derive(Debug, Clone)]
pub(crate) struct Ladder {
    pub baselines: Vec<(String, f64)>,
    pub points: Vec<(String, f64)>,
}

/// Everything the run page shows.
pub(crate) struct RunView {
    pub id: String,
    pub meta: RunMeta,
    /// Files that could not be read (score.json), named.
    pub notes: Vec<String>,
    pub stages: Vec<StageRow>,
    pub level: Option<String>,
    pub assisted_level: Option<String>,
    pub bootstrap_index: Option<f64>,
    /// The run is still being written.
    pub live: bool,
    pub page: usize,
    pub pages: usize,
    pub total_steps: usize,
    pub steps: Vec<Result<Arc<StepSummary>, Problem>>,
    pub warnings: Vec<String>,
    pub rescues: Vec<Rescue>,
    /// The integrity ledger: what the harness cleaned up or refused on the agent's side.
    pub integrity: Vec<crate::trace::IntegrityNote>,
    pub problems: Vec<Problem>,
    pub trace_error: Option<String>,
    pub trace_missing: bool,
    pub events_path: String,
    pub last_seq: Option<u64>,
    pub counts: Counts,
    pub trace_bytes: u64,
    pub pending_bytes: u64,
    pub ladder: Option<Ladder>,
    pub samples: Vec<(String, String)>,
    /// A live run's step that has started and not ended.
    pub in_flight: Option<crate::serve::index::InFlight>,
}

impl RunView {
    /// The trace could not be read whole: the page says where, with a server-error status.
    pub fn damaged(&self) -> bool {
        !self.problems.is_empty() || self.trace_error.is_some()
    }
}

fn read_meta(dir: &RunDir) -> Result<RunMeta, PageError> {
    rundir::read_json(&dir.run_json())
        .map_err(|e| PageError::internal("This run cannot be read", e.to_string()))
}

/// Gathers the run page; `page` None leaves the steps out (the live header).
pub fn run(
    app: &AppState,
    dir: &RunDir,
    id: &str,
    page: Option<usize>,
) -> Result<RunView, PageError> {
    let meta = read_meta(dir)?;
    let mut notes = Vec::new();
    let score = read_score(dir).unwrap_or_else(|e| {
        notes.push(e);
        None
    });
    let idx = app.index(dir);
    let mut g = lock(&idx);
    let trace_error = g.refresh().err();
    let pages = g.pages();
    let steps = match page {
        Some(p) if p > pages => {
            return Err(PageError::not_found(
                "No such page",
                format!(
                    "Run {id} has {} steps: {pages} page{} of {PAGE_SIZE}; there is no page {p}.",
                    g.step_count(),
                    if pages == 1 { "" } else { "s" }
                ),
            ))
        }
        Some(p) => g.page(p),
        None => Vec::new(),
    };
    let replay = g.replay();
    let stages = stage_rows(&meta, score.as_ref(), replay);
    let (level, bootstrap_index, assisted_level) = match (&score, replay.finished()) {
        (Some(s), _) => (
            Some(s.level.clone()),
            Some(s.bootstrap_index),
            s.assisted_level.clone(),
        ),
        (None, Some(f)) => (
            Some(f.level.clone()),
            Some(f.bootstrap_index),
            f.assisted_level.clone(),
        ),
        (None, None) => (None, None, None),
    };
    let warnings = replay.warnings().to_vec();
    let integrity = replay.integrity().to_vec();
    let rescues = replay.rescues().to_vec();
    let ladder = ladder(&stages);
    let samples = samples(&stages);
    let live = meta.status == RunStatus::Running && !g.finished();
    let in_flight = if live { g.in_flight() } else { None };
    Ok(RunView {
        id: id.to_string(),
        notes,
        stages,
        level,
        assisted_level,
        bootstrap_index,
        live,
        page: page.unwrap_or(1),
        pages,
        total_steps: g.step_count(),
        steps,
        warnings,
        integrity,
        rescues,
        problems: g.problems().to_vec(),
        trace_missing: !g.exists(),
        events_path: dir.events().display().to_string(),
        trace_error,
        last_seq: g.last_seq(),
        counts: g.counts(),
        trace_bytes: g.bytes(),
        pending_bytes: g.pending_bytes(),
        ladder,
        samples,
        in_flight,
        meta,
    })
}

/// The stages in the suite's order (then those only the trace names): score.json's summary when
/// there is one, else the trace so far; a stage is rescued when either says so.
fn stage_rows(meta: &RunMeta, score: Option<&RunScore>, replay: &Replay) -> Vec<StageRow> {
    let mut rows: Vec<StageRow> = meta
        .stages
        .iter()
        .map(|s| StageRow {
            name: s.clone(),
            status: "not run".into(),
            budgets: meta.budgets.get(s).cloned(),
            ..Default::default()
        })
        .collect();
    fn row<'a>(rows: &'a mut Vec<StageRow>, name: &str) -> &'a mut StageRow {
        if let Some(i) = rows.iter().position(|r| r.name == name) {
            return &mut rows[i];
        }
        rows.push(StageRow {
            name: name.to_string(),
            status: "not run".into(),
            ..Default::default()
        });
        rows.last_mut().expect("just pushed")
    }
    for st in replay.stages() {
        // A stage the trace names only in a rescue gets no row of its own.
        if st.phase == Phase::NotStarted && st.steps.count == 0 && !meta.stages.contains(&st.name) {
            continue;
        }
        let r = row(&mut rows, &st.name);
        if let Some(s) = &st.started {
            r.budgets = Some(s.budgets.clone());
        }
        match (st.phase, &st.score) {
            (Phase::Running, _) => r.status = "running".into(),
            (Phase::Ended, _) => r.status = "scoring".into(),
            (Phase::Scored, Some(s)) => r.status = s.status.clone(),
            _ => {}
        }
        if let Some(e) = st.ended {
            r.ended_by = Some(e.by);
            r.steps = Some(e.steps);
            r.sandbox_seconds = Some(e.sandbox_seconds);
            r.wall_seconds = Some(e.wall_seconds);
        }
        if let Some(s) = &st.score {
            r.passed = Some(s.passed);
            r.metrics = s.metrics.clone();
            r.reason = s.reason.clone();
            r.normalized = s.normalized;
        }
        // A stage under way: the steps indexed so far.
        if r.steps.is_none() && r.status == "running" && st.steps.count > 0 {
            r.steps = Some(st.steps.count);
        }
    }
    if let Some(score) = score {
        for (name, s) in &score.stages {
            let r = row(&mut rows, name);
            r.status = s.status.clone();
            r.passed = Some(s.passed);
            r.rescued = s.rescued;
            r.ended_by = s.ended_by.or(r.ended_by);
            r.steps = Some(s.steps);
            r.sandbox_seconds = Some(s.sandbox_seconds);
            r.wall_seconds = Some(s.wall_seconds);
            r.normalized = s.normalized;
            r.metrics = s.metrics.clone();
            r.reason = s.reason.clone();
            r.tokens = s.tokens;
            r.cost_usd = s.cost_usd;
        }
    }
    for r in &mut rows {
        r.rescued |= replay.stage(&r.name).is_some_and(|s| s.rescued);
    }
    rows
}

fn metric(stages: &[StageRow], stage: &str, key: &str) -> Option<f64> {
    stages
        .iter()
        .find(|s| s.name == stage)?
        .metrics
        .get(key)?
        .as_f64()
}

/// The train stage's baseline ladder and the run's verified bpb numbers, when the train stage has a ladder.
fn ladder(stages: &[StageRow]) -> Option<Ladder> {
    let train = stages.iter().find(|s| s.name == "train")?;
    let map = train.metrics.get("ladder")?.as_object()?;
    let names = [
        ("uniform", "uniform"),
        ("unigram", "unigram"),
        ("gzip", "gzip -9"),
        ("xz", "xz -9e"),
        ("xz_conditional", "xz -9e | served"),
    ];
    let mut baselines: Vec<(String, f64)> = names
        .iter()
        .filter_map(|(k, label)| Some((label.to_string(), map.get(*k)?.as_f64()?)))
        .collect();
    for (k, v) in map {
        if !names.iter().any(|(n, _)| n == k) {
            if let Some(x) = v.as_f64() {
                baselines.push((k.clone(), x));
            }
        }
    }
    let points: Vec<(String, f64)> = [
        ("train", "bpb", "train bpb"),
        ("train", "ood_bpb", "out-of-domain bpb"),
        ("eval", "val_bpb", "eval val bpb"),
        ("selfhost", "bpb", "rebuilt bpb"),
    ]
    .iter()
    .filter_map(|(s, k, label)| Some((label.to_string(), metric(stages, s, k)?)))
    .collect();
    (!baselines.is_empty()).then_some(Ladder { baselines, points })
}

/// The train stage's `samples`: `[{"prompt", "text"}]`.
fn samples(stages: &[StageRow]) -> Vec<(String, String)> {
    let Some(list) = stages
        .iter()
        .find(|s| s.name == "train")
        .and_then(|t| t.metrics.get("samples"))
        .and_then(|v| v.as_array())
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let text = s.get("text")?.as_str()?.to_string();
            let prompt = s.get("prompt").and_then(|p| p.as_str()).unwrap_or("");
            Some((prompt.to_string(), text))
        })
        .collect()
}

/// 64 lowercase or uppercase hex digits.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One output stream on the step page.
#[derive(Debug, Clone)]
pub(crate) struct OutputView {
    pub stream: String,
    pub text: String,
    /// Bytes shown of `total`.
    pub shown: u64,
    pub total: u64,
    /// Where the whole kept output can be read (`outputs/<sha256>`).
    pub full: Option<String>,
    pub note: Option<String>,
}

/// Everything the step page shows.
pub(crate) struct StepView {
    pub id: String,
    pub meta: RunMeta,
    pub line: LineRef,
    pub rec: StepRecord,
    pub prev: Option<u64>,
    pub next: Option<u64>,
    pub total_steps: usize,
    /// The timeline page this step is on.
    pub page: usize,
    pub outputs: Vec<OutputView>,
    pub diff: Option<Result<CommitDiff, String>>,
    pub events_path: String,
}

/// Reads the first `limit` bytes of a file.
fn read_head(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Text up to `limit` bytes, cut at a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn outputs(id: &str, dir: &RunDir, rec: &StepRecord) -> Vec<OutputView> {
    let mut out = Vec::new();
    for stream in ["stdout", "stderr"] {
        let inline = rec.result.get(stream).and_then(|v| v.as_str());
        let kept = rec.outputs.iter().find(|o| o.stream == stream);
        if let Some(r) = kept {
            if !is_sha256(&r.sha256) {
                out.push(OutputView {
                    stream: stream.into(),
                    text: inline.unwrap_or("").to_string(),
                    shown: 0,
                    total: r.bytes_total,
                    full: None,
                    note: Some(format!(
                        "the trace names the full output {:?}, which is not a SHA-256; showing the copy in the event",
                        r.sha256
                    )),
                });
                continue;
            }
            let path = dir.output(&r.sha256);
            match read_head(&path, SHOW_BYTES) {
                Ok(bytes) => {
                    let mut note = None;
                    if r.bytes_kept < r.bytes_total {
                        note = Some(format!(
                            "gptx kept the first {} of the {} the command wrote",
                            super::html::bytes(r.bytes_kept),
                            super::html::bytes(r.bytes_total)
                        ));
                    }
                    out.push(OutputView {
                        stream: stream.into(),
                        text: String::from_utf8_lossy(&bytes).into_owned(),
                        shown: bytes.len() as u64,
                        total: r.bytes_total,
                        full: Some(format!(
                            "/runs/{}/outputs/{}",
                            super::html::url(id),
                            r.sha256
                        )),
                        note,
                    });
                }
                Err(e) => {
                    let text = inline.unwrap_or("").to_string();
                    out.push(OutputView {
                        stream: stream.into(),
                        shown: text.len() as u64,
                        text,
                        total: r.bytes_total,
                        full: None,
                        note: Some(format!(
                            "{}: {e}; showing the head and tail kept in the event",
                            path.display()
                        )),
                    });
                }
            }
        } else if let Some(text) = inline {
            let truncated = rec
                .result
                .get("truncated")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let shown = cut(text, SHOW_BYTES as usize);
            out.push(OutputView {
                stream: stream.into(),
                text: shown.to_string(),
                shown: shown.len() as u64,
                total: text.len() as u64,
                full: None,
                note: truncated.then(|| {
                    "the event keeps the head and tail of this output and the full output was not kept"
                        .to_string()
                }),
            });
        }
    }
    out
}

/// Gathers the step page of step `n` (its number over the run).
pub fn step(app: &AppState, dir: &RunDir, id: &str, n: u64) -> Result<StepView, PageError> {
    let meta = read_meta(dir)?;
    let idx = app.index(dir);
    let mut g = lock(&idx);
    g.refresh()
        .map_err(|e| PageError::internal("The trace cannot be read", e))?;
    let events_path = dir.events().display().to_string();
    let Some(i) = g.position(n) else {
        let count = g.step_count();
        return Err(PageError::not_found(
            "No such step",
            match count {
                0 => format!("Run {id} has no steps yet."),
                _ => format!(
                    "Run {id} has no step {n}; its steps are numbered {} to {}.",
                    g.number_at(0).unwrap_or(1),
                    g.number_at(count - 1).unwrap_or(count as u64)
                ),
            },
        ));
    };
    let (line, rec) = g.record_at(i).map_err(|p| {
        PageError::internal(
            "This step cannot be read",
            format!("{events_path} line {}: {}", p.line_no, p.message),
        )
    })?;
    let prev = i.checked_sub(1).and_then(|j| g.number_at(j));
    let next = g.number_at(i + 1);
    let total_steps = g.step_count();
    drop(g);
    let diff = rec.commit.as_ref().map(|c| {
        commit_diff(&dir.git(), c, DIFF_BYTES)
            .map_err(|e| format!("{}: commit {c}: {}", dir.git().display(), e.message()))
    });
    Ok(StepView {
        outputs: outputs(id, dir, &rec),
        id: id.to_string(),
        meta,
        line,
        prev,
        next,
        total_steps,
        page: i / PAGE_SIZE + 1,
        diff,
        events_path,
        rec,
    })
}
