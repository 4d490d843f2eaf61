//! The viewer's pages as HTML: runs, a run (header, stages, gates, budgets, ladder, timeline), a step, errors.
//!
//! Everything that came from a run (agent output above all) goes through [`esc`]; the only markup
//! not built here is the ladder chart's SVG.

use std::fmt::Write as _;

use super::html::{self, bytes, esc, facts, ms, page, secs, status_pill, url, Nav};
use super::index::{StepSummary, PAGE_SIZE};
use super::view::{OutputView, RunList, RunView, StageRow, StepView};
use super::PageError;
use crate::config::suite::Budgets;

pub(crate) fn error_page(e: &PageError) -> String {
    let body = format!(
        "<section class=\"card error-card\"><p class=\"code\">{} {}</p><h1>{}</h1><p class=\"detail\">{}</p>\
<p><a href=\"/\">All runs</a></p></section>",
        e.status.as_u16(),
        esc(e.status.canonical_reason().unwrap_or("")),
        esc(&e.title),
        esc(&e.detail)
    );
    page(&e.title, Nav::None, &body)
}

fn select(name: &str, label: &str, values: &[String], current: &Option<String>) -> String {
    let mut s = format!(
        "<label>{label} <select name=\"{name}\" onchange=\"this.form.submit()\"><option value=\"\">all</option>"
    );
    for v in values {
        let sel = if current.as_deref() == Some(v.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option value=\"{}\"{sel}>{}</option>", esc(v), esc(v));
    }
    s.push_str("</select></label>");
    s
}

fn level_cell(level: &Option<String>, assisted: &Option<String>) -> String {
    match (level, assisted) {
        (Some(l), Some(a)) => format!(
            "<span class=\"level\">{}</span> <span class=\"assisted\" title=\"assisted level (rescued stages count as passed)\">{}</span>",
            esc(l),
            esc(a)
        ),
        (Some(l), None) => format!("<span class=\"level\">{}</span>", esc(l)),
        _ => "<span class=\"muted\">–</span>".into(),
    }
}

fn index_cell(bi: Option<f64>) -> String {
    match bi {
        Some(b) => format!(
            "<span class=\"bi{}\" title=\"{}\"><span class=\"bi-bar\"><span style=\"width:{:.1}%\"></span></span>{b:.1}</span>",
            if crate::stages::levels::above_reference(b) {
                " above"
            } else {
                ""
            },
            esc(crate::stages::levels::ABOVE_100),
            b.clamp(0.0, 100.0)
        ),
        None => "<span class=\"muted\">–</span>".into(),
    }
}

pub(crate) fn runs_page(list: &RunList) -> String {
    let mut b = String::new();
    let live = list.rows.iter().any(|r| r.status == "running");
    let _ = write!(
        b,
        "<div class=\"titlebar\"><h1>Runs</h1><span class=\"muted\">{} of {} run{}</span></div>",
        list.rows.len(),
        list.total,
        if list.total == 1 { "" } else { "s" }
    );
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" action=\"/\">{}{}{}<noscript><button>Filter</button></noscript>{}</form>",
        select("suite", "Suite", &list.suites, &list.filter.suite),
        select("agent", "Agent", &list.agents, &list.filter.agent),
        select("status", "Status", &list.statuses, &list.filter.status),
        if list.filter.is_empty() {
            String::new()
        } else {
            "<a class=\"clear\" href=\"/\">clear filters</a>".into()
        }
    );
    for p in &list.problems {
        let _ = write!(b, "<div class=\"banner warn\">Skipped: {}</div>", esc(p));
    }
    if list.rows.is_empty() {
        b.push_str(if list.total == 0 {
            "<div class=\"card empty\">No runs yet. Start one with <code>gptx run --suite mini --agent reference</code>.</div>"
        } else {
            "<div class=\"card empty\">No run matches these filters.</div>"
        });
        return page("Runs", Nav::Runs, &b);
    }
    b.push_str(
        "<div class=\"card flush\"><table class=\"runs\"><thead><tr><th>Run</th><th>Status</th><th>Suite</th>\
<th>Agent</th><th class=\"num\">Seed</th><th>Level</th><th>Bootstrap Index</th><th>Started</th>\
<th class=\"num\">Wall time</th></tr></thead><tbody>",
    );
    for r in &list.rows {
        let mut status = if r.status == "running" {
            "<span class=\"pill live\"><span class=\"dot\"></span>live</span>".to_string()
        } else {
            status_pill(&r.status)
        };
        if r.resumed > 0 {
            let _ = write!(
                status,
                " <span class=\"muted\" title=\"stopped by a fault and resumed\">resumed {}×</span>",
                r.resumed
            );
        }
        if r.resumable {
            status.push_str(
                " <span class=\"muted\" title=\"gptx resume goes on from its last completed step\">resumable</span>",
            );
        }
        let _ = write!(
            b,
            "<tr><td><a class=\"runid\" href=\"/runs/{}\">{}</a></td><td>{status}</td><td>{}</td><td>{}</td>\
<td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"num\">{}</td></tr>",
            url(&r.run_id),
            esc(&r.run_id),
            esc(&r.suite),
            esc(&r.agent),
            r.seed,
            level_cell(&r.level, &r.assisted_level),
            index_cell(r.bootstrap_index),
            html::time(&r.started_at),
            r.wall_seconds.map(secs).unwrap_or_else(|| "–".into())
        );
    }
    b.push_str("</tbody></table></div>");
    if live {
        b.push_str("<div id=\"autorefresh\" data-seconds=\"10\" hidden></div>");
    }
    page("Runs", Nav::Runs, &b)
}

/// The stage table's headline metrics that the stage has.
fn headline(s: &StageRow) -> String {
    let mut out = String::new();
    for h in crate::config::stages::headline(&s.name) {
        let label = h.label;
        if let Some(v) = s.metrics.get(h.key) {
            let _ = write!(
                out,
                "<span class=\"metric\"><span>{}</span> {}</span>",
                esc(label),
                esc(&html::value(v))
            );
        }
    }
    if out.is_empty() {
        // Stages this viewer has no list for: their scalar metrics.
        for (k, v) in s
            .metrics
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array())
            .take(6)
        {
            let _ = write!(
                out,
                "<span class=\"metric\"><span>{}</span> {}</span>",
                esc(k),
                esc(&html::value(v))
            );
        }
    }
    out
}

fn ended_by(e: Option<crate::trace::EndReason>) -> String {
    e.and_then(|e| serde_json::to_value(e).ok())
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

fn stages_table(v: &RunView) -> String {
    let mut b = String::from(
        "<h2>Stages</h2><div class=\"card flush\"><table class=\"stages\"><thead><tr><th>Stage</th><th>Status</th>\
<th>Passed</th><th>Ended by</th><th class=\"num\">Steps</th><th class=\"num\">Sandbox</th><th class=\"num\">Wall</th>\
<th class=\"num\">Score</th><th>Metrics</th></tr></thead><tbody>",
    );
    for s in &v.stages {
        let passed = match (s.passed, s.rescued) {
            (Some(true), _) => "<span class=\"yes\">✓ passed</span>".to_string(),
            (Some(false), true) => {
                "<span class=\"no\">✗</span> <span class=\"assisted\">rescued</span>".into()
            }
            (Some(false), false) => "<span class=\"no\">✗ failed</span>".into(),
            (None, _) => "<span class=\"muted\">–</span>".into(),
        };
        let status = if s.status == "running" {
            "<span class=\"pill live\"><span class=\"dot\"></span>running</span>".to_string()
        } else if s.status == "not run" {
            "<span class=\"muted\">not run</span>".to_string()
        } else {
            status_pill(&s.status)
        };
        let reason = s
            .reason
            .as_ref()
            .map(|r| format!("<div class=\"reason\">{}</div>", esc(r)))
            .unwrap_or_default();
        let model = match (s.tokens, s.cost_usd) {
            (Some(t), Some(c)) => {
                format!("<div class=\"muted small\">model: {t} tokens, ${c:.4}</div>")
            }
            (Some(t), None) => format!("<div class=\"muted small\">model: {t} tokens</div>"),
            _ => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td class=\"stage-name\">{}</td><td>{status}</td><td>{passed}</td><td>{}</td><td class=\"num\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"metrics\">{}{reason}{model}</td></tr>",
            esc(&s.name),
            esc(&ended_by(s.ended_by)),
            s.steps.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            s.sandbox_seconds.map(secs).unwrap_or_else(|| "–".into()),
            s.wall_seconds.map(secs).unwrap_or_else(|| "–".into()),
            s.normalized
                .map(|n| format!("{n:.2}"))
                .unwrap_or_else(|| "–".into()),
            headline(s),
        );
    }
    b.push_str("</tbody></table></div>");
    b
}

/// The level gates, L1 to L6, as a row of steps.
fn gates(v: &RunView) -> String {
    let stage = |name: &str| v.stages.iter().find(|s| s.name == name);
    let mut b = String::from("<h2>Gates</h2><ol class=\"gates\">");
    for def in &crate::config::stages::STAGES {
        let (level, title, name) = (format!("L{}", def.level), def.title, def.name);
        let (class, mark) = match stage(name) {
            Some(s) if s.passed == Some(true) => ("pass", "✓"),
            Some(s) if s.rescued => ("rescued", "✗ rescued"),
            Some(s) if s.passed == Some(false) => ("fail", "✗"),
            Some(s) if s.status == "running" || s.status == "scoring" => ("pending", "…"),
            _ => ("none", "–"),
        };
        let _ = write!(
            b,
            "<li class=\"{class}\"><b>{level}</b> {title}<span>{} · {mark}</span></li>",
            esc(name)
        );
    }
    let l6 = stage("selfhost").is_some_and(|s| {
        s.passed == Some(true)
            && s.metrics
                .get("beats_conditional_xz")
                .and_then(|b| b.as_bool())
                .unwrap_or(false)
    });
    let _ = write!(
        b,
        "<li class=\"{}\"><b>L6</b> GPT-X<span>rebuilt below xz | served · {}</span></li></ol>",
        if l6 { "pass" } else { "none" },
        if l6 { "✓" } else { "–" }
    );
    b
}

fn meter(used: Option<f64>, max: Option<f64>, show: impl Fn(f64) -> String) -> String {
    match (used, max) {
        (Some(u), Some(m)) if m > 0.0 => {
            let pct = (u / m * 100.0).clamp(0.0, 100.0);
            let class = if pct >= 99.9 {
                "full"
            } else if pct >= 80.0 {
                "high"
            } else {
                ""
            };
            format!(
                "<div class=\"meter {class}\"><span style=\"width:{pct:.1}%\"></span></div><span class=\"small\">{} / {}</span>",
                show(u),
                show(m)
            )
        }
        (Some(u), _) => format!("<span class=\"small\">{}</span>", show(u)),
        (None, Some(m)) => format!("<span class=\"small muted\">– / {}</span>", show(m)),
        (None, None) => "<span class=\"muted\">–</span>".into(),
    }
}

fn budgets_table(v: &RunView) -> String {
    let any_model = v.stages.iter().any(|s| {
        s.tokens.is_some()
            || s.budgets
                .as_ref()
                .is_some_and(|b| b.max_tokens.is_some() || b.max_cost_usd.is_some())
    });
    let mut b = String::from(
        "<h2>Budgets</h2><div class=\"card flush\"><table class=\"budgets\"><thead><tr><th>Stage</th><th>Steps</th>\
<th>Sandbox time</th><th>Wall time</th>",
    );
    if any_model {
        b.push_str("<th>Model tokens</th><th>Model cost</th>");
    }
    b.push_str("</tr></thead><tbody>");
    for s in &v.stages {
        let bud: Option<&Budgets> = s.budgets.as_ref();
        let _ = write!(
            b,
            "<tr><td class=\"stage-name\">{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&s.name),
            meter(
                s.steps.map(|n| n as f64),
                bud.map(|b| b.max_steps as f64),
                |x| format!("{x:.0}")
            ),
            meter(s.sandbox_seconds, bud.map(|b| b.max_sandbox_seconds), secs),
            meter(s.wall_seconds, bud.map(|b| b.max_wall_seconds), secs),
        );
        if any_model {
            let _ = write!(
                b,
                "<td>{}</td><td>{}</td>",
                meter(
                    s.tokens.map(|t| t as f64),
                    bud.and_then(|b| b.max_tokens.map(|t| t as f64)),
                    |x| format!("{x:.0}")
                ),
                meter(s.cost_usd, bud.and_then(|b| b.max_cost_usd), |x| format!(
                    "${x:.2}"
                )),
            );
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div>");
    b
}

/// The run's header, stages, gates and budgets: the part the live page reloads.
pub fn summary(v: &RunView) -> String {
    let m = &v.meta;
    let mut b = format!(
        "<section id=\"summary\"><div class=\"titlebar\"><h1 class=\"runid\">{}</h1>{}</div>",
        esc(&v.id),
        if v.live {
            "<span class=\"pill live\"><span class=\"dot\"></span>live</span>".to_string()
        } else {
            status_pill(&m.status.to_string())
        }
    );
    let world = m
        .world_hash
        .as_ref()
        .map(|h| {
            format!(
                "<code title=\"{}\">{}</code>",
                esc(h),
                esc(&h[..h.len().min(12)])
            )
        })
        .unwrap_or_else(|| "<span class=\"muted\">none</span>".into());
    let wall = match (m.ended_at, v.live) {
        (Some(e), _) => secs((e - m.started_at).num_milliseconds() as f64 / 1000.0),
        (None, true) => format!(
            "{} so far",
            secs((chrono::Utc::now() - m.started_at).num_milliseconds() as f64 / 1000.0)
        ),
        (None, false) => "–".into(),
    };
    b.push_str(&facts(&[
        ("Agent", format!("<b>{}</b>", esc(&m.agent))),
        ("Suite", esc(&m.suite)),
        ("Seed", m.seed.to_string()),
        ("World", world),
        ("Status", status_pill(&m.status.to_string())),
        ("Level", level_cell(&v.level, &v.assisted_level)),
        ("Bootstrap Index", index_cell(v.bootstrap_index)),
        ("Started", html::time(&m.started_at)),
        ("Wall time", wall),
        (
            "Trace",
            format!(
                "{} events · {}{}{}",
                v.last_seq.map(|s| s + 1).unwrap_or(0),
                bytes(v.trace_bytes),
                if v.counts.model_calls > 0 {
                    format!(" · {} model calls", v.counts.model_calls)
                } else {
                    String::new()
                },
                if v.pending_bytes > 0 {
                    format!(" · {} being written", bytes(v.pending_bytes))
                } else {
                    String::new()
                }
            ),
        ),
        ("gptx", esc(&m.gptx_version)),
    ]));
    if let Some(e) = &m.error {
        let _ = write!(
            b,
            "<div class=\"banner bad\"><b>Run failed:</b> {}</div>",
            esc(e)
        );
    }
    for r in &m.resumes {
        let _ = write!(
            b,
            "<div class=\"banner warn\"><b>Resumed</b> {} after step {}: it had stopped ({}). Stages graded before kept their grades; the stage it stopped in went on with what was left of its budgets.</div>",
            html::time(&r.at),
            r.after_step,
            esc(&r.reason)
        );
    }
    if m.resumable() {
        let _ = write!(
            b,
            "<div class=\"banner warn\">Interrupted: <code>gptx resume {}</code> goes on from its last completed step.</div>",
            esc(&m.run_id)
        );
    }
    for n in &v.notes {
        let _ = write!(b, "<div class=\"banner warn\">{}</div>", esc(n));
    }
    b.push_str(&stages_table(v));
    b.push_str(&gates(v));
    b.push_str(&budgets_table(v));
    b.push_str("</section>");
    b
}

/// The bpb ladder chart, inline.
fn ladder_svg(title: &str, baselines: &[(String, f64)], points: &[(String, f64)]) -> String {
    let svg = crate::report::charts::bpb_ladder(title, baselines, points);
    // Inline SVG in HTML takes no XML declaration or doctype.
    let start = svg.find("<svg").unwrap_or(0);
    svg[start..].to_string()
}

fn problems_section(v: &RunView) -> String {
    let mut b = String::new();
    if let Some(e) = &v.trace_error {
        let _ = write!(
            b,
            "<div class=\"banner bad\"><b>The trace cannot be read:</b> {}</div>",
            esc(e)
        );
    }
    if v.trace_missing && v.trace_error.is_none() {
        let _ = write!(
            b,
            "<div class=\"banner warn\">{} does not exist (yet).</div>",
            esc(&v.events_path)
        );
    }
    if !v.problems.is_empty() {
        let _ = write!(
            b,
            "<div class=\"banner bad\"><b>The trace is damaged:</b> {} line{} of {} {} not a trace event; they are left out below.<ul>",
            v.problems.len(),
            if v.problems.len() == 1 { "" } else { "s" },
            esc(&v.events_path),
            if v.problems.len() == 1 { "is" } else { "are" }
        );
        for p in v.problems.iter().take(20) {
            let _ = write!(
                b,
                "<li>{} line {}: {}</li>",
                esc(&v.events_path),
                p.line_no,
                esc(&p.message)
            );
        }
        b.push_str("</ul></div>");
    }
    b
}

/// One row of the step timeline; `scale_ms` is the duration drawn as a full bar.
/// The timeline row of the step still running in a live run (replaced by its row when it ends).
pub(crate) fn inflight_row(f: &crate::serve::index::InFlight) -> String {
    format!(
        "<tr class=\"step inflight\" id=\"inflight\" data-step=\"{n}\"><td class=\"num\">{n}</td>\
<td><span class=\"stage-tag\">{stage}</span></td><td class=\"tool\">{tool}</td>\
<td class=\"cmd\"><code>{summary}</code></td>\
<td class=\"dur\"><span class=\"muted\">running since {since}</span></td>\
<td class=\"num\">–</td><td class=\"num\">–</td><td><span class=\"pill live\"><span class=\"dot\"></span> running</span></td></tr>",
        n = f.step,
        stage = esc(&f.stage),
        tool = esc(&f.tool),
        summary = esc(&f.summary),
        since = f.started_at.format("%H:%M:%S UTC"),
    )
}

pub(crate) fn step_row(id: &str, s: &StepSummary, scale_ms: f64) -> String {
    let href = format!("/runs/{}/steps/{}", url(id), s.step);
    let result = if s.timed_out {
        "<span class=\"pill bad\">timed out</span>".to_string()
    } else if s.oom_killed {
        "<span class=\"pill bad\">OOM</span>".to_string()
    } else if !s.ok {
        format!(
            "<span class=\"pill bad\">{}</span>",
            esc(s.error.as_deref().unwrap_or("error"))
        )
    } else {
        match s.exit_code {
            Some(0) => "<span class=\"pill good\">exit 0</span>".to_string(),
            Some(c) => format!("<span class=\"pill bad\">exit {c}</span>"),
            None => "<span class=\"pill good\">ok</span>".to_string(),
        }
    };
    let pct = if scale_ms > 0.0 {
        (s.duration_ms / scale_ms * 100.0).clamp(0.5, 100.0)
    } else {
        0.5
    };
    let mem = s
        .peak_bytes
        .or(s.max_rss_kb.map(|k| k * 1024))
        .filter(|b| *b > 0)
        .map(bytes)
        .unwrap_or_else(|| "–".into());
    let class = if s.ok && s.exit_code.unwrap_or(0) == 0 && !s.timed_out {
        "step"
    } else {
        "step failed"
    };
    format!(
        "<tr class=\"{class}\" id=\"step-{n}\" data-seq=\"{seq}\"><td class=\"num\"><a href=\"{href}\">{n}</a></td>\
<td><span class=\"stage-tag\">{stage}</span><span class=\"muted small\"> #{ss}</span></td><td class=\"tool\">{tool}</td>\
<td class=\"cmd\"><a href=\"{href}\"><code>{summary}</code></a>{commit}</td>\
<td class=\"dur\"><div class=\"bar\"><span style=\"width:{pct:.1}%\"></span></div><span>{dur}</span></td>\
<td class=\"num\">{cpu}</td><td class=\"num\">{mem}</td><td>{result}</td></tr>",
        n = s.step,
        seq = s.seq,
        stage = esc(&s.stage),
        ss = s.stage_step,
        tool = esc(&s.tool),
        summary = if s.summary.is_empty() {
            "<span class=\"muted\">–</span>".to_string()
        } else {
            esc(&s.summary)
        },
        commit = if s.commit.is_some() {
            " <span class=\"changed\" title=\"this step changed the workspace\">Δ</span>"
        } else {
            ""
        },
        dur = ms(s.duration_ms),
        cpu = s
            .cpu_seconds
            .map(|c| format!("{c:.2} s"))
            .unwrap_or_else(|| "–".into()),
    )
}

fn pager(v: &RunView) -> String {
    if v.pages <= 1 {
        return String::new();
    }
    let link = |p: usize, label: &str| {
        format!(
            "<a href=\"/runs/{}?page={p}#timeline\">{label}</a>",
            url(&v.id)
        )
    };
    let mut b = String::from("<nav class=\"pager\">");
    if v.page > 1 {
        b.push_str(&link(v.page - 1, "← previous"));
    }
    let mut shown = Vec::new();
    for p in 1..=v.pages {
        if p <= 2 || p + 1 >= v.pages || p.abs_diff(v.page) <= 2 {
            shown.push(p);
        }
    }
    let mut last = 0;
    for p in shown {
        if p > last + 1 {
            b.push_str("<span class=\"gap\">…</span>");
        }
        if p == v.page {
            let _ = write!(b, "<span class=\"current\">{p}</span>");
        } else {
            b.push_str(&link(p, &p.to_string()));
        }
        last = p;
    }
    if v.page < v.pages {
        b.push_str(&link(v.page + 1, "next →"));
    }
    b.push_str("</nav>");
    b
}

fn timeline(v: &RunView) -> String {
    let first = (v.page - 1) * PAGE_SIZE + 1;
    let last = (first + v.steps.len()).saturating_sub(1);
    let mut b = format!(
        "<section id=\"timeline\"><div class=\"titlebar\"><h2>Steps</h2><span class=\"muted\">{}</span></div>",
        if v.total_steps == 0 {
            "none yet".to_string()
        } else {
            format!(
                "{first}–{last} of <span id=\"step-total\">{}</span> · page {} of {}",
                v.total_steps, v.page, v.pages
            )
        }
    );
    b.push_str(&pager(v));
    let scale = v
        .steps
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .map(|s| s.duration_ms)
        .fold(0.0, f64::max);
    b.push_str(
        "<div class=\"card flush\"><table class=\"timeline\"><thead><tr><th class=\"num\">#</th><th>Stage</th><th>Tool</th>\
<th>Command</th><th>Duration</th><th class=\"num\">CPU</th><th class=\"num\">Peak mem</th><th>Result</th></tr></thead><tbody>",
    );
    if v.steps.is_empty() {
        b.push_str("<tr class=\"empty\"><td colspan=\"8\" class=\"muted\">No steps yet.</td></tr>");
    }
    for s in &v.steps {
        match s {
            Ok(s) => b.push_str(&step_row(&v.id, s, scale)),
            Err(p) => {
                let _ = write!(
                    b,
                    "<tr class=\"step damaged\"><td colspan=\"8\">{} line {}: {}</td></tr>",
                    esc(&v.events_path),
                    p.line_no,
                    esc(&p.message)
                );
            }
        }
    }
    if let Some(f) = v.in_flight.as_ref().filter(|_| v.page == v.pages) {
        b.push_str(&inflight_row(f));
    }
    b.push_str("</tbody></table></div>");
    if v.live {
        let _ = write!(
            b,
            "<p id=\"newer\" hidden><a href=\"/runs/{}?page={}#timeline\"><span>0</span> newer steps on the next page →</a></p>",
            url(&v.id),
            v.page + 1
        );
    }
    b.push_str(&pager(v));
    b.push_str("</section>");
    if v.live {
        let _ = write!(
            b,
            "<div id=\"live\" hidden data-run=\"{}\" data-after=\"{}\" data-scale=\"{:.1}\" data-last-page=\"{}\" data-page=\"{}\" data-page-size=\"{PAGE_SIZE}\"></div>",
            esc(&v.id),
            v.last_seq.map(|s| s.to_string()).unwrap_or_default(),
            scale.max(1000.0),
            v.page == v.pages,
            v.page
        );
    }
    b
}

pub fn run_page(v: &RunView) -> String {
    let mut b = format!(
        "<div class=\"crumbs\"><a href=\"/\">Runs</a> / {}</div>",
        esc(&v.id)
    );
    b.push_str(&problems_section(v));
    b.push_str(&summary(v));
    b.push_str("<div class=\"two\"><section><h2>bpb ladder</h2><div class=\"card chart\">");
    match &v.ladder {
        Some(l) => {
            b.push_str(&ladder_svg(
                &format!("{} · bits per byte on the hidden test set", v.meta.agent),
                &l.baselines,
                &l.points,
            ));
            if l.points.is_empty() {
                b.push_str(
                    "<p class=\"muted small\">No verified model yet: only the baselines.</p>",
                );
            }
        }
        None => {
            b.push_str("<p class=\"muted\">No ladder: the train stage has not been scored.</p>")
        }
    }
    b.push_str("</div></section><section><h2>Warnings and rescues</h2><div class=\"card\">");
    if v.warnings.is_empty() && v.rescues.is_empty() && v.integrity.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    } else {
        b.push_str("<ul class=\"notes\">");
        for r in &v.rescues {
            let _ = write!(
                b,
                "<li class=\"rescue\"><b>Rescue after {}</b>{}: {}{}</li>",
                esc(&r.stage),
                if r.ok { "" } else { " (failed)" },
                esc(&r.detail),
                if r.files.is_empty() {
                    String::new()
                } else {
                    format!(
                        " <span class=\"muted\">({})</span>",
                        esc(&r.files.join(", "))
                    )
                }
            );
        }
        for n in &v.integrity {
            let _ = write!(
                b,
                "<li class=\"warning\"><b>Integrity: {} ×{}</b>{}: {}</li>",
                esc(&n.kind),
                n.count,
                n.stage
                    .as_ref()
                    .map(|s| format!(" in {}", esc(s)))
                    .unwrap_or_default(),
                esc(&n.detail)
            );
        }
        for w in &v.warnings {
            let _ = write!(b, "<li class=\"warning\">{}</li>", esc(w));
        }
        b.push_str("</ul>");
    }
    b.push_str("</div></section></div>");
    if !v.samples.is_empty() {
        b.push_str("<section><h2>Model samples</h2><div class=\"samples\">");
        for (prompt, text) in &v.samples {
            let _ = write!(
                b,
                "<div class=\"card sample\"><pre><span class=\"prompt\">{}</span>{}</pre></div>",
                esc(prompt),
                esc(text)
            );
        }
        b.push_str("</div></section>");
    }
    b.push_str(&timeline(v));
    page(&format!("Run {}", v.id), Nav::Runs, &b)
}

fn output_block(o: &OutputView) -> String {
    let mut head = format!("<b>{}</b>", esc(&o.stream));
    if o.total == 0 && o.text.is_empty() {
        let _ = write!(head, " <span class=\"muted\">empty</span>");
        return format!("<div class=\"output\"><div class=\"output-head\">{head}</div></div>");
    }
    if o.shown < o.total {
        let _ = write!(
            head,
            " <span class=\"truncated\">showing {} of {} bytes</span>",
            o.shown, o.total
        );
    } else {
        let _ = write!(head, " <span class=\"muted\">{} bytes</span>", o.total);
    }
    if let Some(f) = &o.full {
        let _ = write!(head, " · <a href=\"{}\">full output</a>", esc(f));
    }
    if let Some(n) = &o.note {
        let _ = write!(head, " <span class=\"muted\">({})</span>", esc(n));
    }
    format!(
        "<div class=\"output\"><div class=\"output-head\">{head}</div><pre class=\"out {}\">{}</pre></div>",
        esc(&o.stream),
        esc(&o.text)
    )
}

fn diff_section(v: &StepView) -> String {
    let mut b = String::from("<section id=\"diff\"><h2>Workspace diff</h2>");
    match &v.diff {
        None => b.push_str("<div class=\"card\"><p class=\"muted\">This step did not change the workspace.</p></div>"),
        Some(Err(e)) => {
            let _ = write!(b, "<div class=\"banner bad\">{}</div>", esc(e));
        }
        Some(Ok(d)) => {
            let adds: usize = d.files.iter().map(|f| f.additions).sum();
            let dels: usize = d.files.iter().map(|f| f.deletions).sum();
            let _ = write!(
                b,
                "<div class=\"card\"><p>Commit <code>{}</code> · {} file{} · <span class=\"add\">+{adds}</span> <span class=\"del\">−{dels}</span></p>\
<table class=\"files\"><tbody>",
                esc(&d.commit[..d.commit.len().min(12)]),
                d.files.len(),
                if d.files.len() == 1 { "" } else { "s" }
            );
            for (i, f) in d.files.iter().enumerate() {
                let _ = write!(
                    b,
                    "<tr><td><a href=\"#file-{i}\"><code>{}</code></a></td><td>{}</td><td class=\"num\"><span class=\"add\">+{}</span> <span class=\"del\">−{}</span></td></tr>",
                    esc(&f.path),
                    status_pill(&f.status),
                    f.additions,
                    f.deletions
                );
            }
            b.push_str("</tbody></table></div>");
            if d.truncated {
                let _ = write!(
                    b,
                    "<div class=\"banner warn\">The diff is cut after {}; see <code>git -C workspace.git show {}</code> for all of it.</div>",
                    bytes(super::view::DIFF_BYTES as u64),
                    esc(&d.commit)
                );
            }
            for (i, f) in d.files.iter().enumerate() {
                let _ = write!(
                    b,
                    "<div class=\"card flush file\" id=\"file-{i}\"><div class=\"file-head\"><code>{}</code> {}</div>",
                    esc(&f.path),
                    status_pill(&f.status)
                );
                if f.binary {
                    b.push_str("<p class=\"muted pad\">Binary file.</p>");
                } else if f.patch.is_empty() {
                    b.push_str("<p class=\"muted pad\">No text changes shown.</p>");
                } else {
                    b.push_str("<pre class=\"diff\">");
                    for line in f.patch.lines() {
                        let class = if line.starts_with("@@") {
                            "hunk"
                        } else if line.starts_with('+') {
                            "add"
                        } else if line.starts_with('-') {
                            "del"
                        } else if line.starts_with('\\') {
                            "meta"
                        } else {
                            "ctx"
                        };
                        // Block spans: one per line, no newline between them (it would show twice).
                        let _ = write!(b, "<span class=\"{class}\">{}</span>", esc(line));
                    }
                    b.push_str("</pre>");
                }
                b.push_str("</div>");
            }
        }
    }
    b.push_str("</section>");
    b
}

fn step_nav(v: &StepView) -> String {
    let link = |n: Option<u64>, label: &str| match n {
        Some(n) => format!(
            "<a class=\"button\" href=\"/runs/{}/steps/{n}\">{label}</a>",
            url(&v.id)
        ),
        None => format!("<span class=\"button disabled\">{label}</span>"),
    };
    format!(
        "<nav class=\"stepnav\">{}<a class=\"button\" href=\"/runs/{}?page={}#step-{}\">timeline</a>{}</nav>",
        link(v.prev, "← previous step"),
        url(&v.id),
        v.page,
        v.rec.step,
        link(v.next, "next step →")
    )
}

pub fn step_page(v: &StepView) -> String {
    let r = &v.rec;
    let mut b = format!(
        "<div class=\"crumbs\"><a href=\"/\">Runs</a> / <a href=\"/runs/{}\">{}</a> / step {}</div>",
        url(&v.id),
        esc(&v.id),
        r.step
    );
    let result = if !r.ok {
        format!(
            "<span class=\"pill bad\">{}</span>",
            esc(r
                .result
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("error"))
        )
    } else if let Some(c) = r.result.get("exit_code").and_then(|c| c.as_i64()) {
        format!(
            "<span class=\"pill {}\">exit {c}</span>",
            if c == 0 { "good" } else { "bad" }
        )
    } else {
        "<span class=\"pill good\">ok</span>".into()
    };
    let _ = write!(
        b,
        "<div class=\"titlebar\"><h1>Step {} <span class=\"muted\">of {} · {} · {}</span></h1>{result}\
<span class=\"muted\">{} · {} · {}</span></div>",
        r.step,
        v.total_steps,
        esc(&r.stage),
        esc(&r.tool),
        esc(&v.meta.agent),
        esc(&v.meta.suite),
        status_pill(&v.meta.status.to_string())
    );
    b.push_str(&step_nav(v));
    let mut items: Vec<(&str, String)> = vec![
        (
            "Stage",
            format!("{} (step {} of the stage)", esc(&r.stage), r.stage_step),
        ),
        ("Tool", format!("<code>{}</code>", esc(&r.tool))),
        ("Started", html::time(&r.started_at)),
        ("Duration", ms(r.duration_ms)),
        ("Sandbox time", secs(r.sandbox_seconds)),
    ];
    if let Some(u) = &r.usage {
        items.push(("CPU", format!("{:.2} s", u.cpu_seconds)));
        items.push(("Max RSS", bytes(u.max_rss_kb * 1024)));
        if let Some(c) = u.container_cpu_seconds {
            items.push(("Container CPU", format!("{c:.2} s")));
        }
        if let Some(p) = u.container_peak_bytes {
            items.push(("Container peak", bytes(p)));
        }
        if u.timed_out {
            items.push(("Timed out", "<span class=\"pill bad\">yes</span>".into()));
        }
        if u.oom_killed {
            items.push(("OOM-killed", "<span class=\"pill bad\">yes</span>".into()));
        }
    }
    items.push((
        "Commit",
        r.commit
            .as_ref()
            .map(|c| format!("<code>{}</code>", esc(&c[..c.len().min(12)])))
            .unwrap_or_else(|| "<span class=\"muted\">no change</span>".into()),
    ));
    items.push((
        "Trace",
        format!(
            "<span title=\"{}\">events.jsonl</span> line {} (seq {})",
            esc(&v.events_path),
            v.line.line_no,
            v.line.seq
        ),
    ));
    b.push_str(&facts(&items));

    b.push_str("<section><h2>Call</h2><div class=\"card\">");
    let mut args = r.args.clone();
    let text_arg = match r.tool.as_str() {
        "bash" => Some("cmd"),
        "write_file" => Some("content"),
        _ => None,
    };
    if let Some(path) = r.args.get("path").and_then(|c| c.as_str()) {
        let _ = write!(b, "<p>Path <code>{}</code></p>", esc(path));
        if let Some(o) = args.as_object_mut() {
            o.remove("path");
        }
    }
    if let Some(key) = text_arg {
        if let Some(text) = r.args.get(key).and_then(|c| c.as_str()) {
            let class = if key == "cmd" { "cmd" } else { "json" };
            let _ = write!(b, "<pre class=\"{class}\">{}</pre>", esc(text));
            if let Some(o) = args.as_object_mut() {
                o.remove(key);
                o.remove("content_sha256");
            }
        }
    }
    if let Some(sha) = r
        .args
        .get("content_sha256")
        .and_then(|s| s.as_str())
        .filter(|s| super::view::is_sha256(s))
    {
        let _ = write!(
            b,
            "<p>The written content is kept in full: <a href=\"/runs/{}/outputs/{sha}\">outputs/{sha}</a></p>",
            url(&v.id)
        );
    }
    if args.as_object().is_none_or(|o| !o.is_empty()) {
        let text = serde_json::to_string_pretty(&args).unwrap_or_default();
        let _ = write!(b, "<pre class=\"json\">{}</pre>", esc(&text));
    }
    b.push_str("</div></section>");

    b.push_str("<section><h2>Result</h2><div class=\"card\">");
    let mut rest = r.result.clone();
    if let Some(o) = rest.as_object_mut() {
        for k in ["stdout", "stderr"] {
            o.remove(k);
        }
    }
    if !r.ok {
        let _ = write!(
            b,
            "<div class=\"banner bad\"><b>{}</b>: {}</div>",
            esc(r
                .result
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("error")),
            esc(r
                .result
                .get("message")
                .and_then(|c| c.as_str())
                .unwrap_or(""))
        );
    }
    if rest.as_object().is_none_or(|o| !o.is_empty()) {
        let text = serde_json::to_string_pretty(&rest).unwrap_or_default();
        let shown = if text.len() > super::view::SHOW_BYTES as usize {
            let mut end = super::view::SHOW_BYTES as usize;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!(
                "{}\n… ({} of {} bytes shown)",
                &text[..end],
                end,
                text.len()
            )
        } else {
            text
        };
        let _ = write!(b, "<pre class=\"json\">{}</pre>", esc(&shown));
    }
    for o in &v.outputs {
        b.push_str(&output_block(o));
    }
    b.push_str("</div></section>");
    b.push_str(&diff_section(v));
    b.push_str(&step_nav(v));
    page(&format!("Step {} of {}", r.step, v.id), Nav::Runs, &b)
}

/// The leaderboard page: `crate::report::leaderboard`'s tables and charts inside the viewer's frame.
pub fn leaderboard(
    boards: &[crate::report::leaderboard::Board],
    suites: &[String],
    suite: Option<&str>,
) -> String {
    let mut b = String::from("<div class=\"titlebar\"><h1>Leaderboard</h1></div>");
    if suites.len() > 1 || suite.is_some() {
        b.push_str(&format!(
            "<form class=\"filters\" method=\"get\" action=\"/leaderboard\">{}<noscript><button>Filter</button></noscript></form>",
            select("suite", "Suite", suites, &suite.map(str::to_string))
        ));
    }
    b.push_str("<div class=\"leaderboard\">");
    b.push_str(&crate::report::leaderboard::html_body(boards, true));
    b.push_str("</div>");
    page("Leaderboard", Nav::Leaderboard, &b)
}
