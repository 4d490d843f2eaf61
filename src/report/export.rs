//! Exports of a run for other tools: an Inspect AI eval log (JSON), JUnit XML, and (in `atif.rs`) an ATIF trajectory.
//!
//! Both read the run directory only (`run.json`, `events.jsonl`, `score.json` when the run ended) and
//! map each stage to one unit: a JUnit `<testcase>`, an Inspect `EvalSample` whose messages are the
//! agent's tool calls and their results as the agent saw them (inline outputs, cut as the runner cut
//! them).

mod atif;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

use crate::trace::replay::{Ended, Finished, ModelTotals, Replay, StageState};
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore, RunStatus};
use crate::trace::{self, EndReason, Event, ModelCall, StepRecord};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An Inspect AI eval log in its JSON form (`EvalLog`).
    Inspect,
    /// JUnit XML: one testcase per stage.
    Junit,
    /// An Agent Trajectory Interchange Format document (ATIF-v1.8), as Harbor and Terminal-Bench read.
    Atif,
}

/// The run in `format`, as text.
pub fn export(run: &RunDir, format: Format) -> anyhow::Result<String> {
    let r = Run::read(run)?;
    match format {
        Format::Junit => Ok(junit(&r)),
        Format::Inspect => pretty(&inspect(&r), run, "the eval log"),
        Format::Atif => pretty(&atif::atif(&r), run, "the trajectory"),
    }
}

fn pretty(v: &impl serde::Serialize, run: &RunDir, what: &str) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(v)
        .with_context(|| format!("{}: serialising {what}", run.path.display()))?;
    text.push('\n');
    Ok(text)
}

/// Something that happened in a stage besides its steps: a warning, a rescue, the agent's stderr.
#[derive(Debug, Clone)]
struct Note {
    ts: chrono::DateTime<chrono::Utc>,
    source: &'static str,
    data: Value,
}

/// One stage: the replay's state of it, and the events the exports show one by one.
#[derive(Debug, Clone)]
struct StageRecord {
    state: StageState,
    /// Its steps, in order.
    records: Vec<StepRecord>,
    /// Its model calls: when, the call, and how many of its steps came before it.
    calls: Vec<(chrono::DateTime<chrono::Utc>, ModelCall, usize)>,
    notes: Vec<Note>,
}

/// A stage record reads as its state: `s.name`, `s.score`, `s.ended`, ...
impl std::ops::Deref for StageRecord {
    type Target = StageState;
    fn deref(&self) -> &StageState {
        &self.state
    }
}

impl StageRecord {
    fn started_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.started.as_ref().and_then(|s| s.at)
    }

    fn ended_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.ended.and_then(|e| e.at)
    }

    fn budgets(&self) -> Option<&crate::config::suite::Budgets> {
        self.started.as_ref().map(|s| &s.budgets)
    }
}

/// What the exports need of a run.
struct Run {
    meta: RunMeta,
    score: Option<RunScore>,
    stages: Vec<StageRecord>,
    finished: Option<Finished>,
    /// `run_finished`'s wall time, else the stages' added up.
    wall_seconds: f64,
    /// The model calls of the whole run.
    model: ModelTotals,
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
        // Stages the trace has and run.json does not list are kept, at the end.
        let mut replay = Replay::with_stages(&meta.stages);
        // Per stage (by its place in the replay): its steps, model calls and notes.
        let mut shown: Vec<(Vec<StepRecord>, Vec<_>, Vec<Note>)> = Vec::new();
        for env in events {
            let Some(i) = replay.apply_at(env.ts, &env.event) else {
                continue;
            };
            shown.resize_with(replay.stages().len(), Default::default);
            let (steps, calls, notes) = &mut shown[i];
            let note = |source, data| Note {
                ts: env.ts,
                source,
                data,
            };
            match env.event {
                Event::Step(s) => steps.push(s),
                Event::ModelCall { call, .. } => calls.push((env.ts, call, steps.len())),
                Event::Rescue {
                    ok,
                    files,
                    detail,
                    seconds,
                    commit,
                    ..
                } => notes.push(note(
                    "gptx.rescue",
                    json!({"ok": ok, "files": files, "detail": detail, "seconds": seconds, "commit": commit}),
                )),
                Event::AgentLog { text, .. } => {
                    notes.push(note("gptx.agent_log", json!({"text": text})))
                }
                Event::Warning { message } => {
                    notes.push(note("gptx.warning", json!({"message": message})))
                }
                Event::Integrity(n) => notes.push(note("gptx.integrity", json!(n))),
                _ => {}
            }
        }
        shown.resize_with(replay.stages().len(), Default::default);
        let stages = replay
            .stages()
            .iter()
            .zip(shown)
            .map(|(state, (records, calls, notes))| {
                let mut state = state.clone();
                // score.json knows about rescues that an older trace may not spell out.
                let told = score.as_ref().and_then(|s| s.stages.get(&state.name));
                state.rescued |= told.is_some_and(|x| x.rescued);
                StageRecord {
                    state,
                    records,
                    calls,
                    notes,
                }
            })
            .collect();
        Ok(Self {
            meta,
            score,
            stages,
            finished: replay.finished().cloned(),
            wall_seconds: replay.wall_seconds(),
            model: replay.model().clone(),
        })
    }

    fn level(&self) -> Option<&str> {
        self.score
            .as_ref()
            .map(|s| s.level.as_str())
            .or(self.finished.as_ref().map(|f| f.level.as_str()))
    }

    fn assisted_level(&self) -> Option<&str> {
        self.score
            .as_ref()
            .and_then(|s| s.assisted_level.as_deref())
            .or(self
                .finished
                .as_ref()
                .and_then(|f| f.assisted_level.as_deref()))
    }

    fn bootstrap_index(&self) -> Option<f64> {
        self.score
            .as_ref()
            .map(|s| s.bootstrap_index)
            .or(self.finished.as_ref().map(|f| f.bootstrap_index))
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
pub(crate) fn xml_escape(text: &str) -> String {
    escape(text, true)
}

/// Escapes text for XML element content: like [`xml_escape`], but tabs and newlines stay as they are.
pub(crate) fn xml_text(text: &str) -> String {
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
        let time = s.ended.map(|e| e.wall_seconds).unwrap_or(0.0);
        let _ = write!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
            xml_escape(&classname),
            xml_escape(&s.name)
        );
        let mut body = String::new();
        match (&s.score, s.ended, &s.started) {
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
            (None, Some(Ended { by: ended_by, .. }), _) => {
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
        let mut out_text = format!("steps {}", s.records.len());
        if let Some(e) = s.ended {
            let _ = write!(
                out_text,
                ", ended by {:?}, {:.1} s sandbox, {:.1} s wall",
                e.by, e.sandbox_seconds, e.wall_seconds
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
        props.push((
            "bootstrap_index_scale",
            crate::stages::levels::ABOVE_100.to_string(),
        ));
    }
    if let Some(e) = &r.meta.error {
        props.push(("error", e.clone()));
    }
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests = r.stages.len();
    let time = r.wall_seconds;
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
/// `provider/model` for an LLM agent's spec (`openai:<model>`, `anthropic:<model>`), else None.
fn llm_model(agent: &str) -> Option<String> {
    let (provider, model) = agent.split_once(':')?;
    ["openai", "anthropic"]
        .contains(&provider)
        .then(|| format!("{provider}/{model}"))
}

fn model_name(agent: &str) -> String {
    llm_model(agent).unwrap_or_else(|| format!("gptx/{agent}"))
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

fn model_usage(m: &ModelTotals, model: &str) -> Value {
    if m.calls == 0 {
        return json!({});
    }
    json!({ model: usage_json(m.input_tokens, m.output_tokens, m.cost_usd) })
}

/// The sample's `limit` when a budget ended the stage.
fn limit(s: &StageRecord) -> Value {
    let (Some(Ended { by, .. }), Some(b)) = (s.ended, s.budgets()) else {
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

/// What opens a stage in an export: the stage, its place, its instruction's hash.
fn stage_intro(r: &Run, s: &StageRecord) -> String {
    let (at, of) = (s.position + 1, r.stages.len());
    let hash = s.started.as_ref().map(|st| &st.instruction_sha256);
    let hash = hash.map(|h| format!(" (instruction sha256 {h})"));
    let (suite, name) = (&r.meta.suite, &s.name);
    format!(
        "Stage {at} of {of} in suite {suite}: {name}.{}",
        hash.unwrap_or_default()
    )
}

fn sample(r: &Run, s: &StageRecord, model: &str) -> Value {
    let input = stage_intro(r, s);
    let mut messages = vec![json!({"role": "user", "content": input, "source": "input"})];
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, Value)> = Vec::new();
    let started = s.started_at().or(s.records.first().map(|x| x.started_at));
    let since = |t: chrono::DateTime<chrono::Utc>| {
        started
            .map(|s0| (t - s0).num_microseconds().unwrap_or(0) as f64 / 1e6)
            .unwrap_or(0.0)
            .max(0.0)
    };
    for step in &s.records {
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
    for (t, call, _) in &s.calls {
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
    let end = s.ended_at().or(r.finished.as_ref().and_then(|f| f.at));
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
    let last = match (s.ended.map(|e| e.by), &s.score) {
        (Some(by), Some(sc)) => format!(
            "The stage ended by {by:?} after {} steps; {}.",
            s.records.len(),
            if sc.passed { "it passed" } else { "it failed" }
        ),
        (Some(by), None) => format!(
            "The stage ended by {by:?} after {} steps and was not scored.",
            s.records.len()
        ),
        (None, _) if started.is_some() => "The stage has not finished.".to_string(),
        (None, _) => "The stage was never reached.".to_string(),
    };
    let calls_usage = model_usage(&s.model, model);
    let mut output = json!({
        "model": model,
        "choices": [{
            "message": {"role": "assistant", "content": last, "source": "generate", "model": model},
            "stop_reason": "stop",
        }],
        "completion": last,
    });
    if s.model.calls > 0 {
        output["usage"] = usage_json(
            s.model.input_tokens,
            s.model.output_tokens,
            s.model.cost_usd,
        );
    }
    let error = match (&s.score, s.ended) {
        (None, Some(Ended { by, .. })) => json!({
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
            "index": s.position,
            "reached": started.is_some(),
            "ended_by": s.ended.map(|e| e.by),
            "steps": s.records.len(),
            "sandbox_seconds": s.ended.map(|e| e.sandbox_seconds),
            "wall_seconds": s.ended.map(|e| e.wall_seconds),
            "cpu_seconds": trace::round(s.steps.cpu_seconds, 3),
            "rescued": s.rescued,
            "budgets": s.budgets(),
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
    if let Some(t) = s.ended_at() {
        v["completed_at"] = json!(ts(t));
    }
    if let Some(w) = s.ended.map(|e| e.wall_seconds) {
        v["total_time"] = json!(w);
    }
    if let Some(w) = s.ended.map(|e| e.sandbox_seconds) {
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
            "bootstrap_index_scale": crate::stages::levels::ABOVE_100,
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
            "model_usage": model_usage(&r.model, &model),
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
