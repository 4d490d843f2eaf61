//! The run directory (SPEC §6): ids, `run.json`, `score.json`, atomic writes, listing runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::files::{make_private, read_json, write_json_atomic};

use crate::config::suite::{Budgets, Gpus};
use crate::trace::StageScore;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    #[default]
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

/// `run.json` (its `Default` is an empty running run, for building one field by field).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// The gptx process that runs it (None in runs written before owners were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// What the run was asked besides its suite and agent, so that `gptx resume` goes on alike
    /// (None in runs written before it was recorded: resuming takes the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<RunOptions>,
    /// Each time the run was resumed, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<ResumeRecord>,
    /// The host processes of an `exec:` agent: killed when the run is marked, so an agent never
    /// outlives a gptx that was killed outright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_process: Option<AgentProcess>,
    /// The plan item this run carries out (`gptx run --plan FILE --item K`), None outside a plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanItemRef>,
    /// The GPUs the suite gave the run's sandboxes and what the agent's sandbox listed (None: no
    /// GPU; so are runs written before GPUs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuRecord>,
    /// The engine the sandboxes ran on and which of the sandbox's guarantees held there (None in
    /// runs written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

/// The engine a run's sandboxes ran on, and every guarantee of the sandbox that depends on the
/// host: whether it held, and if not, why and what stands in for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// `podman 4.3.1, rootless, overlay storage, cgroup v1`.
    pub engine: String,
    /// Whether the engine (and gptx) ran without root.
    pub rootless: bool,
    pub guarantees: Vec<Guarantee>,
}

/// One guarantee of the sandbox (SPEC §5) as it stood in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarantee {
    /// `cgroup_limits`, `disk_limit`, `agent_uid`, `write_feed`, `exec_agent`.
    pub name: String,
    pub held: bool,
    /// What holds: the guarantee itself, or, when it does not hold, why not and what stands in.
    pub detail: String,
}

impl Isolation {
    /// The names of the guarantees that did not hold (empty: all did).
    pub fn missing(&self) -> Vec<&str> {
        let out = self.guarantees.iter().filter(|g| !g.held);
        out.map(|g| g.name.as_str()).collect()
    }

    /// `podman 4.3.1, rootless, … · not in force: cgroup_limits, disk_limit` (or `every
    /// guarantee in force`): what a leaderboard tells runs apart by.
    pub fn label(&self) -> String {
        match self.missing() {
            m if m.is_empty() => format!("{} · every guarantee in force", self.engine),
            m => format!("{} · not in force: {}", self.engine, m.join(", ")),
        }
    }
}

/// A run's GPUs: what the suite asked for, and what `nvidia-smi` listed in the agent's sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    /// `[sandbox] gpus` as the suite wrote it: `"all"`, a number, or device ids.
    pub request: Gpus,
    /// What `nvidia-smi` listed in the agent's sandbox before the agent's first command (None: not
    /// listed; it failed, or the image has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<GpuDevice>>,
}

/// One GPU as `nvidia-smi --query-gpu=index,name,memory.total` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub name: String,
    /// Its memory in MiB (None when nvidia-smi did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

impl GpuRecord {
    /// GPUs asked for, not listed yet.
    pub fn asked(request: Gpus) -> Self {
        Self {
            request,
            devices: None,
        }
    }

    /// How many GPUs the agent's sandbox had: the number or the ids asked for; for "all", how many
    /// nvidia-smi listed (None: not known, never guessed).
    pub fn count(&self) -> Option<u32> {
        let listed = || self.devices.as_ref().map(|d| d.len() as u32);
        self.request.count().or_else(listed)
    }

    /// `2 × NVIDIA A100-SXM4-80GB (81920 MiB)`: the models listed, like ones counted together
    /// (None: none listed).
    pub fn models(&self) -> Option<String> {
        let mut models: Vec<(String, usize)> = Vec::new();
        for d in self.devices.as_deref().unwrap_or_default() {
            let memory = d.memory_mib.map(|m| format!(" ({m} MiB)"));
            let model = format!("{}{}", d.name, memory.unwrap_or_default());
            match models.iter_mut().find(|(m, _)| *m == model) {
                Some((_, n)) => *n += 1,
                None => models.push((model, 1)),
            }
        }
        let each = models.iter().map(|(m, n)| format!("{n} × {m}"));
        (!models.is_empty()).then(|| each.collect::<Vec<_>>().join(" + "))
    }
}

/// A plan's item, as a run records it: the plan's id and the item's stable id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItemRef {
    pub plan_id: String,
    pub item: String,
}

/// An agent's process group on a host, and the uid its processes run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcess {
    pub pgid: u32,
    pub uid: u32,
    pub host: String,
}

impl AgentProcess {
    /// The group of `pgid` on this host, its processes running as this process's agents do.
    pub fn here(pgid: u32, uid: u32) -> Self {
        Self {
            pgid,
            uid,
            host: hostname(),
        }
    }

    /// SIGKILLs every process of this host in the group that runs as its uid (a reused group id
    /// of another user's is left alone); returns how many were killed.
    pub fn kill(&self) -> usize {
        if self.host != hostname() || self.pgid <= 1 {
            return 0;
        }
        let mut killed = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let pgrp = stat_fields(&format!("/proc/{pid}/stat"))
                .and_then(|f| f.get(2)?.parse::<u32>().ok());
            if pgrp != Some(self.pgid) {
                continue;
            }
            let uid = std::fs::read_to_string(entry.path().join("status"))
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok())
                });
            if uid != Some(self.uid) {
                continue;
            }
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok() {
                    killed += 1;
                }
            }
        }
        killed
    }
}

impl RunMeta {
    /// Whether `gptx resume` can take the run up: it was interrupted, and its agent is not an MCP
    /// client (which gptx cannot start again).
    pub fn resumable(&self) -> bool {
        self.status == RunStatus::Interrupted && self.agent != "mcp"
    }
}

/// The options of `gptx run` a resumed run takes again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    pub rescue: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    pub max_output_tokens: u64,
    pub context_tokens: u64,
    /// `--agent-env` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_env: Vec<String>,
}

/// One `gptx resume` of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub at: chrono::DateTime<chrono::Utc>,
    /// The last step completed before the run stopped.
    pub after_step: u64,
    /// Why it had stopped.
    pub reason: String,
}

/// The gptx process that owns a running run: its pid, that process's start time (a reused pid has
/// another), and the host it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start: String,
    pub host: String,
}

impl Owner {
    /// This process.
    pub fn me() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            pid,
            start: process_start(pid)?,
            host: hostname(),
        })
    }

    /// Whether the process is still there. A run of another host counts as alive: this host
    /// cannot tell, and must not mark it.
    pub fn alive(&self) -> bool {
        self.host != hostname() || process_start(self.pid).as_deref() == Some(self.start.as_str())
    }
}

/// A process's start time from /proc, as a string; None when it is gone, or dead and not yet
/// reaped (a zombie: a gptx SIGKILLed under a parent that does not wait for it).
pub fn process_start(pid: u32) -> Option<String> {
    let fields = stat_fields(&format!("/proc/{pid}/stat"))?;
    if matches!(fields.first().map(String::as_str), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.get(19).cloned()
}

/// The fields of a `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses): state, ppid, pgrp, ... ; None when the process is gone.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// This host's name.
fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A run `mark_dead` marked `interrupted`.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub run_id: String,
    /// Bytes of a half-written last trace line cut off.
    pub cut_bytes: u64,
    /// The events of the trace, the mark included.
    pub events: u64,
}

/// Why `mark_dead` gives a run.
pub const OWNER_GONE: &str = "owner process gone";

/// Marks every `running` run below `runs_dir` whose owner process is gone as `interrupted`, with
/// the reason [`OWNER_GONE`]: a half-written last line of its trace is cut off, a warning saying
/// what happened closes the trace, and run.json pins that tail, so `gptx verify` checks what was
/// written. A run whose trace is locked by another marker is left to it; a run without an owner, or
/// of another host, is left as it is. Errors name the run and are returned beside what was marked.
pub fn mark_dead(runs_dir: &Path) -> (Vec<Marked>, Vec<String>) {
    let mut marked = Vec::new();
    let mut problems = Vec::new();
    let (runs, _) = list_runs(runs_dir);
    for (dir, meta) in runs {
        if meta.status != RunStatus::Running || meta.owner.as_ref().is_none_or(|o| o.alive()) {
            continue;
        }
        match mark_one(&dir, meta) {
            Ok(Some(m)) => marked.push(m),
            Ok(None) => {}
            Err(e) => problems.push(format!("{}: {e}", dir.path.display())),
        }
    }
    (marked, problems)
}

/// Marks the `running` run in `dir` `interrupted` like [`mark_dead`], whatever host its owner is
/// on: for a caller that knows its owner is gone (it holds the lock of the plan item the run
/// carries out, which that owner held while it lived). None when the run is not `running`.
pub fn mark_stale(dir: &RunDir) -> anyhow::Result<Option<Marked>> {
    let meta: RunMeta = read_json(&dir.run_json())?;
    if meta.status != RunStatus::Running {
        return Ok(None);
    }
    mark_one(dir, meta)
}

fn mark_one(dir: &RunDir, mut meta: RunMeta) -> anyhow::Result<Option<Marked>> {
    use std::io::{Seek, SeekFrom};
    let events = dir.events();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&events)
        .map_err(|e| anyhow::anyhow!("{}: {e}", events.display()))?;
    // One marker at a time; the lock goes with the descriptor.
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(None);
    }
    // Read again under the lock: another marker may have finished first.
    let meta_now: RunMeta = read_json(&dir.run_json())?;
    if meta_now.status != RunStatus::Running {
        return Ok(None);
    }
    let len = file.seek(SeekFrom::End(0))?;
    let whole = last_whole_line_end(&mut file, len)?;
    if whole < len {
        file.set_len(whole)?;
    }
    // A chain that does not hold is reported, never closed and pinned.
    crate::trace::verify(&events, None)?;
    let mut log = crate::trace::EventLog::open_existing(&events)?;
    let owner = meta.owner.clone();
    let tail = log.append(&crate::trace::Event::Warning {
        message: format!(
            "{OWNER_GONE}: gptx (pid {}) stopped without ending the run; marked interrupted",
            owner.map(|o| o.pid).unwrap_or(0)
        ),
    })?;
    let verified = crate::trace::verify(&events, Some(&tail))?;
    meta.status = RunStatus::Interrupted;
    meta.error = Some(OWNER_GONE.to_string());
    meta.ended_at = Some(chrono::Utc::now());
    meta.trace_sha256 = Some(tail);
    meta.events = verified.events;
    let _ = std::fs::remove_file(dir.reserve());
    write_json_atomic(&dir.run_json(), &meta)?;
    // An external agent the dead gptx started is not left running on the host.
    if let Some(p) = &meta.agent_process {
        p.kill();
    }
    Ok(Some(Marked {
        run_id: meta.run_id,
        cut_bytes: len - whole,
        events: verified.events,
    }))
}

/// Whether a gptx drives the run in `dir` now: its run.json says `running` with an owner that is
/// alive, or its trace is locked (a `gptx resume` holds the lock from before it touches anything,
/// while run.json still says `interrupted`). `gptx gc` leaves such a run's disk alone.
pub fn is_driven(dir: &RunDir) -> bool {
    if let Ok(meta) = read_json::<RunMeta>(&dir.run_json()) {
        if meta.status == RunStatus::Running && meta.owner.as_ref().is_none_or(|o| o.alive()) {
            return true;
        }
    }
    match std::fs::File::open(dir.events()) {
        Ok(f) => {
            let free =
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
            // Dropping the descriptor lets the lock go.
            !free
        }
        Err(_) => false,
    }
}

/// Where the last line that ends in a newline ends (0 when there is none).
fn last_whole_line_end(file: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
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
    /// How many times the run was stopped by a fault and resumed (`gptx resume`); 0 for a run
    /// that went through in one go.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
    /// The scoring formulas' version (`stages::scale::SCORING`) its normalised scores come from;
    /// 0 for a run from before versions were recorded.
    #[serde(default)]
    pub scoring: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// The run id: the directory's name.
    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    /// Where `gptx resume` moves the workspace on disk while it brings the run's back.
    pub fn live_workspace(&self) -> PathBuf {
        self.path.join(".workspace.live")
    }
    /// Where `gptx resume` puts the copy it no longer needs before deleting it (a resume killed
    /// while deleting it leaves it here, never where a live copy is looked for).
    pub fn dropped_workspace(&self) -> PathBuf {
        self.path.join(".workspace.dropped")
    }
    /// Where a workspace that differed from its last commit was kept when the run was resumed.
    pub fn aside(&self, n: u32) -> PathBuf {
        self.path.join(format!("workspace.aside-{n}"))
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
    /// Space kept for the run's last words: freed just before the final `run.json` and
    /// `score.json`, so a full disk cannot keep a run from saying how it ended.
    pub fn reserve(&self) -> PathBuf {
        self.path.join(".reserve")
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

#[cfg(test)]
mod mark_tests {
    use super::*;
    use crate::trace::{Event, EventLog};

    #[test]
    fn an_agent_group_is_killed_and_only_its_users_processes() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let me = rustix::process::geteuid().as_raw();
        // Another uid: nothing of the group is touched.
        assert_eq!(AgentProcess::here(pgid, me + 1).kill(), 0);
        assert!(child.try_wait().unwrap().is_none());
        assert!(AgentProcess::here(pgid, me).kill() >= 3);
        let status = child.wait().unwrap();
        assert!(!status.success());
    }

    /// A `running` run with this owner and a trace of two warnings, the second cut halfway.
    fn running(runs: &Path, id: &str, owner: Option<Owner>) -> RunDir {
        let dir = RunDir::new(runs.join(id));
        std::fs::create_dir_all(&dir.path).unwrap();
        let mut log = EventLog::create(&dir.events()).unwrap();
        log.append(&Event::Warning {
            message: "one".into(),
        })
        .unwrap();
        drop(log);
        let mut text = std::fs::read(dir.events()).unwrap();
        text.extend_from_slice(b"{\"seq\":1,\"ts\":\"20");
        std::fs::write(dir.events(), text).unwrap();
        let meta = RunMeta {
            run_id: id.into(),
            agent: "null".into(),
            suite: "mini".into(),
            suite_path: "tasks/suites/mini.toml".into(),
            world_hash: None,
            seed: 0,
            stages: vec![],
            budgets: BTreeMap::new(),
            gates: BTreeMap::new(),
            gptx_version: "0".into(),
            images: BTreeMap::new(),
            started_at: chrono::Utc::now(),
            owner,
            ..Default::default()
        };
        write_json_atomic(&dir.run_json(), &meta).unwrap();
        dir
    }

    fn a100(index: u32) -> GpuDevice {
        GpuDevice {
            index,
            name: "NVIDIA A100-SXM4-80GB".into(),
            memory_mib: Some(81920),
        }
    }

    /// run.json without GPUs has no `gpus` key (and older files read as before); with them the
    /// request and the devices listed come back as written.
    #[test]
    fn run_json_keeps_the_gpus_and_reads_without_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = running(tmp.path(), "r1", None);
        let raw: serde_json::Value = read_json(&dir.run_json()).unwrap();
        assert!(raw.get("gpus").is_none(), "{raw}");
        let mut meta: RunMeta = read_json(&dir.run_json()).unwrap();
        assert_eq!(meta.gpus, None);
        let mut record = GpuRecord::asked(Gpus::All);
        assert_eq!((record.count(), record.models()), (None, None));
        record.devices = Some(vec![a100(0), a100(1)]);
        meta.gpus = Some(record.clone());
        write_json_atomic(&dir.run_json(), &meta).unwrap();
        let raw: serde_json::Value = read_json(&dir.run_json()).unwrap();
        assert_eq!(raw["gpus"]["request"], "all");
        assert_eq!(raw["gpus"]["devices"][1]["memory_mib"], 81920);
        let back: RunMeta = read_json(&dir.run_json()).unwrap();
        assert_eq!(back.gpus, Some(record.clone()));
        assert_eq!(record.count(), Some(2));
        let models = record.models().unwrap();
        assert_eq!(models, "2 × NVIDIA A100-SXM4-80GB (81920 MiB)");
        // The count asked for is the count, whatever was listed.
        let mut two = GpuRecord::asked(Gpus::Count(2));
        assert_eq!(two.count(), Some(2));
        two.request = Gpus::Devices(vec!["3".into()]);
        two.devices = Some(vec![
            a100(0),
            GpuDevice {
                memory_mib: None,
                ..a100(1)
            },
        ]);
        assert_eq!(two.count(), Some(1));
        let mixed = "1 × NVIDIA A100-SXM4-80GB (81920 MiB) + 1 × NVIDIA A100-SXM4-80GB";
        assert_eq!(two.models().as_deref(), Some(mixed));
    }

    /// What `gptx gc` asks before it releases a run's disk: a resume holds the trace's lock while
    /// run.json still says `interrupted` (the disk it is restoring must not be released under it);
    /// a fresh run says `running` with a live owner; a dead owner's run is no one's.
    #[test]
    fn a_run_being_resumed_or_run_is_driven_and_a_dead_ones_is_not() {
        let runs = tempfile::tempdir().unwrap();
        let dir = running(runs.path(), "r1", Owner::me());
        assert!(is_driven(&dir), "running, owner alive");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid).unwrap_or_else(|| "1".into());
        child.wait().unwrap();
        let mut meta: RunMeta = read_json(&dir.run_json()).unwrap();
        meta.owner = Some(Owner {
            pid,
            start,
            host: hostname(),
        });
        meta.status = RunStatus::Interrupted;
        write_json_atomic(&dir.run_json(), &meta).unwrap();
        assert!(!is_driven(&dir), "interrupted, nobody on it");
        // A resume's lock, taken the way session::resume takes it.
        let lock = std::fs::File::open(dir.events()).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(is_driven(&dir), "locked by a resume");
        // Asking never takes the lock away, and leaves none behind.
        assert!(is_driven(&dir));
        drop(lock);
        assert!(!is_driven(&dir));
        assert!(!is_driven(&dir), "asking left no lock");
    }

    #[test]
    fn only_runs_whose_owner_is_gone_on_this_host_are_marked() {
        let runs = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid).unwrap_or_else(|| "1".into());
        child.wait().unwrap();
        let gone = Owner {
            pid,
            start,
            host: hostname(),
        };
        let dead = running(runs.path(), "a-dead", Some(gone.clone()));
        let live = running(runs.path(), "b-live", Owner::me());
        let far = running(
            runs.path(),
            "c-far",
            Some(Owner {
                host: "another-host".into(),
                ..gone
            }),
        );
        let old = running(runs.path(), "d-old", None);
        let (marked, problems) = mark_dead(runs.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].run_id, "a-dead");
        assert_eq!(marked[0].cut_bytes, 17);
        assert_eq!(marked[0].events, 2);
        let meta: RunMeta = read_json(&dead.run_json()).unwrap();
        assert_eq!(meta.status, RunStatus::Interrupted);
        assert_eq!(meta.error.as_deref(), Some(OWNER_GONE));
        let v = crate::trace::verify(&dead.events(), meta.trace_sha256.as_deref()).unwrap();
        assert_eq!(v.events, 2);
        for d in [&live, &far, &old] {
            let m: RunMeta = read_json(&d.run_json()).unwrap();
            assert_eq!(m.status, RunStatus::Running, "{}", d.path.display());
        }
        // Marking again changes nothing.
        assert!(mark_dead(runs.path()).0.is_empty());
    }

    #[test]
    fn a_trace_that_does_not_verify_is_reported_not_pinned() {
        let runs = tempfile::tempdir().unwrap();
        let dir = running(
            runs.path(),
            "a-bad",
            Some(Owner {
                pid: u32::MAX,
                start: "0".into(),
                host: hostname(),
            }),
        );
        std::fs::write(dir.events(), b"{\"seq\":0}\n").unwrap();
        let (marked, problems) = mark_dead(runs.path());
        assert!(marked.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("a-bad"), "{}", problems[0]);
        let m: RunMeta = read_json(&dir.run_json()).unwrap();
        assert_eq!(m.status, RunStatus::Running);
        assert!(m.trace_sha256.is_none());
    }
}
