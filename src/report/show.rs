//! Terminal views of runs: the run list, the step-by-step trace, trace verification, the scorecard.

use std::fmt::Write as _;
use std::path::Path;

use crate::trace::history::CommitDiff;
use crate::trace::replay::{step_cpu, step_failed, step_peak_memory, Replay};
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus};
use crate::trace::INLINE_OUTPUT;
use crate::trace::{self, EndReason, Event, StepRecord};

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
            {
                let mut text = match (&meta.status, &meta.error) {
                    (RunStatus::Interrupted | RunStatus::Failed, Some(why)) => format!(
                        "{} ({})",
                        meta.agent,
                        crate::report::term::terminal_safe(why, false)
                    ),
                    _ => meta.agent.clone(),
                };
                if meta.resumable() {
                    text.push_str(" · resumable: gptx resume ");
                    text.push_str(&meta.run_id);
                }
                if !meta.resumes.is_empty() {
                    text.push_str(&format!(" · resumed {}×", meta.resumes.len()));
                }
                text
            }
        );
    }
    for p in problems {
        eprintln!("gptx runs: skipped {p}");
    }
    Ok(0)
}

/// ANSI styling that is a no-op when colours are off.
#[derive(Debug, Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    /// A stage header: bold on blue.
    fn banner(&self, t: &str) -> String {
        self.paint("1;37;44", t)
    }
}

/// The first `lines` lines of `text`, each cut at `width` characters (marked with `…`).
fn head(text: &str, lines: usize, width: usize) -> Vec<String> {
    text.lines().take(lines).map(|l| cut(l, width)).collect()
}

/// The last `lines` lines of `text`, each cut at `width` characters.
fn tail(text: &str, lines: usize, width: usize) -> Vec<String> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| cut(l, width))
        .collect()
}

fn cut(line: &str, width: usize) -> String {
    let mut s: String = line.chars().take(width).collect();
    if line.chars().count() > width {
        s.push('…');
    }
    s
}

fn args_summary(tool: &str, args: &serde_json::Value) -> String {
    let s = match tool {
        "bash" => args["cmd"].as_str().unwrap_or("").to_string(),
        "read_file" | "write_file" => args["path"].as_str().unwrap_or("").to_string(),
        "submit" | "check" => String::new(),
        _ => match args {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            other => other.to_string(),
        },
    };
    head(&s, 1, 90).pop().unwrap_or_default()
}

/// `850ms`, `3.2s`, `2m05s`.
fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        let s = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `512 B`, `3.4 KiB`, `312.0 MiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / (K * K))
    } else {
        format!("{:.1} GiB", f / (K * K * K))
    }
}

/// The first 10 characters of a commit id.
fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// How a step ended, for the step line: `exit 0`, `exit 1`, `timeout`, `ok`, `error <code>`.
fn outcome(s: &StepRecord, st: Style) -> String {
    let failed = step_failed(s);
    let text = if !s.ok {
        format!("error {}", s.result["code"].as_str().unwrap_or("?"))
    } else if s.result.get("timed_out") == Some(&serde_json::Value::Bool(true)) {
        "timeout".into()
    } else if s.result.get("oom_killed") == Some(&serde_json::Value::Bool(true)) {
        "oom-killed".into()
    } else if let Some(c) = s.result.get("exit_code") {
        match c.as_i64() {
            Some(code) => format!("exit {code}"),
            None => format!("exit {c}"),
        }
    } else {
        "ok".into()
    };
    let padded = format!("{text:<9}");
    if failed {
        st.red(&padded)
    } else {
        st.green(&padded)
    }
}

fn step_line(out: &mut String, s: &StepRecord, st: Style) {
    let (cpu, mem) = match &s.usage {
        Some(u) => (
            format!("cpu {:.1}s", step_cpu(u)),
            format!("mem {}", bytes(step_peak_memory(u))),
        ),
        None => (String::new(), String::new()),
    };
    let commit = s
        .commit
        .as_deref()
        .map(|c| st.dim(&format!("  @{}", short(c))))
        .unwrap_or_default();
    let line = format!(
        "  {} {:>7} {:<10} {:<14} {} {:<10} {}",
        st.bold(&format!("#{:<4}", s.step)),
        duration(s.duration_ms),
        cpu,
        mem,
        outcome(s, st),
        s.tool,
        args_summary(&s.tool, &s.args),
    );
    let _ = writeln!(out, "{}{commit}", line.trim_end());
    if step_failed(s) {
        let mut lines = Vec::new();
        if !s.ok {
            lines.extend(head(s.result["message"].as_str().unwrap_or(""), 5, 140));
        } else {
            for key in ["stderr", "stdout"] {
                let text = s.result.get(key).and_then(|v| v.as_str()).unwrap_or("");
                if !text.trim().is_empty() {
                    lines.extend(
                        tail(text, 5, 140)
                            .into_iter()
                            .map(|l| format!("{key}: {l}")),
                    );
                    break;
                }
            }
            if let Some(e) = s.result.get("error").and_then(|v| v.as_str()) {
                lines.push(format!("error: {}", cut(e, 140)));
            }
        }
        for l in lines {
            let _ = writeln!(out, "        {}", st.dim(&format!("│ {l}")));
        }
    }
    if let Some(u) = &s.usage {
        if u.timed_out || u.oom_killed {
            let what = match (u.timed_out, u.oom_killed) {
                (true, true) => "timed out and OOM-killed",
                (true, false) => "timed out",
                _ => "OOM-killed",
            };
            let _ = writeln!(out, "        {}", st.red(what));
        }
    }
}

/// Renders a run's trace step by step: a header, per stage its budgets, one line per step, what
/// failed, and each stage's grade; then totals.
pub(crate) fn render_events(
    meta: &RunMeta,
    events: &[trace::log::Envelope],
    verified: &str,
    color: bool,
) -> String {
    let st = Style { on: color };
    let mut out = String::new();
    let status = match meta.status {
        RunStatus::Done => st.green("done"),
        RunStatus::Running => st.yellow("running"),
        RunStatus::Failed | RunStatus::Interrupted => st.red(&meta.status.to_string()),
    };
    let _ = writeln!(
        out,
        "{} {} · agent {} · suite {} · seed {} · status {status}",
        st.bold("run"),
        st.bold(&meta.run_id),
        meta.agent,
        meta.suite,
        meta.seed,
    );
    let ended = meta
        .ended_at
        .map(|t| format!(" · ended {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "world {} · started {}{ended} · gptx {}",
        meta.world_hash
            .as_deref()
            .map(|h| h.get(..16).unwrap_or(h))
            .unwrap_or("none"),
        meta.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        meta.gptx_version
    );
    let verified_shown = if verified.starts_with("DOES NOT VERIFY") {
        st.red(verified)
    } else if verified.starts_with("verified") {
        st.green(verified)
    } else {
        st.yellow(verified)
    };
    let _ = writeln!(out, "trace: {verified_shown}");
    if let Some(e) = &meta.error {
        let _ = writeln!(out, "{} {e}", st.red("error:"));
    }
    // What the trace adds up to so far: totals, verdicts, the step in flight.
    let mut replay = Replay::default();
    for env in events {
        replay.apply_at(env.ts, &env.event);
        match &env.event {
            Event::StageStarted {
                stage,
                index,
                budgets,
                network,
                ..
            } => {
                let mut b = format!(
                    "{} steps · {} s sandbox · {} s wall · {} s a step",
                    budgets.max_steps,
                    budgets.max_sandbox_seconds,
                    budgets.max_wall_seconds,
                    budgets.max_step_seconds
                );
                if let Some(t) = budgets.max_tokens {
                    let _ = write!(b, " · {t} tokens");
                }
                if let Some(c) = budgets.max_cost_usd {
                    let _ = write!(b, " · ${c}");
                }
                let _ = write!(b, " · network {}", network.as_deref().unwrap_or("none"));
                let _ = writeln!(
                    out,
                    "\n{} {}",
                    st.banner(&format!(
                        "== stage {}/{} {stage} ==",
                        index + 1,
                        meta.stages.len().max(index + 1)
                    )),
                    st.dim(&format!("budgets: {b}"))
                );
            }
            Event::StepStarted { .. } => {}
            Event::Step(s) => step_line(&mut out, s, st),
            Event::StageEnded {
                ended_by,
                steps,
                sandbox_seconds,
                wall_seconds,
                ..
            } => {
                let by = match ended_by.budget() {
                    Some(b) => st.yellow(&format!("the {b} budget")),
                    None => end_reason(*ended_by).to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {}",
                    st.dim(&format!(
                        "ended by {by} after {steps} steps · {sandbox_seconds:.1} s sandbox · {wall_seconds:.1} s wall"
                    ))
                );
            }
            Event::StageScored { stage, score } => {
                let verdict = if score.passed {
                    st.green(&st.bold("PASSED"))
                } else {
                    st.red(&st.bold("FAILED"))
                };
                let n = score
                    .normalized
                    .map(|n| format!(" · score {n:.2}"))
                    .unwrap_or_default();
                let metrics = if score.metrics.is_empty() {
                    String::new()
                } else {
                    format!(" · {}", headline(stage, &score.metrics))
                };
                let status = if score.status == "scored" {
                    String::new()
                } else {
                    format!(" ({})", score.status)
                };
                let _ = writeln!(out, "  {verdict} {stage}{status}{n}{metrics}");
                if let Some(l) = ladder_line(&score.metrics) {
                    let _ = writeln!(out, "         {l}");
                }
                if let Some(r) = &score.reason {
                    let r = if score.passed { st.dim(r) } else { st.red(r) };
                    let _ = writeln!(out, "         {r}");
                }
                if let Some(p) = score
                    .public_reason
                    .as_ref()
                    .filter(|p| Some(*p) != score.reason.as_ref())
                {
                    let _ = writeln!(
                        out,
                        "         {}",
                        st.dim(&format!("the agent was told: {p}"))
                    );
                }
            }
            Event::Warning { message } => {
                let _ = writeln!(out, "  {} {message}", st.yellow("warning:"));
            }
            Event::Integrity(note) => {
                let _ = writeln!(
                    out,
                    "  {} {} × {}: {}",
                    st.yellow("integrity:"),
                    note.kind,
                    note.count,
                    note.detail
                );
            }
            Event::ModelCall { call, .. } => {
                let cost = call
                    .cost_usd
                    .map(|c| format!(", ${c:.4}"))
                    .unwrap_or_default();
                let error = call
                    .error
                    .as_ref()
                    .map(|e| st.red(&format!(", failed: {}", head(e, 1, 100).join(""))))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {}",
                    st.cyan(&format!(
                        "model {} (try {}): {} in / {} out tokens, {:.0} ms{cost}",
                        call.model,
                        call.attempt,
                        call.input_tokens,
                        call.output_tokens,
                        call.latency_ms
                    )) + &error
                );
            }
            Event::AgentLog { text, .. } => {
                let lines: Vec<&str> = text.lines().collect();
                for l in head(text, 20, 160) {
                    let _ = writeln!(out, "  {} {l}", st.dim("agent:"));
                }
                if lines.len() > 20 {
                    let _ = writeln!(
                        out,
                        "  {}",
                        st.dim(&format!("agent: … {} more lines", lines.len() - 20))
                    );
                }
            }
            Event::Rescue {
                stage,
                ok,
                detail,
                seconds,
                ..
            } => {
                let what = if *ok {
                    st.yellow(&format!("rescue after {stage}:"))
                } else {
                    st.red(&format!("rescue after {stage} failed:"))
                };
                let _ = writeln!(out, "  {what} {detail} ({seconds:.1} s)");
            }
            Event::RunResumed(r) => {
                let _ = writeln!(
                    out,
                    "\n{} after step {} ({}): {} {}, agent {}{}",
                    st.bold("resumed"),
                    r.after_step,
                    r.reason,
                    match &r.stage {
                        Some(s) => format!("stage {s} goes on;"),
                        None => "the next stage;".to_string(),
                    },
                    match (&r.workspace[..], &r.commit) {
                        ("kept", _) => "workspace kept".to_string(),
                        (_, Some(c)) => format!("workspace restored at {}", &c[..c.len().min(12)]),
                        (_, None) => "workspace restored (empty)".to_string(),
                    },
                    r.agent,
                    r.aside
                        .as_ref()
                        .map(|a| format!("; the workspace that differed is kept in {a}"))
                        .unwrap_or_default(),
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
                    "\n{} {status}: level {}{assisted}, Bootstrap Index {bootstrap_index:.1}, {wall_seconds:.1} s",
                    st.bold("run"),
                    st.bold(level)
                );
                let list = |want: bool| {
                    let names: Vec<&str> = replay
                        .verdicts()
                        .filter(|(_, p)| *p == want)
                        .map(|(s, _)| s)
                        .collect();
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                };
                if replay.verdicts().next().is_some() {
                    let _ = writeln!(
                        out,
                        "passed: {} · not passed: {} (the reasons are under each stage)",
                        list(true),
                        list(false)
                    );
                }
            }
            Event::RunStarted { .. } => {}
        }
    }
    if let Some(p) = replay.pending() {
        let _ = writeln!(
            out,
            "  {} {}",
            st.bold(&format!("#{:<4}", p.step)),
            st.yellow(&format!(
                "running… ({}) {} {}",
                p.stage,
                p.tool,
                args_summary(&p.tool, &p.args)
            ))
        );
    }
    let (steps, model) = (replay.steps(), replay.model());
    let mut t = format!(
        "totals: {} steps · sandbox {:.1} s · CPU {:.1} s · wall {:.1} s",
        steps.count,
        steps.sandbox_seconds,
        steps.cpu_seconds,
        replay.wall_seconds()
    );
    if model.calls > 0 {
        let _ = write!(
            t,
            " · {} model calls, {} tokens",
            model.calls,
            model.tokens()
        );
        if let Some(cost) = model.cost_usd {
            let _ = write!(t, ", ${cost:.4}");
        }
    }
    let _ = writeln!(out, "\n{t}");
    out
}

fn end_reason(e: EndReason) -> &'static str {
    match e {
        EndReason::Submit => "submit",
        EndReason::AgentFinished => "the agent finishing",
        EndReason::MaxSteps => "max_steps",
        EndReason::MaxSandboxSeconds => "max_sandbox_seconds",
        EndReason::MaxWallSeconds => "max_wall_seconds",
        EndReason::MaxTokens => "max_tokens",
        EndReason::MaxCostUsd => "max_cost_usd",
        EndReason::AgentError => "an agent error",
        EndReason::Interrupted => "an interrupt",
    }
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

/// The whole terminal view of a run: the trace step by step, then the scorecard (when scored).
pub fn render_run(dir: &RunDir, color: bool) -> anyhow::Result<String> {
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let events = trace::log::read_events(&dir.events())?;
    let mut out = render_events(&meta, &events, &verified_line(dir, &meta), color);
    if dir.score_json().exists() {
        let score: RunScore = rundir::read_json(&dir.score_json())?;
        out.push('\n');
        out.push_str(&scorecard(&meta, &score));
    }
    Ok(out)
}

/// The record of step `step` (1-based over the run), with an error naming the run's step count.
pub(crate) fn find_step(dir: &RunDir, step: u64) -> anyhow::Result<StepRecord> {
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let events = trace::log::read_events(&dir.events())?;
    let mut count = 0u64;
    let mut started = false;
    for env in events {
        match env.event {
            Event::Step(s) => {
                count += 1;
                if s.step == step {
                    return Ok(s);
                }
            }
            Event::StepStarted { step: n, .. } if n == step => started = true,
            _ => {}
        }
    }
    if started {
        anyhow::bail!(
            "--step {step}: step {step} of run {} has started and not finished yet",
            meta.run_id
        );
    }
    anyhow::bail!(
        "--step {step}: run {} has {count} step{} (steps are numbered from 1)",
        meta.run_id,
        if count == 1 { "" } else { "s" }
    )
}

/// Bytes of the full diff shown under a step.
const DIFF_BYTES: usize = 1 << 20;

/// One step alone: its stage, tool, full arguments, timings and usage, the full output (from
/// `outputs/` when the inline copy was cut), and the workspace diff of its commit.
pub fn render_step(dir: &RunDir, step: u64, color: bool) -> anyhow::Result<String> {
    let st = Style { on: color };
    let s = find_step(dir, step)?;
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} · run {} · stage {} (step {} of the stage) · tool {}",
        st.bold(&format!("step {}", s.step)),
        meta.run_id,
        st.bold(&s.stage),
        s.stage_step,
        st.bold(&s.tool)
    );
    let _ = writeln!(
        out,
        "started {} · took {} · sandbox {:.3} s",
        s.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        duration(s.duration_ms),
        s.sandbox_seconds
    );
    if let Some(u) = &s.usage {
        let mut line = format!(
            "usage: cpu {:.3} s · max rss {}",
            u.cpu_seconds,
            bytes(u.max_rss_kb * 1024)
        );
        if let Some(c) = u.container_cpu_seconds {
            let _ = write!(line, " · container cpu {c:.3} s");
        }
        if let Some(p) = u.container_peak_bytes {
            let _ = write!(line, " · container peak {}", bytes(p));
        }
        let _ = writeln!(out, "{line}");
        if u.timed_out {
            let _ = writeln!(out, "{}", st.red("the command TIMED OUT"));
        }
        if u.oom_killed {
            let _ = writeln!(out, "{}", st.red("the command was OOM-KILLED"));
        }
    }

    let _ = writeln!(out, "\n{}", st.bold("arguments"));
    render_args(&mut out, dir, &s.args);

    let _ = writeln!(
        out,
        "\n{} {}",
        st.bold("result"),
        outcome(&s, st).trim_end()
    );
    render_result(&mut out, dir, &s, st);

    let _ = writeln!(out);
    match &s.commit {
        None => {
            let _ = writeln!(
                out,
                "{} unchanged by this step (no commit)",
                st.bold("workspace")
            );
        }
        Some(c) => match trace::history::commit_diff(&dir.git(), c, DIFF_BYTES) {
            Ok(d) => render_diff(&mut out, &d, st),
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{} commit {c}: cannot read it from {}: {e}",
                    st.bold("workspace"),
                    dir.git().display()
                );
            }
        },
    }
    Ok(out)
}

/// Full arguments: strings as blocks, everything else as JSON; a `write_file` content kept in
/// `outputs/` is read back from there.
fn render_args(out: &mut String, dir: &RunDir, args: &serde_json::Value) {
    let serde_json::Value::Object(m) = args else {
        let _ = writeln!(out, "  {args}");
        return;
    };
    if m.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let kept = m
        .get("content_sha256")
        .and_then(|v| v.as_str())
        .map(|sha| (sha, std::fs::read(dir.output(sha))));
    for (k, v) in m {
        if k == "content_sha256" {
            continue;
        }
        match (k.as_str(), v, &kept) {
            ("content", _, Some((sha, Ok(full)))) => {
                let _ = writeln!(
                    out,
                    "  content: ({} bytes, kept in outputs/{sha})",
                    full.len()
                );
                block(out, &String::from_utf8_lossy(full));
            }
            ("content", _, Some((sha, Err(e)))) => {
                let _ = writeln!(
                    out,
                    "  content: kept in outputs/{sha}, which cannot be read: {e}"
                );
            }
            (_, serde_json::Value::String(text), _) if text.contains('\n') || text.len() > 100 => {
                let _ = writeln!(out, "  {k}: ({} bytes)", text.len());
                for l in text.lines() {
                    let _ = writeln!(out, "    {l}");
                }
            }
            (_, serde_json::Value::String(text), _) => {
                let _ = writeln!(out, "  {k}: {text}");
            }
            _ => {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
    }
}

/// Text indented under a heading, every line kept.
fn block(out: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(out, "    {l}");
    }
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = writeln!(out, "    ⏎ (no newline at the end)");
    }
}

/// The result: streams in full (from `outputs/` when cut inline), then the other fields.
fn render_result(out: &mut String, dir: &RunDir, s: &StepRecord, st: Style) {
    let serde_json::Value::Object(m) = &s.result else {
        let _ = writeln!(out, "  {}", s.result);
        return;
    };
    if !s.ok {
        let _ = writeln!(
            out,
            "  {} {}",
            st.red(m.get("code").and_then(|v| v.as_str()).unwrap_or("error")),
            m.get("message").and_then(|v| v.as_str()).unwrap_or("")
        );
        return;
    }
    let streams = ["stdout", "stderr"];
    for key in streams {
        let Some(inline) = m.get(key).and_then(|v| v.as_str()) else {
            continue;
        };
        let full = s.outputs.iter().find(|r| r.stream == key);
        let text = match full {
            Some(r) => match std::fs::read(dir.output(&r.sha256)) {
                Ok(b) => {
                    let inline_kept = (INLINE_OUTPUT as u64).min(r.bytes_total);
                    let cut = format!(
                        "the trace's inline copy kept {inline_kept} bytes (head and tail) and cut {}",
                        r.bytes_total - inline_kept
                    );
                    let note = if r.bytes_kept < r.bytes_total {
                        format!(
                            "{} bytes; {cut}; outputs/{} kept the first {} bytes, shown here, and {} bytes were not kept at all",
                            r.bytes_total,
                            r.sha256,
                            r.bytes_kept,
                            r.bytes_total - r.bytes_kept
                        )
                    } else {
                        format!(
                            "{} bytes; {cut}; shown in full from outputs/{}",
                            r.bytes_total, r.sha256
                        )
                    };
                    let _ = writeln!(out, "  {} ({note})", st.bold(key));
                    String::from_utf8_lossy(&b).into_owned()
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "  {} ({} bytes; the full copy outputs/{} cannot be read: {e}; showing the inline copy, which was cut)",
                        st.bold(key),
                        r.bytes_total,
                        r.sha256
                    );
                    inline.to_string()
                }
            },
            None => {
                let _ = writeln!(out, "  {} ({} bytes)", st.bold(key), inline.len());
                inline.to_string()
            }
        };
        if key == "stderr" && !text.is_empty() && step_failed(s) {
            for l in text.lines() {
                let _ = writeln!(out, "    {}", st.red(l));
            }
        } else {
            block(out, &text);
        }
    }
    // Shown above already: the exit code, the streams and whether they were cut.
    let shown = ["stdout", "stderr", "exit_code", "truncated", "duration_ms"];
    for (k, v) in m {
        if shown.contains(&k.as_str()) {
            continue;
        }
        match v {
            serde_json::Value::String(text) if text.contains('\n') || text.len() > 100 => {
                let _ = writeln!(out, "  {k}: ({} bytes)", text.len());
                block(out, text);
            }
            serde_json::Value::String(text) => {
                let _ = writeln!(out, "  {k}: {text}");
            }
            other => {
                let _ = writeln!(out, "  {k}: {other}");
            }
        }
    }
}

/// A commit's changes like `git show --stat` followed by the patch.
fn render_diff(out: &mut String, d: &CommitDiff, st: Style) {
    let _ = writeln!(
        out,
        "{} commit {}",
        st.bold("workspace"),
        st.yellow(&d.commit)
    );
    for l in d.message.lines().take(1) {
        let _ = writeln!(out, "    {l}");
    }
    let _ = writeln!(out);
    let width = d.files.iter().map(|f| f.path.len()).max().unwrap_or(0);
    let most = d
        .files
        .iter()
        .map(|f| f.additions + f.deletions)
        .max()
        .unwrap_or(0);
    let (mut adds, mut dels) = (0, 0);
    for f in &d.files {
        adds += f.additions;
        dels += f.deletions;
        if f.binary {
            let _ = writeln!(out, " {:<width$} | Bin", f.path);
            continue;
        }
        let n = f.additions + f.deletions;
        // At most 40 marks, scaled like git's.
        let scale = |x: usize| {
            if most <= 40 {
                x
            } else {
                (x * 40).div_ceil(most)
            }
        };
        let plus = "+".repeat(scale(f.additions));
        let minus = "-".repeat(scale(f.deletions));
        let _ = writeln!(
            out,
            " {:<width$} | {n:>4} {}{}",
            f.path,
            st.green(&plus),
            st.red(&minus)
        );
    }
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let _ = writeln!(
        out,
        " {}, {}, {}",
        plural(d.files.len(), "file changed", "files changed"),
        plural(adds, "insertion(+)", "insertions(+)"),
        plural(dels, "deletion(-)", "deletions(-)")
    );
    for f in &d.files {
        let _ = writeln!(
            out,
            "\n{}",
            st.bold(&format!("diff --git a/{0} b/{0}", f.path))
        );
        match f.status.as_str() {
            "added" => {
                let _ = writeln!(out, "{}", st.bold("new file"));
            }
            "deleted" => {
                let _ = writeln!(out, "{}", st.bold("deleted file"));
            }
            "modified" => {}
            other => {
                let _ = writeln!(out, "{}", st.bold(other));
            }
        }
        if f.binary {
            let _ = writeln!(out, "Binary file, not shown");
            continue;
        }
        for l in f.patch.lines() {
            let shown = if l.starts_with("@@") {
                st.cyan(l)
            } else if l.starts_with('+') {
                st.green(l)
            } else if l.starts_with('-') {
                st.red(l)
            } else {
                l.to_string()
            };
            let _ = writeln!(out, "{shown}");
        }
    }
    if d.truncated {
        let _ = writeln!(
            out,
            "\n{}",
            st.yellow(&format!(
                "(the patch was cut at {DIFF_BYTES} bytes; `git --git-dir workspace.git show {}` has all of it)",
                short(&d.commit)
            ))
        );
    }
}

/// How `gptx show` prints.
#[derive(Debug, Clone, Default)]
pub struct ShowOptions {
    /// The raw events as JSON lines (with `step`: that step's event).
    pub json: bool,
    /// Only this step (1-based over the run), with its workspace diff.
    pub step: Option<u64>,
    /// ANSI colours.
    pub color: bool,
}

/// `gptx show`.
pub fn show(runs_dir: &Path, id: &str, opts: &ShowOptions) -> anyhow::Result<i32> {
    let dir = rundir::find_run(runs_dir, id)?;
    let text = match (opts.json, opts.step) {
        (true, None) => std::fs::read_to_string(dir.events())
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.events().display()))?,
        (true, Some(n)) => {
            let mut t = serde_json::to_string_pretty(&find_step(&dir, n)?)?;
            t.push('\n');
            t
        }
        // Agent text is in these views: no escape sequence of its own reaches the terminal.
        (false, Some(n)) => {
            crate::report::term::terminal_safe(&render_step(&dir, n, opts.color)?, opts.color)
        }
        (false, None) => {
            crate::report::term::terminal_safe(&render_run(&dir, opts.color)?, opts.color)
        }
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(0),
        // `gptx show | head`: the reader went away; that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
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
    let a = crate::trace::audit::check(&dir)?;
    if a.ok() {
        println!(
            "outputs/: {} checked by hash · workspace.git: {} step commits present · score.json agrees with the trace",
            a.outputs_checked, a.commits_checked
        );
        Ok(0)
    } else {
        for p in &a.problems {
            println!("problem: {}", crate::report::term::terminal_safe(p, false));
        }
        anyhow::bail!(
            "{} does not verify: {} problem(s)",
            dir.path.display(),
            a.problems.len()
        )
    }
}

/// `recall 0.951 precision 0.973 ...` for the stage table's headline metrics a stage has; the
/// rest stay in score.json.
fn headline(stage: &str, m: &serde_json::Map<String, serde_json::Value>) -> String {
    let parts: Vec<String> = crate::config::stages::headline(stage)
        .iter()
        .filter_map(|h| {
            let (k, short) = (h.key, h.label);
            let v = m.get(k)?;
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
        "level {}{assisted} · Bootstrap Index {:.1}{} · run dir {}",
        score.level,
        score.bootstrap_index,
        if crate::stages::levels::above_reference(score.bootstrap_index) {
            " (above 100: it beats the reference agent)"
        } else {
            ""
        },
        meta.run_id
    );
    run_notes(&mut out, meta);
    crate::report::term::terminal_safe(&out, false)
}

/// The scorecard's last lines: the GPUs (when the run had any), each resume, the error, and
/// whether the run can be resumed.
fn run_notes(out: &mut String, meta: &RunMeta) {
    host_lines(out, meta);
    for r in &meta.resumes {
        let _ = writeln!(
            out,
            "resumed {} after step {} ({})",
            r.at.format("%Y-%m-%d %H:%M:%S"),
            r.after_step,
            r.reason
        );
    }
    if let Some(e) = &meta.error {
        let _ = writeln!(out, "error: {e}");
    }
    if meta.resumable() {
        let _ = writeln!(
            out,
            "resumable: `gptx resume {}` goes on from its last completed step",
            meta.run_id
        );
    }
}

/// What the run ran on: its GPUs (when it had any) and the engine with the guarantees not in force.
fn host_lines(out: &mut String, meta: &RunMeta) {
    if let Some(g) = &meta.gpus {
        let _ = writeln!(out, "{}", gpu_line(g));
    }
    if let Some(i) = &meta.isolation {
        let _ = writeln!(out, "engine: {}", i.label());
    }
}

/// `GPUs: 2 × NVIDIA A100-SXM4-80GB (81920 MiB) · --gpus all`; without the model when
/// `nvidia-smi` listed none.
fn gpu_line(g: &rundir::GpuRecord) -> String {
    match g.models() {
        Some(models) => format!("GPUs: {models} · --gpus {}", g.request),
        None => format!(
            "GPUs: --gpus {} · the model is not known (nvidia-smi listed none)",
            g.request
        ),
    }
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
    let ood = match &m.ood_corpus {
        Some(c) => format!("out-of-domain {} ({} docs)", c.file, c.docs),
        None => "out-of-domain: pages held out of the sites other than the target".into(),
    };
    let _ = writeln!(
        o,
        "  corpus      {} ({} docs), {ood}",
        m.corpus.file, m.corpus.docs
    );
    for (host, c) in &m.site_corpora {
        let _ = writeln!(o, "              {host}: {} ({} docs)", c.file, c.docs);
    }
    if let Some(t) = &m.target {
        let _ = writeln!(
            o,
            "  target      {} on {}: T is {} of its pages, held out; {} served; crawl recall counts the shingles of its gold no other site has",
            t.domain, t.host, t.held_out, t.served
        );
    }
    if let Some(b) = m.request_budget {
        let _ = writeln!(o, "  budget      {b} requests per crawl");
    }
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
