//! The run directory (SPEC §6): ids, `run.json`, `score.json`, atomic writes, listing runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::files::{make_private, read_json, write_json_atomic};

use crate::config::suite::Budgets;
use crate::trace::StageScore;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Done,
    Failed,
    Interrupted,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        })
    }
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub agent: String,
    pub suite: String,
    pub suite_path: String,
    pub world_hash: Option<String>,
    pub seed: u64,
    pub stages: Vec<String>,
    pub budgets: BTreeMap<String, Budgets>,
    /// The suite's `[gates]` table as the run applied it (gates it does not set take their defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gates: BTreeMap<String, f64>,
    pub gptx_version: String,
    /// Image ids by role.
    pub images: BTreeMap<String, String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: RunStatus,
    /// Why a failed run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Hash of the last line of events.jsonl when the run ended (pins the tail of the chain).
    #[serde(default)]
    pub trace_sha256: Option<String>,
    #[serde(default)]
    pub events: u64,
}

/// Per-stage summary in `score.json` and the `--json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    pub status: String,
    pub passed: bool,
    pub ended_by: Option<crate::trace::EndReason>,
    pub steps: u64,
    pub sandbox_seconds: f64,
    pub wall_seconds: f64,
    /// CPU seconds of the agent's commands in the sandbox (older runs: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalized: Option<f64>,
    /// The stage failed and `--rescue` handed the agent its reference artifact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rescued: bool,
    /// LLM agents: model tokens (input + output) and their cost in this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl StageSummary {
    pub fn from_score(score: &StageScore) -> Self {
        Self {
            status: score.status.clone(),
            passed: score.passed,
            ended_by: None,
            steps: 0,
            sandbox_seconds: 0.0,
            wall_seconds: 0.0,
            cpu_seconds: None,
            metrics: score.metrics.clone(),
            reason: score.reason.clone(),
            normalized: score.normalized,
            rescued: false,
            tokens: None,
            cost_usd: None,
        }
    }
}

/// `score.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunScore {
    pub run_id: String,
    pub suite: String,
    pub agent: String,
    pub seed: u64,
    pub world_hash: Option<String>,
    pub status: RunStatus,
    pub level: String,
    /// The level counting rescued stages as passed (`L4*`), when rescue let the agent get further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assisted_level: Option<String>,
    pub bootstrap_index: f64,
    pub stages: BTreeMap<String, StageSummary>,
    /// The integrity ledger: what the harness refused or cleaned up on the agent's side (processes
    /// killed at a stage's end, files refused or changed between selection and copy, forged
    /// supervisor lines). Empty for a run that tried nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integrity: Vec<crate::trace::IntegrityNote>,
}

impl RunScore {
    /// The reference values this run measured (`gptx world reference`): every stage must have passed.
    pub fn reference_values(
        &self,
    ) -> Result<BTreeMap<String, f64>, crate::config::reference::ReferenceError> {
        crate::config::reference::values(|name| {
            self.stages
                .get(name)
                .map(|s| crate::config::reference::StageResult {
                    passed: s.passed,
                    reason: s.reason.as_deref().unwrap_or(&s.status),
                    metrics: &s.metrics,
                })
        })
    }
}

/// A fresh run id: UTC time plus random hex, sortable by start.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let r: u32 = rand::random();
    format!("{now}-{:06x}", r & 0xff_ffff)
}

/// The request log's file name in [`RunDir::world`] (the web server writes it there).
pub const REQUESTS_LOG: &str = "requests.jsonl";

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
    pub fn run_json(&self) -> PathBuf {
        self.path.join("run.json")
    }
    pub fn events(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }
    pub fn outputs(&self) -> PathBuf {
        self.path.join("outputs")
    }
    pub fn git(&self) -> PathBuf {
        self.path.join("workspace.git")
    }
    pub fn score_json(&self) -> PathBuf {
        self.path.join("score.json")
    }
    /// The live workspace, bind-mounted into the sandbox at /workspace.
    pub fn workspace(&self) -> PathBuf {
        self.path.join("workspace")
    }
    /// One kept output, by the SHA-256 of its content.
    pub fn output(&self, sha256: &str) -> PathBuf {
        self.outputs().join(sha256)
    }
    /// The workspace's own filesystem image while the run is live (see `sandbox::quota`).
    pub fn workspace_image(&self) -> PathBuf {
        self.path.join("workspace.img")
    }
    /// The private copy of the workspace a stage is graded on, made after its processes are killed.
    pub fn graded(&self) -> PathBuf {
        self.path.join("graded")
    }
    /// The world web server's directory: its request log.
    pub fn world(&self) -> PathBuf {
        self.path.join("world")
    }
    /// Every request the world's web server answered, one JSON line each (graded by crawl).
    pub fn requests_log(&self) -> PathBuf {
        self.world().join(REQUESTS_LOG)
    }
    /// selfhost's rebuild: a directory shaped like a run's (`workspace/`, `world/`, the log).
    pub fn selfhost(&self) -> RunDir {
        RunDir::new(self.path.join("selfhost"))
    }
    /// The `n`th trial rebuild of selfhost's `check {"rebuild": true}`, shaped the same way.
    pub fn selfhost_check(&self, n: u64) -> RunDir {
        RunDir::new(self.selfhost().path.join(format!("check-{n}")))
    }
    /// A rebuild's whole output (in a rebuild's directory).
    pub fn bootstrap_log(&self) -> PathBuf {
        self.path.join("bootstrap.log")
    }
}

/// Finds a run by id, or by a unique prefix of its id, under `runs_dir`.
pub fn find_run(runs_dir: &Path, id: &str) -> anyhow::Result<RunDir> {
    let exact = runs_dir.join(id);
    if exact.join("run.json").exists() {
        return Ok(RunDir::new(exact));
    }
    let mut matches: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .map_err(|e| anyhow::anyhow!("--runs-dir {}: {e}", runs_dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(id))
        .map(|e| e.path())
        .filter(|p| p.join("run.json").exists())
        .collect();
    match matches.len() {
        1 => Ok(RunDir::new(matches.remove(0))),
        0 => anyhow::bail!(
            "no run {id:?} in {} (see `gptx runs --runs-dir {}`)",
            runs_dir.display(),
            runs_dir.display()
        ),
        n => anyhow::bail!(
            "{n} runs in {} start with {id:?}; give more of the id",
            runs_dir.display()
        ),
    }
}

/// Every run under `runs_dir` with its metadata, oldest first; unreadable ones are reported, not fatal.
pub fn list_runs(runs_dir: &Path) -> (Vec<(RunDir, RunMeta)>, Vec<String>) {
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let Ok(rd) = std::fs::read_dir(runs_dir) else {
        return (runs, problems);
    };
    for e in rd.flatten() {
        let dir = RunDir::new(e.path());
        if !dir.run_json().exists() {
            continue;
        }
        match read_json::<RunMeta>(&dir.run_json()) {
            Ok(meta) => runs.push((dir, meta)),
            Err(err) => problems.push(err.to_string()),
        }
    }
    runs.sort_by_key(|r| r.1.started_at);
    (runs, problems)
}
