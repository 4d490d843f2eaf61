//! `gptx leaderboard`: runs grouped by suite, world hash and agent; statistics; md/json/html reports.
//!
//! SPEC §9. Every run directory's `run.json` and `score.json` are read (never the traces, so a
//! leaderboard over large runs stays quick). Runs are ranked only against runs of the same suite
//! and world hash; runs that did not finish (`running`, `failed`, `interrupted`) are listed apart
//! and never enter the statistics. The 95% interval of the Bootstrap Index is a percentile
//! bootstrap over the agent's runs (one per seed), with a fixed resampling seed so a report is
//! reproducible from the same runs.

use crate::stages::contamination;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::suite::Home;
use crate::stages::levels::ABOVE_100;
use crate::stages::scale;
use crate::trace::rundir::{self, RunMeta, RunScore, RunStatus};

/// What to rank.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this suite (its name as in run.json).
    pub suite: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    pub resamples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            suite: None,
            resamples: 10_000,
        }
    }
}

/// One finished run as the leaderboard uses it.
#[derive(Debug, Clone, Serialize)]
pub struct RunEntry {
    pub run_id: String,
    pub agent: String,
    pub seed: u64,
    pub level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assisted_level: Option<String>,
    pub bootstrap_index: f64,
    /// The train stage's verified bits per byte on the hidden test set.
    pub bpb: Option<f64>,
    /// The selfhost stage's rebuilt model's verified bits per byte on the same set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt_bpb: Option<f64>,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// The GPUs of the agent's sandbox × `wall_seconds` (absent without GPUs; null when not known).
    #[serde(skip_serializing_if = "GpuSeconds::is_none")]
    pub gpu_seconds: GpuSeconds,
    pub tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Normalised score per stage (None: not graded).
    pub stages: BTreeMap<String, Option<f64>>,
    pub passed: BTreeMap<String, bool>,
    /// The run's integrity ledger in short (`processes_killed ×2`): what the harness cleaned up or
    /// refused on the agent's side. Empty for a run that tried nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub integrity: Vec<String>,
    /// How many times a fault stopped the run and `gptx resume` took it up again (0: never).
    #[serde(skip_serializing_if = "is_zero")]
    pub resumed: u32,
    /// Text of the hidden test documents was found in what the agent wrote (a
    /// `t_text_in_workspace` note): the stages it was found in were rejected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub contaminated: bool,
    /// The engine and the guarantees not in force (`Isolation::label`); None: not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Some guarantee of the sandbox did not hold in this run (rootless, no disk limit, ...).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reduced_isolation: bool,
}

/// GPU-seconds of a run, or an agent's mean per run: the GPUs of the agent's sandbox (the number or
/// the ids the suite asked for; for "all", how many `nvidia-smi` listed) × the run's wall seconds,
/// the `wall s/run` figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GpuSeconds {
    /// No GPU was given.
    None,
    Known(f64),
    /// GPUs were given ("all") that were never counted; never guessed.
    Unknown,
}

impl GpuSeconds {
    fn of(meta: &RunMeta, wall_seconds: f64) -> Self {
        match meta.gpus.as_ref().map(|g| g.count()) {
            None => Self::None,
            Some(None) => Self::Unknown,
            Some(Some(n)) => Self::Known(f64::from(n) * wall_seconds),
        }
    }

    /// The mean per run: a run without GPUs counts 0, one not known makes it not known, and none
    /// with GPUs is none.
    fn mean(runs: &[&RunEntry]) -> Self {
        let each: Vec<Self> = runs.iter().map(|r| r.gpu_seconds).collect();
        if each.contains(&Self::Unknown) {
            return Self::Unknown;
        }
        let xs: Vec<f64> = each.iter().map(|g| g.known().unwrap_or(0.0)).collect();
        if each.iter().all(Self::is_none) {
            Self::None
        } else {
            Self::Known(crate::trace::round(mean(&xs), 1))
        }
    }

    fn is_none(&self) -> bool {
        *self == Self::None
    }

    fn known(&self) -> Option<f64> {
        match self {
            Self::Known(x) => Some(*x),
            _ => None,
        }
    }

    /// `–` without GPUs (as any figure a run does not have), `?` when not known.
    fn text(&self) -> String {
        match self {
            Self::None => "–".into(),
            Self::Known(x) => format!("{x:.1}"),
            Self::Unknown => "?".into(),
        }
    }
}

/// A number, or null when not known (a board's JSON leaves it out without GPUs).
impl Serialize for GpuSeconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.known().serialize(s)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_count(n: &usize) -> bool {
    *n == 0
}

/// A run left out of the statistics, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unfinished {
    pub run_id: String,
    pub agent: String,
    pub seed: u64,
    pub status: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An agent's line on a board.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub rank: usize,
    pub agent: String,
    pub runs: usize,
    pub seeds: Vec<u64>,
    /// Mean level (L0 = 0 … L6 = 6).
    pub mean_level: f64,
    /// How many runs reached each level, L0 … L6.
    pub levels: [usize; 7],
    /// Runs whose rescued stages let them show an assisted level.
    pub assisted: usize,
    /// Runs that were stopped by a fault and resumed.
    #[serde(skip_serializing_if = "is_zero_count")]
    pub resumed: usize,
    /// Its runs with text of the hidden test documents in what the agent wrote.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contaminated: Vec<String>,
    /// The isolation levels its runs ran under (`Isolation::label`; empty: none recorded). More
    /// than one, or one lacking a guarantee, is listed under the board too.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub isolation: std::collections::BTreeSet<String>,
    pub index_mean: f64,
    /// 95% percentile-bootstrap interval of the mean over runs; None with a single run.
    pub index_ci95: Option<(f64, f64)>,
    /// The best Bootstrap Index of the runs (best-of-k, k = runs).
    pub best_of_k: f64,
    pub best_level: String,
    /// Mean normalised score per stage over the runs (a stage not graded counts 0).
    pub stage_scores: BTreeMap<String, f64>,
    /// Fraction of runs that passed each stage on their own.
    pub stage_pass_rate: BTreeMap<String, f64>,
    /// Median verified bpb (train) over the runs that have one.
    pub median_bpb: Option<f64>,
    /// Median verified bpb of the rebuilt model (selfhost) over the runs that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_rebuilt_bpb: Option<f64>,
    /// The best verified bpb of any of its runs (original or rebuilt model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_bpb: Option<f64>,
    /// How far its best is above the board's record (0: it holds the record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_record: Option<f64>,
    /// Mean sandbox CPU-seconds per run (agent commands plus the selfhost rebuild).
    pub cpu_seconds: f64,
    /// Mean GPU-seconds per run (absent when none of its runs had GPUs; null when not known).
    #[serde(skip_serializing_if = "GpuSeconds::is_none")]
    pub gpu_seconds: GpuSeconds,
    /// Mean wall time per run, seconds.
    pub wall_seconds: f64,
    /// Mean model tokens per run (LLM agents).
    pub tokens: Option<f64>,
    /// Mean model cost per run, dollars (LLM agents with a known price).
    pub cost_usd: Option<f64>,
    pub run_ids: Vec<String>,
}

/// One leaderboard: the runs of one suite on one world hash.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub suite: String,
    pub world_hash: Option<String>,
    /// Stages in ladder order.
    pub stages: Vec<String>,
    /// The world's baseline ladder (bpb), from the train stage's metrics.
    pub baselines: Vec<(String, f64)>,
    pub agents: Vec<AgentRow>,
    pub unfinished: Vec<Unfinished>,
    pub resamples: usize,
    /// The best verified bpb any ranked run reached on this world, and which run holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// The plans (`--plan`) whose runs are on this board, with where their items stand.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<PlanState>,
    /// A plan on this board is not done: its agents are listed unranked (`rank` 0), since a
    /// missing item could change the order.
    pub provisional: bool,
    #[serde(skip)]
    pub entries: Vec<RunEntry>,
}

/// A plan on a board: its tally and the items not done.
#[derive(Debug, Clone, Serialize)]
pub struct PlanState {
    pub plan_id: String,
    pub file: String,
    pub tally: crate::plan::Tally,
    pub not_done: Vec<crate::plan::ItemStatus>,
}

impl PlanState {
    /// One line: the plan, its tally, and which items are not done.
    fn text(&self) -> String {
        let mut t = format!("plan {} ({}): {}", self.plan_id, self.file, self.tally);
        if !self.not_done.is_empty() {
            let items: Vec<String> = self
                .not_done
                .iter()
                .take(20)
                .map(|s| {
                    format!(
                        "{} {} seed {} {}",
                        s.item.index, s.item.agent, s.item.seed, s.state
                    )
                })
                .collect();
            t.push_str(&format!(
                "; not done: {}{}",
                items.join(", "),
                if self.not_done.len() > 20 {
                    ", …"
                } else {
                    ""
                }
            ));
        }
        t
    }
}

/// What a provisional board says above its table.
/// The heading of the runs a board lists apart.
/// The heading over a board's isolation levels, when its runs did not all have every guarantee.
const ISOLATION: &str = "Isolation (the engine, and the sandbox guarantees not in force)";
const UNRANKED: &str = "Runs not ranked (unfinished, unverified, or scored by an earlier formula)";
const PROVISIONAL: &str = "INCOMPLETE: a plan on this board is not done, so its agents are not ranked (#: –) until every item is done";

/// The best verified bpb seen on a world: how much headroom there is above the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub bpb: f64,
    pub run_id: String,
    pub agent: String,
    /// `train` (the agent's model) or `selfhost` (the model its recipe rebuilt).
    pub stage: String,
}

/// A run's best verified bpb: its model's or its rebuilt model's, whichever is lower.
fn best_of(e: &RunEntry) -> Option<(f64, &'static str)> {
    match (e.bpb, e.rebuilt_bpb) {
        (Some(a), Some(b)) if b < a => Some((b, "selfhost")),
        (Some(a), _) => Some((a, "train")),
        (None, Some(b)) => Some((b, "selfhost")),
        (None, None) => None,
    }
}

impl Board {
    /// A short name for files: `mini-1a2b3c4d`.
    pub fn slug(&self) -> String {
        let hash: String = self
            .world_hash
            .as_deref()
            .unwrap_or("noworld")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        let suite: String = self
            .suite
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("{suite}-{hash}")
    }
}

/// How a board is ranked and what its numbers mean, in its header.
fn ranking_text(b: &Board) -> String {
    format!(
        "{} finished runs of {} agents, ranked by mean level, then by the Bootstrap Index: mean over runs with a 95% percentile-bootstrap interval ({} resamples); best-of-k is the best run (highest level, then index). {ABOVE_100} Stage scores are normalised against the world's reference values (reference = 1.00, open above); a stage not graded counts 0.",
        b.entries.len(),
        b.agents.len(),
        b.resamples,
    )
}

/// Agents in the ladder's order: the higher mean level of their runs first (no agent outranks one
/// of a higher mean level), then the higher mean index, then the name.
fn agent_order(a: &AgentRow, b: &AgentRow) -> std::cmp::Ordering {
    b.mean_level
        .total_cmp(&a.mean_level)
        .then(b.index_mean.total_cmp(&a.index_mean))
        .then(a.agent.cmp(&b.agent))
}

/// Runs in the ladder's order: the higher level first, then the higher index.
fn ladder_order(a: &RunEntry, b: &RunEntry) -> std::cmp::Ordering {
    level_number(&a.level)
        .cmp(&level_number(&b.level))
        .then(a.bootstrap_index.total_cmp(&b.bootstrap_index))
}

/// `L4` → 4; anything else → 0.
pub(crate) fn level_number(level: &str) -> usize {
    level
        .trim_start_matches('L')
        .trim_end_matches('*')
        .parse::<usize>()
        .map(|l| l.min(6))
        .unwrap_or(0)
}

/// Mean of `xs` (0 for none).
pub(crate) fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Median of `xs` (None for none).
pub(crate) fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// 95% percentile-bootstrap interval of the mean of `xs`: `resamples` resamples with replacement,
/// the 2.5th and 97.5th percentiles of their means. None for fewer than two values.
pub(crate) fn bootstrap_ci95(xs: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if xs.len() < 2 || resamples == 0 {
        return None;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = xs.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((resamples as f64 - 1.0) * q).round() as usize;
        means[i.min(resamples - 1)]
    };
    Some((at(0.025), at(0.975)))
}

/// A stable seed from a name (the resampling seed of an agent's interval).
fn name_seed(name: &str) -> u64 {
    let h = crate::trace::sha256_hex(name.as_bytes());
    u64::from_str_radix(&h[..16], 16).unwrap_or(0)
}

/// A run's sandbox CPU-seconds: its stages' commands, and the selfhost rebuild's.
fn sandbox_cpu_seconds(score: &RunScore) -> f64 {
    let mut cpu = 0.0;
    for s in score.stages.values() {
        cpu += s.cpu_seconds.unwrap_or(0.0);
        if let Some(c) = s
            .metrics
            .get("bootstrap")
            .and_then(|b| b.get("cpu_seconds"))
            .and_then(|v| v.as_f64())
        {
            cpu += c;
        }
    }
    cpu
}

/// A run's marks: its integrity ledger in short, whether hidden text was found in what it wrote,
/// and whether some guarantee of the sandbox did not hold.
fn marks(meta: &RunMeta, score: &RunScore) -> (Vec<String>, bool, bool) {
    let notes = score.integrity.iter();
    let integrity = notes.map(|n| format!("{} ×{}", n.kind, n.count)).collect();
    let contaminated = score
        .integrity
        .iter()
        .any(|n| n.kind == contamination::KIND);
    let reduced = meta
        .isolation
        .as_ref()
        .is_some_and(|i| !i.missing().is_empty());
    (integrity, contaminated, reduced)
}

fn entry(meta: &RunMeta, score: &RunScore) -> RunEntry {
    let stages: BTreeMap<String, Option<f64>> = score
        .stages
        .iter()
        .map(|(k, s)| (k.clone(), s.normalized))
        .collect();
    let passed = score
        .stages
        .iter()
        .map(|(k, s)| (k.clone(), s.passed && !s.rescued))
        .collect();
    let bpb = score
        .stages
        .get("train")
        .filter(|s| s.passed || s.metrics.get("verified") == Some(&serde_json::json!(true)))
        .and_then(|s| s.metrics.get("bpb"))
        .and_then(|v| v.as_f64());
    let rebuilt_bpb = score
        .stages
        .get("selfhost")
        .filter(|s| s.status == "scored")
        .and_then(|s| s.metrics.get("bpb"))
        .and_then(|v| v.as_f64());
    let cpu = sandbox_cpu_seconds(score);
    let tokens: Option<u64> = score
        .stages
        .values()
        .filter_map(|s| s.tokens)
        .reduce(|a, b| a + b);
    let cost: Option<f64> = score
        .stages
        .values()
        .filter_map(|s| s.cost_usd)
        .reduce(|a, b| a + b);
    // A resumed run's clock time includes the time it lay stopped: its stages' own time counts.
    let wall = match meta.ended_at {
        Some(e) if meta.resumes.is_empty() => {
            (e - meta.started_at).num_milliseconds() as f64 / 1000.0
        }
        _ => score.stages.values().map(|s| s.wall_seconds).sum(),
    };
    let (integrity, contaminated, reduced_isolation) = marks(meta, score);
    RunEntry {
        run_id: meta.run_id.clone(),
        agent: meta.agent.clone(),
        seed: meta.seed,
        level: score.level.clone(),
        assisted_level: score.assisted_level.clone(),
        bootstrap_index: score.bootstrap_index,
        bpb,
        rebuilt_bpb,
        cpu_seconds: cpu,
        wall_seconds: wall,
        gpu_seconds: GpuSeconds::of(meta, wall),
        tokens,
        cost_usd: cost,
        stages,
        passed,
        integrity,
        resumed: meta.resumes.len() as u32,
        contaminated,
        isolation: meta.isolation.as_ref().map(|i| i.label()),
        reduced_isolation,
    }
}

/// The ids of the runs `pick` picks.
fn run_ids(runs: &[&RunEntry], pick: impl Fn(&RunEntry) -> bool) -> Vec<String> {
    let picked = runs.iter().filter(|r| pick(r));
    picked.map(|r| r.run_id.clone()).collect()
}

fn agent_row(agent: &str, runs: &[&RunEntry], stages: &[String], resamples: usize) -> AgentRow {
    let index: Vec<f64> = runs.iter().map(|r| r.bootstrap_index).collect();
    let mut levels = [0usize; 7];
    for r in runs {
        levels[level_number(&r.level)] += 1;
    }
    let level_nums: Vec<f64> = runs.iter().map(|r| level_number(&r.level) as f64).collect();
    let best = runs.iter().max_by(|a, b| ladder_order(a, b)).copied();
    let stage_scores = stages
        .iter()
        .map(|s| {
            let xs: Vec<f64> = runs
                .iter()
                .map(|r| r.stages.get(s).copied().flatten().unwrap_or(0.0))
                .collect();
            (s.clone(), crate::trace::round(mean(&xs), 4))
        })
        .collect();
    let stage_pass_rate = stages
        .iter()
        .map(|s| {
            let n = runs
                .iter()
                .filter(|r| r.passed.get(s).copied().unwrap_or(false))
                .count();
            (s.clone(), n as f64 / runs.len().max(1) as f64)
        })
        .collect();
    let bpbs: Vec<f64> = runs.iter().filter_map(|r| r.bpb).collect();
    let rebuilt: Vec<f64> = runs.iter().filter_map(|r| r.rebuilt_bpb).collect();
    let tokens: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.tokens)
        .map(|t| t as f64)
        .collect();
    let costs: Vec<f64> = runs.iter().filter_map(|r| r.cost_usd).collect();
    let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    AgentRow {
        rank: 0,
        agent: agent.to_string(),
        runs: runs.len(),
        seeds,
        mean_level: crate::trace::round(mean(&level_nums), 3),
        levels,
        assisted: runs.iter().filter(|r| r.assisted_level.is_some()).count(),
        resumed: runs.iter().filter(|r| r.resumed > 0).count(),
        contaminated: run_ids(runs, |r| r.contaminated),
        isolation: runs.iter().filter_map(|r| r.isolation.clone()).collect(),
        index_mean: crate::trace::round(mean(&index), 3),
        index_ci95: bootstrap_ci95(&index, resamples, name_seed(agent))
            .map(|(a, b)| (crate::trace::round(a, 3), crate::trace::round(b, 3))),
        best_of_k: best.map(|b| b.bootstrap_index).unwrap_or(0.0),
        best_level: best.map(|b| b.level.clone()).unwrap_or_default(),
        stage_scores,
        stage_pass_rate,
        median_bpb: median(&bpbs).map(|b| crate::trace::round(b, 5)),
        median_rebuilt_bpb: median(&rebuilt).map(|b| crate::trace::round(b, 5)),
        best_bpb: runs
            .iter()
            .filter_map(|r| best_of(r).map(|b| b.0))
            .min_by(f64::total_cmp),
        to_record: None,
        cpu_seconds: crate::trace::round(
            mean(&runs.iter().map(|r| r.cpu_seconds).collect::<Vec<_>>()),
            2,
        ),
        gpu_seconds: GpuSeconds::mean(runs),
        wall_seconds: crate::trace::round(
            mean(&runs.iter().map(|r| r.wall_seconds).collect::<Vec<_>>()),
            1,
        ),
        tokens: (!tokens.is_empty()).then(|| mean(&tokens).round()),
        cost_usd: (!costs.is_empty()).then(|| crate::trace::round(mean(&costs), 4)),
        run_ids: runs.iter().map(|r| r.run_id.clone()).collect(),
    }
}

/// A run as read from its directory: `run.json`, and `score.json` when there is one.
pub(crate) type ReadRun = (RunMeta, Option<RunScore>);

/// The world's baseline ladder from a run's train metrics (empty when it has none).
fn ladder_of(score: &RunScore) -> Vec<(String, f64)> {
    let ladder = score
        .stages
        .get("train")
        .and_then(|t| t.metrics.get("ladder"))
        .and_then(|l| l.as_object());
    let Some(ladder) = ladder else {
        return Vec::new();
    };
    crate::stages::train::LADDER
        .iter()
        .filter_map(|k| {
            ladder
                .get(*k)
                .and_then(|v| v.as_f64())
                .map(|v| (k.to_string(), v))
        })
        .collect()
}

/// A run listed apart, unranked, with why: not done, done but its trace does not verify, no
/// `score.json`, or scored by an earlier formula than `scale::SCORING` (its scores would not
/// compare).
fn unranked(meta: &RunMeta, score: Option<&RunScore>) -> Unfinished {
    let done = meta.status == RunStatus::Done;
    let status = match score {
        _ if done
            && meta
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("does not verify")) =>
        {
            "done, does not verify".into()
        }
        Some(s) if done => format!(
            "done, scored by an earlier formula (scoring {} before {}): run it again to rank it",
            s.scoring,
            scale::SCORING
        ),
        None if done => "done (no score.json)".into(),
        _ => meta.status.to_string(),
    };
    Unfinished {
        run_id: meta.run_id.clone(),
        agent: meta.agent.clone(),
        seed: meta.seed,
        status,
        started_at: meta.started_at.format("%Y-%m-%d %H:%M").to_string(),
        error: meta.error.clone(),
    }
}

/// Ranks runs already read (pure: the unit of the tests).
pub fn build(runs: &[ReadRun], opts: &Options) -> Vec<Board> {
    let mut groups: BTreeMap<(String, Option<String>), Vec<&ReadRun>> = BTreeMap::new();
    for r in runs {
        if opts.suite.as_deref().is_some_and(|s| s != r.0.suite) {
            continue;
        }
        groups
            .entry((r.0.suite.clone(), r.0.world_hash.clone()))
            .or_default()
            .push(r);
    }
    let mut boards = Vec::new();
    for ((suite, world_hash), members) in groups {
        let mut entries = Vec::new();
        let mut unfinished = Vec::new();
        let mut stages: Vec<String> = Vec::new();
        let mut baselines: Vec<(String, f64)> = Vec::new();
        for (meta, score) in &members {
            for s in &meta.stages {
                if !stages.contains(s) {
                    stages.push(s.clone());
                }
            }
            match (meta.status, score) {
                (RunStatus::Done, Some(score)) if score.scoring == scale::SCORING => {
                    if baselines.is_empty() {
                        baselines = ladder_of(score);
                    }
                    entries.push(entry(meta, score));
                }
                _ => unfinished.push(unranked(meta, score.as_ref())),
            }
        }
        stages.sort_by_key(|s| {
            crate::config::stages::names()
                .position(|x| x == s)
                .unwrap_or(usize::MAX)
        });
        let mut by_agent: BTreeMap<&str, Vec<&RunEntry>> = BTreeMap::new();
        for e in &entries {
            by_agent.entry(e.agent.as_str()).or_default().push(e);
        }
        let mut agents: Vec<AgentRow> = by_agent
            .iter()
            .map(|(a, runs)| agent_row(a, runs, &stages, opts.resamples))
            .collect();
        agents.sort_by(agent_order);
        let record = entries
            .iter()
            .filter_map(|e| best_of(e).map(|(bpb, stage)| (bpb, stage, e)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.2.run_id.cmp(&b.2.run_id)))
            .map(|(bpb, stage, e)| Record {
                bpb,
                run_id: e.run_id.clone(),
                agent: e.agent.clone(),
                stage: stage.into(),
            });
        for (i, a) in agents.iter_mut().enumerate() {
            a.rank = i + 1;
            a.to_record = match (&record, a.best_bpb) {
                (Some(r), Some(b)) => Some(crate::trace::round(b - r.bpb, 5)),
                _ => None,
            };
        }
        boards.push(Board {
            suite,
            world_hash,
            stages,
            baselines,
            agents,
            unfinished,
            resamples: opts.resamples,
            record,
            plans: Vec::new(),
            provisional: false,
            entries,
        });
    }
    boards
}

/// Reads the runs of every directory in `runs_dirs` (a run found twice counts once) and ranks
/// them, then puts each plan of `plans` on the board of its suite and world: a board with a plan
/// not done is provisional, and its agents are not ranked. A plan item run more than once (a
/// failed run run anew, a race) counts once: its done run.
pub fn collect_many(
    runs_dirs: &[PathBuf],
    plans: &[PathBuf],
    home: Option<&Home>,
    opts: &Options,
) -> anyhow::Result<Vec<Board>> {
    let mut listed: Vec<(rundir::RunDir, RunMeta)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for d in runs_dirs {
        if !d.is_dir() {
            anyhow::bail!("--runs-dir {}: no such directory", d.display());
        }
        let (runs, problems) = rundir::list_runs(d);
        for p in problems {
            tracing::warn!("leaderboard: skipped {p}");
        }
        for (dir, meta) in runs {
            if seen.insert(meta.run_id.clone()) {
                listed.push((dir, meta));
            }
        }
    }
    let mut states = Vec::new();
    for path in plans {
        let plan = crate::plan::Plan::load(path).map_err(|e| anyhow::anyhow!("--plan: {e}"))?;
        let lock_dir = plan.runs_dir_from(path);
        // The plan's own runs directory is read even when not given with --runs-dir.
        if lock_dir.is_dir() && !runs_dirs.iter().any(|d| d == &lock_dir) {
            for (dir, meta) in rundir::list_runs(&lock_dir).0 {
                if seen.insert(meta.run_id.clone()) {
                    listed.push((dir, meta));
                }
            }
        }
        let st = crate::plan::states(&plan, &listed, &lock_dir);
        states.push((path.display().to_string(), plan, st));
    }
    // One done run per plan item, whether or not its plan was given: the first (running an item
    // again cannot re-roll it), as the item's state names it.
    let mut first: BTreeMap<(&str, &str), (&chrono::DateTime<chrono::Utc>, &str)> = BTreeMap::new();
    for (_, m) in &listed {
        if let (Some(p), RunStatus::Done) = (&m.plan, m.status) {
            let e = first
                .entry((p.plan_id.as_str(), p.item.as_str()))
                .or_insert((&m.started_at, m.run_id.as_str()));
            if (&m.started_at, m.run_id.as_str()) < *e {
                *e = (&m.started_at, m.run_id.as_str());
            }
        }
    }
    let kept: Vec<(rundir::RunDir, RunMeta)> = listed
        .iter()
        .filter(|(_, m)| match (&m.plan, m.status) {
            (Some(p), RunStatus::Done) => {
                first
                    .get(&(p.plan_id.as_str(), p.item.as_str()))
                    .map(|f| f.1)
                    == Some(m.run_id.as_str())
            }
            _ => true,
        })
        .cloned()
        .collect();
    let mut boards = rank_runs(kept, home, opts, &runs_dirs_text(runs_dirs))?;
    for (file, plan, st) in states {
        let tally = crate::plan::Tally::of(&st);
        let state = PlanState {
            plan_id: plan.plan_id.clone(),
            file,
            not_done: st
                .into_iter()
                .filter(|s| s.state != crate::plan::ItemState::Done)
                .collect(),
            tally,
        };
        let hash = plan.world.as_ref().map(|w| w.hash.clone());
        // The suite's own name (what runs record), from its file when it can be read.
        let suite_name = home
            .and_then(|h| h.suite(&plan.suite).ok())
            .map(|s| s.name)
            .unwrap_or_else(|| {
                std::path::Path::new(&plan.suite)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| plan.suite.clone())
            });
        if opts.suite.as_deref().is_some_and(|s| s != suite_name) {
            continue;
        }
        let i = match boards
            .iter()
            .position(|b| b.world_hash == hash && b.suite == suite_name)
        {
            Some(i) => i,
            None => {
                boards.push(Board {
                    suite: suite_name,
                    world_hash: hash,
                    stages: Vec::new(),
                    baselines: Vec::new(),
                    agents: Vec::new(),
                    unfinished: Vec::new(),
                    resamples: opts.resamples,
                    record: None,
                    plans: Vec::new(),
                    provisional: false,
                    entries: Vec::new(),
                });
                boards.len() - 1
            }
        };
        let b = &mut boards[i];
        if !state.tally.complete() {
            b.provisional = true;
            for a in &mut b.agents {
                a.rank = 0;
            }
        }
        b.plans.push(state);
    }
    Ok(boards)
}

fn runs_dirs_text(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `#` of an agent row: its rank, or – on a provisional board.
fn rank_text(a: &AgentRow) -> String {
    if a.rank == 0 {
        "–".into()
    } else {
        a.rank.to_string()
    }
}

/// Reads every run under `runs_dir` and ranks them. Unreadable run directories are skipped with a
/// warning on stderr; a `--suite` with no runs is an error that says which suites have runs.
pub fn collect(runs_dir: &Path, home: Option<&Home>, opts: &Options) -> anyhow::Result<Vec<Board>> {
    collect_many(&[runs_dir.to_path_buf()], &[], home, opts)
}

/// Ranks runs read from `shown` (the runs directories, for errors).
fn rank_runs(
    listed: Vec<(rundir::RunDir, RunMeta)>,
    home: Option<&Home>,
    opts: &Options,
    shown: &str,
) -> anyhow::Result<Vec<Board>> {
    let _ = home;
    let runs: Vec<ReadRun> = listed
        .into_iter()
        .map(|(dir, mut meta)| {
            let mut score = if dir.score_json().exists() {
                match rundir::read_json::<RunScore>(&dir.score_json()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!("leaderboard: {e}");
                        None
                    }
                }
            } else {
                None
            };
            // Only a run whose directory agrees with its own trace is ranked.
            if score.is_some() && meta.status == RunStatus::Done {
                let why = match crate::trace::audit::check(&dir) {
                    Ok(a) if a.ok() => None,
                    Ok(a) => Some(a.problems.join("; ")),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    meta.error = Some(format!("does not verify: {why}"));
                    score = None;
                }
            }
            (meta, score)
        })
        .collect();
    if let Some(s) = &opts.suite {
        if !runs.iter().any(|r| &r.0.suite == s) {
            let mut have: Vec<&str> = runs.iter().map(|r| r.0.suite.as_str()).collect();
            have.sort_unstable();
            have.dedup();
            anyhow::bail!(
                "--suite {s}: no runs of that suite in {} (suites with runs: {})",
                shown,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            );
        }
    }
    Ok(build(&runs, opts))
}

/// The three charts of a board, as (file stem, title, SVG).
pub fn charts(board: &Board) -> Vec<(String, String, String)> {
    let slug = board.slug();
    let series: Vec<(String, Vec<Option<f64>>)> = board
        .agents
        .iter()
        .map(|a| {
            (
                a.agent.clone(),
                board
                    .stages
                    .iter()
                    .map(|s| a.stage_scores.get(s).copied())
                    .collect(),
            )
        })
        .collect();
    let stages_title = format!("Score per stage — {}", board.suite);
    let stages_svg = crate::report::charts::stage_scores(&stages_title, &board.stages, &series);
    let points: Vec<(String, f64)> = board
        .agents
        .iter()
        .filter_map(|a| a.median_bpb.map(|b| (a.agent.clone(), b)))
        .collect();
    let ladder_title = format!("Verified bpb against the baseline ladder — {}", board.suite);
    let ladder_svg = crate::report::charts::bpb_ladder(&ladder_title, &board.baselines, &points);
    let priced = board.agents.iter().any(|a| a.cost_usd.is_some());
    let cost_points: Vec<crate::report::charts::CostPoint> = board
        .agents
        .iter()
        .map(|a| crate::report::charts::CostPoint {
            label: a.agent.clone(),
            cost: if priced {
                a.cost_usd.unwrap_or(0.0)
            } else {
                a.cpu_seconds
            },
            index: a.index_mean,
            ci: a.index_ci95,
        })
        .collect();
    let (cost_title, x_desc) = if priced {
        ("Bootstrap Index against cost", "model cost per run (USD)")
    } else {
        (
            "Bootstrap Index against compute",
            "sandbox CPU-seconds per run",
        )
    };
    let cost_svg = crate::report::charts::index_vs_cost(
        &format!("{cost_title} — {}", board.suite),
        x_desc,
        &cost_points,
    );
    vec![
        (format!("{slug}-stages"), stages_title, stages_svg),
        (format!("{slug}-bpb"), ladder_title, ladder_svg),
        (
            format!("{slug}-index-cost"),
            format!("{cost_title} — {}", board.suite),
            cost_svg,
        ),
    ]
}

/// Writes `leaderboard.{md,json,html}` and `charts/*.svg` under `out`; returns the files written.
pub fn write(boards: &[Board], out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let charts_dir = out.join("charts");
    std::fs::create_dir_all(&charts_dir)
        .map_err(|e| anyhow::anyhow!("--out {}: {e}", charts_dir.display()))?;
    let mut written = Vec::new();
    let mut put = |path: PathBuf, bytes: &[u8]| -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for b in boards {
        for (stem, _, svg) in charts(b) {
            put(charts_dir.join(format!("{stem}.svg")), svg.as_bytes())?;
        }
    }
    put(out.join("leaderboard.md"), markdown(boards).as_bytes())?;
    let mut json = serde_json::to_vec_pretty(&serde_json::json!({ "boards": boards }))?;
    json.push(b'\n');
    put(out.join("leaderboard.json"), &json)?;
    put(out.join("leaderboard.html"), html_page(boards).as_bytes())?;
    Ok(written)
}

/// An agent's stage in the per-stage tables: mean normalised score · pass rate.
fn stage_cell(a: &AgentRow, stage: &str) -> String {
    format!(
        "{:.2} · {:.0}%",
        a.stage_scores.get(stage).copied().unwrap_or(0.0),
        100.0 * a.stage_pass_rate.get(stage).copied().unwrap_or(0.0)
    )
}

/// A board's runs by agent, then seed (the runs tables).
fn runs_in_order(b: &Board) -> Vec<&RunEntry> {
    let mut entries: Vec<&RunEntry> = b.entries.iter().collect();
    entries.sort_by(|x, y| x.agent.cmp(&y.agent).then(x.seed.cmp(&y.seed)));
    entries
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn ci_text(a: &AgentRow) -> String {
    match a.index_ci95 {
        Some((lo, hi)) => format!("[{lo:.1}, {hi:.1}]"),
        None => "–".into(),
    }
}

fn levels_text(a: &AgentRow) -> String {
    a.levels
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(l, n)| format!("L{l}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn short_hash(h: &Option<String>) -> String {
    h.as_deref()
        .map(|h| h.chars().take(12).collect())
        .unwrap_or_else(|| "(no world)".into())
}

/// The markdown report (deterministic for the same runs: no clock in it).
/// The ranked runs that carry integrity notes.
fn flagged(b: &Board) -> Vec<&RunEntry> {
    b.entries
        .iter()
        .filter(|e| !e.integrity.is_empty())
        .collect()
}

/// `Record on this world: 1.402 bpb (train of run r7, agent x)`.
fn record_text(r: &Record) -> String {
    format!(
        "Record on this world: {:.3} verified bpb, held by run `{}` (agent `{}`, its {} model).",
        r.bpb,
        r.run_id,
        r.agent,
        if r.stage == "selfhost" {
            "rebuilt"
        } else {
            "trained"
        }
    )
}

/// An agent's distance to the record: `record` when it holds it, `+0.030` above it, `–` without one.
fn to_record_text(d: Option<f64>) -> String {
    match d {
        Some(d) if d <= 0.0 => "record".into(),
        Some(d) => format!("+{d:.3}"),
        None => "–".into(),
    }
}

/// ` (2 resumed)` after an agent's levels, when some of its runs were resumed.
fn resumed_text(n: usize) -> String {
    if n > 0 {
        format!(" ({n} resumed)")
    } else {
        String::new()
    }
}

/// ` (1 contaminated)` after an agent's levels, when text of T was found in some of its runs.
fn contaminated_text(n: usize) -> String {
    if n > 0 {
        format!(" ({n} {CONTAMINATED})")
    } else {
        String::new()
    }
}

/// The mark of a run in which text of the hidden test documents was found.
const CONTAMINATED: &str = "⚠ contaminated";

/// ` · ⚠ contaminated` after a run, when text of T was found in what its agent wrote.
fn run_contaminated_text(e: &RunEntry) -> String {
    if e.contaminated {
        format!(" · {CONTAMINATED}")
    } else {
        String::new()
    }
}

/// What follows an agent's levels: how many of its runs were resumed, and contaminated.
fn agent_marks(a: &AgentRow) -> String {
    resumed_text(a.resumed) + &contaminated_text(a.contaminated.len())
}

/// What follows a run: resumed, and contaminated.
fn run_marks(e: &RunEntry) -> String {
    let reduced = if e.reduced_isolation {
        " · reduced isolation"
    } else {
        ""
    };
    run_resumed_text(e.resumed) + &run_contaminated_text(e) + reduced
}

/// The board's isolation levels (engine and guarantees not in force), each with its runs; empty
/// when every run had the same one and it lacked nothing, so a board that mixes levels says so.
fn isolation_levels(b: &Board) -> Vec<(String, Vec<&RunEntry>)> {
    let mut levels: BTreeMap<String, Vec<&RunEntry>> = BTreeMap::new();
    for e in &b.entries {
        let label = e.isolation.clone();
        let label =
            label.unwrap_or_else(|| "not recorded (a run from before gptx recorded it)".into());
        levels.entry(label).or_default().push(e);
    }
    let reduced = b.entries.iter().any(|e| e.reduced_isolation);
    match levels.len() > 1 || reduced {
        true => levels.into_iter().collect(),
        false => Vec::new(),
    }
}

/// The markdown sections under a board's runs: those with integrity events, and the isolation levels.
fn flagged_and_isolation_md(o: &mut String, b: &Board) {
    let flagged = flagged(b);
    if !flagged.is_empty() {
        let _ = writeln!(
            o,
            "\n### Runs with integrity events (ranked; what the harness cleaned up or refused)\n"
        );
        for e in flagged {
            let _ = writeln!(
                o,
                "- `{}` (`{}`): {}",
                e.run_id,
                e.agent,
                e.integrity.join(", ")
            );
        }
    }
    let levels = isolation_levels(b);
    if !levels.is_empty() {
        let _ = writeln!(o, "\n### {ISOLATION}\n");
        for (label, runs) in levels {
            let runs = run_list(&runs, |r| format!("`{r}`"));
            let _ = writeln!(o, "- {label}: {runs}");
        }
    }
}

/// The HTML sections under a board's runs: those with integrity events, and the isolation levels.
fn flagged_and_isolation_html(o: &mut String, b: &Board, links: bool) {
    let flagged = flagged(b);
    if !flagged.is_empty() {
        o.push_str("<h3>Runs with integrity events</h3><ul>");
        for e in flagged {
            let _ = write!(
                o,
                "<li>{} (<code>{}</code>): {}</li>",
                run_ref(&e.run_id, links),
                html_escape(&e.agent),
                html_escape(&e.integrity.join(", "))
            );
        }
        o.push_str("</ul>");
    }
    let levels = isolation_levels(b);
    if !levels.is_empty() {
        let _ = write!(o, "<h3>{ISOLATION}</h3><ul>");
        for (label, runs) in levels {
            let runs = run_list(&runs, |r| run_ref(r, links));
            let _ = write!(o, "<li>{}: {runs}</li>", html_escape(&label));
        }
        o.push_str("</ul>");
    }
}

/// `` `r1`, `r2` `` (markdown) or linked run ids (HTML).
fn run_list(runs: &[&RunEntry], each: impl Fn(&str) -> String) -> String {
    runs.iter()
        .map(|e| each(&e.run_id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` · resumed 1×` after a run, when it was.
fn run_resumed_text(n: u32) -> String {
    if n > 0 {
        format!(" · resumed {n}×")
    } else {
        String::new()
    }
}

pub fn markdown(boards: &[Board]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# gptx leaderboard\n");
    if boards.is_empty() {
        let _ = writeln!(o, "No runs.");
        return o;
    }
    for b in boards {
        let _ = writeln!(
            o,
            "## Suite `{}` · world `{}`\n",
            b.suite,
            short_hash(&b.world_hash)
        );
        let _ = writeln!(o, "{}\n\n{}\n", ranking_text(b), scale::formula());
        if let Some(r) = &b.record {
            let _ = writeln!(o, "{}\n", record_text(r));
        }
        if b.provisional {
            let _ = writeln!(o, "**{PROVISIONAL}.**\n");
        }
        for p in &b.plans {
            let _ = writeln!(o, "- {}", p.text());
        }
        if !b.plans.is_empty() {
            o.push('\n');
        }
        let _ = writeln!(
            o,
            "| # | agent | runs | mean level | levels | Bootstrap Index | 95% CI | best-of-k | median bpb | rebuilt bpb | to record | CPU-s/run | GPU-s/run | wall s/run | tokens/run | cost/run |"
        );
        let _ = writeln!(
            o,
            "|--:|---|--:|--:|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for a in &b.agents {
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {:.2} | {}{}{} | {:.1} | {} | {:.1} ({}) | {} | {} | {} | {:.1} | {} | {:.1} | {} | {} |",
                rank_text(a),
                a.agent,
                a.runs,
                a.mean_level,
                levels_text(a),
                if a.assisted > 0 {
                    format!(" ({} assisted)", a.assisted)
                } else {
                    String::new()
                },
                agent_marks(a),
                a.index_mean,
                ci_text(a),
                a.best_of_k,
                a.best_level,
                fmt_opt(a.median_bpb, 3),
                fmt_opt(a.median_rebuilt_bpb, 3),
                to_record_text(a.to_record),
                a.cpu_seconds,
                a.gpu_seconds.text(),
                a.wall_seconds,
                fmt_opt(a.tokens, 0),
                a.cost_usd
                    .map(|c| format!("${c:.2}"))
                    .unwrap_or_else(|| "–".into()),
            );
        }
        let _ = writeln!(
            o,
            "\n### Score per stage (mean normalised score · pass rate)\n"
        );
        let _ = write!(o, "| agent |");
        for s in &b.stages {
            let _ = write!(o, " {s} |");
        }
        let _ = write!(o, "\n|---|");
        for _ in &b.stages {
            let _ = write!(o, "--:|");
        }
        o.push('\n');
        for a in &b.agents {
            let _ = write!(o, "| `{}` |", a.agent);
            for s in &b.stages {
                let _ = write!(o, " {} |", stage_cell(a, s));
            }
            o.push('\n');
        }
        if !b.baselines.is_empty() {
            let _ = writeln!(
                o,
                "\n### Baseline ladder (bits per byte on the hidden test set)\n"
            );
            let _ = writeln!(
                o,
                "{}",
                b.baselines
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" · ")
            );
        }
        let _ = writeln!(o, "\n### Charts\n");
        for (stem, title, _) in charts(b) {
            let _ = writeln!(o, "![{title}](charts/{stem}.svg)");
        }
        let _ = writeln!(o, "\n### Runs\n");
        let _ = writeln!(o, "| agent | seed | level | index | bpb | run |");
        let _ = writeln!(o, "|---|--:|---|--:|--:|---|");
        for e in runs_in_order(b) {
            let _ = writeln!(
                o,
                "| `{}` | {} | {}{} | {:.1} | {} | `{}`{} |",
                e.agent,
                e.seed,
                e.level,
                e.assisted_level
                    .as_deref()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default(),
                e.bootstrap_index,
                fmt_opt(e.bpb, 3),
                e.run_id,
                run_marks(e)
            );
        }
        flagged_and_isolation_md(&mut o, b);
        if !b.unfinished.is_empty() {
            let _ = writeln!(o, "\n### {UNRANKED}\n");
            let _ = writeln!(
                o,
                "| run | agent | seed | status | started | error |\n|---|---|--:|---|---|---|"
            );
            for u in &b.unfinished {
                let _ = writeln!(
                    o,
                    "| `{}` | `{}` | {} | {} | {} | {} |",
                    u.run_id,
                    u.agent,
                    u.seed,
                    u.status,
                    u.started_at,
                    u.error.as_deref().unwrap_or("").replace('|', "\\|")
                );
            }
        }
        o.push('\n');
    }
    o
}

/// Escapes text for HTML.
pub(crate) fn html_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1d2330}\
h1{font-size:26px}h2{font-size:20px;margin-top:36px;border-bottom:1px solid #dde;padding-bottom:4px}h3{font-size:16px;margin-top:22px}\
table{border-collapse:collapse;margin:8px 0;font-size:14px}th,td{padding:5px 9px;border-bottom:1px solid #e6e8ee;text-align:right}\
th{background:#f4f6fa;font-weight:600}td.l,th.l{text-align:left}code{font-size:13px}.muted{color:#667}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0;border:1px solid #e6e8ee;border-radius:6px;padding:6px;background:#fff}\
.bar{display:inline-block;height:10px;background:#2c7be5;border-radius:2px;vertical-align:middle;margin-left:6px}";

/// Links to a run: to the viewer's run page when served, plain text in a static report.
fn run_ref(id: &str, links: bool) -> String {
    if links {
        format!(
            "<a href=\"/runs/{}\"><code>{}</code></a>",
            html_escape(id),
            html_escape(id)
        )
    } else {
        format!("<code>{}</code>", html_escape(id))
    }
}

/// A board's agents table, in HTML (left open for the tables that follow).
fn html_agents(o: &mut String, b: &Board) {
    o.push_str("<table><tr><th>#</th><th class=\"l\">agent</th><th>runs</th><th>mean level</th><th class=\"l\">levels</th><th>Bootstrap Index</th><th class=\"l\">95% CI</th><th>best-of-k</th><th>median bpb</th><th>rebuilt bpb</th><th>to record</th><th>CPU-s/run</th><th>GPU-s/run</th><th>wall s/run</th><th>tokens/run</th><th>cost/run</th></tr>");
    for a in &b.agents {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"l\"><code>{}</code></td><td>{}</td><td>{:.2}</td><td class=\"l\">{}</td><td>{:.1}<span class=\"bar\" style=\"width:{:.0}px\"></span></td><td class=\"l\">{}</td><td>{:.1} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            rank_text(a),
            html_escape(&a.agent),
            a.runs,
            a.mean_level,
            html_escape(&format!("{}{}", levels_text(a), agent_marks(a))),
            a.index_mean,
            a.index_mean.clamp(0.0, 100.0),
            ci_text(a),
            a.best_of_k,
            html_escape(&a.best_level),
            fmt_opt(a.median_bpb, 3),
            fmt_opt(a.median_rebuilt_bpb, 3),
            to_record_text(a.to_record),
            a.cpu_seconds,
            a.gpu_seconds.text(),
            a.wall_seconds,
            fmt_opt(a.tokens, 0),
            a.cost_usd.map(|c| format!("${c:.2}")).unwrap_or_else(|| "–".into()),
        );
    }
}

/// The leaderboard body (tables and inline charts) without `<html>`, for the viewer's own layout;
/// `links`: run ids link to the viewer's run pages.
pub fn html_body(boards: &[Board], links: bool) -> String {
    let mut o = String::new();
    if boards.is_empty() {
        o.push_str("<p class=\"muted\">No runs yet: <code>gptx run --suite mini --agent reference --seeds 1-3</code>, then reload.</p>");
        return o;
    }
    for b in boards {
        let _ = write!(
            o,
            "<h2>Suite <code>{}</code> · world <code>{}</code></h2><p class=\"muted\">{}</p><p class=\"muted\">{}</p>",
            html_escape(&b.suite),
            html_escape(&short_hash(&b.world_hash)),
            html_escape(&ranking_text(b)),
            html_escape(&scale::formula())
        );
        if let Some(r) = &b.record {
            let _ = write!(
                o,
                "<p class=\"record\">{}</p>",
                html_escape(&record_text(r).replace('`', ""))
            );
        }
        if b.provisional {
            let _ = write!(
                o,
                "<p class=\"provisional\"><strong>{}.</strong></p>",
                html_escape(PROVISIONAL)
            );
        }
        for p in &b.plans {
            let _ = write!(o, "<p class=\"plan\">{}</p>", html_escape(&p.text()));
        }
        html_agents(&mut o, b);
        o.push_str("</table><h3>Score per stage (mean normalised score · pass rate)</h3><table><tr><th class=\"l\">agent</th>");
        for s in &b.stages {
            let _ = write!(o, "<th>{}</th>", html_escape(s));
        }
        o.push_str("</tr>");
        for a in &b.agents {
            let _ = write!(
                o,
                "<tr><td class=\"l\"><code>{}</code></td>",
                html_escape(&a.agent)
            );
            for s in &b.stages {
                let _ = write!(o, "<td>{}</td>", stage_cell(a, s));
            }
            o.push_str("</tr>");
        }
        o.push_str("</table><div class=\"charts\">");
        for (_, title, svg) in charts(b) {
            let _ = write!(
                o,
                "<figure aria-label=\"{}\">{}</figure>",
                html_escape(&title),
                svg
            );
        }
        o.push_str("</div><h3>Runs</h3><table><tr><th class=\"l\">agent</th><th>seed</th><th class=\"l\">level</th><th>index</th><th>bpb</th><th class=\"l\">run</th></tr>");
        for e in runs_in_order(b) {
            let _ = write!(
                o,
                "<tr><td class=\"l\"><code>{}</code></td><td>{}</td><td class=\"l\">{}{}</td><td>{:.1}</td><td>{}</td><td class=\"l\">{}{}</td></tr>",
                html_escape(&e.agent),
                e.seed,
                html_escape(&e.level),
                e.assisted_level
                    .as_deref()
                    .map(|a| format!(" ({})", html_escape(a)))
                    .unwrap_or_default(),
                e.bootstrap_index,
                fmt_opt(e.bpb, 3),
                run_ref(&e.run_id, links),
                html_escape(&run_marks(e))
            );
        }
        o.push_str("</table>");
        flagged_and_isolation_html(&mut o, b, links);
        if !b.unfinished.is_empty() {
            let _ = write!(o, "<h3>{UNRANKED}</h3><table><tr><th class=\"l\">run</th><th class=\"l\">agent</th><th>seed</th><th class=\"l\">status</th><th class=\"l\">started</th><th class=\"l\">error</th></tr>");
            for u in &b.unfinished {
                let _ = write!(
                    o,
                    "<tr><td class=\"l\">{}</td><td class=\"l\"><code>{}</code></td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                    run_ref(&u.run_id, links),
                    html_escape(&u.agent),
                    u.seed,
                    html_escape(&u.status),
                    html_escape(&u.started_at),
                    html_escape(u.error.as_deref().unwrap_or(""))
                );
            }
            o.push_str("</table>");
        }
    }
    o
}

/// The leaderboard as one self-contained HTML document (styles and charts inline; run ids as text).
pub(crate) fn html_page(boards: &[Board]) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>gptx leaderboard</title><style>{STYLE}</style></head><body><h1>gptx leaderboard</h1>{}</body></html>\n",
        html_body(boards, false)
    )
}

/// The leaderboard's own stylesheet (for a page that embeds [`html_body`]).
pub fn stylesheet() -> &'static str {
    STYLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_reproducible() {
        let xs = [10.0, 20.0, 30.0, 40.0, 50.0];
        let (lo, hi) = bootstrap_ci95(&xs, 10_000, 7).unwrap();
        assert!(lo < 30.0 && 30.0 < hi, "{lo} {hi}");
        assert!(lo >= 10.0 && hi <= 50.0);
        // The normal approximation: sd 14.14/√5 = 6.32 → ±12.4; the percentile interval is close.
        assert!((hi - lo - 24.8).abs() < 4.0, "{lo} {hi}");
        assert_eq!(bootstrap_ci95(&xs, 10_000, 7), Some((lo, hi)));
        assert_eq!(bootstrap_ci95(&[5.0, 5.0, 5.0], 1000, 1), Some((5.0, 5.0)));
        assert_eq!(bootstrap_ci95(&[5.0], 1000, 1), None);
    }

    #[test]
    fn median_and_levels() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(level_number("L6"), 6);
        assert_eq!(level_number("L4*"), 4);
        assert_eq!(level_number("?"), 0);
    }
}
