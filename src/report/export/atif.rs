//! The ATIF export: a run as one Agent Trajectory Interchange Format document (`ATIF-v1.8`, as Harbor validates it).
//!
//! Per stage: a `user` step that opens it (the stage, its place, its instruction's hash), an `agent`
//! step per tool call with the call and what the agent was given back, and a `system` step that
//! closes it with the grade. Model calls made before a step are that step's `llm_call_count` and
//! token `metrics`; a built-in agent's steps have `llm_call_count` 0. The run's grades (level,
//! Bootstrap Index, each stage's status and metrics) are in the root's `extra`.

use serde_json::{json, Map, Value};

use super::{model_name, tool_text, ts, Run, StageRecord};
use crate::trace::{ModelCall, StepRecord};

/// The ATIF version written: the newest Harbor 0.26 validates.
const SCHEMA_VERSION: &str = "ATIF-v1.8";

/// The run as an ATIF trajectory.
pub(super) fn atif(r: &Run) -> Value {
    let llm = super::llm_model(&r.meta.agent).is_some();
    let mut steps = Vec::new();
    for s in r.stages.iter().filter(|s| s.started.is_some()) {
        steps.push(opening(r, s));
        let model = llm.then_some(r.meta.agent.as_str());
        let before = |i: usize| -> Vec<&ModelCall> {
            s.calls.iter().filter(|c| c.2 == i).map(|c| &c.1).collect()
        };
        for (i, step) in s.records.iter().enumerate() {
            steps.push(agent_step(step, &before(i), model));
        }
        // Model calls after the stage's last tool call (the agent finished, failed or ran out).
        let after = before(s.records.len());
        if let (Some(model), Some(last)) = (model, s.calls.last().filter(|_| !after.is_empty())) {
            let mut v =
                json!({"source": "agent", "timestamp": ts(last.0), "extra": {"stage": s.name}});
            with_model_calls(&mut v, &after, model);
            steps.push(v);
        }
        steps.push(closing(s));
    }
    if steps.is_empty() {
        steps.push(json!({"source": "system", "message": "The run reached no stage.", "timestamp": ts(r.meta.started_at)}));
    }
    for (i, step) in steps.iter_mut().enumerate() {
        step["step_id"] = json!(i + 1);
    }
    json!({
        "schema_version": SCHEMA_VERSION,
        "session_id": r.meta.run_id,
        "agent": {
            "name": r.meta.agent,
            "version": env!("CARGO_PKG_VERSION"),
            "model_name": llm.then(|| model_name(&r.meta.agent)),
            "tool_definitions": crate::agent::tools::schemas(),
            "extra": {"harness": "gptx"},
        },
        "final_metrics": final_metrics(r, steps.len()),
        "steps": steps,
        "extra": {"gptx": grades(r)},
    })
}

/// The `user` step that opens a stage.
fn opening(r: &Run, s: &StageRecord) -> Value {
    let started = s.started.as_ref().expect("a reached stage");
    let message = super::stage_intro(r, s);
    let mut step = json!({"source": "user", "message": message,
        "extra": {"stage": s.name, "boundary": "start", "budgets": started.budgets}});
    if let Some(t) = s.started_at() {
        step["timestamp"] = json!(ts(t));
    }
    step
}

/// One tool call: the call, what came back, and the model calls that led to it.
fn agent_step(step: &StepRecord, before: &[&ModelCall], agent: Option<&str>) -> Value {
    let id = format!("step-{}", step.step);
    let arguments = match &step.args {
        Value::Object(m) => Value::Object(m.clone()),
        other => json!({ "value": other }),
    };
    let mut v = json!({
        "source": "agent",
        "timestamp": ts(step.started_at),
        "message": "",
        "tool_calls": [{"tool_call_id": id, "function_name": step.tool, "arguments": arguments}],
        "observation": {"results": [{"source_call_id": id, "content": tool_text(step),
            "extra": {"ok": step.ok, "outputs": step.outputs}}]},
        "llm_call_count": before.len(),
        "extra": {"stage": step.stage, "stage_step": step.stage_step, "duration_ms": step.duration_ms,
            "sandbox_seconds": step.sandbox_seconds, "usage": step.usage, "commit": step.commit},
    });
    if let (Some(agent), false) = (agent, before.is_empty()) {
        with_model_calls(&mut v, before, agent);
    }
    v
}

/// An agent step's model fields from the model calls that led to it: how many, the model, their
/// tokens and cost, and the text of the last reply that had one as the step's message.
fn with_model_calls(v: &mut Value, calls: &[&ModelCall], agent: &str) {
    let said = calls
        .iter()
        .rev()
        .find_map(|c| c.reply.as_ref()?.text.clone());
    let sum = |f: fn(&ModelCall) -> u64| calls.iter().map(|c| f(c)).sum::<u64>();
    let costs: Vec<f64> = calls.iter().filter_map(|c| c.cost_usd).collect();
    v["message"] = json!(said.unwrap_or_default());
    v["llm_call_count"] = json!(calls.len());
    v["model_name"] = json!(model_name(agent));
    v["metrics"] = json!({
        "prompt_tokens": sum(|c| c.input_tokens),
        "completion_tokens": sum(|c| c.output_tokens),
        "cost_usd": (!costs.is_empty()).then(|| costs.iter().sum::<f64>()),
    });
}

/// The `system` step that closes a stage: how it ended and its grade.
fn closing(s: &StageRecord) -> Value {
    let ended = s
        .ended
        .map(|e| format!("ended by {:?} after {} steps", e.by, s.records.len()))
        .unwrap_or_else(|| "has not finished".into());
    let grade = match &s.score {
        Some(sc) if sc.passed => "it passed".to_string(),
        Some(sc) => format!("it failed: {}", sc.reason.as_deref().unwrap_or(&sc.status)),
        None => "it was not scored".into(),
    };
    let mut step = json!({
        "source": "system",
        "message": format!("Stage {} {ended}; {grade}.", s.name),
        "extra": {"stage": s.name, "boundary": "end", "ended": s.ended, "score": s.score,
            "rescued": s.rescued, "notes": s.notes.iter().map(|n| json!({"at": ts(n.ts), "source": n.source, "data": n.data})).collect::<Vec<_>>()},
    });
    if let Some(t) = s.ended_at() {
        step["timestamp"] = json!(ts(t));
    }
    step
}

fn final_metrics(r: &Run, steps: usize) -> Value {
    let m = &r.model;
    let tool_calls: usize = r.stages.iter().map(|s| s.records.len()).sum();
    let mut v = json!({"total_steps": steps, "extra": {"tool_calls": tool_calls, "wall_seconds": r.wall_seconds,
        "cpu_seconds": r.stages.iter().map(|s| s.steps.cpu_seconds).sum::<f64>()}});
    if m.calls > 0 {
        v["total_prompt_tokens"] = json!(m.input_tokens);
        v["total_completion_tokens"] = json!(m.output_tokens);
        v["total_cost_usd"] = json!(m.cost_usd);
        v["extra"]["model_calls"] = json!(m.calls);
    }
    v
}

/// The run's grades: level, index and each stage's.
fn grades(r: &Run) -> Value {
    let stages: Map<String, Value> = r
        .stages
        .iter()
        .map(|s| {
            let v = json!({"reached": s.started.is_some(), "ended_by": s.ended.map(|e| e.by),
                "status": s.score.as_ref().map(|x| &x.status), "passed": s.score.as_ref().map(|x| x.passed),
                "normalized": s.score.as_ref().and_then(|x| x.normalized),
                "metrics": s.score.as_ref().map(|x| &x.metrics), "rescued": s.rescued});
            (s.name.clone(), v)
        })
        .collect();
    json!({
        "run_id": r.meta.run_id,
        "suite": r.meta.suite,
        "seed": r.meta.seed,
        "world_hash": r.meta.world_hash,
        "status": r.meta.status,
        "level": r.level(),
        "assisted_level": r.assisted_level(),
        "bootstrap_index": r.bootstrap_index(),
        "stages": stages,
    })
}
