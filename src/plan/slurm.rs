//! Slurm: a plan's unfinished items as an sbatch job array, one array task per item, and what squeue and sacct say of the tasks.
//!
//! The array's task index is the item's index, so `gptx run --plan FILE --item
//! $SLURM_ARRAY_TASK_ID` runs exactly that item. Slurm places, requeues and retries tasks; gptx
//! makes each task idempotent (a done item is kept, an interrupted one resumed) and exclusive
//! (the item lock).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Plan;

/// What a job script is made of besides the plan.
#[derive(Debug, Clone)]
pub struct ScriptOptions {
    /// The gptx binary every node runs (an absolute path).
    pub gptx: PathBuf,
    /// The plan file (an absolute path on a filesystem every node mounts).
    pub plan_path: PathBuf,
    /// `GPTX_HOME`: the checkout with tasks/ and sandboxes/ on every node.
    pub home: PathBuf,
    /// `GPTX_CACHE_DIR`, when set at submission (else each node's default).
    pub cache: Option<PathBuf>,
    /// `GPTX_ENGINE` (`docker` or `podman`), when set at submission: the tasks use it even where
    /// sbatch does not pass the submitter's environment (`--export=NONE`).
    pub engine: Option<String>,
    /// Where the tasks' output goes (`%A_%a.out` per task).
    pub log_dir: PathBuf,
    /// How many times a failed task requeues itself.
    pub retries: u32,
    /// The item indices to run.
    pub indices: Vec<usize>,
}

/// Why a script cannot be written, or Slurm's answer not read.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("no item to submit: every item of plan {0} is done or running")]
    Nothing(String),
    #[error("{what} must be an absolute path, not {path}")]
    Relative { what: &'static str, path: String },
    #[error("{what}: {path:?} holds a newline, which a job script cannot carry")]
    Newline { what: &'static str, path: String },
    #[error("the log folder {path:?} holds a space, `%`, `\"`, `\\` or `#`, which sbatch's #SBATCH --output line cannot carry (give the plan a runs directory without them)")]
    Unsafe { path: String },
}

/// Slurm's `--array` list of `indices`: ranges where they run on (`0-3,5,7-8`).
pub fn array_spec(indices: &[usize]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Slurm's `--time` of `seconds`, rounded up to whole minutes.
fn time_limit(seconds: u64) -> String {
    let minutes = seconds.div_ceil(60).max(1);
    format!("{}:{:02}:00", minutes / 60, minutes % 60)
}

/// Refuses options the script cannot carry: no item, a relative path, a newline in a path, a log
/// folder sbatch would split or expand.
fn check(plan: &Plan, o: &ScriptOptions) -> Result<(), SlurmError> {
    if o.indices.is_empty() {
        return Err(SlurmError::Nothing(plan.plan_id.clone()));
    }
    let mut paths: Vec<(&'static str, &Path)> = vec![
        ("--gptx", &o.gptx),
        ("--plan", &o.plan_path),
        ("GPTX_HOME", &o.home),
        ("the log folder", &o.log_dir),
    ];
    if let Some(c) = &o.cache {
        paths.push(("GPTX_CACHE_DIR", c));
    }
    for (what, p) in paths {
        let text = p.display().to_string();
        if !p.is_absolute() {
            return Err(SlurmError::Relative { what, path: text });
        }
        if text.contains('\n') || text.contains('\r') {
            return Err(SlurmError::Newline { what, path: text });
        }
    }
    // sbatch splits #SBATCH lines on white space and expands `%` patterns in --output.
    let log = o.log_dir.display().to_string();
    if log
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '%' | '"' | '\\' | '#'))
    {
        return Err(SlurmError::Unsafe { path: log });
    }
    Ok(())
}

/// The script's `#SBATCH` lines: the array, the item's CPUs, memory, time and GPUs, requeueing and
/// the log.
fn header(plan: &Plan, o: &ScriptOptions) -> String {
    let r = &plan.resources;
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# gptx plan {} (suite {}, {} items): one array task per unfinished item; written by `gptx slurm submit`.\n",
        plan.plan_id,
        plan.suite.replace('\n', " "),
        plan.items.len()
    ));
    s.push_str(&format!("#SBATCH --job-name=gptx-{}\n", plan.plan_id));
    s.push_str(&format!("#SBATCH --array={}\n", array_spec(&o.indices)));
    s.push_str("#SBATCH --ntasks=1\n");
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", r.cpus));
    s.push_str(&format!("#SBATCH --mem={}M\n", r.memory_mb));
    s.push_str(&format!("#SBATCH --time={}\n", time_limit(r.wall_seconds)));
    if r.gpus > 0 {
        // gptx gives its sandboxes the devices Slurm gives the job (`SLURM_JOB_GPUS`).
        s.push_str(&format!("#SBATCH --gpus={}\n", r.gpus));
    }
    s.push_str("#SBATCH --requeue\n");
    s.push_str("#SBATCH --open-mode=append\n");
    // sbatch reads #SBATCH lines verbatim (no shell quoting): the path is checked for newlines.
    s.push_str(&format!(
        "#SBATCH --output={}/%A_%a.out\n",
        o.log_dir.display()
    ));
    s
}

/// The engine the tasks are to use, from `GPTX_ENGINE` at submission: a name only (`docker`,
/// `podman`), never a socket, since each task's gptx starts its own Podman service.
pub fn submitted_engine() -> Option<String> {
    let engine = std::env::var("GPTX_ENGINE").ok();
    engine.filter(|e| e == "docker" || e == "podman")
}

/// The script's `export` lines for the cache and the engine, when set at submission.
fn exports(o: &ScriptOptions) -> String {
    let q = |p: &str| shell_quote(p);
    let cache = o
        .cache
        .as_ref()
        .map(|c| ("GPTX_CACHE_DIR", c.display().to_string()));
    let engine = o.engine.clone().map(|e| ("GPTX_ENGINE", e));
    let lines = [cache, engine].into_iter().flatten();
    lines
        .map(|(k, v)| format!("export {k}={}\n", q(&v)))
        .collect()
}

/// The sbatch job script of `plan`'s items `o.indices`.
pub fn script(plan: &Plan, o: &ScriptOptions) -> Result<String, SlurmError> {
    check(plan, o)?;
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut s = header(plan, o);
    s.push_str(&format!(
        r#"
# The task's item is its array index. gptx keeps a done item, resumes an interrupted one, and
# otherwise starts it, under the item's lock (a second task of one item waits for it).
export GPTX_HOME={home}
{cache}gptx={gptx}
plan={plan}
item="$SLURM_ARRAY_TASK_ID"
restarts="${{SLURM_RESTART_COUNT:-0}}"
echo "gptx slurm: item $item of plan {id} on $(hostname), attempt $((restarts + 1)), $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# scancel, a requeue and the time limit send SIGTERM to gptx itself; it stops its run, removes its
# containers, marks the run interrupted and exits 130. The shell only waits for it to finish.
trap 'echo "gptx slurm: SIGTERM: gptx is ending its run" >&2' TERM
"$gptx" run --plan "$plan" --item "$item" --quiet &
child=$!
rc=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
# gptx may have ended just as the signal cut `wait` short: its status is still on record.
wait "$child" 2>/dev/null
late=$?
[ "$late" -ne 127 ] && rc=$late

# gptx's exit codes: 0 the item ran (whatever level it reached) or was done already; 1 failed;
# 3 the environment is not ready (engine, image); 130 interrupted. A failure requeues the task,
# which then resumes its item, at most {retries} times.
if {{ [ "$rc" -eq 1 ] || [ "$rc" -eq 3 ]; }} && [ "$restarts" -lt {retries} ]; then
  echo "gptx slurm: item $item failed (exit $rc); requeueing it (retry $((restarts + 1)) of {retries})" >&2
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" && exit 0
fi
exit "$rc"
"#,
        home = q(&o.home),
        cache = exports(o),
        gptx = q(&o.gptx),
        plan = q(&o.plan_path),
        id = plan.plan_id,
        retries = o.retries,
    ));
    Ok(s)
}

/// One array task as squeue shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskState {
    pub job_id: String,
    /// The array index (the item's index); None for a line of several pending tasks.
    pub index: Option<usize>,
    /// Pending tasks squeue folds into one line (`[3-5]`).
    pub pending: Vec<usize>,
    pub state: String,
    pub nodes: String,
    pub reason: String,
}

/// The squeue `--format` [`parse_squeue`] reads: array job id, array task id, state, nodes, reason.
pub const SQUEUE_FORMAT: &str = "%F|%K|%T|%N|%r";

/// The item indices squeue lists as still queued or running (pending ranges unfolded).
pub fn queued(tasks: &[TaskState]) -> Vec<usize> {
    let mut out: Vec<usize> = tasks
        .iter()
        .flat_map(|t| t.index.into_iter().chain(t.pending.iter().copied()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Reads `squeue --noheader --array --format=SQUEUE_FORMAT` output; lines it cannot read are
/// skipped (squeue's output is not ours to trust blindly, but it is not the agent's either).
pub fn parse_squeue(text: &str) -> Vec<TaskState> {
    let mut out = Vec::new();
    for line in text.lines().take(100_000) {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() != 5 || f[0].is_empty() {
            continue;
        }
        let task = f[1].trim();
        let (index, pending) = match task.parse::<usize>() {
            Ok(i) => (Some(i), vec![]),
            Err(_) => (
                None,
                parse_ranges(task.trim_matches(|c| c == '[' || c == ']')),
            ),
        };
        out.push(TaskState {
            job_id: f[0].to_string(),
            index,
            pending,
            state: f[2].to_string(),
            nodes: f[3].to_string(),
            reason: f[4].to_string(),
        });
    }
    out
}

/// `0-3,5` → 0,1,2,3,5 (a `%N` step suffix such as `0-9%2` is dropped; at most 100,000).
fn parse_ranges(text: &str) -> Vec<usize> {
    let text = text.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            if a <= b && b - a < 100_000 {
                out.extend(a..=b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_fold_runs_into_ranges() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[5, 0, 1, 3, 7, 8]), "0-1,3,5,7-8");
        assert_eq!(array_spec(&[4]), "4");
        assert_eq!(array_spec(&[2, 2]), "2");
        assert_eq!(parse_ranges("0-3,5"), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_ranges("2-4%1"), vec![2, 3, 4]);
        assert!(parse_ranges("9-1,x").is_empty());
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(time_limit(3600), "1:00:00");
        assert_eq!(time_limit(3601), "1:01:00");
        assert_eq!(time_limit(0), "0:01:00");
    }

    #[test]
    fn squeue_lines_are_read_and_garbage_skipped() {
        let text = "41|0|RUNNING|node1|None\n41|[3-5]|PENDING||Resources\ngarbage\n41|2|COMPLETING|node2|None\n";
        let t = parse_squeue(text);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].index, Some(0));
        assert_eq!(t[0].state, "RUNNING");
        assert_eq!(t[1].index, None);
        assert_eq!(t[1].pending, vec![3, 4, 5]);
        assert_eq!(t[2].nodes, "node2");
        assert_eq!(queued(&t), vec![0, 2, 3, 4, 5]);
    }

    /// Options for item 0 with the log folder `log`, and a plan path with a quote and a space.
    fn o(log: &str) -> ScriptOptions {
        ScriptOptions {
            gptx: "/usr/bin/gptx".into(),
            plan_path: "/p/it's here/plan.json".into(),
            home: "/h".into(),
            cache: None,
            engine: None,
            log_dir: log.into(),
            retries: 2,
            indices: vec![0],
        }
    }

    #[test]
    fn a_plan_with_gpus_asks_slurm_for_them() {
        let mut plan = crate::plan::tests::sample(&["null"], &[1], "runs");
        assert!(!script(&plan, &o("/ok")).unwrap().contains("--gpus"));
        plan.resources.gpus = 2;
        let text = script(&plan, &o("/ok")).unwrap();
        assert!(text.contains("#SBATCH --gpus=2\n"), "{text}");
    }

    #[test]
    fn a_log_folder_sbatch_cannot_carry_is_refused() {
        let plan = crate::plan::tests::sample(&["null"], &[1], "runs");
        for bad in ["/a b/slurm", "/a%x/slurm", "/a\"b/slurm", "/a#/slurm"] {
            assert!(
                matches!(script(&plan, &o(bad)), Err(SlurmError::Unsafe { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            script(&plan, &o("rel/slurm")),
            Err(SlurmError::Relative { .. })
        ));
        let text = script(&plan, &o("/ok/slurm")).unwrap();
        // A plan path with a quote and a space is one shell word.
        assert!(text.contains(r"plan='/p/it'\''s here/plan.json'"), "{text}");
        assert!(text.contains("#SBATCH --output=/ok/slurm/%A_%a.out"));
    }
}
