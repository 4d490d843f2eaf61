//! `gptx slurm submit|status`: a plan's unfinished items as an sbatch job array, and each item's state beside its Slurm task's.

use super::*;
use crate::plan::slurm::{self as sl, ScriptOptions};
use crate::plan::ItemState;

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: exit::USAGE,
        error: e.into(),
    }
}

/// An absolute form of `p` (canonical when it exists).
fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// Where a plan's Slurm files go: job scripts, `jobs.jsonl`, the tasks' output.
fn slurm_dir(runs_dir: &std::path::Path, plan_id: &str) -> std::path::PathBuf {
    absolute(runs_dir)
        .join(".plans")
        .join(plan_id)
        .join("slurm")
}

/// A Slurm command's stdout, or an error naming it: exit 3 when it is not installed.
fn slurm_command(program: &str, args: &[String]) -> Result<String, Exit> {
    slurm_stdin(program, args, None)
}

/// A Slurm command fed `input` on stdin (else nothing); its stdout, or an error naming it.
fn slurm_stdin(program: &str, args: &[String], input: Option<&str>) -> Result<String, Exit> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            env_error(anyhow::anyhow!(
                "{program}: {e} (is this a Slurm login node with {program} on PATH?)"
            ))
        })?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), input) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| failed(anyhow::anyhow!("{program}: writing the job script: {e}")))?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    if !out.status.success() {
        return Err(failed(anyhow::anyhow!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// squeue's arguments for this user's tasks of a plan's jobs (by the jobs' name).
fn squeue_args(plan_id: &str) -> Vec<String> {
    vec![
        "--noheader".into(),
        "--array".into(),
        "--me".into(),
        format!("--name=gptx-{plan_id}"),
        format!("--format={}", sl::SQUEUE_FORMAT),
    ]
}

/// `gptx slurm submit`.
/// The gptx every task runs: `--gptx`, else this one.
fn gptx_path(a: &SlurmSubmitArgs) -> Result<std::path::PathBuf, Exit> {
    match &a.gptx {
        Some(p) => Ok(absolute(p)),
        None => std::env::current_exe()
            .map_err(|e| failed(anyhow::anyhow!("the path of this gptx: {e}"))),
    }
}

pub(super) async fn submit(a: SlurmSubmitArgs) -> Result<i32, Exit> {
    let (plan, runs_dir, states) = plan_cmd::item_states(&a.plan, &[]).map_err(usage)?;
    let running: Vec<String> = states
        .iter()
        .filter(|s| s.state == ItemState::Running)
        .map(|s| s.item.index.to_string())
        .collect();
    // Tasks of this plan still queued or running (they hold no item lock while pending).
    let queued = slurm_command("squeue", &squeue_args(&plan.plan_id))
        .map(|out| sl::queued(&sl::parse_squeue(&out)))
        .unwrap_or_default();
    let indices: Vec<usize> = states
        .iter()
        .filter(|s| !matches!(s.state, ItemState::Done | ItemState::Running))
        .filter(|s| !queued.contains(&s.item.index))
        .map(|s| s.item.index)
        .collect();
    let running: Vec<String> = running
        .into_iter()
        .chain(queued.iter().map(|i| i.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let done = states.iter().filter(|s| s.state == ItemState::Done).count();
    if indices.is_empty() {
        eprintln!(
            "gptx slurm: nothing to submit: {done} of {} items are done{}",
            states.len(),
            if running.is_empty() {
                String::new()
            } else {
                format!(", items {} are queued or running", running.join(","))
            }
        );
        return Ok(exit::OK);
    }
    let home = Home::locate().map_err(env_error)?;
    let gptx = gptx_path(&a)?;
    let dir = slurm_dir(&runs_dir, &plan.plan_id);
    std::fs::create_dir_all(&dir).map_err(|e| failed(anyhow::anyhow!("{}: {e}", dir.display())))?;
    let opts = ScriptOptions {
        gptx,
        plan_path: absolute(&a.plan),
        home: absolute(&home.root),
        cache: std::env::var_os("GPTX_CACHE_DIR").map(|c| absolute(std::path::Path::new(&c))),
        engine: sl::submitted_engine(),
        log_dir: dir.clone(),
        retries: a.retries,
        indices: indices.clone(),
    };
    let text = sl::script(&plan, &opts).map_err(usage)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let script = dir.join(format!("submit-{stamp}.sbatch"));
    std::fs::write(&script, &text)
        .map_err(|e| failed(anyhow::anyhow!("{}: {e}", script.display())))?;
    if a.dry_run {
        out_text(&text);
        eprintln!(
            "gptx slurm: wrote {} ({} tasks: items {}); not submitted (--dry-run)",
            script.display(),
            indices.len(),
            sl::array_spec(&indices)
        );
        return Ok(exit::OK);
    }
    let mut args: Vec<String> = vec!["--parsable".into()];
    args.extend(a.sbatch.iter().cloned());
    let submitted_at = chrono::Utc::now();
    // The script goes to sbatch on its stdin: the file beside the runs is a record, and a swap of
    // it between writing and submitting changes nothing.
    let out = slurm_stdin("sbatch", &args, Some(&text))?;
    // --parsable prints `jobid` or `jobid;cluster`.
    let job_id = out
        .lines()
        .next()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
        return Err(failed(anyhow::anyhow!(
            "sbatch printed {:?}, not a job id",
            out.chars().take(200).collect::<String>()
        )));
    }
    let record = serde_json::json!({
        "job_id": job_id,
        "submitted_at": submitted_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "indices": indices,
        "script": script,
        "sbatch_options": a.sbatch,
    });
    {
        use std::io::Write;
        let jobs = dir.join("jobs.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jobs)
            .map_err(|e| failed(anyhow::anyhow!("{}: {e}", jobs.display())))?;
        f.write_all(format!("{record}\n").as_bytes())
            .map_err(|e| failed(anyhow::anyhow!("{}: {e}", jobs.display())))?;
    }
    out_text(&format!("{job_id}\n"));
    eprintln!(
        "gptx slurm: submitted job {job_id}: {} tasks (items {}), each {} CPUs, {} MB; {done} done already{}\n  follow it: gptx slurm status --plan {}",
        indices.len(),
        sl::array_spec(&indices),
        plan.resources.cpus,
        plan.resources.memory_mb,
        if running.is_empty() {
            String::new()
        } else {
            format!(", items {} queued or running already (not submitted)", running.join(","))
        },
        a.plan.display()
    );
    Ok(exit::OK)
}

/// The jobs `gptx slurm submit` recorded for a plan: job id and submission time, oldest first.
pub(crate) fn jobs(
    runs_dir: &std::path::Path,
    plan_id: &str,
) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let path = slurm_dir(runs_dir, plan_id).join("jobs.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v.get("job_id")?.as_str()?.to_string(),
                v.get("submitted_at")?.as_str()?.parse().ok()?,
            ))
        })
        .collect()
}

/// `gptx slurm status`.
pub(super) async fn status(a: SlurmStatusArgs) -> Result<i32, Exit> {
    let (plan, runs_dir, states) = plan_cmd::item_states(&a.plan, &[]).map_err(usage)?;
    let tally = crate::plan::Tally::of(&states);
    let name = format!("gptx-{}", plan.plan_id);
    // Tasks still queued or running: squeue, by the job's name (old job ids make squeue fail).
    let (tasks, squeue_note) = match slurm_command("squeue", &squeue_args(&plan.plan_id)) {
        Ok(out) => (sl::parse_squeue(&out), None),
        Err(e) => (vec![], Some(format!("{:#}", e.error))),
    };
    // Finished tasks: sacct, when the cluster keeps accounting.
    let sacct = slurm_command(
        "sacct",
        &[
            "--noheader".into(),
            "--parsable2".into(),
            "--allocations".into(),
            format!("--name={name}"),
            "--format=JobID,State,NodeList,ExitCode".into(),
        ],
    );
    let mut finished: std::collections::BTreeMap<usize, String> = Default::default();
    let sacct_note = match &sacct {
        Ok(out) => {
            for line in out.lines() {
                let f: Vec<&str> = line.split('|').collect();
                if let [id, state, nodes, code, ..] = f.as_slice() {
                    if let Some(i) = id
                        .split_once('_')
                        .and_then(|(_, t)| t.parse::<usize>().ok())
                    {
                        finished.insert(i, format!("{state} on {nodes} (exit {code})"));
                    }
                }
            }
            None
        }
        Err(e) => Some(format!("{:#}", e.error)),
    };
    let slurm_of = |index: usize| -> String {
        if let Some(t) = tasks.iter().find(|t| t.index == Some(index)) {
            return format!(
                "{} {}",
                t.state,
                if t.nodes.is_empty() {
                    &t.reason
                } else {
                    &t.nodes
                }
            );
        }
        if let Some(t) = tasks.iter().find(|t| t.pending.contains(&index)) {
            return format!("{} ({})", t.state, t.reason);
        }
        finished.get(&index).cloned().unwrap_or_else(|| "-".into())
    };
    let jobs = jobs(&runs_dir, &plan.plan_id);
    if a.json {
        let items: Vec<serde_json::Value> = states
            .iter()
            .map(|s| {
                serde_json::json!({
                    "index": s.item.index, "id": s.item.id, "agent": s.item.agent,
                    "seed": s.item.seed, "state": s.state, "run_id": s.run_id,
                    "slurm": slurm_of(s.item.index),
                })
            })
            .collect();
        out_text(&format!(
            "{}\n",
            serde_json::json!({
                "plan_id": plan.plan_id, "tally": tally, "items": items,
                "jobs": jobs.iter().map(|(j, t)| serde_json::json!({"job_id": j, "submitted_at": t})).collect::<Vec<_>>(),
                "squeue_error": squeue_note, "sacct_error": sacct_note,
            })
        ));
        return Ok(exit::OK);
    }
    let mut text = format!(
        "plan {} · {tally} · jobs {}\n{:>5}  {:<34} {:<11} {:<24} slurm\n",
        plan.plan_id,
        if jobs.is_empty() {
            "none submitted".to_string()
        } else {
            jobs.iter()
                .map(|(j, _)| j.as_str())
                .collect::<Vec<_>>()
                .join(",")
        },
        "item",
        "id",
        "state",
        "run"
    );
    for s in &states {
        text.push_str(&plan_cmd::item_row(
            s,
            &crate::report::term::terminal_safe(&slurm_of(s.item.index), false),
        ));
    }
    if let Some(n) = squeue_note {
        text.push_str(&format!("squeue: {n}\n"));
    }
    if let Some(n) = sacct_note {
        text.push_str(&format!(
            "sacct: {} (finished tasks are shown by their items' runs)\n",
            n.lines().last().unwrap_or("")
        ));
    }
    out_text(&text);
    Ok(exit::OK)
}
