//! `gptx bench plan`: a fresh plan run start to end, here (`--via local`) or through Slurm (`--via slurm`), with its wall time and each item's overhead from submission to its first tool call.
//!
//! An item's overhead is the time it waits for nothing: from the moment a slot was free for it
//! (the submission, or the end of the item before it in that slot) to its task starting (the
//! scheduler's dispatch), plus from its task starting to its run's first tool call (gptx's own
//! start: the plan checked, the world and image found, the sandbox, network and web server up).
//! Slots are modelled greedily: the k-th item to start took the slot the (k − slots)-th item to
//! end gave up.

use super::*;
use crate::plan::ItemState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `gptx run --plan FILE --parallel N` on this machine.
    Local,
    /// `gptx slurm submit --plan FILE` to the cluster `SLURM_CONF` names.
    Slurm,
}

#[derive(Debug, Args)]
pub struct BenchPlanArgs {
    /// A plan none of whose items has run yet (`gptx plan --out DIR/plan.json`).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Where the items run.
    #[arg(long, value_enum)]
    pub via: Via,
    /// --via local: items at once (`gptx run --parallel`).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub parallel: u16,
    /// --via slurm: how many items the cluster runs at once (nodes × items per node), for the
    /// slot model.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub slots: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600.0, value_name = "S")]
    pub timeout: f64,
    /// A label for the result line (e.g. "slurm, 2 nodes").
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn failed_now(e: impl Into<anyhow::Error>) -> Exit {
    failed(e)
}

/// One item's times, in seconds after the submission.
#[derive(Debug, Clone, serde::Serialize)]
struct ItemTimes {
    index: usize,
    agent: String,
    seed: u64,
    started: f64,
    first_call: f64,
    ended: f64,
    dispatch: f64,
    startup: f64,
    overhead: f64,
}

/// The first `step_started` of a run's trace, read line by line.
fn first_call(dir: &std::path::Path) -> Option<chrono::DateTime<chrono::Utc>> {
    use std::io::BufRead;
    let f = std::fs::File::open(dir.join("events.jsonl")).ok()?;
    for line in std::io::BufReader::new(f).lines().take(100_000) {
        let line = line.ok()?;
        if line.contains("\"type\":\"step_started\"") {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            return v["ts"].as_str()?.parse().ok();
        }
    }
    None
}

pub(super) async fn bench_plan(a: BenchPlanArgs) -> Result<i32, Exit> {
    let usage = |e: anyhow::Error| Exit {
        code: exit::USAGE,
        error: e,
    };
    let (plan, runs_dir, states) = plan_cmd::item_states(&a.plan, &[]).map_err(usage)?;
    if states.iter().any(|s| s.state != ItemState::Missing) {
        return Err(usage(anyhow::anyhow!(
            "--plan {}: some items have run already; the bench measures a whole plan from nothing (make a fresh one with `gptx plan`)",
            a.plan.display()
        )));
    }
    let exe = std::env::current_exe().map_err(failed_now)?;
    let submitted = chrono::Utc::now();
    let t0 = std::time::Instant::now();
    let slots = match a.via {
        Via::Local => {
            let status = tokio::process::Command::new(&exe)
                .args([
                    "run",
                    "--quiet",
                    "--parallel",
                    &a.parallel.to_string(),
                    "--plan",
                ])
                .arg(&a.plan)
                .stdout(std::process::Stdio::null())
                .status()
                .await
                .map_err(failed_now)?;
            if !status.success() {
                eprintln!("gptx bench plan: the batch ended with {status}");
            }
            usize::from(a.parallel)
        }
        Via::Slurm => {
            let out = tokio::process::Command::new(&exe)
                .args(["slurm", "submit", "--plan"])
                .arg(&a.plan)
                .output()
                .await
                .map_err(failed_now)?;
            if !out.status.success() {
                return Err(failed(anyhow::anyhow!(
                    "gptx slurm submit: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            loop {
                let (_, _, st) = plan_cmd::item_states(&a.plan, &[]).map_err(usage)?;
                if st.iter().all(|s| s.state == ItemState::Done) {
                    break;
                }
                if t0.elapsed().as_secs_f64() > a.timeout {
                    return Err(failed(anyhow::anyhow!(
                        "--timeout {}: {} of {} items done",
                        a.timeout,
                        st.iter().filter(|s| s.state == ItemState::Done).count(),
                        st.len()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            a.slots.max(1)
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let (_, _, states) = plan_cmd::item_states(&a.plan, &[]).map_err(usage)?;
    let attempts = crate::plan::attempts(&runs_dir, &plan.plan_id);
    let secs =
        |t: chrono::DateTime<chrono::Utc>| (t - submitted).num_milliseconds() as f64 / 1000.0;
    let at = |id: &str, event: &str| -> Option<f64> {
        attempts
            .iter()
            .filter(|l| l["item"] == id && l["event"] == event)
            .filter_map(|l| {
                l["at"]
                    .as_str()?
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .ok()
            })
            .min()
            .map(secs)
    };
    let mut items: Vec<ItemTimes> = Vec::new();
    for s in &states {
        let (Some(started), Some(ended), Some(call)) = (
            at(&s.item.id, "started"),
            at(&s.item.id, "ended"),
            s.run_dir.as_deref().and_then(first_call),
        ) else {
            eprintln!(
                "gptx bench plan: item {} has no complete record ({}); left out",
                s.item.index, s.state
            );
            continue;
        };
        items.push(ItemTimes {
            index: s.item.index,
            agent: s.item.agent.clone(),
            seed: s.item.seed,
            started,
            first_call: secs(call),
            ended,
            dispatch: 0.0,
            startup: secs(call) - started,
            overhead: 0.0,
        });
    }
    items.sort_by(|a, b| a.started.total_cmp(&b.started));
    let mut ends: Vec<f64> = items.iter().map(|i| i.ended).collect();
    ends.sort_by(f64::total_cmp);
    for (k, it) in items.iter_mut().enumerate() {
        let free_at = if k < slots { 0.0 } else { ends[k - slots] };
        it.dispatch = (it.started - free_at.min(it.started)).max(0.0);
        it.overhead = it.dispatch + it.startup;
    }
    let n = items.len().max(1) as f64;
    let mean = |f: fn(&ItemTimes) -> f64| items.iter().map(f).sum::<f64>() / n;
    let max = |f: fn(&ItemTimes) -> f64| items.iter().map(f).fold(0.0, f64::max);
    let label = a.label.clone().unwrap_or_else(|| match a.via {
        Via::Local => format!("local --parallel {}", a.parallel),
        Via::Slurm => format!("slurm, {slots} slot(s)"),
    });
    let summary = serde_json::json!({
        "label": label,
        "plan_id": plan.plan_id,
        "items": states.len(),
        "done": states.iter().filter(|s| s.state == ItemState::Done).count(),
        "slots": slots,
        "wall_seconds": crate::trace::round(wall, 2),
        "overhead_mean": crate::trace::round(mean(|i| i.overhead), 3),
        "overhead_max": crate::trace::round(max(|i| i.overhead), 3),
        "dispatch_mean": crate::trace::round(mean(|i| i.dispatch), 3),
        "startup_mean": crate::trace::round(mean(|i| i.startup), 3),
        "per_item": items,
    });
    if a.json {
        out_text(&format!("{summary}\n"));
    } else {
        let mut text = format!(
            "{label}: {} items, {} done, wall {:.1} s · per-item overhead mean {:.2} s, max {:.2} s (dispatch {:.2} s + gptx start {:.2} s, means)\n",
            summary["items"], summary["done"], wall,
            mean(|i| i.overhead), max(|i| i.overhead), mean(|i| i.dispatch), mean(|i| i.startup)
        );
        text.push_str("  item  agent / seed                 started  1st call    ended  dispatch  startup  overhead\n");
        for i in &items {
            text.push_str(&format!(
                "  {:>4}  {:<28} {:>7.1}  {:>8.1}  {:>7.1}  {:>8.2}  {:>7.2}  {:>8.2}\n",
                i.index,
                format!(
                    "{} seed {}",
                    crate::report::term::terminal_safe(&i.agent, false),
                    i.seed
                ),
                i.started,
                i.first_call,
                i.ended,
                i.dispatch,
                i.startup,
                i.overhead
            ));
        }
        out_text(&text);
    }
    Ok(exit::OK)
}
