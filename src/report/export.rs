//! Exports of a run for other tools: an Inspect AI eval log (JSON) and JUnit XML.
//!
//! Both read the run directory only (`run.json`, `events.jsonl`, `score.json` when the run ended) and
//! map each stage to one unit: a JUnit `<testcase>`, an Inspect `EvalSample` whose messages are the
//! agent's tool calls and their results as the agent saw them (inline outputs, cut as the runner cut
//! them).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus};
use crate::trace::{self, EndReason, Event, ModelCall, StageScore, StepRecord};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An Inspect AI eval log in its JSON form (`EvalLog`).
    Inspect,
    /// JUnit XML: one testcase per stage.
    Junit,
}

/// The run in `format`, as text.
pub fn export(run: &RunDir, format: Format) -> anyhow::Result<String> {
    let r = Run::read(run)?;
    match format {
        Format::Junit => Ok(junit(&r)),
        Format::Inspect => {
            let mut text = serde_json::to_string_pretty(&inspect(&r))
                .with_context(|| format!("{}: serialising the eval log", run.path.display()))?;
            text.push('\n');
            Ok(text)
        }
    }
}

/// Something that happened in a stage besides its steps: a warning, a rescue, the agent's stderr.
#[derive(Debug, Clone)]
struct Note {
    ts: chrono::DateTime<chrono::Utc>,
    source: &'static str,
    data: Value,
}

/// One stage as the trace tells it.
#[derive(Debug, Clone, Default)]
struct StageRecord {
    name: String,
    index: usize,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    ended_at: Option<chrono::DateTime<chrono::Utc>>,
    budgets: Option<crate::config::suite::Budgets>,
    instruction_sha256: Option<String>,
    steps: Vec<StepRecord>,
    calls: Vec<(chrono::DateTime<chrono::Utc>, ModelCall)>,
    notes: Vec<Note>,
    ended: Option<(EndReason, u64, f64, f64)>,
    score: Option<StageScore>,
    rescued: bool,
}

/// What the exports need of a run.
struct Run {
    meta: RunMeta,
    score: Option<RunScore>,
    stages: Vec<StageRecord>,
    /// `run_finished`: level, assisted level, Bootstrap Index, wall seconds.
    finished: Option<(String, Option<String>, f64, f64)>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Run {
    fn read(dir: &RunDir) -> anyhow::Result<Self> {
        let meta: RunMeta = rundir::read_json(&dir.run_json())?;
        let score = if dir.score_json().exists() {
            Some(rundir::read_json::<RunScore>(&dir.score_json())?)
        } else {
            None
        };
        let events = trace::log::read_events(&dir.events())?;
        let mut stages: Vec<StageRecord> = meta
            .stages
            .iter()
            .enumerate()
            .map(|(index, name)| StageRecord {
                name: name.clone(),
                index,
                ..StageRecord::default()
            })
            .collect();
        let mut current: Option<usize> = None;
        let mut finished = None;
        let mut finished_at = None;
        let find = |stages: &mut Vec<StageRecord>, name: &str| -> usize {
            match stages.iter().position(|s| s.name == name) {
                Some(i) => i,
                None => {
                    // A stage the trace has and run.json does not list: keep it, at the end.
                    let index = stages.len();
                    stages.push(StageRecord {
                        name: name.to_string(),
                        index,
                        ..StageRecord::default()
                    });
                    index
                }
            }
        };
        for env in events {
            match env.event {
                Event::StageStarted {
                    stage,
                    budgets,
                    instruction_sha256,
                    ..
                } => {
                    let i = find(&mut stages, &stage);
                    stages[i].started_at = Some(env.ts);
                    stages[i].budgets = Some(budgets);
                    stages[i].instruction_sha256 = Some(instruction_sha256);
                    current = Some(i);
                }
                Event::Step(s) => {
                    let i = find(&mut stages, &s.stage);
                    stages[i].steps.push(s);
                }
                Event::ModelCall { stage, call } => {
                    let i = find(&mut stages, &stage);
                    stages[i].calls.push((env.ts, call));
                }
                Event::StageEnded {
                    stage,
                    ended_by,
                    steps,
                    sandbox_seconds,
                    wall_seconds,
                } => {
                    let i = find(&mut stages, &stage);
                    stages[i].ended = Some((ended_by, steps, sandbox_seconds, wall_seconds));
                    stages[i].ended_at = Some(env.ts);
                }
                Event::StageScored { stage, score } => {
                    let i = find(&mut stages, &stage);
                    stages[i].score = Some(score);
                }
                Event::Rescue {
                    stage,
                    ok,
                    files,
                    detail,
                    seconds,
                    commit,
                } => {
                    let i = find(&mut stages, &stage);
                    stages[i].rescued |= ok;
                    stages[i].notes.push(Note {
                        ts: env.ts,
                        source: "gptx.rescue",
                        data: json!({"ok": ok, "files": files, "detail": detail, "seconds": seconds, "commit": commit}),
                    });
                }
                Event::AgentLog { stage, text } => {
                    let i = find(&mut stages, &stage);
                    stages[i].notes.push(Note {
                        ts: env.ts,
                        source: "gptx.agent_log",
                        data: json!({"text": text}),
                    });
                }
                Event::Warning { message } => {
                    if let Some(i) = current {
                        stages[i].notes.push(Note {
                            ts: env.ts,
                            source: "gptx.warning",
                            data: json!({"message": message}),
                        });
                    }
                }
                Event::Integrity(note) => {
                    let i = match &note.stage {
                        Some(s) => Some(find(&mut stages, s)),
                        None => current,
                    };
                    if let Some(i) = i {
                        stages[i].notes.push(Note {
                            ts: env.ts,
                            source: "gptx.integrity",
                            data: json!(note),
                        });
                    }
                }
                Event::RunFinished {
                    level,
                    assisted_level,
                    bootstrap_index,
                    wall_seconds,
                    ..
                } => {
                    finished = Some((level, assisted_level, bootstrap_index, wall_seconds));
                    finished_at = Some(env.ts);
                }
                Event::RunStarted { .. } | Event::StepStarted { .. } => {}
            }
        }
        // score.json knows about rescues that an older trace may not spell out.
        if let Some(score) = &score {
            for s in &mut stages {
                if score.stages.get(&s.name).is_some_and(|x| x.rescued) {
                    s.rescued = true;
                }
            }
        }
        Ok(Self {
            meta,
            score,
            stages,
            finished,
            finished_at,
        })
    }

    fn level(&self) -> Option<&str> {
        self.score
            .as_ref()
            .map(|s| s.level.as_str())
            .or(self.finished.as_ref().map(|f| f.0.as_str()))
    }

    fn assisted_level(&self) -> Option<&str> {
        self.score
            .as_ref()
            .and_then(|s| s.assisted_level.as_deref())
            .or(self.finished.as_ref().and_then(|f| f.1.as_deref()))
    }

    fn bootstrap_index(&self) -> Option<f64> {
        self.score
            .as_ref()
            .map(|s| s.bootstrap_index)
            .or(self.finished.as_ref().map(|f| f.2))
    }

    fn wall_seconds(&self) -> f64 {
        self.finished.as_ref().map(|f| f.3).unwrap_or_else(|| {
            self.stages
                .iter()
                .filter_map(|s| s.ended)
                .map(|e| e.3)
                .sum()
        })
    }
}

/// The stage table's headline metrics, as `name value` pairs.
fn headline(stage: &str, metrics: &Map<String, Value>) -> String {
    let keys = crate::config::stages::headline(stage).iter().map(|h| h.key);
    keys.filter_map(|k| metrics.get(k).map(|v| format!("{k} {v}")))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- JUnit

/// Escapes text for XML 1.0 content and attribute values. Characters XML 1.0 cannot hold at all
/// (control characters other than tab, newline and carriage return; U+FFFE, U+FFFF) are written
/// as a visible `\u{…}` so the document stays well-formed; tab and line breaks are kept as
/// character references so attribute values keep them too.
pub fn xml_escape(text: &str) -> String {
    escape(text, true)
}

/// Escapes text for XML element content: like [`xml_escape`], but tabs and newlines stay as they are.
pub fn xml_text(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' | '\n' if !attribute => out.push(c),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn junit(r: &Run) -> String {
    let suite = format!("gptx.{}", r.meta.suite);
    let classname = format!("{suite}.{}", r.meta.agent);
    let mut cases = String::new();
    let (mut failures, mut errors, mut skipped) = (0, 0, 0);
    for s in &r.stages {
        let time = s.ended.map(|e| e.3).unwrap_or(0.0);
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
            xml_escape(&classname),
            xml_escape(&s.name)
        );
        let mut body = String::new();
        match (&s.score, s.ended, s.started_at) {
            (Some(score), _, _) if score.passed => {}
            (Some(score), _, _) => {
                failures += 1;
                let reason = score
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("{} did not pass", s.name));
                let mut detail = headline(&s.name, &score.metrics);
                if !detail.is_empty() {
                    detail.push('\n');
                }
                detail.push_str(&reason);
                if s.rescued {
                    detail.push_str("\nrescued: the harness handed over the reference artifact");
                }
                let _ = writeln!(
                    body,
                    "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    xml_escape(&reason),
                    xml_escape(&score.status),
                    xml_text(&detail)
                );
            }
            (None, Some((ended_by, ..)), _) => {
                errors += 1;
                let why = format!("the stage ended by {ended_by:?} and was not scored");
                let _ = writeln!(
                    body,
                    "      <error message=\"{}\" type=\"not_scored\"/>",
                    xml_escape(&why)
                );
            }
            (None, None, Some(_)) => {
                skipped += 1;
                let _ = writeln!(
                    body,
                    "      <skipped message=\"the stage has not finished (run {})\"/>",
                    r.meta.status
                );
            }
            (None, None, None) => {
                skipped += 1;
                let _ = writeln!(
                    body,
                    "      <skipped message=\"never reached (run {})\"/>",
                    r.meta.status
                );
            }
        }
        let mut out_text = format!("steps {}", s.steps.len());
        if let Some((by, _, sandbox, wall)) = s.ended {
            let _ = write!(
                out_text,
                ", ended by {by:?}, {sandbox:.1} s sandbox, {wall:.1} s wall"
            );
        }
        if let Some(score) = &s.score {
            let _ = write!(out_text, "\n{}", headline(&s.name, &score.metrics));
            if let Some(n) = score.normalized {
                let _ = write!(out_text, "\nnormalized score {n}");
            }
        }
        let _ = writeln!(
            body,
            "      <system-out>{}</system-out>",
            xml_text(&out_text)
        );
        let _ = writeln!(cases, ">\n{body}    </testcase>");
    }
    let mut props = vec![
        ("run_id", r.meta.run_id.clone()),
        ("agent", r.meta.agent.clone()),
        ("suite", r.meta.suite.clone()),
        ("seed", r.meta.seed.to_string()),
        ("status", r.meta.status.to_string()),
        (
            "world_hash",
            r.meta.world_hash.clone().unwrap_or_else(|| "none".into()),
        ),
        ("gptx_version", r.meta.gptx_version.clone()),
    ];
    if let Some(l) = r.level() {
        props.push(("level", l.to_string()));
    }
    if let Some(l) = r.assisted_level() {
        props.push(("assisted_level", l.to_string()));
    }
    if let Some(b) = r.bootstrap_index() {
        props.push(("bootstrap_index", format!("{b:.4}")));
    }
    if let Some(e) = &r.meta.error {
        props.push(("error", e.clone()));
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests = r.stages.len();
    let time = r.wall_seconds();
    let _ = writeln!(
        x,
        "<testsuites name=\"gptx\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\">"
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\" timestamp=\"{}\">",
        xml_escape(&suite),
        r.meta.started_at.format("%Y-%m-%dT%H:%M:%S")
    );
    x.push_str("    <properties>\n");
    for (k, v) in props {
        let _ = writeln!(
            x,
            "      <property name=\"{k}\" value=\"{}\"/>",
            xml_escape(&v)
        );
    }
    x.push_str("    </properties>\n");
    x.push_str(&cases);
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

// ---------------------------------------------------------------- Inspect

/// The model name Inspect shows: `openai:gpt-4o` becomes `openai/gpt-4o`; other agents `gptx/<agent>`.
fn model_name(agent: &str) -> String {
    for p in ["openai:", "anthropic:"] {
        if let Some(m) = agent.strip_prefix(p) {
            return format!("{}/{m}", &p[..p.len() - 1]);
        }
    }
    format!("gptx/{agent}")
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// What the agent was told a step gave back, as text.
fn tool_text(s: &StepRecord) -> String {
    let r = &s.result;
    if !s.ok {
        return format!(
            "{}: {}",
            r["code"].as_str().unwrap_or("error"),
            r["message"].as_str().unwrap_or("")
        );
    }
    if let Some(stdout) = r.get("stdout").and_then(|v| v.as_str()) {
        let mut t = stdout.to_string();
        if let Some(e) = r.get("stderr").and_then(|v| v.as_str()) {
            if !e.is_empty() {
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push('\n');
                }
                t.push_str(e);
            }
        }
        if let Some(code) = r.get("exit_code") {
            if code.as_i64() != Some(0) {
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push('\n');
                }
                let _ = write!(t, "[exit code {code}]");
            }
        }
        return t;
    }
    if let Some(c) = r.get("content").and_then(|v| v.as_str()) {
        return c.to_string();
    }
    r.to_string()
}

/// Inspect's `ToolCallError` for a step that failed, if it did.
fn tool_error(s: &StepRecord) -> Value {
    if s.result.get("timed_out") == Some(&Value::Bool(true)) {
        return json!({"type": "timeout", "message": "the command timed out"});
    }
    if s.ok {
        return Value::Null;
    }
    let code = s.result["code"].as_str().unwrap_or("");
    let kind = match code {
        "not_found" => "file_not_found",
        "is_directory" => "is_a_directory",
        "path_refused" => "permission",
        "bad_request" => "parsing",
        "budget_exhausted" | "too_large" => "limit",
        "not_run" => "cancelled",
        "sandbox_error" => "sandbox_unavailable",
        _ => "unknown",
    };
    json!({"type": kind, "message": format!("{code}: {}", s.result["message"].as_str().unwrap_or(""))})
}

fn usage_json(input: u64, output: u64, cost: Option<f64>) -> Value {
    let mut u =
        json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output});
    if let Some(c) = cost {
        u["total_cost"] = json!(c);
    }
    u
}

fn model_usage(calls: &[(chrono::DateTime<chrono::Utc>, ModelCall)], model: &str) -> Value {
    if calls.is_empty() {
        return json!({});
    }
    let input: u64 = calls.iter().map(|c| c.1.input_tokens).sum();
    let output: u64 = calls.iter().map(|c| c.1.output_tokens).sum();
    let cost = calls
        .iter()
        .any(|c| c.1.cost_usd.is_some())
        .then(|| calls.iter().filter_map(|c| c.1.cost_usd).sum::<f64>());
    json!({ model: usage_json(input, output, cost) })
}

/// The sample's `limit` when a budget ended the stage.
fn limit(s: &StageRecord) -> Value {
    let (Some((by, ..)), Some(b)) = (s.ended, &s.budgets) else {
        return Value::Null;
    };
    let (kind, value) = match by {
        EndReason::MaxSteps => ("message", b.max_steps as f64),
        EndReason::MaxSandboxSeconds => ("working", b.max_sandbox_seconds),
        EndReason::MaxWallSeconds => ("time", b.max_wall_seconds),
        EndReason::MaxTokens => ("token", b.max_tokens.unwrap_or(0) as f64),
        EndReason::MaxCostUsd => ("cost", b.max_cost_usd.unwrap_or(0.0)),
        _ => return Value::Null,
    };
    json!({"type": kind, "limit": value, "reason": by.budget()})
}

fn sample(r: &Run, s: &StageRecord, model: &str) -> Value {
    let input = format!(
        "Stage {} of {} in suite {}: {}.{}",
        s.index + 1,
        r.stages.len(),
        r.meta.suite,
        s.name,
        s.instruction_sha256
            .as_ref()
            .map(|h| format!(" (instruction sha256 {h})"))
            .unwrap_or_default()
    );
    let mut messages = vec![json!({"role": "user", "content": input, "source": "input"})];
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, Value)> = Vec::new();
    let started = s.started_at.or(s.steps.first().map(|x| x.started_at));
    let since = |t: chrono::DateTime<chrono::Utc>| {
        started
            .map(|s0| (t - s0).num_microseconds().unwrap_or(0) as f64 / 1e6)
            .unwrap_or(0.0)
            .max(0.0)
    };
    for step in &s.steps {
        let id = format!("step-{}", step.step);
        let args = match &step.args {
            Value::Object(m) => Value::Object(m.clone()),
            other => json!({ "value": other }),
        };
        messages.push(json!({
            "role": "assistant",
            "content": "",
            "source": "generate",
            "model": model,
            "tool_calls": [{"id": id, "function": step.tool, "arguments": args, "type": "function"}],
        }));
        let text = tool_text(step);
        let error = tool_error(step);
        messages.push(json!({
            "role": "tool",
            "content": text,
            "tool_call_id": id,
            "function": step.tool,
            "error": error,
        }));
        let completed =
            step.started_at + chrono::Duration::microseconds((step.duration_ms * 1000.0) as i64);
        events.push((
            step.started_at,
            json!({
                "event": "tool",
                "timestamp": ts(step.started_at),
                "working_start": since(step.started_at),
                "type": "function",
                "id": id,
                "function": step.tool,
                "arguments": args,
                "result": text,
                "error": error,
                "events": [],
                "completed": ts(completed),
                "working_time": step.sandbox_seconds,
                "metadata": {"stage_step": step.stage_step, "commit": step.commit, "usage": step.usage, "outputs": step.outputs},
            }),
        ));
    }
    for (t, call) in &s.calls {
        let mut output = json!({
            "model": call.model,
            "choices": [],
            "completion": "",
            "usage": usage_json(call.input_tokens, call.output_tokens, call.cost_usd),
            "time": call.latency_ms / 1000.0,
        });
        if let Some(e) = &call.error {
            output["error"] = json!(e);
        }
        events.push((
            *t,
            json!({
                "event": "model",
                "timestamp": ts(*t),
                "working_start": since(*t),
                "model": model_name(&call.model),
                "input": [],
                "tools": [],
                "tool_choice": "auto",
                "config": {},
                "output": output,
                "retries": call.attempt.saturating_sub(1),
                "error": call.error,
                "working_time": call.latency_ms / 1000.0,
            }),
        ));
    }
    for n in &s.notes {
        events.push((
            n.ts,
            json!({
                "event": "info",
                "timestamp": ts(n.ts),
                "working_start": since(n.ts),
                "source": n.source,
                "data": n.data,
            }),
        ));
    }
    events.sort_by_key(|e| e.0);
    let score = s.score.as_ref().map(|sc| {
        json!({
            "value": if sc.passed { 1 } else { 0 },
            "answer": headline(&s.name, &sc.metrics),
            "explanation": sc.reason.clone().unwrap_or_else(|| "passed".into()),
            "metadata": {
                "status": sc.status,
                "passed": sc.passed,
                "normalized": sc.normalized,
                "rescued": s.rescued,
                "metrics": sc.metrics,
            },
        })
    });
    let end = s.ended_at.or(r.finished_at);
    let mut ev: Vec<Value> = events.into_iter().map(|e| e.1).collect();
    if let Some(sc) = &score {
        let t = end.or(started).unwrap_or(r.meta.started_at);
        ev.push(json!({
            "event": "score",
            "timestamp": ts(t),
            "working_start": since(t),
            "score": sc,
            "target": crate::config::stages::target(&s.name, &r.meta.gates),
            "intermediate": false,
            "scorer": "gptx",
        }));
    }
    let last = match (s.ended, &s.score) {
        (Some((by, ..)), Some(sc)) => format!(
            "The stage ended by {by:?} after {} steps; {}.",
            s.steps.len(),
            if sc.passed { "it passed" } else { "it failed" }
        ),
        (Some((by, ..)), None) => format!(
            "The stage ended by {by:?} after {} steps and was not scored.",
            s.steps.len()
        ),
        (None, _) if started.is_some() => "The stage has not finished.".to_string(),
        (None, _) => "The stage was never reached.".to_string(),
    };
    let calls_usage = model_usage(&s.calls, model);
    let (input_tokens, output_tokens, cost) = s.calls.iter().fold((0, 0, None), |acc, c| {
        (
            acc.0 + c.1.input_tokens,
            acc.1 + c.1.output_tokens,
            match (acc.2, c.1.cost_usd) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        )
    });
    let mut output = json!({
        "model": model,
        "choices": [{
            "message": {"role": "assistant", "content": last, "source": "generate", "model": model},
            "stop_reason": "stop",
        }],
        "completion": last,
    });
    if !s.calls.is_empty() {
        output["usage"] = usage_json(input_tokens, output_tokens, cost);
    }
    let (ended_by, sandbox, wall) = match s.ended {
        Some((by, _, sandbox, wall)) => (json!(by), json!(sandbox), json!(wall)),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let cpu: f64 = s
        .steps
        .iter()
        .filter_map(|x| x.usage.as_ref())
        .map(|u| u.container_cpu_seconds.unwrap_or(u.cpu_seconds))
        .sum();
    let error = match (&s.score, s.ended) {
        (None, Some((by, ..))) => json!({
            "message": format!("stage {} ended by {by:?} and was not scored", s.name),
            "traceback": "",
            "traceback_ansi": "",
        }),
        _ => Value::Null,
    };
    let mut v = json!({
        "id": s.name,
        "epoch": 1,
        "input": input,
        "target": crate::config::stages::target(&s.name, &r.meta.gates),
        "messages": messages,
        "output": output,
        "scores": score.map(|sc| json!({"gptx": sc})),
        "metadata": {
            "stage": s.name,
            "index": s.index,
            "reached": started.is_some(),
            "ended_by": ended_by,
            "steps": s.steps.len(),
            "sandbox_seconds": sandbox,
            "wall_seconds": wall,
            "cpu_seconds": trace::round(cpu, 3),
            "rescued": s.rescued,
            "budgets": s.budgets,
        },
        "store": {},
        "events": ev,
        "model_usage": calls_usage,
        "uuid": format!("{}-{}", r.meta.run_id, s.name),
        "error": error,
        "limit": limit(s),
        "attachments": {},
    });
    if let Some(t) = started {
        v["started_at"] = json!(ts(t));
    }
    if let Some(t) = s.ended_at {
        v["completed_at"] = json!(ts(t));
    }
    if let Some(w) = s.ended.map(|e| e.3) {
        v["total_time"] = json!(w);
    }
    if let Some(w) = s.ended.map(|e| e.2) {
        v["working_time"] = json!(w);
    }
    v
}

fn inspect(r: &Run) -> EvalLog {
    let m = &r.meta;
    let model = model_name(&m.agent);
    let status = match m.status {
        RunStatus::Done => "success",
        RunStatus::Failed => "error",
        RunStatus::Interrupted => "cancelled",
        RunStatus::Running => "started",
    };
    let samples: Vec<Value> = r.stages.iter().map(|s| sample(r, s, &model)).collect();
    let scored = r.stages.iter().filter(|s| s.score.is_some()).count();
    let passed = r
        .stages
        .iter()
        .filter(|s| s.score.as_ref().is_some_and(|x| x.passed))
        .count();
    let all_calls: Vec<(chrono::DateTime<chrono::Utc>, ModelCall)> =
        r.stages.iter().flat_map(|s| s.calls.clone()).collect();
    let level_number = |l: &str| {
        l.trim_start_matches('L')
            .trim_end_matches('*')
            .parse::<u32>()
            .ok()
    };
    let results = (m.status != RunStatus::Running).then(|| {
        let mut metrics = Map::new();
        let mut metric = |name: &str, value: f64| {
            metrics.insert(
                name.into(),
                json!({"name": name, "value": value, "params": {}}),
            );
        };
        metric(
            "accuracy",
            if r.stages.is_empty() {
                0.0
            } else {
                passed as f64 / r.stages.len() as f64
            },
        );
        if let Some(b) = r.bootstrap_index() {
            metric("bootstrap_index", b);
        }
        if let Some(n) = r.level().and_then(level_number) {
            metric("level", n as f64);
        }
        json!({
            "total_samples": r.stages.len(),
            "completed_samples": scored,
            "scores": [{
                "name": "gptx",
                "scorer": "gptx",
                "scored_samples": scored,
                "unscored_samples": r.stages.len() - scored,
                "params": {},
                "metrics": metrics,
            }],
        })
    });
    let per_stage: BTreeMap<&str, Value> = r
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                json!(s.score.as_ref().and_then(|x| x.normalized)),
            )
        })
        .collect();
    let eval = json!({
        "eval_id": format!("gptx-{}", m.run_id),
        "run_id": m.run_id,
        "created": ts(m.started_at),
        "task": format!("gptx/{}", m.suite),
        "task_id": format!("gptx-{}-{}", m.suite, m.world_hash.as_deref().map(|h| h.get(..12).unwrap_or(h)).unwrap_or("noworld")),
        "task_version": 0,
        "task_file": m.suite_path,
        "task_attribs": {},
        "task_args": {},
        "solver": m.agent,
        "tags": ["gptx"],
        "dataset": {
            "name": m.suite,
            "location": m.suite_path,
            "samples": r.stages.len(),
            "sample_ids": r.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "shuffled": false,
        },
        "model": model,
        "model_args": {},
        "config": {"epochs": 1},
        "packages": {"gptx": m.gptx_version},
        "metadata": {
            "gptx_agent": m.agent,
            "world_hash": m.world_hash,
            "seed": m.seed,
            "images": m.images,
            "budgets": m.budgets,
            "level": r.level(),
            "assisted_level": r.assisted_level(),
            "bootstrap_index": r.bootstrap_index(),
            "normalized": per_stage,
            "trace_sha256": m.trace_sha256,
            "events": m.events,
        },
    });
    EvalLog {
        version: 2,
        status,
        eval,
        plan: json!({
            "name": "plan",
            "steps": [{"solver": format!("gptx/{}", m.agent), "params": {"agent": m.agent}}],
            "config": {},
        }),
        results,
        stats: json!({
            "started_at": ts(m.started_at),
            "completed_at": m.ended_at.map(ts).unwrap_or_default(),
            "model_usage": model_usage(&all_calls, &model),
        }),
        error: (m.status == RunStatus::Failed).then(|| {
            json!({
                "message": m.error.clone().unwrap_or_else(|| "the run failed".into()),
                "traceback": "",
                "traceback_ansi": "",
            })
        }),
        samples,
    }
}

/// The top level of an eval log, in the order Inspect writes it: its reader scans the header
/// (everything before `samples`) as a stream and needs `version` first.
#[derive(Debug, serde::Serialize)]
struct EvalLog {
    version: u32,
    status: &'static str,
    eval: Value,
    plan: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Value>,
    stats: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    samples: Vec<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escape_handles_markup_quotes_and_control_characters() {
        assert_eq!(
            xml_escape(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(xml_escape("x\u{1}y\u{1b}[0m"), "x\\u{1}y\\u{1b}[0m");
        assert_eq!(xml_escape("tab\tline\nret\r"), "tab&#9;line&#10;ret&#13;");
        assert_eq!(xml_escape("é ✓ \u{fffe}"), "é ✓ \\u{fffe}");
        assert_eq!(xml_text("a\n\tb\r<"), "a\n\tb&#13;&lt;");
    }

    #[test]
    fn model_names_follow_inspect() {
        assert_eq!(model_name("openai:gpt-4o"), "openai/gpt-4o");
        assert_eq!(model_name("anthropic:claude-x"), "anthropic/claude-x");
        assert_eq!(model_name("reference"), "gptx/reference");
    }
}
