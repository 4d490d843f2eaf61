//! The selfhost stage: which files of the workspace make up the recipe, the rebuild seam (`Rebuilder`), and the grade (rebuilt verified bpb within 3% of the original).
//!
//! The copy rules (SPEC §3): regular files only, at most 256 KiB each and 2 MiB in all, nothing under
//! `data/`, `model/`, `tokenizer/` or a path the stage lists. On top of the caps, a recipe that carries
//! more than [`SMUGGLE_LIMIT`] bytes copied verbatim from those artifacts (a model split into small
//! files that fit the caps) has the files that carry them refused. Every file copied and refused,
//! with the reason, goes into the stage's `stage_scored` event.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::agent::tools::ToolError;
use crate::sandbox::programs::Programs;
use crate::sandbox::{ExecRequest, OutStream};
use crate::stages::bpb::{self, Verification};
use crate::stages::common::{
    self, hidden_docs, own_sample, program_problem, CHECK_POSITIONS, CHECK_SAMPLE_BYTES,
};
use crate::stages::contract::LM_PROGRAM as PROGRAM;
use crate::stages::scale;
use crate::stages::scorer::{CheckRequest, Checked, ScoreContext, Scorer};
use crate::trace::rundir::RunDir;
use crate::trace::{round, StageScore};
use crate::world::baselines::Baselines;
use crate::world::World;

pub(crate) use crate::stages::contract::{
    EXCLUDED, MAX_FILE_BYTES, MAX_RECIPE_BYTES, RECIPE, SMUGGLE_LIMIT,
};
/// A file carrying less than this of artifact content is never refused for it.
const SMUGGLE_FILE_MIN: u64 = 4 * 1024;
/// Window of the verbatim-content check: a run of at least twice this many bytes is always found.
const WINDOW: usize = 64;
/// Most artifact bytes read by the verbatim-content check.
const SCAN_LIMIT: u64 = 4 * 1024 * 1024 * 1024;
/// Entries of each list kept in the trace (the counts are always complete).
const LIST_LIMIT: usize = 2000;

/// A file of the recipe, with the bytes the selection read: what is checked is what is copied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Copied {
    pub path: String,
    pub bytes: u64,
    #[serde(skip)]
    pub data: Vec<u8>,
    /// Permission bits of the file as opened.
    #[serde(skip)]
    pub mode: u32,
}

/// A file left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub path: String,
    pub bytes: u64,
    pub reason: String,
}

/// The recipe as selected from a workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub copied: Vec<Copied>,
    pub refused: Vec<Refused>,
    pub bytes: u64,
}

impl Recipe {
    /// The trace's view: complete counts, lists cut at [`LIST_LIMIT`].
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "files_copied": self.copied.len(),
            "files_refused": self.refused.len(),
            "bytes": self.bytes,
            "copied": self.copied.iter().take(LIST_LIMIT).collect::<Vec<_>>(),
            "refused": self.refused.iter().take(LIST_LIMIT).collect::<Vec<_>>(),
            "lists_cut": self.copied.len() > LIST_LIMIT || self.refused.len() > LIST_LIMIT,
        })
    }
}

fn excluded_by(path: &str, extra: &[String]) -> Option<String> {
    EXCLUDED
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .find(|d| {
            let d = d.trim_end_matches('/');
            path == d || path.starts_with(&format!("{d}/"))
        })
}

/// Reads a file the recipe would copy through the confined reader (no symlink on its path, no FIFO
/// or device, the size of the opened file), at most `limit` bytes; Err is the reason to refuse it.
fn read_candidate(
    root: &crate::sandbox::paths::WorkspaceRoot,
    path: &str,
    limit: u64,
) -> Result<(Vec<u8>, u32), String> {
    use std::os::unix::fs::PermissionsExt;
    let p = crate::sandbox::WorkspacePath::parse(path).map_err(|e| e.to_string())?;
    let (file, meta) = root
        .open_regular(&p)
        .map_err(|e| format!("could not be read as a regular file without following links: {e}"))?;
    if meta.len() > limit {
        return Err(format!(
            "{} bytes when opened, over the {limit} bytes left for it (it grew after it was listed)",
            meta.len()
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading it: {e}"))?;
    if data.len() as u64 != meta.len() {
        return Err(format!(
            "changed while it was read ({} bytes when opened, {} read)",
            meta.len(),
            data.len()
        ));
    }
    Ok((data, meta.permissions().mode() & 0o777))
}

/// Chooses the recipe among the files of `workspace` by the copy rules; `extra` lists more excluded
/// paths. `bootstrap.sh` is taken first, then the rest in path order. Each chosen file is read once,
/// through the confined reader, and those bytes are what [`copy`] writes.
pub fn select(workspace: &Path, extra: &[String]) -> std::io::Result<Recipe> {
    use crate::sandbox::paths::EntryKind;
    let root = crate::sandbox::paths::WorkspaceRoot::open(workspace, None)?;
    let mut entries = root.walk()?;
    if let Some(i) = entries.iter().position(|e| e.path == RECIPE) {
        let e = entries.remove(i);
        entries.insert(0, e);
    }
    let mut recipe = Recipe::default();
    let mut artifacts = Vec::new();
    for entry in entries {
        let (path, bytes) = (entry.path, entry.size);
        let refuse = |reason: String| Refused {
            path: path.clone(),
            bytes,
            reason,
        };
        if let Some(dir) = excluded_by(&path, extra) {
            if entry.kind == EntryKind::File {
                artifacts.push(path.clone());
            }
            recipe.refused.push(refuse(format!(
                "under {dir}/, which the recipe must rebuild"
            )));
        } else if entry.kind == EntryKind::Symlink {
            recipe
                .refused
                .push(refuse("a symlink; only regular files are copied".into()));
        } else if entry.kind != EntryKind::File {
            recipe.refused.push(refuse("not a regular file".into()));
        } else if bytes > MAX_FILE_BYTES {
            recipe.refused.push(refuse(format!(
                "{bytes} bytes, over the {} KiB limit for one file",
                MAX_FILE_BYTES / 1024
            )));
        } else if recipe.bytes + bytes > MAX_RECIPE_BYTES {
            recipe.refused.push(refuse(format!(
                "{bytes} bytes would take the recipe past {} MiB in all ({} bytes already taken)",
                MAX_RECIPE_BYTES / (1024 * 1024),
                recipe.bytes
            )));
        } else {
            let room = MAX_FILE_BYTES.min(MAX_RECIPE_BYTES - recipe.bytes);
            match read_candidate(&root, &path, room) {
                Ok((data, mode)) => {
                    let bytes = data.len() as u64;
                    recipe.bytes += bytes;
                    recipe.copied.push(Copied {
                        path,
                        bytes,
                        data,
                        mode,
                    });
                }
                Err(reason) => recipe.refused.push(refuse(reason)),
            }
        }
    }
    refuse_smuggled(&root, &mut recipe, &artifacts)?;
    Ok(recipe)
}

/// Polynomial hash of a window (the rolling form below gives the same value).
const BASE: u64 = 0x100_0000_01b3;

fn window_hash(w: &[u8]) -> u64 {
    w.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(BASE).wrapping_add(b as u64 + 1)
    })
}

/// A window of one repeated byte (zero padding, runs of spaces) says nothing about where it came from.
fn uniform(w: &[u8]) -> bool {
    w.iter().all(|&b| b == w[0])
}

/// Refuses the recipe files that carry artifact content verbatim, when they carry more than
/// [`SMUGGLE_LIMIT`] in all: every window of every recipe file is hashed; artifacts are read in
/// aligned windows, so any shared run of 2 × [`WINDOW`] bytes or more is seen. A text artifact that
/// is a whole copy of a recipe file (source code kept next to a model, as `model/lm.py`) is not
/// counted.
fn refuse_smuggled(
    root: &crate::sandbox::paths::WorkspaceRoot,
    recipe: &mut Recipe,
    artifacts: &[String],
) -> std::io::Result<()> {
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut sources: std::collections::HashSet<(usize, u64)> = Default::default();
    let mut top = 1u64;
    for _ in 0..WINDOW - 1 {
        top = top.wrapping_mul(BASE);
    }
    for (i, f) in recipe.copied.iter().enumerate() {
        let data = &f.data;
        if std::str::from_utf8(data).is_ok() {
            sources.insert((data.len(), window_hash(data)));
        }
        if data.len() < WINDOW {
            continue;
        }
        let mut h = window_hash(&data[..WINDOW]);
        for start in 0..=data.len() - WINDOW {
            if start > 0 {
                let out = data[start - 1] as u64 + 1;
                let inb = data[start + WINDOW - 1] as u64 + 1;
                h = h
                    .wrapping_sub(out.wrapping_mul(top))
                    .wrapping_mul(BASE)
                    .wrapping_add(inb);
            }
            if !uniform(&data[start..start + WINDOW]) {
                index.entry(h).or_insert(i);
            }
        }
    }
    if index.is_empty() {
        return Ok(());
    }
    let mut carried = vec![0u64; recipe.copied.len()];
    let mut source: Vec<Option<String>> = vec![None; recipe.copied.len()];
    let mut scanned = 0u64;
    let mut buf = vec![0u8; WINDOW * 4096];
    'files: for a in artifacts {
        // Artifacts too are opened without following links or blocking on a FIFO.
        let Ok(p) = crate::sandbox::WorkspacePath::parse(a) else {
            continue;
        };
        let Ok((mut f, meta)) = root.open_regular(&p) else {
            continue;
        };
        if meta.len() <= MAX_FILE_BYTES {
            let mut data = Vec::new();
            if (&mut f).take(MAX_FILE_BYTES).read_to_end(&mut data).is_ok()
                && std::str::from_utf8(&data).is_ok()
                && sources.contains(&(data.len(), window_hash(&data)))
            {
                continue;
            }
            use std::io::Seek;
            if f.seek(std::io::SeekFrom::Start(0)).is_err() {
                continue;
            }
        }
        loop {
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(_) => break,
                }
            }
            for w in buf[..n - n % WINDOW].chunks_exact(WINDOW) {
                if uniform(w) {
                    continue;
                }
                if let Some(&i) = index.get(&window_hash(w)) {
                    carried[i] += WINDOW as u64;
                    source[i].get_or_insert_with(|| a.clone());
                }
            }
            scanned += n as u64;
            if scanned > SCAN_LIMIT {
                break 'files;
            }
            if n < buf.len() {
                break;
            }
        }
    }
    let total: u64 = carried.iter().sum();
    if total <= SMUGGLE_LIMIT {
        return Ok(());
    }
    let mut kept = Vec::new();
    let mut bytes = 0;
    for (i, f) in std::mem::take(&mut recipe.copied).into_iter().enumerate() {
        if carried[i] >= SMUGGLE_FILE_MIN {
            recipe.refused.push(Refused {
                reason: format!(
                    "carries {} KiB copied verbatim from built artifacts (first seen in {}); the recipe in all carries {} KiB, over the {} KiB allowed",
                    carried[i] / 1024,
                    source[i].as_deref().unwrap_or("?"),
                    total / 1024,
                    SMUGGLE_LIMIT / 1024
                ),
                path: f.path,
                bytes: f.bytes,
            });
        } else {
            bytes += f.bytes;
            kept.push(f);
        }
    }
    recipe.copied = kept;
    recipe.bytes = bytes;
    Ok(())
}

/// Writes the recipe's files, the bytes [`select`] read, into the empty directory `to`, keeping the
/// permission bits; the files and directories made belong to `owner` (uid, gid) when there is one.
pub fn copy(recipe: &Recipe, to: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for f in &recipe.copied {
        let dst = to.join(&f.path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
            if let Some((u, g)) = owner {
                let mut d = parent;
                while d != to && d.starts_with(to) {
                    std::os::unix::fs::chown(d, Some(u), Some(g))?;
                    d = match d.parent() {
                        Some(p) => p,
                        None => break,
                    };
                }
            }
        }
        std::fs::write(&dst, &f.data)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(f.mode | 0o600))?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(&dst, Some(u), Some(g))?;
        }
    }
    Ok(())
}

/// What came of running `bootstrap.sh` in a fresh sandbox.
pub struct RebuildRun {
    pub exit_code: i32,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// Where the whole output was kept.
    pub log: Option<String>,
    /// Requests the rebuild made to the world (its own, fresh request log).
    pub requests: Option<u64>,
    /// Runs programs on the rebuilt workspace in fresh scoring sandboxes.
    pub programs: Arc<dyn Programs>,
}

/// One rebuild: where the recipe is, where its logs go, and how it is run.
#[derive(Debug, Clone)]
pub struct RebuildJob {
    /// The fresh workspace holding only the recipe.
    pub workspace: PathBuf,
    /// Where `bootstrap.log` and the rebuild's own `world/requests.jsonl` go.
    pub dir: PathBuf,
    /// Tells this rebuild's containers apart from the others of the run (`selfhost`,
    /// `selfhost-check-2`).
    pub instance: String,
    /// The command line ([`crate::stages::contract::bootstrap_command`]), run by `bash -c` in /workspace.
    pub command: String,
    pub timeout: Duration,
}

/// A rebuild workspace's own disk, held until the rebuild is graded.
pub trait RebuildDisk: Send + Sync {
    /// Gives the disk back, its contents kept in the workspace directory when `keep`; Err says what
    /// went wrong. Dropped without a release, the disk goes and its contents with it.
    fn release(self: Box<Self>, keep: bool) -> Result<(), String>;
}

/// A fresh, empty workspace for a rebuild, ready for the recipe.
pub struct FreshWorkspace {
    /// The workspace directory (`dir/workspace`).
    pub path: PathBuf,
    /// Who the recipe's copied files must belong to (uid, gid); None leaves them the harness's.
    pub owner: Option<(u32, u32)>,
    /// The workspace's own disk of the suite's size, when one could be made.
    pub disk: Option<Box<dyn RebuildDisk>>,
}

/// Runs a recipe from nothing: a fresh sandbox on `job.workspace` (holding only the recipe) with the
/// world reachable, `job.command` within `job.timeout`, then everything torn down.
#[async_trait]
pub trait Rebuilder: Send + Sync {
    /// Makes `dir/workspace` afresh and empty, writable by whoever runs the rebuild, for the recipe
    /// to be copied into; on a disk of `disk_mb` where the rebuilder can make one. The default is a
    /// plain directory with no owner and no disk of its own; Err is the reason, for the grade.
    fn fresh_workspace(&self, dir: &Path, disk_mb: u64) -> Result<FreshWorkspace, String> {
        let _ = disk_mb;
        let path = RunDir::new(dir.to_path_buf()).workspace();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("copying the recipe to {}: {e}", path.display()))?;
        Ok(FreshWorkspace {
            path,
            owner: None,
            disk: None,
        })
    }

    async fn rebuild(&self, job: &RebuildJob) -> Result<RebuildRun, String>;
}

fn verification_json(v: &Verification) -> Value {
    let mut j = json!({
        "seed": v.seed,
        "positions": v.positions.len(),
        "calls": v.calls,
        "harness_seconds": round(v.harness_seconds, 6),
    });
    match &v.result {
        Ok(ok) => j["bpb"] = json!(round(ok.bpb, 5)),
        Err(rej) => j["rejection"] = json!(rej),
    }
    j
}

/// The stage's score when the original `bin/lm` does not verify on the hidden documents.
fn original_rejected(rej: &bpb::Rejection, m: Map<String, Value>) -> StageScore {
    StageScore::zero(
        "failed",
        format!("the original bin/lm does not verify: {rej}"),
    )
    .with_metrics(m)
    .with_public(format!(
        "the original bin/lm was rejected on the hidden documents: {}",
        rej.public()
    ))
}

/// A score failed by how the recipe failed (its exit code, its budget), that reason first; `s`
/// itself when the recipe did not fail.
fn with_recipe(s: StageScore, recipe_failed: Option<&str>) -> StageScore {
    let Some(how) = recipe_failed else { return s };
    let first = |r: &Option<String>| match r {
        Some(r) => format!("{how}; {r}"),
        None => how.to_string(),
    };
    StageScore {
        passed: false,
        reason: Some(first(&s.reason)),
        public_reason: Some(first(&s.public_reason)),
        normalized: Some(0.0),
        ..s
    }
}

/// The stage's score from the two verifications (pure: unit-tested). `recipe_failed` says how
/// `bootstrap.sh` failed (a non-zero exit, its budget): then the stage fails whatever the rebuilt
/// model scores, since a program copied with the recipe is not a rebuild.
pub fn stage_score(
    original: &Verification,
    rebuilt: &Verification,
    baselines: &Baselines,
    gates: &BTreeMap<String, f64>,
    reference_bpb: Option<f64>,
    recipe_failed: Option<&str>,
    mut m: Map<String, Value>,
) -> StageScore {
    m.insert("original".into(), verification_json(original));
    m.insert("rebuilt".into(), verification_json(rebuilt));
    let with_recipe = |s: StageScore| with_recipe(s, recipe_failed);
    let orig = match &original.result {
        Ok(ok) => ok.bpb,
        Err(rej) => return original_rejected(rej, m),
    };
    m.insert("original_bpb".into(), json!(round(orig, 5)));
    let new = match &rebuilt.result {
        Ok(ok) => ok.bpb,
        Err(rej) => {
            return with_recipe(
                StageScore::zero(
                    "rejected",
                    format!("the rebuilt bin/lm does not verify: {rej}"),
                )
                .with_metrics(m)
                .with_public(format!(
                    "the rebuilt bin/lm was rejected on the hidden documents: {}",
                    rej.public()
                )),
            )
        }
    };
    let diff = (new - orig).abs() / orig;
    let tol = crate::config::gates::SELFHOST_BPB_TOLERANCE.value(gates);
    m.insert("bpb".into(), json!(round(new, 5)));
    m.insert("relative_difference".into(), json!(round(diff, 5)));
    let xz_conditional = baselines.xz_conditional;
    m.insert("beats_conditional_xz".into(), json!(new < xz_conditional));
    m.insert(
        "vs_conditional_xz".into(),
        json!(round(new - xz_conditional, 5)),
    );
    let passed = diff <= tol;
    let floor = crate::config::gates::TRAIN_XZ_RATIO.value(gates) * baselines.xz;
    let normalized = scale::score(passed, scale::model(new, floor, reference_bpb));
    with_recipe(StageScore {
        status: "scored".into(),
        passed,
        metrics: m,
        reason: (!passed).then(|| {
            format!(
                "gate not met: the rebuilt model scores {new:.4} bpb against the original's {orig:.4} ({:.1}% apart; at most {:.0}% allowed)",
                diff * 100.0,
                tol * 100.0
            )
        }),
        normalized: Some(normalized),
        public_reason: (!passed).then(|| {
            format!(
                "gate not met: the rebuilt model's verified bpb is more than {:.0}% from the original's",
                tol * 100.0
            )
        }),
    })
}

/// Grades the selfhost stage.
pub(crate) struct SelfhostScorer {
    pub world: Arc<World>,
    /// Trial rebuilds asked for with `check`, for their directories and container names.
    pub trials: std::sync::atomic::AtomicU64,
}

impl SelfhostScorer {
    pub fn new(world: Arc<World>) -> Self {
        Self {
            world,
            trials: 0.into(),
        }
    }
}

fn recipe_problem(ws: &Path) -> Option<String> {
    match std::fs::symlink_metadata(ws.join(RECIPE)) {
        Err(_) => Some(format!("{RECIPE} does not exist at the workspace root")),
        Ok(m) if !m.is_file() => Some(format!("{RECIPE} is not a regular file")),
        Ok(_) => None,
    }
}

/// The interpreter a `#!` line names (`bash` for `#!/usr/bin/env bash`), None without one.
pub(crate) fn shebang_interpreter(head: &[u8]) -> Option<String> {
    let line = head.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let name = first.rsplit('/').next().unwrap_or(first);
    if name == "env" {
        return words
            .find(|w| !w.starts_with('-'))
            .map(|w| w.rsplit('/').next().unwrap_or(w).to_string());
    }
    Some(name.to_string())
}

/// A rebuild as the grade and `check` run it: the recipe copied into `dir/workspace`, then run.
struct Trial {
    run: RebuildRun,
    /// The rebuilt workspace's own disk (when the rebuilder made one), released when graded.
    disk: Option<Box<dyn RebuildDisk>>,
    command: String,
    /// The rebuilt workspace.
    root: crate::sandbox::paths::WorkspaceRoot,
    /// How `bootstrap.sh` failed (exit code, budget), None when it exited 0 in time.
    failed: Option<String>,
}

impl Trial {
    fn bootstrap_json(&self, budget: f64) -> Value {
        let run = &self.run;
        json!({
            "command": self.command,
            "exit_code": run.exit_code,
            "timed_out": run.timed_out,
            "oom_killed": run.oom_killed,
            "seconds": round(run.seconds, 3),
            "cpu_seconds": round(run.cpu_seconds, 3),
            "budget_seconds": budget,
            "stdout_tail": run.stdout_tail,
            "stderr_tail": run.stderr_tail,
            "log": run.log,
            "world_requests": run.requests,
        })
    }
}

/// Copies `recipe` from the workspace `ws` into a fresh `dir/workspace` and runs it there within
/// `budget` seconds; Err says what went wrong on the harness's side.
async fn trial(
    rebuilder: &dyn Rebuilder,
    recipe: &Recipe,
    dir: &Path,
    instance: &str,
    budget: f64,
    disk_mb: u64,
) -> Result<Trial, String> {
    use std::os::unix::fs::PermissionsExt;
    let FreshWorkspace {
        path: fresh,
        owner,
        disk,
    } = rebuilder.fresh_workspace(dir, disk_mb)?;
    copy(recipe, &fresh, owner)
        .map_err(|e| format!("copying the recipe to {}: {e}", fresh.display()))?;
    // The copy is the harness's own: its mode decides the command, not the live workspace.
    let executable = std::fs::symlink_metadata(fresh.join(RECIPE))
        .map(|m| m.permissions().mode() & 0o100 != 0)
        .unwrap_or(false);
    let command = crate::stages::contract::bootstrap_command(executable);
    let job = RebuildJob {
        workspace: fresh.clone(),
        dir: dir.to_path_buf(),
        instance: instance.into(),
        command: command.clone(),
        timeout: Duration::from_secs_f64(budget),
    };
    let run = rebuilder
        .rebuild(&job)
        .await
        .map_err(|e| format!("the rebuild sandbox: {e}"))?;
    let failed = if run.timed_out {
        Some(format!("`{command}` ran out of its {budget:.0} s budget"))
    } else if run.exit_code != 0 {
        let last = run.stderr_tail.trim().lines().last().unwrap_or("");
        Some(format!(
            "`{command}` exited with code {} after {:.1} s{}",
            run.exit_code,
            run.seconds,
            if last.is_empty() {
                String::new()
            } else {
                format!(" (stderr ends: {last})")
            }
        ))
    } else {
        None
    };
    let root = crate::sandbox::paths::WorkspaceRoot::open(&fresh, None)
        .map_err(|e| format!("{}: {e}", fresh.display()))?;
    Ok(Trial {
        run,
        disk,
        command,
        root,
        failed,
    })
}

/// The last `n` characters of the rebuild's output, stdout then stderr.
fn log_tail(run: &RebuildRun, n: usize) -> String {
    let text = format!("{}{}", run.stdout_tail, run.stderr_tail);
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

impl SelfhostScorer {
    /// `check` without a rebuild: the copy, the command and a `bash -n` syntax check.
    async fn quick_check(&self, ctx: &ScoreContext<'_>) -> Result<Checked, ToolError> {
        use std::os::unix::fs::PermissionsExt;
        let ws = ctx.workspace().path();
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        if let Some(p) = recipe_problem(ws) {
            errors.push(p);
        }
        let recipe = select(ws, &ctx.stage.exclude)
            .map_err(|e| ToolError::new("io_error", format!("reading the workspace: {e}")))?;
        let outside: Vec<&Refused> = recipe
            .refused
            .iter()
            .filter(|r| excluded_by(&r.path, &ctx.stage.exclude).is_none())
            .collect();
        for r in outside.iter().take(20) {
            errors.push(format!("{} is not copied: {}", r.path, r.reason));
        }
        let mut sandbox_seconds = 0.0;
        let mut command = Value::Null;
        let mut syntax = Value::Null;
        if errors.is_empty() {
            let executable = std::fs::symlink_metadata(ws.join(RECIPE))
                .map(|m| m.permissions().mode() & 0o100 != 0)
                .unwrap_or(false);
            command = json!(crate::stages::contract::bootstrap_command(executable));
            let head = crate::sandbox::WorkspacePath::parse(RECIPE)
                .ok()
                .and_then(|p| ctx.workspace().read(&p, 256).ok())
                .map(|(data, _)| data)
                .unwrap_or_default();
            let interpreter = shebang_interpreter(&head);
            if !executable && interpreter.as_deref().is_some_and(|i| i != "bash") {
                notes.push(format!(
                    "{RECIPE} is not executable, so it runs as `bash ./{RECIPE}` and its #! line ({}) is not used; chmod +x {RECIPE} to run it with its own interpreter",
                    interpreter.as_deref().unwrap_or("")
                ));
            }
            let shell = match (&interpreter, executable) {
                (None, _) | (_, false) => Some("bash"),
                (Some(i), true) if i == "bash" => Some("bash"),
                (Some(i), true) if i == "sh" || i == "dash" => Some("sh"),
                _ => None,
            };
            syntax = match shell {
                Some(sh) => {
                    let req = ExecRequest {
                        cmd: format!("{sh} -n ./{RECIPE}"),
                        timeout: Duration::from_secs(10),
                        env: vec![],
                        stdin: None,
                    };
                    let mut err = Vec::new();
                    let res = ctx
                        .sandbox
                        .exec(&req, &mut |s, d| {
                            if s == OutStream::Stderr && err.len() < 4096 {
                                err.extend_from_slice(d);
                            }
                        })
                        .await;
                    match res {
                        Ok(o) => {
                            sandbox_seconds = o.duration_ms / 1000.0;
                            if o.shell_code() != 0 {
                                errors.push(format!(
                                    "`{sh} -n ./{RECIPE}` found a syntax error: {}",
                                    String::from_utf8_lossy(&err).trim()
                                ));
                            }
                            json!({"command": format!("{sh} -n ./{RECIPE}"), "exit_code": o.shell_code()})
                        }
                        Err(e) => {
                            json!({"command": format!("{sh} -n ./{RECIPE}"), "error": e.to_string()})
                        }
                    }
                }
                None => {
                    json!({"skipped": format!("the #! line names {}, not a shell", interpreter.unwrap_or_default())})
                }
            };
        }
        Ok(Checked {
            output: json!({
                "ok": errors.is_empty(),
                "errors": errors,
                "notes": notes,
                "command": command,
                "syntax": syntax,
                "files_copied": recipe.copied.len(),
                "bytes": recipe.bytes,
                "copied": recipe.copied.iter().take(200).map(|c| &c.path).collect::<Vec<_>>(),
                "rebuild_budget_seconds": ctx.rebuild_seconds,
                "message": "this is what would be copied into the fresh sandbox and the command that runs it; call check with {\"rebuild\": true} to run it as the grade does (slow: it counts against this stage's command time)",
            }),
            sandbox_seconds,
        })
    }

    /// `check` with `{"rebuild": true}`: the grade's rebuild, verified on the agent's own documents.
    async fn trial_check(
        &self,
        ctx: &ScoreContext<'_>,
        req: &CheckRequest,
    ) -> Result<Checked, ToolError> {
        let root = ctx.workspace();
        let ws = root.path();
        let fail = |errors: Vec<String>| -> Result<Checked, ToolError> {
            Ok(Checked::from(json!({"ok": false, "errors": errors})))
        };
        if let Some(p) = recipe_problem(ws) {
            return fail(vec![p]);
        }
        let (Some(programs), Some(rebuilder)) = (ctx.programs, ctx.rebuilder) else {
            return fail(vec!["this run has no scoring or rebuild sandbox".into()]);
        };
        let budget = ctx.rebuild_seconds.min(req.remaining_sandbox_seconds);
        if budget < 1.0 {
            return fail(vec![format!(
                "this stage has {:.1} s of command time left, too little for a rebuild",
                req.remaining_sandbox_seconds
            )]);
        }
        let recipe = select(ws, &ctx.stage.exclude)
            .map_err(|e| ToolError::new("io_error", format!("reading the workspace: {e}")))?;
        if !recipe.copied.iter().any(|c| c.path == RECIPE) {
            return fail(vec![format!("{RECIPE} would not be copied")]);
        }
        let n = self
            .trials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let dir = ctx.run_dir.selfhost_check(n).path;
        std::fs::create_dir_all(&dir)
            .map_err(|e| ToolError::new("io_error", format!("{}: {e}", dir.display())))?;
        let t = trial(
            rebuilder,
            &recipe,
            &dir,
            &format!("selfhost-check-{n}"),
            budget,
            ctx.disk_mb,
        )
        .await
        .map_err(|e| ToolError::new("sandbox_error", e))?;
        let mut errors: Vec<String> = t.failed.iter().cloned().collect();
        let mut out = json!({
            "command": t.command,
            "exit_code": t.run.exit_code,
            "timed_out": t.run.timed_out,
            "oom_killed": t.run.oom_killed,
            "seconds": round(t.run.seconds, 1),
            "budget_seconds": round(budget, 1),
            "grade_budget_seconds": ctx.rebuild_seconds,
            "world_requests": t.run.requests,
            "log_tail": log_tail(&t.run, 3000),
            "files_copied": recipe.copied.len(),
        });
        let docs = own_sample(root, CHECK_SAMPLE_BYTES);
        if let Some(p) = program_problem(&t.root, PROGRAM) {
            errors.push(format!("the rebuild made no model: {p}"));
        } else if docs.is_empty() {
            errors.push("data/corpus.jsonl has no documents to verify the rebuilt model on".into());
        } else {
            let plan = || common::plan(docs.clone(), vec![], CHECK_POSITIONS, ctx.scoring);
            let rebuilt = bpb::verify(t.run.programs.as_ref(), &plan()).await;
            let original = bpb::verify(programs, &plan()).await;
            out["documents"] = json!(docs.len());
            match (&rebuilt.result, &original.result) {
                (Ok(r), o) => {
                    out["rebuilt_bpb"] = json!(round(r.bpb, 5));
                    if let Ok(o) = o {
                        let diff = (r.bpb - o.bpb).abs() / o.bpb;
                        out["original_bpb"] = json!(round(o.bpb, 5));
                        out["relative_difference"] = json!(round(diff, 5));
                        let tol = crate::config::gates::SELFHOST_BPB_TOLERANCE.value(ctx.gates);
                        if diff > tol {
                            errors.push(format!(
                                "on your own documents the rebuilt model is {:.1}% from the original (the grade allows {:.0}% on hidden ones)",
                                diff * 100.0,
                                tol * 100.0
                            ));
                        }
                    }
                }
                (Err(rej), _) => errors.push(format!("the rebuilt bin/lm does not verify: {rej}")),
            }
        }
        // The rebuilt workspace can be large; its log stays.
        if let Some(d) = t.disk {
            let _ = d.release(false);
        }
        let _ = std::fs::remove_dir_all(dir.join("workspace"));
        out["ok"] = json!(errors.is_empty());
        out["errors"] = json!(errors);
        out["message"] = json!("the recipe was copied and run as the grade runs it, and the rebuilt bin/lm verified on the first documents of your data/corpus.jsonl (the grade uses hidden documents)");
        Ok(Checked {
            output: out,
            sandbox_seconds: t.run.seconds,
        })
    }
}

#[async_trait]
impl Scorer for SelfhostScorer {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        self.quick_check(ctx).await.map(|c| c.output)
    }

    async fn check_with(
        &self,
        ctx: &ScoreContext<'_>,
        req: &CheckRequest,
    ) -> Result<Checked, ToolError> {
        if req.rebuild {
            self.trial_check(ctx, req).await
        } else {
            self.quick_check(ctx).await
        }
    }

    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore {
        let root = ctx.workspace();
        let ws = root.path();
        if let Some(p) = recipe_problem(ws) {
            return StageScore::precondition("failed", p);
        }
        if let Some(p) = program_problem(root, PROGRAM) {
            return StageScore::precondition("failed", format!("the original model: {p}"));
        }
        let (Some(programs), Some(rebuilder)) = (ctx.programs, ctx.rebuilder) else {
            return StageScore::zero("error", "this run has no scoring or rebuild sandbox");
        };
        let (test, _) = match hidden_docs(&self.world) {
            Ok(d) => d,
            Err(e) => return StageScore::zero("error", e),
        };
        let recipe = match select(ws, &ctx.stage.exclude) {
            Ok(r) => r,
            Err(e) => return StageScore::zero("error", format!("reading the workspace: {e}")),
        };
        let mut m = Map::new();
        m.insert("files_copied".into(), json!(recipe.copied.len()));
        m.insert("files_refused".into(), json!(recipe.refused.len()));
        m.insert("recipe".into(), recipe.to_json());
        if !recipe.copied.iter().any(|c| c.path == RECIPE) {
            let why = recipe
                .refused
                .iter()
                .find(|r| r.path == RECIPE)
                .map(|r| r.reason.clone())
                .unwrap_or_default();
            return StageScore::precondition("failed", format!("{RECIPE} was not copied: {why}"))
                .with_metrics(m);
        }
        let plan = || crate::stages::bpb::VerifyPlan {
            hidden: true,
            ..common::plan(test.clone(), vec![], ctx.scoring.positions, ctx.scoring)
        };
        let original = bpb::verify(programs, &plan()).await;
        if let Err(rej) = &original.result {
            m.insert("original".into(), verification_json(&original));
            return original_rejected(rej, m);
        }
        let budget = ctx.rebuild_seconds;
        let dir = ctx.run_dir.selfhost().path;
        let t = match trial(rebuilder, &recipe, &dir, "selfhost", budget, ctx.disk_mb).await {
            Ok(t) => t,
            Err(e) => return StageScore::zero("error", e).with_metrics(m),
        };
        m.insert("rebuild_seconds".into(), json!(round(t.run.seconds, 1)));
        m.insert("bootstrap".into(), t.bootstrap_json(budget));
        if let Some(p) = program_problem(&t.root, PROGRAM) {
            let how = t
                .failed
                .clone()
                .unwrap_or_else(|| format!("`{}` exited with code 0", t.command));
            return StageScore::precondition(
                "failed",
                format!("{how}; the rebuild made no model: {p}"),
            )
            .with_metrics(m);
        }
        let rebuilt = bpb::verify(t.run.programs.as_ref(), &plan()).await;
        let mut score = stage_score(
            &original,
            &rebuilt,
            &self.world.manifest.baselines,
            ctx.gates,
            ctx.reference.get("selfhost_bpb").copied(),
            t.failed.as_deref(),
            m,
        );
        if let Some(Err(e)) = t.disk.map(|d| d.release(true)) {
            score.metrics.insert("disk_warning".into(), json!(e));
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::bpb::Verified;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rolling_and_direct_hashes_agree() {
        let data = noise(300, 5);
        let mut top = 1u64;
        for _ in 0..WINDOW - 1 {
            top = top.wrapping_mul(BASE);
        }
        let mut h = window_hash(&data[..WINDOW]);
        for start in 1..=data.len() - WINDOW {
            h = h
                .wrapping_sub((data[start - 1] as u64 + 1).wrapping_mul(top))
                .wrapping_mul(BASE)
                .wrapping_add(data[start + WINDOW - 1] as u64 + 1);
            assert_eq!(h, window_hash(&data[start..start + WINDOW]), "{start}");
        }
    }

    #[test]
    fn caps_and_excluded_directories() {
        let ws = tempfile::tempdir().unwrap();
        let r = ws.path();
        write(r, "bootstrap.sh", b"#!/bin/sh\n");
        write(r, "src/train.py", b"print(1)\n");
        write(r, "data/corpus.jsonl", b"{}\n");
        write(r, "model/w.bin", &noise(1000, 1));
        write(r, "tokenizer/meta.json", b"{}");
        write(r, "big/weights.bin", &noise(300 * 1024, 2));
        for i in 0..12 {
            write(r, &format!("parts/p{i:02}.bin"), &noise(200 * 1024, 10 + i));
        }
        std::os::unix::fs::symlink("/etc/passwd", r.join("link")).unwrap();
        write(r, "secret/notes.txt", b"x");
        let recipe = select(r, &["secret".to_string()]).unwrap();
        assert_eq!(recipe.copied[0].path, "bootstrap.sh");
        let reason = |p: &str| {
            recipe
                .refused
                .iter()
                .find(|x| x.path == p)
                .map(|x| x.reason.clone())
                .unwrap_or_else(|| panic!("{p} not refused: {recipe:?}"))
        };
        assert!(reason("data/corpus.jsonl").contains("under data/"));
        assert!(reason("model/w.bin").contains("under model/"));
        assert!(reason("tokenizer/meta.json").contains("under tokenizer/"));
        assert!(reason("secret/notes.txt").contains("under secret/"));
        assert!(reason("big/weights.bin").contains("over the 256 KiB limit"));
        assert!(reason("link").contains("symlink"));
        // Ten 200 KiB parts fit in 2 MiB with the small files; the rest are refused.
        let parts = recipe
            .copied
            .iter()
            .filter(|c| c.path.starts_with("parts/"))
            .count();
        assert_eq!(parts, 10, "{recipe:?}");
        assert!(reason("parts/p11.bin").contains("past 2 MiB in all"));
        assert!(recipe.bytes <= MAX_RECIPE_BYTES);
        assert!(recipe.copied.iter().any(|c| c.path == "src/train.py"));
    }

    #[test]
    fn a_small_model_split_into_parts_is_refused_but_copied_code_is_not() {
        let ws = tempfile::tempdir().unwrap();
        let r = ws.path();
        let weights = noise(600 * 1024, 9);
        write(r, "model/weights.bin", &weights);
        // Code copied next to the model (as the reference does with lm.py) is fine.
        let code: Vec<u8> = (0..400)
            .flat_map(|i| format!("x{i} = {i} * 2  # line\n").into_bytes())
            .collect();
        write(r, "model/lm.py", &code);
        write(r, "src/lm.py", &code);
        write(r, "bootstrap.sh", b"cat parts/* > model/weights.bin\n");
        for (i, c) in weights.chunks(150 * 1024).enumerate() {
            write(r, &format!("parts/{i}"), c);
        }
        let recipe = select(r, &[]).unwrap();
        let refused: Vec<&str> = recipe
            .refused
            .iter()
            .filter(|x| x.path.starts_with("parts/"))
            .map(|x| x.reason.as_str())
            .collect();
        assert_eq!(refused.len(), 4, "{recipe:?}");
        assert!(
            refused[0]
                .contains("copied verbatim from built artifacts (first seen in model/weights.bin)"),
            "{}",
            refused[0]
        );
        assert!(recipe.copied.iter().any(|c| c.path == "src/lm.py"));
        // Without the parts, the code alone stays under the limit.
        for i in 0..4 {
            std::fs::remove_file(r.join(format!("parts/{i}"))).unwrap();
        }
        let recipe = select(r, &[]).unwrap();
        assert!(
            recipe.refused.iter().all(|x| x.path.starts_with("model/")),
            "{recipe:?}"
        );
    }

    #[test]
    fn the_copy_carries_the_bytes_selection_read_and_never_follows_links_or_fifos() {
        let ws = tempfile::tempdir().unwrap();
        let r = ws.path();
        write(r, "bootstrap.sh", b"#!/bin/sh\n");
        write(r, "recipe/blob", b"checked bytes");
        // A directory link and a FIFO, where a swap could put them: neither is followed or opened.
        let host = tempfile::tempdir().unwrap();
        write(host.path(), "secret", b"host only");
        std::os::unix::fs::symlink(host.path(), r.join("linkdir")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("recipe/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let recipe = select(r, &[]).unwrap();
        let copied: Vec<&str> = recipe.copied.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(copied, ["bootstrap.sh", "recipe/blob"], "{recipe:?}");
        assert!(recipe.refused.iter().any(|x| x.path == "recipe/pipe"));
        assert!(recipe.refused.iter().any(|x| x.path == "linkdir"));
        // Swapped for a link to a host file after selection: the copy still holds what was read.
        std::fs::remove_file(r.join("recipe/blob")).unwrap();
        std::os::unix::fs::symlink(host.path().join("secret"), r.join("recipe/blob")).unwrap();
        let to = tempfile::tempdir().unwrap();
        copy(&recipe, to.path(), None).unwrap();
        assert_eq!(
            std::fs::read(to.path().join("recipe/blob")).unwrap(),
            b"checked bytes"
        );
        // A path through a linked directory is refused by the confined reader itself.
        let root = crate::sandbox::paths::WorkspaceRoot::open(r, None).unwrap();
        let e = read_candidate(&root, "linkdir/secret", MAX_FILE_BYTES).unwrap_err();
        assert!(e.contains("without following links"), "{e}");
    }

    #[test]
    fn copies_keep_the_executable_bit() {
        use std::os::unix::fs::PermissionsExt;
        let ws = tempfile::tempdir().unwrap();
        write(ws.path(), "bootstrap.sh", b"#!/bin/sh\n");
        std::fs::set_permissions(
            ws.path().join("bootstrap.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        write(ws.path(), "a/b/c.txt", b"c");
        let recipe = select(ws.path(), &[]).unwrap();
        let to = tempfile::tempdir().unwrap();
        copy(&recipe, to.path(), None).unwrap();
        assert_eq!(std::fs::read(to.path().join("a/b/c.txt")).unwrap(), b"c");
        let mode = std::fs::metadata(to.path().join("bootstrap.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }

    fn verification(bpb: f64) -> Verification {
        Verification {
            result: Ok(Verified {
                bpb,
                bits: bpb * 100.0,
                bytes: 100,
                tokens: 100,
                extra_bpb: None,
                per_doc: vec![],
                checks: vec![],
                max_next_diff: 0.0,
                max_sum_error: 0.0,
                repeated: vec![],
            }),
            seed: 1,
            positions: vec![],
            calls: vec![],
            harness_seconds: 0.0,
            sandbox_error: None,
        }
    }

    #[test]
    fn within_three_percent_passes_and_beating_conditional_xz_is_recorded() {
        let s = scored(&verification(1.40), &verification(1.42), 1.8, None);
        assert!(s.passed, "{:?}", s.reason);
        assert_eq!(s.metrics["beats_conditional_xz"], true);
        let q = (3.0f64 / 1.42).ln() / (3.0f64 / 1.4).ln(); // log bpb from the gate, xz 3.0
        assert!((s.normalized.unwrap() - (0.5 + 0.5 * q)).abs() < 1e-9);
        let s = scored(&verification(1.40), &verification(1.50), 1.45, None);
        assert!(!s.passed);
        assert_eq!(s.metrics["beats_conditional_xz"], false);
        assert!(s.reason.unwrap().contains("7.1% apart; at most 3% allowed"));
    }

    #[test]
    fn a_failed_recipe_fails_the_stage_even_when_the_model_matches() {
        let how = "`./bootstrap.sh` exited with code 2 after 0.0 s";
        let s = scored(&verification(1.40), &verification(1.40), 1.8, Some(how));
        assert!(!s.passed);
        assert_eq!(s.normalized, Some(0.0));
        assert_eq!(
            s.reason.as_deref(),
            Some("`./bootstrap.sh` exited with code 2 after 0.0 s")
        );
        assert_eq!(s.told(), s.reason);
        // Within tolerance otherwise: the public reason names no bpb.
        let s = scored(&verification(1.40), &verification(1.50), 1.8, None);
        let told = s.told().unwrap();
        assert!(!told.contains("1.5") && !told.contains("1.4"), "{told}");
        assert!(told.contains("more than 3% from the original"), "{told}");
    }

    /// The stage's score against a reference of 1.4 bpb, with per-document xz at 3.0 and
    /// conditional xz at `conditional`; `recipe` says how the recipe failed.
    fn scored(
        original: &Verification,
        rebuilt: &Verification,
        conditional: f64,
        recipe: Option<&str>,
    ) -> StageScore {
        let (b, gates) = (ladder(conditional), BTreeMap::new());
        stage_score(original, rebuilt, &b, &gates, Some(1.4), recipe, Map::new())
    }

    /// A world's baselines with per-document xz at 3.0 and conditional xz at `conditional`.
    fn ladder(conditional: f64) -> Baselines {
        Baselines {
            uniform: 8.0,
            unigram: 5.0,
            gzip: 3.2,
            xz: 3.0,
            xz_conditional: conditional,
            test_bytes: 10_000,
            context_bytes: 100_000,
            seconds: 0.0,
        }
    }

    struct NoRebuild;

    #[async_trait]
    impl Rebuilder for NoRebuild {
        async fn rebuild(&self, _job: &RebuildJob) -> Result<RebuildRun, String> {
            Err("no rebuild in this test".into())
        }
    }

    #[test]
    fn the_default_fresh_workspace_is_an_empty_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "workspace/left/over.txt",
            b"from an earlier trial",
        );
        let fresh = NoRebuild.fresh_workspace(dir.path(), 64).unwrap();
        assert_eq!(fresh.path, dir.path().join("workspace"));
        assert_eq!(std::fs::read_dir(&fresh.path).unwrap().count(), 0);
        assert!(fresh.owner.is_none() && fresh.disk.is_none());
    }

    #[test]
    fn shebangs_name_their_interpreter() {
        assert_eq!(
            shebang_interpreter(b"#!/usr/bin/env bash\nset -e").as_deref(),
            Some("bash")
        );
        assert_eq!(
            shebang_interpreter(b"#!/bin/sh -eu\n").as_deref(),
            Some("sh")
        );
        assert_eq!(
            shebang_interpreter(b"#!/usr/bin/env -S python3 -u\n").as_deref(),
            Some("python3")
        );
        assert_eq!(shebang_interpreter(b"set -e\n"), None);
    }

    #[test]
    fn a_rebuild_that_does_not_verify_fails_with_the_reason() {
        let rej = bpb::Rejection::new(bpb::RejectKind::Failed, "score exited with code 1");
        let mut bad = verification(1.0);
        bad.result = Err(rej);
        let s = scored(&verification(1.4), &bad, 1.8, None);
        assert_eq!(s.status, "rejected");
        assert!(s
            .reason
            .unwrap()
            .starts_with("the rebuilt bin/lm does not verify: failed: score exited"));
    }
}
