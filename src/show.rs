//! Terminal views of runs: the run list, the step-by-step trace, trace verification, the scorecard.

use std::fmt::Write as _;
use std::path::Path;

use crate::rundir::{self, RunMeta, RunScore};
use crate::trace::{self, Event};

/// `gptx runs`.
pub fn runs(runs_dir: &Path) -> anyhow::Result<i32> {
    let (runs, problems) = rundir::list_runs(runs_dir);
    if runs.is_empty() && problems.is_empty() {
        println!("no runs in {}", runs_dir.display());
        return Ok(0);
    }
    println!(
        "{:<24} {:<11} {:<8} {:<5} {:>6}  {:<20} agent",
        "run", "status", "suite", "level", "index", "started"
    );
    for (dir, meta) in &runs {
        let score: Option<RunScore> = rundir::read_json(&dir.score_json()).ok();
        println!(
            "{:<24} {:<11} {:<8} {:<5} {:>6}  {:<20} {}",
            meta.run_id,
            meta.status.to_string(),
            meta.suite,
            score.as_ref().map(|s| s.level.as_str()).unwrap_or("-"),
            score
                .as_ref()
                .map(|s| format!("{:.1}", s.bootstrap_index))
                .unwrap_or_else(|| "-".into()),
            meta.started_at.format("%Y-%m-%d %H:%M:%S"),
            meta.agent
        );
    }
    for p in problems {
        eprintln!("gptx runs: skipped {p}");
    }
    Ok(0)
}

fn head(text: &str, lines: usize, width: usize) -> Vec<String> {
    text.lines()
        .take(lines)
        .map(|l| {
            let mut s: String = l.chars().take(width).collect();
            if l.chars().count() > width {
                s.push('…');
            }
            s
        })
        .collect()
}

fn args_summary(tool: &str, args: &serde_json::Value) -> String {
    let s = match tool {
        "bash" => args["cmd"].as_str().unwrap_or("").to_string(),
        "read_file" | "write_file" => args["path"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    };
    head(&s, 1, 90).pop().unwrap_or_default()
}

/// Renders a run's trace for the terminal.
pub fn render(meta: &RunMeta, events: &[trace::log::Envelope], verified: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}  suite {}  agent {}  seed {}  status {}",
        meta.run_id, meta.suite, meta.agent, meta.seed, meta.status
    );
    let _ = writeln!(out, "trace: {verified}");
    for env in events {
        match &env.event {
            Event::StageStarted {
                stage,
                budgets,
                network,
                ..
            } => {
                let _ = writeln!(
                    out,
                    "\n== stage {stage}  (max {} steps, {} s sandbox, {} s wall; network {})",
                    budgets.max_steps,
                    budgets.max_sandbox_seconds,
                    budgets.max_wall_seconds,
                    network.as_deref().unwrap_or("none")
                );
            }
            Event::Step(s) => {
                let code = match s.result.get("exit_code") {
                    Some(c) => format!("exit {c}"),
                    None if s.ok => "ok".into(),
                    None => format!("error {}", s.result["code"].as_str().unwrap_or("?")),
                };
                let commit = s
                    .commit
                    .as_deref()
                    .map(|c| format!("  commit {}", &c[..c.len().min(10)]))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "#{:<4} {:<10} {:<40} {:<12} {:>8.1} ms{}",
                    s.step,
                    s.tool,
                    args_summary(&s.tool, &s.args),
                    code,
                    s.duration_ms,
                    commit
                );
                if let Some(u) = &s.usage {
                    let mut flags = String::new();
                    if u.timed_out {
                        flags.push_str("  TIMED OUT");
                    }
                    if u.oom_killed {
                        flags.push_str("  OOM-KILLED");
                    }
                    let _ = writeln!(
                        out,
                        "      cpu {:.2} s  max rss {} KiB{flags}",
                        u.cpu_seconds, u.max_rss_kb
                    );
                }
                let mut shown = Vec::new();
                for key in ["stdout", "stderr", "content", "message"] {
                    if let Some(text) = s.result.get(key).and_then(|v| v.as_str()) {
                        for l in head(text, 3, 100) {
                            shown.push(format!("      {key}: {l}"));
                        }
                    }
                }
                for l in shown {
                    let _ = writeln!(out, "{l}");
                }
            }
            Event::StageEnded {
                stage,
                ended_by,
                steps,
                sandbox_seconds,
                wall_seconds,
            } => {
                let _ = writeln!(
                    out,
                    "-- {stage} ended by {ended_by:?} after {steps} steps ({sandbox_seconds:.1} s sandbox, {wall_seconds:.1} s wall)"
                );
            }
            Event::StageScored { stage, score } => {
                let _ = writeln!(
                    out,
                    "-- {stage} scored: {} passed={} {}",
                    score.status,
                    score.passed,
                    score.reason.as_deref().unwrap_or("")
                );
            }
            Event::Warning { message } => {
                let _ = writeln!(out, "warning: {message}");
            }
            Event::ModelCall { call, .. } => {
                let cost = call
                    .cost_usd
                    .map(|c| format!(", ${c:.4}"))
                    .unwrap_or_default();
                let error = call
                    .error
                    .as_ref()
                    .map(|e| format!(", failed: {}", head(e, 1, 100).join("")))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "   model {} (try {}): {} in / {} out tokens, {:.0} ms{cost}{error}",
                    call.model,
                    call.attempt,
                    call.input_tokens,
                    call.output_tokens,
                    call.latency_ms
                );
            }
            Event::AgentLog { text, .. } => {
                for l in head(text, 20, 160) {
                    let _ = writeln!(out, "   agent stderr: {l}");
                }
            }
            Event::Rescue {
                stage, ok, detail, ..
            } => {
                let _ = writeln!(
                    out,
                    "-- rescue after {stage}{}: {detail}",
                    if *ok { "" } else { " (failed)" }
                );
            }
            Event::RunFinished {
                status,
                level,
                bootstrap_index,
                wall_seconds,
                assisted_level,
            } => {
                let assisted = assisted_level
                    .as_ref()
                    .map(|a| format!(" (assisted {a})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\nrun {status}: level {level}{assisted}, Bootstrap Index {bootstrap_index:.1}, {wall_seconds:.1} s"
                );
            }
            _ => {}
        }
    }
    out
}

fn verified_line(dir: &rundir::RunDir, meta: &RunMeta) -> String {
    match trace::verify(&dir.events(), meta.trace_sha256.as_deref()) {
        Ok(v) if meta.trace_sha256.is_some() => {
            format!("verified, {} events, hash chain intact", v.events)
        }
        Ok(v) => format!(
            "{} events, chain intact so far (run not finished, tail not pinned)",
            v.events
        ),
        Err(e) => format!("DOES NOT VERIFY: {e}"),
    }
}

/// `gptx show`.
/// How `gptx show` prints.
#[derive(Debug, Clone, Default)]
pub struct ShowOptions {
    /// The raw events as JSON lines.
    pub json: bool,
    /// Only this step (1-based over the run), with its workspace diff.
    pub step: Option<u64>,
    /// ANSI colours.
    pub color: bool,
}

/// `gptx show`.
pub fn show(runs_dir: &Path, id: &str, opts: &ShowOptions) -> anyhow::Result<i32> {
    let dir = rundir::find_run(runs_dir, id)?;
    if opts.json {
        let text = std::fs::read_to_string(dir.events())
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.events().display()))?;
        print!("{text}");
        return Ok(0);
    }
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let events = trace::log::read_events(&dir.events())?;
    print!("{}", render(&meta, &events, &verified_line(&dir, &meta)));
    if let Ok(score) = rundir::read_json::<RunScore>(&dir.score_json()) {
        print!("\n{}", scorecard(&meta, &score));
    }
    Ok(0)
}

/// `gptx verify`.
pub fn verify(runs_dir: &Path, id: &str) -> anyhow::Result<i32> {
    let dir = rundir::find_run(runs_dir, id)?;
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let v = trace::verify(&dir.events(), meta.trace_sha256.as_deref())?;
    println!(
        "{}: {} events, hash chain intact{}",
        dir.events().display(),
        v.events,
        if meta.trace_sha256.is_some() {
            ", tail matches run.json"
        } else {
            " (run not finished: tail not pinned)"
        }
    );
    Ok(0)
}

/// The metrics a reader looks at first, per stage, in this order; the rest stay in score.json.
fn headline_keys(stage: &str) -> &'static [(&'static str, &'static str)] {
    match stage {
        "crawl" => &[
            ("recall", "recall"),
            ("precision", "precision"),
            ("duplicate_rate", "dup"),
            ("robots_violations", "robots"),
            ("trap_requests", "trap"),
            ("requests", "requests"),
            ("documents", "docs"),
        ],
        "tokenize" => &[
            ("round_trip", "round trip"),
            ("ids_in_vocab", "ids ok"),
            ("vocab_size", "vocab"),
            ("bytes_per_token", "bytes/token"),
            ("encode_mb_per_s", "encode MB/s"),
        ],
        "train" => &[
            ("verified", "verified"),
            ("bpb", "bpb"),
            ("ood_bpb", "ood bpb"),
            ("bytes_per_token", "bytes/token"),
            ("score_seconds", "score s"),
        ],
        "eval" => &[
            ("claimed_val_bpb", "claimed"),
            ("val_bpb", "val bpb"),
            ("test_bpb", "hidden bpb"),
            ("claim_error", "claim err"),
            ("generalisation_gap", "gap"),
            ("val_documents", "val docs"),
        ],
        "selfhost" => &[
            ("original_bpb", "original bpb"),
            ("bpb", "rebuilt bpb"),
            ("relative_difference", "diff"),
            ("files_copied", "copied"),
            ("files_refused", "refused"),
            ("rebuild_seconds", "rebuild s"),
        ],
        _ => &[("bpb", "bpb"), ("documents", "docs")],
    }
}

/// `recall 0.951 precision 0.973 ...` for the headline metrics a stage has.
fn headline(stage: &str, m: &serde_json::Map<String, serde_json::Value>) -> String {
    let parts: Vec<String> = headline_keys(stage)
        .iter()
        .filter_map(|(k, short)| {
            let v = m.get(*k)?;
            Some(match (v.as_u64(), v.as_f64()) {
                (Some(n), _) => format!("{short} {n}"),
                (None, Some(f)) => format!("{short} {f:.3}"),
                _ => format!("{short} {v}"),
            })
        })
        .collect();
    if parts.is_empty() {
        serde_json::Value::Object(m.clone()).to_string()
    } else {
        parts.join("  ")
    }
}

/// `ladder: unigram 4.816 ✓  gzip 2.736 ✓  xz 2.692 ✓  xz|C 1.832 ✗` for a verified model.
fn ladder_line(m: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let bpb = m.get("bpb")?.as_f64()?;
    let ladder = m.get("ladder")?.as_object()?;
    let parts: Vec<String> = [
        ("unigram", "unigram"),
        ("gzip", "gzip"),
        ("xz", "xz"),
        ("xz_conditional", "xz|C"),
    ]
    .iter()
    .filter_map(|(k, short)| {
        let x = ladder.get(*k)?.as_f64()?;
        Some(format!(
            "{short} {x:.3} {}",
            if bpb < x { "✓" } else { "✗" }
        ))
    })
    .collect();
    Some(format!("beats: {}", parts.join("  ")))
}

pub fn scorecard(meta: &RunMeta, score: &RunScore) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gptx scorecard · run {} · suite {} · agent {} · {}",
        meta.run_id, meta.suite, meta.agent, meta.status
    );
    let _ = writeln!(
        out,
        "{:<10} {:<16} {:<7} {:<20} {:>5} {:>9} {:>6}  metrics",
        "stage", "status", "passed", "ended by", "steps", "sandbox", "score"
    );
    for name in &meta.stages {
        let Some(s) = score.stages.get(name) else {
            let _ = writeln!(out, "{name:<10} not run");
            continue;
        };
        let metrics = if s.metrics.is_empty() {
            s.reason.clone().unwrap_or_default()
        } else {
            headline(name, &s.metrics)
        };
        let _ = writeln!(
            out,
            "{:<10} {:<16} {:<7} {:<20} {:>5} {:>8.1}s {:>6}  {}",
            name,
            s.status,
            s.passed,
            s.ended_by
                .map(|e| serde_json::to_value(e)
                    .expect("json")
                    .as_str()
                    .unwrap_or("")
                    .to_string())
                .unwrap_or_default(),
            s.steps,
            s.sandbox_seconds,
            s.normalized
                .map(|n| format!("{n:.2}"))
                .unwrap_or_else(|| "-".into()),
            metrics
        );
        if let Some(l) = ladder_line(&s.metrics) {
            let _ = writeln!(out, "{:<80}{l}", "");
        }
        if !s.metrics.is_empty() {
            if let Some(r) = &s.reason {
                let _ = writeln!(out, "{:<10} {r}", "");
            }
        }
        if let Some(t) = s.tokens {
            let cost = s
                .cost_usd
                .map(|c| format!(", ${c:.4}"))
                .unwrap_or_else(|| ", cost unknown".into());
            let _ = writeln!(out, "{:<10} model: {t} tokens{cost}", "");
        }
        if s.rescued {
            let _ = writeln!(
                out,
                "{:<10} rescued: the harness handed over the reference artifact; later levels are assisted",
                ""
            );
        }
    }
    let assisted = score
        .assisted_level
        .as_ref()
        .map(|a| format!(" (assisted {a})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "level {}{assisted} · Bootstrap Index {:.1} · run dir {}",
        score.level, score.bootstrap_index, meta.run_id
    );
    if let Some(e) = &meta.error {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

/// `gptx world show`: what the world holds and its baseline ladder.
pub fn world(w: &crate::world::World) -> String {
    use std::fmt::Write;
    let m = &w.manifest;
    let s = &m.stats;
    let b = &m.baselines;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "world {} (seed {}, generator v{})",
        m.name, m.seed, m.generator_version
    );
    let _ = writeln!(o, "  hash        {}", m.world_hash);
    let _ = writeln!(o, "  directory   {}", w.dir.display());
    let _ = writeln!(
        o,
        "  corpus      {} ({} docs), out-of-domain {} ({} docs)",
        m.corpus.file, m.corpus.docs, m.ood_corpus.file, m.ood_corpus.docs
    );
    let _ = writeln!(o, "  seed URLs   {}", m.seed_urls.join("  "));
    let _ = writeln!(
        o,
        "  served      {} content pages, {} bytes of gold text; {} files, {} bytes of HTML",
        s.served_pages, s.gold_bytes, s.web_files, s.web_bytes
    );
    for (h, n) in &s.pages_per_host {
        let _ = writeln!(o, "              {h:<18} {n} routes");
    }
    let _ = writeln!(
        o,
        "  traps       {} mirror pages, {} Latin-1 pages, {} transient-503 pages, {} redirect rules, {} canary pages, calendar under {}",
        s.mirror_pages,
        s.latin1_pages,
        s.transient_503_pages,
        s.redirects,
        m.canaries.len(),
        m.trap.iter().map(|(h, p)| format!("{h}{p}")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        o,
        "  hidden      T: {} docs, {} bytes; out-of-domain: {} docs, {} bytes",
        m.test.docs, m.test.bytes, m.ood.docs, m.ood.bytes
    );
    let _ = writeln!(
        o,
        "  built in    {:.1} s (baselines {:.1} s)",
        s.build_seconds, b.seconds
    );
    let _ = writeln!(o, "baseline ladder on T (bits per byte, lower is better):");
    for (name, v) in [
        ("uniform", b.uniform),
        ("unigram (served text)", b.unigram),
        ("gzip -9 per document", b.gzip),
        ("xz -9e per document", b.xz),
        ("xz -9e given served text", b.xz_conditional),
    ] {
        let _ = writeln!(o, "  {name:<26} {v:.3}");
    }
    o
}
