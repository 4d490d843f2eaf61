//! Batches as plan files: one stable id per item (an agent and a seed), the pins every item runs under, the item lock, and each item's state read from the runs directories.
//!
//! A plan is made once (`gptx plan`) and run anywhere (`gptx run --plan FILE --item K`): by hand,
//! by Slurm ([`slurm`]) or by a Kubernetes Indexed Job ([`k8s`]). An item is idempotent: it does
//! nothing when done, resumes its interrupted run, and otherwise starts one. Two processes never
//! run one item at once: each holds the item's lock ([`ItemLock`]) for as long as it runs it.
//!
//! Imported by `report` (the leaderboard's per-plan state) and `cli`.

pub mod k8s;
pub mod slurm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::suite::Suite;
use crate::trace::rundir::{PlanItemRef, RunDir, RunMeta, RunStatus};

/// The `format` of every plan file this gptx writes and reads.
pub const FORMAT: &str = "gptx-plan/1";

/// Why a plan cannot be made, read or run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a plan file: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: no item {key:?}: give an index 0..{count} or an item id (`gptx runs --plan {path}` lists them)")]
    NoItem {
        path: String,
        key: String,
        count: usize,
    },
    #[error(
        "item {item}: another gptx is running it (its lock {lock} is held); waited {waited:.0} s"
    )]
    Busy {
        item: String,
        lock: String,
        waited: f64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError + '_ {
    move |source| PlanError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A batch: what every item shares, and the items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// [`FORMAT`].
    pub format: String,
    /// `p` and 12 hex digits of the SHA-256 of everything below but `created_at`: the same batch
    /// made twice has the same id, and a hand-edited file is refused.
    pub plan_id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The gptx that made the plan; every item is run by the same version.
    pub gptx_version: String,
    /// The suite's name, as `--suite` took it (a name under tasks/suites/, or a path).
    pub suite: String,
    /// SHA-256 of the suite file: a node whose file differs refuses the item.
    pub suite_sha256: String,
    /// The reference values scores are normalised against (the world's `*.reference.json`): a
    /// node whose values differ refuses the item, so scores stay comparable.
    #[serde(default)]
    pub reference: BTreeMap<String, f64>,
    /// `--stages` (empty: every stage of the suite).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// The world every item runs in (None for a suite without one).
    pub world: Option<WorldPin>,
    /// Image tags by recipe name: a node builds what it lacks from the same recipe, which has
    /// this tag, or refuses.
    pub images: BTreeMap<String, String>,
    /// Budget overrides of every stage (`--max-steps`, ...).
    #[serde(default)]
    pub overrides: Overrides,
    pub options: crate::trace::rundir::RunOptions,
    /// Where the items' run directories go: relative to the plan file's folder, or absolute.
    pub runs_dir: PathBuf,
    /// What one item asks of a node ([`Resources::for_suite`]).
    pub resources: Resources,
    pub items: Vec<Item>,
}

/// The world of a plan: its name, seed and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldPin {
    pub name: String,
    pub seed: u64,
    pub hash: String,
}

/// Budget overrides a plan applies to every stage of every item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandbox_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_step_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

/// One run of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// 0, 1, ... in order: what a job array's task index names.
    pub index: usize,
    /// [`item_id`] of the agent and seed.
    pub id: String,
    pub agent: String,
    pub seed: u64,
}

/// What one item asks of a node: CPUs, memory and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mb: u64,
    /// The longest one item can take: every stage's wall budget, the selfhost rebuild, one
    /// scoring timeout per stage, and [`SETUP_SECONDS`].
    pub wall_seconds: u64,
    /// GPUs (`[sandbox] gpus`: a count, the number of ids, or 1 for `"all"`, which then means all
    /// the job is given); 0 and left out of the plan without GPUs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Time an item may spend before and after its stages: building its world or image on a fresh
/// node, and teardown.
pub const SETUP_SECONDS: u64 = 1200;

/// Memory of the harness's own processes beside the sandboxes: gptx, the world's web server,
/// git snapshots and the page cache of the run directory.
pub const HARNESS_MEMORY_MB: u64 = 1024;
/// CPU of the harness's own processes beside the sandboxes (rounded up with them).
pub const HARNESS_CPUS: f64 = 0.5;

impl Resources {
    /// An item's needs: the agent's sandbox and one scoring sandbox may be alive at once (a
    /// stage is graded while the agent's sandbox waits), so their memory adds up, plus
    /// [`HARNESS_MEMORY_MB`]; only one of them computes at a time, so the CPUs are the larger
    /// of the two plus [`HARNESS_CPUS`], rounded up.
    pub fn for_suite(suite: &Suite) -> Self {
        let cpus = suite.sandbox.cpus.max(suite.scoring.cpus) + HARNESS_CPUS;
        let stages: f64 = suite
            .stages
            .iter()
            .map(|s| s.budgets.max_wall_seconds + suite.scoring.timeout_seconds)
            .sum();
        let selfhost = suite.stages.iter().any(|s| s.name == "selfhost");
        let rebuild = if selfhost { suite.rebuild_seconds } else { 0.0 };
        let gpus = suite.sandbox.gpus.as_ref().map(|g| g.count().unwrap_or(1));
        Self {
            cpus: cpus.ceil().max(1.0) as u32,
            memory_mb: suite.sandbox.memory_mb + suite.scoring.memory_mb + HARNESS_MEMORY_MB,
            // A float past u64 saturates; the sum cannot wrap.
            wall_seconds: ((stages + rebuild).ceil() as u64).saturating_add(SETUP_SECONDS),
            gpus: gpus.unwrap_or(0),
        }
    }
}

/// An item's stable id: the agent in safe characters, the seed, and 6 hex digits of a hash of
/// both (two agents that read alike, `reference:crawl` and `reference-crawl`, still differ).
pub fn item_id(agent: &str, seed: u64) -> String {
    let mut slug = String::new();
    for c in agent.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 32 {
            break;
        }
    }
    let slug = slug.trim_matches('-');
    let h = Sha256::digest(format!("{agent}\0{seed}").as_bytes());
    format!(
        "{}-s{seed}-{}",
        if slug.is_empty() { "agent" } else { slug },
        &hex::encode(h)[..6]
    )
}

impl Plan {
    /// A plan of `agents` × `seeds` (agent-major, as `gptx run` orders a batch), its id computed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        suite: &Suite,
        suite_arg: &str,
        suite_sha256: String,
        stages: Vec<String>,
        world: Option<WorldPin>,
        images: BTreeMap<String, String>,
        overrides: Overrides,
        options: crate::trace::rundir::RunOptions,
        runs_dir: PathBuf,
        agents: &[String],
        seeds: &[u64],
    ) -> Result<Self, PlanError> {
        let mut items = Vec::new();
        for agent in agents {
            for &seed in seeds {
                let id = item_id(agent, seed);
                if items.iter().any(|i: &Item| i.id == id) {
                    return Err(PlanError::Invalid {
                        path: "--agent/--seeds".into(),
                        message: format!("agent {agent:?} with seed {seed} is given twice"),
                    });
                }
                items.push(Item {
                    index: items.len(),
                    id,
                    agent: agent.clone(),
                    seed,
                });
            }
        }
        if items.is_empty() {
            return Err(PlanError::Invalid {
                path: "--agent".into(),
                message: "a plan needs at least one agent".into(),
            });
        }
        let mut plan = Self {
            format: FORMAT.into(),
            plan_id: String::new(),
            created_at: chrono::Utc::now(),
            gptx_version: env!("CARGO_PKG_VERSION").into(),
            suite: suite_arg.to_string(),
            suite_sha256,
            reference: suite.reference.clone(),
            stages,
            world,
            images,
            overrides,
            options,
            runs_dir,
            resources: Resources::for_suite(suite),
            items,
        };
        plan.plan_id = plan.content_id();
        Ok(plan)
    }

    /// The id the content gives: everything but `plan_id` and `created_at`.
    fn content_id(&self) -> String {
        let mut v = serde_json::to_value(self).expect("a plan serialises");
        if let Some(o) = v.as_object_mut() {
            o.remove("plan_id");
            o.remove("created_at");
        }
        // serde_json's maps are sorted: the bytes are canonical.
        let h = Sha256::digest(v.to_string().as_bytes());
        format!("p{}", &hex::encode(h)[..12])
    }

    /// Reads and checks a plan file: its format, its items (indices in order, ids unique and of
    /// their agent and seed), and its id against its content.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_file() || meta.len() > 64 << 20 {
            return Err(PlanError::Invalid {
                path: shown,
                message: "not a regular file of at most 64 MiB".into(),
            });
        }
        {
            use std::os::unix::fs::MetadataExt;
            let me = rustix::process::geteuid().as_raw();
            if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
                return Err(PlanError::Invalid {
                    path: shown,
                    message: format!(
                        "owned by uid {} with mode {:o}: a plan must be writable by its owner alone, who is you or root (anyone who can write it chooses what every node runs)",
                        meta.uid(),
                        meta.mode() & 0o7777
                    ),
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let plan: Plan = serde_json::from_str(&text).map_err(|e| PlanError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let bad = |message: String| PlanError::Invalid {
            path: shown.clone(),
            message,
        };
        if plan.format != FORMAT {
            return Err(bad(format!(
                "format {:?}: this gptx reads {FORMAT:?}",
                plan.format
            )));
        }
        if plan.items.is_empty() {
            return Err(bad("items: the plan has none".into()));
        }
        if plan.suite_sha256.len() != 64
            || !plan.suite_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad("suite_sha256: not a SHA-256 (64 hex digits)".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, item) in plan.items.iter().enumerate() {
            if item.index != i {
                return Err(bad(format!(
                    "items[{i}].index is {}: items are numbered 0, 1, ... in order",
                    item.index
                )));
            }
            if item.id != item_id(&item.agent, item.seed) || !ids.insert(item.id.clone()) {
                return Err(bad(format!(
                    "items[{i}].id {:?} is not the id of agent {:?} and seed {}, or is repeated",
                    item.id, item.agent, item.seed
                )));
            }
        }
        if plan.content_id() != plan.plan_id {
            return Err(bad(format!(
                "plan_id {} does not match the file's content ({}): the plan was edited; make it again with `gptx plan`",
                plan.plan_id,
                plan.content_id()
            )));
        }
        Ok(plan)
    }

    /// Writes the plan file (atomically), writable by its owner alone whatever the umask, as
    /// [`Plan::load`] wants it.
    pub fn write(&self, path: &Path) -> Result<(), PlanError> {
        use std::os::unix::fs::PermissionsExt;
        crate::files::write_json_atomic(path, self).map_err(io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io(path))
    }

    /// The item `key` names: its index (`3`) or its id.
    pub fn item(&self, key: &str, path: &Path) -> Result<&Item, PlanError> {
        let key_t = key.trim();
        let found = if !key_t.is_empty() && key_t.bytes().all(|b| b.is_ascii_digit()) {
            key_t.parse::<usize>().ok().and_then(|i| self.items.get(i))
        } else {
            self.items.iter().find(|it| it.id == key_t)
        };
        found.ok_or_else(|| PlanError::NoItem {
            path: path.display().to_string(),
            key: key.to_string(),
            count: self.items.len(),
        })
    }

    /// The runs directory of a plan read from `plan_path`.
    pub fn runs_dir_from(&self, plan_path: &Path) -> PathBuf {
        if self.runs_dir.is_absolute() {
            self.runs_dir.clone()
        } else {
            plan_path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .unwrap_or(Path::new("."))
                .join(&self.runs_dir)
        }
    }

    /// What a run of `item` records.
    pub fn item_ref(&self, item: &Item) -> PlanItemRef {
        PlanItemRef {
            plan_id: self.plan_id.clone(),
            item: item.id.clone(),
        }
    }
}

/// The lock one item is run under: a file `.plans/<plan id>/<item id>.lock` in the runs
/// directory, `flock`ed for as long as the item runs. On a shared filesystem (NFS v4, Lustre
/// mounted with `flock`) the lock holds across nodes, and a crashed node's lock is released
/// when its lease ends.
pub struct ItemLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// The least an [`ItemLock::acquire`] waits.
pub const MIN_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Where an item's lock file is.
pub fn lock_path(runs_dir: &Path, plan_id: &str, item_id: &str) -> PathBuf {
    runs_dir
        .join(".plans")
        .join(plan_id)
        .join(format!("{item_id}.lock"))
}

impl ItemLock {
    /// Takes the item's lock, waiting up to `wait` for another holder to let go (a requeued task
    /// may start while the killed one is still cleaning up).
    pub fn acquire(
        runs_dir: &Path,
        plan_id: &str,
        item_id: &str,
        wait: Duration,
    ) -> Result<Self, PlanError> {
        let path = lock_path(runs_dir, plan_id, item_id);
        let dir = path.parent().expect("a lock has a folder");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        // A status probe ([`lock_held`]) holds the lock for an instant: never give up sooner.
        let wait = wait.max(MIN_LOCK_WAIT);
        let t0 = Instant::now();
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Self { _file: file, path }),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    if t0.elapsed() >= wait {
                        return Err(PlanError::Busy {
                            item: item_id.to_string(),
                            lock: path.display().to_string(),
                            waited: t0.elapsed().as_secs_f64(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(io(&path)(e.into())),
            }
        }
    }
}

/// Whether some process holds an item's lock now (a lock file nobody holds, or none, is free).
pub fn lock_held(runs_dir: &Path, plan_id: &str, item_id: &str) -> bool {
    let path = lock_path(runs_dir, plan_id, item_id);
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    else {
        return false;
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// A run of it is done.
    Done,
    /// Its lock is held: some gptx is running it now.
    Running,
    /// Its latest run stopped before the end (interrupted, or its gptx is gone): the item resumes it.
    Interrupted,
    /// Its latest run failed (the harness could not carry it out); running the item again starts anew.
    Failed,
    /// No run of it yet.
    Missing,
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Done => "done",
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
            Self::Missing => "missing",
        })
    }
}

/// One item and where it stands, with the run that says so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemStatus {
    pub item: Item,
    pub state: ItemState,
    /// The first done run, else the latest run of the item.
    pub run_id: Option<String>,
    /// That run's directory.
    pub run_dir: Option<PathBuf>,
    /// Runs of the item in all (a resumed run counts once; a failed one that was run anew twice).
    pub runs: usize,
}

/// Where every item of `plan` stands, from the runs (of any runs directories) that record its
/// plan id; `lock_dir` is the plan's own runs directory, where the item locks are.
pub fn states(plan: &Plan, runs: &[(RunDir, RunMeta)], lock_dir: &Path) -> Vec<ItemStatus> {
    plan.items
        .iter()
        .map(|item| {
            let mut mine: Vec<&(RunDir, RunMeta)> = runs
                .iter()
                .filter(|(d, m)| {
                    // The item's own agent, seed and world, in a directory of its own id.
                    m.plan
                        .as_ref()
                        .is_some_and(|p| p.plan_id == plan.plan_id && p.item == item.id)
                        && m.agent == item.agent
                        && m.seed == item.seed
                        && m.world_hash == plan.world.as_ref().map(|w| w.hash.clone())
                        && d.path.file_name().is_some_and(|n| *n == *m.run_id)
                })
                .collect();
            mine.sort_by_key(|(_, m)| m.started_at);
            // The first done run counts: running an item again cannot re-roll it.
            let done = mine.iter().find(|(_, m)| m.status == RunStatus::Done);
            let latest = mine.last();
            let (state, shown) = if let Some(d) = done {
                (ItemState::Done, Some(*d))
            } else if lock_held(lock_dir, &plan.plan_id, &item.id) {
                (ItemState::Running, latest.copied())
            } else {
                match latest {
                    None => (ItemState::Missing, None),
                    Some(r) => (
                        match r.1.status {
                            RunStatus::Failed => ItemState::Failed,
                            // Running without its lock: its gptx is gone.
                            _ => ItemState::Interrupted,
                        },
                        Some(*r),
                    ),
                }
            };
            ItemStatus {
                item: item.clone(),
                state,
                run_id: shown.map(|(_, m)| m.run_id.clone()),
                run_dir: shown.map(|(d, _)| d.path.clone()),
                runs: mine.len(),
            }
        })
        .collect()
}

/// How many items are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub items: usize,
    pub done: usize,
    pub running: usize,
    pub interrupted: usize,
    pub failed: usize,
    pub missing: usize,
}

impl Tally {
    pub fn of(states: &[ItemStatus]) -> Self {
        let mut t = Self {
            items: states.len(),
            ..Self::default()
        };
        for s in states {
            match s.state {
                ItemState::Done => t.done += 1,
                ItemState::Running => t.running += 1,
                ItemState::Interrupted => t.interrupted += 1,
                ItemState::Failed => t.failed += 1,
                ItemState::Missing => t.missing += 1,
            }
        }
        t
    }

    /// Whether every item is done.
    pub fn complete(&self) -> bool {
        self.done == self.items
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} done, {} running, {} interrupted, {} failed, {} missing",
            self.done, self.items, self.running, self.interrupted, self.failed, self.missing
        )
    }
}

/// Appends one line to the plan's `.plans/<plan>/attempts.jsonl` in `runs_dir`: when and where
/// an attempt at an item started, under which scheduler task (Slurm's and Kubernetes' variables),
/// and how it ended. Best effort: a line that cannot be written never fails the item.
pub fn note_attempt(runs_dir: &Path, item: &PlanItemRef, what: serde_json::Value) {
    use std::io::Write;
    let dir = runs_dir.join(".plans").join(&item.plan_id);
    let mut line = serde_json::json!({
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "item": item.item,
        "host": rustix::system::uname().nodename().to_string_lossy(),
        "pid": std::process::id(),
    });
    for var in [
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SLURMD_NODENAME",
        "JOB_COMPLETION_INDEX",
    ] {
        if let Ok(v) = std::env::var(var) {
            line[var.to_ascii_lowercase()] = v.chars().take(64).collect::<String>().into();
        }
    }
    if let (Some(l), Some(w)) = (line.as_object_mut(), what.as_object()) {
        l.extend(w.clone());
    }
    let r = std::fs::create_dir_all(&dir).and_then(|_| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join("attempts.jsonl"))?;
        f.write_all(format!("{line}\n").as_bytes())
    });
    if let Err(e) = r {
        tracing::warn!("could not note the attempt at item {}: {e}", item.item);
    }
}

/// The lines of a plan's `attempts.jsonl` (unreadable lines skipped).
pub fn attempts(runs_dir: &Path, plan_id: &str) -> Vec<serde_json::Value> {
    let path = runs_dir.join(".plans").join(plan_id).join("attempts.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, PlanError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn suite() -> Suite {
        let home = crate::config::suite::Home::locate().unwrap();
        home.suite("mini").unwrap()
    }

    fn plan(agents: &[&str], seeds: &[u64]) -> Plan {
        sample(agents, seeds, "runs")
    }

    /// A plan of the mini suite for unit tests: `agents` × `seeds`, runs in `runs_dir`.
    pub(crate) fn sample(agents: &[&str], seeds: &[u64], runs_dir: &str) -> Plan {
        let agents: Vec<String> = agents.iter().map(|s| s.to_string()).collect();
        Plan::new(
            &suite(),
            "mini",
            "ab".repeat(32),
            vec![],
            Some(WorldPin {
                name: "mini".into(),
                seed: 1,
                hash: "cd".repeat(32),
            }),
            BTreeMap::from([("base".into(), "gptx/base:0123".into())]),
            Overrides::default(),
            crate::trace::rundir::RunOptions {
                rescue: true,
                temperature: None,
                max_output_tokens: 4096,
                context_tokens: 100_000,
                agent_env: vec![],
            },
            PathBuf::from(runs_dir),
            &agents,
            seeds,
        )
        .unwrap()
    }

    #[test]
    fn ids_are_stable_unique_and_safe() {
        assert_eq!(item_id("null", 1), item_id("null", 1));
        assert_ne!(item_id("null", 1), item_id("null", 2));
        assert_ne!(item_id("reference:crawl", 1), item_id("reference-crawl", 1));
        let id = item_id("exec:python3 /x/../agent.py --flag", 7);
        assert!(id.starts_with("exec-python3-x-agent-py-flag-s7-"), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(item_id("::", 3).starts_with("agent-s3-"));
    }

    #[test]
    fn a_plan_round_trips_and_an_edited_one_is_refused() {
        let p = plan(&["null", "reference:crawl", "reference"], &[1, 2]);
        assert_eq!(p.items.len(), 6);
        assert_eq!(p.items[1].agent, "null");
        assert_eq!(p.items[1].seed, 2);
        // The same batch made again has the same id, whenever it is made.
        let again = plan(&["null", "reference:crawl", "reference"], &[1, 2]);
        assert_eq!(p.plan_id, again.plan_id);
        assert_ne!(p.plan_id, plan(&["null"], &[1, 2]).plan_id);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        p.write(&path).unwrap();
        let back = Plan::load(&path).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.item("3", &path).unwrap().id, p.items[3].id);
        assert_eq!(back.item(&p.items[4].id, &path).unwrap().index, 4);
        let e = back.item("6", &path).unwrap_err().to_string();
        assert!(e.contains("no item \"6\"") && e.contains("0..6"), "{e}");
        assert_eq!(back.item(" 3 ", &path).unwrap().index, 3);
        assert!(back.item("+3", &path).is_err() && back.item("-1", &path).is_err());
        // A plan others may write is refused: whoever writes it chooses what every node runs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Plan::load(&path).unwrap_err().to_string();
        assert!(e.contains("writable by its owner alone"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(back.runs_dir_from(&path), dir.path().join("runs"));
        // A seed changed by hand: the id no longer matches.
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"seed\": 2", "\"seed\": 9", 1);
        std::fs::write(&path, edited).unwrap();
        let e = Plan::load(&path).unwrap_err().to_string();
        assert!(e.contains("is not the id of agent"), "{e}");
        // A budget raised by hand: the plan id no longer matches.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["overrides"]["max_steps"] = 1000.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Plan::load(&path).unwrap_err().to_string();
        assert!(e.contains("the plan was edited"), "{e}");
        // Unknown fields and other formats are refused, naming the file.
        v["overrides"] = serde_json::json!({});
        v["surprise"] = true.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Plan::load(&path).unwrap_err().to_string();
        assert!(e.contains("plan.json") && e.contains("surprise"), "{e}");
        std::fs::write(&path, "[1,2]").unwrap();
        assert!(Plan::load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a plan file"));
    }

    #[test]
    fn resources_add_the_sandboxes_memory_and_take_the_larger_cpus() {
        let mut s = suite();
        s.sandbox.cpus = 1.0;
        s.scoring.cpus = 1.0;
        s.sandbox.memory_mb = 2048;
        s.scoring.memory_mb = 2048;
        let r = Resources::for_suite(&s);
        assert_eq!((r.cpus, r.memory_mb), (2, 2048 + 2048 + HARNESS_MEMORY_MB));
        // mini: walls 600 + 600 + 900 + 600 + 600, a 300 s scoring timeout each, a rebuild of
        // the sandbox seconds before selfhost (300 + 300 + 600 + 300), and the setup.
        assert_eq!(r.wall_seconds, 3300 + 1500 + 1500 + SETUP_SECONDS);
        s.sandbox.cpus = 4.0;
        assert_eq!(Resources::for_suite(&s).cpus, 5);
    }

    /// Whether the item lock stays held for a second: another test's fork may hold a copy of the
    /// descriptor for the instant before its exec (which closes it), a child that kept it holds on.
    fn held_for_a_second(runs: &std::path::Path) -> bool {
        (0..50).all(|_| {
            std::thread::sleep(Duration::from_millis(20));
            lock_held(runs, "p1", "item")
        })
    }

    /// An agent cannot hold an item's lock to keep its item `running` forever (so it is never
    /// resumed or graded again): a process started while gptx holds the lock (an `exec:` agent
    /// and whatever it leaves in the background) does not inherit it, and the uid `exec:` agents
    /// run as cannot open the lock file to take it.
    #[test]
    fn an_agents_processes_can_neither_inherit_nor_take_an_item_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ItemLock::acquire(dir.path(), "p1", "item", Duration::ZERO).unwrap();
        // A background process left running past the lock's holder.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        drop(lock);
        let held = held_for_a_second(dir.path());
        assert!(!held, "a child process kept the item lock");
        let again = ItemLock::acquire(dir.path(), "p1", "item", Duration::ZERO);
        assert!(
            again.is_ok(),
            "the item could not be taken while the child lives"
        );
        drop(again);
        let _ = child.kill();
        let _ = child.wait();
        // As `nobody` (the uid of `exec:` agents when gptx runs as root), the lock file is out of
        // reach: util-linux's flock cannot open it, so cannot lock it.
        if rustix::process::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            // The runs directory may be readable by all; the lock file is root's alone.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let path = lock_path(dir.path(), "p1", "item");
            let as_nobody = || {
                std::process::Command::new("setpriv")
                    .args([
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        "flock",
                        "-n",
                    ])
                    .arg(&path)
                    .arg("true")
                    .output()
                    .unwrap()
            };
            let out = as_nobody();
            assert!(
                !out.status.success(),
                "nobody took the lock: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The check bites: a lock file others may read would be theirs to lock.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(as_nobody().status.success(), "the control did not lock");
        }
    }

    #[test]
    fn states_follow_the_runs_and_the_lock() {
        let p = plan(&["null", "reference"], &[1]);
        let dir = tempfile::tempdir().unwrap();
        let mk = |item: &Item, status: RunStatus, at: i64| {
            let mut meta: RunMeta = serde_json::from_value(serde_json::json!({
                "run_id": format!("{}-{at}", item.id), "agent": item.agent, "suite": "mini",
                "suite_path": "mini.toml", "world_hash": "cd".repeat(32), "seed": item.seed, "stages": [],
                "budgets": {}, "gptx_version": "0", "images": {},
                "started_at": "2026-01-01T00:00:00Z", "ended_at": null, "status": "running"
            }))
            .unwrap();
            meta.status = status;
            meta.started_at = chrono::DateTime::from_timestamp(at, 0).unwrap();
            meta.plan = Some(p.item_ref(item));
            (RunDir::new(dir.path().join(&meta.run_id)), meta)
        };
        let none: Vec<(RunDir, RunMeta)> = vec![];
        let s = states(&p, &none, dir.path());
        assert!(s.iter().all(|s| s.state == ItemState::Missing));
        assert_eq!(Tally::of(&s).missing, 2);
        let runs = vec![
            mk(&p.items[0], RunStatus::Interrupted, 10),
            mk(&p.items[0], RunStatus::Done, 20),
            mk(&p.items[1], RunStatus::Running, 30),
        ];
        let s = states(&p, &runs, dir.path());
        assert_eq!(s[0].state, ItemState::Done);
        assert_eq!(s[0].runs, 2);
        assert_eq!(s[0].run_id.as_deref(), Some(&*runs[1].1.run_id));
        // Running without its lock held: its gptx is gone.
        assert_eq!(s[1].state, ItemState::Interrupted);
        let lock =
            ItemLock::acquire(dir.path(), &p.plan_id, &p.items[1].id, Duration::ZERO).unwrap();
        assert!(lock_held(dir.path(), &p.plan_id, &p.items[1].id));
        let s = states(&p, &runs, dir.path());
        assert_eq!(s[1].state, ItemState::Running);
        let t = Tally::of(&s);
        assert!(!t.complete());
        assert_eq!(
            t.to_string(),
            "1/2 done, 1 running, 0 interrupted, 0 failed, 0 missing"
        );
        // A second taker waits, then gives up naming the lock.
        let e = ItemLock::acquire(dir.path(), &p.plan_id, &p.items[1].id, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("another gptx is running it") && e.contains(".lock"),
            "{e}"
        );
        drop(lock);
        assert!(!lock_held(dir.path(), &p.plan_id, &p.items[1].id));
        // A run of another plan does not count.
        let mut other = mk(&p.items[1], RunStatus::Done, 40);
        other.1.plan.as_mut().unwrap().plan_id = "pother".into();
        let s = states(&p, &[other], dir.path());
        assert_eq!(s[1].state, ItemState::Missing);
        // Nor does a run tagged with the item that is not of its agent, seed or world.
        for change in 0..3 {
            let mut forged = mk(&p.items[1], RunStatus::Done, 50);
            match change {
                0 => forged.1.agent = "null".into(),
                1 => forged.1.seed = 99,
                _ => forged.1.world_hash = Some("ef".repeat(32)),
            }
            let s = states(&p, &[forged], dir.path());
            assert_eq!(s[1].state, ItemState::Missing, "change {change}");
        }
        // A second done run of an item does not replace its first.
        let runs = vec![
            mk(&p.items[0], RunStatus::Done, 60),
            mk(&p.items[0], RunStatus::Done, 70),
        ];
        let s = states(&p, &runs, dir.path());
        assert_eq!(s[0].run_id.as_deref(), Some(&*runs[0].1.run_id));
    }
}
