//! The LLM tool loop against a scripted OpenAI-compatible HTTP server, on the recording fake sandbox:
//! tool calls with string or object arguments, several calls in one reply, a missing id, invalid
//! JSON arguments (a tool error, the run goes on), text without a tool call (one nudge), a 429 that
//! is retried, `model_call` events with tokens and cost, the token budget ending a stage, and the
//! end-of-run verdict as the conversation's last message, recorded without a model request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gptx::agent::llm::{scripted, LlmAgent, LlmOptions, OpenAi, Price};
use gptx::config::suite::Suite;
use gptx::runner::Runner;
use gptx::sandbox::fake::{RecordingSandbox, Reply};
use gptx::trace::{self, EndReason, Event, EventLog, EventSink, Recorder};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod common;

const SUITE: &str = r#"
name = "fake"
image = "base"
[budgets]
max_steps = 10
[[stages]]
name = "crawl"
[[stages]]
name = "tokenize"
"#;

/// Serves the scripted (status, body) replies in order, one per request, and records the requests.
async fn server(replies: Vec<(u16, Value)>) -> (String, Arc<Mutex<Vec<Value>>>) {
    scripted::serve(scripted::replies(replies)).await.unwrap()
}

fn reply(content: Option<&str>, calls: Value, tokens: (u64, u64)) -> (u16, Value) {
    (
        200,
        json!({"choices": [{"message": {"role": "assistant", "content": content, "tool_calls": calls}}],
               "usage": {"prompt_tokens": tokens.0, "completion_tokens": tokens.1}}),
    )
}

fn runner(dir: &std::path::Path, suite: &str) -> Runner {
    let run_dir = dir.join("run");
    let ws = run_dir.join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let sandbox = Arc::new(RecordingSandbox::with_workspace(&ws, vec![Reply::ok("hi\n")]).unwrap());
    let suite = Suite::parse(suite, std::path::Path::new("fake.toml")).unwrap();
    let recorder = Recorder::new(EventLog::create(&run_dir.join("events.jsonl")).unwrap());
    Runner::new(
        common::home(),
        suite,
        "llm-run".into(),
        run_dir,
        sandbox,
        EventSink::new(recorder, vec![]),
        None,
        CancellationToken::new(),
    )
}

fn options() -> LlmOptions {
    LlmOptions {
        backoff: Duration::from_millis(10),
        ..Default::default()
    }
}

fn events(dir: &std::path::Path) -> Vec<Event> {
    trace::log::read_events(&dir.join("run/events.jsonl"))
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

#[tokio::test]
async fn the_loop_survives_what_real_servers_send() {
    let (base, seen) = server(vec![
        (429, json!({"error": {"message": "slow down"}})),
        // Arguments as a JSON string; no id.
        reply(None, json!([{"type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"echo hi\"}"}}]), (100, 10)),
        // Two calls in one reply: arguments as an object, and invalid JSON.
        reply(Some("two at once"), json!([
            {"id": "w1", "type": "function", "function": {"name": "write_file", "arguments": {"path": "a.txt", "content": "x"}}},
            {"id": "r1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": "}}]), (200, 20)),
        // Text and no tool call: nudged once.
        reply(Some("I think I am done."), Value::Null, (300, 5)),
        reply(None, json!([{"id": "s1", "type": "function", "function": {"name": "submit", "arguments": ""}}]), (400, 5)),
        // Stage 2: text twice: the nudge, then the stage ends.
        reply(Some("Nothing to do."), Value::Null, (10, 1)),
        reply(Some("Still nothing."), Value::Null, (10, 1)),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), SUITE);
    let price = Price {
        input_per_mtok: 1.0,
        output_per_mtok: 2.0,
    };
    let mut agent = LlmAgent::new(
        Box::new(OpenAi::new("test-model", &base, Some("k".into()))),
        options(),
        Some(price),
    );
    let mut result = r.run(&mut agent, "img").await;
    r.finish(&mut result);

    assert_eq!(result.stages[0].ended_by, EndReason::Submit);
    assert_eq!(result.stages[0].steps, 4);
    assert_eq!(result.stages[1].ended_by, EndReason::AgentFinished);
    let evs = events(tmp.path());
    let steps: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    let tools: Vec<&str> = steps.iter().map(|s| s.tool.as_str()).collect();
    assert_eq!(tools, ["bash", "write_file", "read_file", "submit"]);
    assert!(steps[0].ok && steps[1].ok);
    assert!(!steps[2].ok);
    assert_eq!(steps[2].result["code"], "bad_request");
    assert!(steps[2].result["message"]
        .as_str()
        .unwrap()
        .contains("the arguments of read_file are not valid JSON"));
    assert_eq!(
        std::fs::read(tmp.path().join("run/workspace/a.txt")).unwrap(),
        b"x"
    );

    let calls: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall { call, stage } => Some((stage.clone(), call.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 7);
    assert_eq!(
        calls[0]
            .1
            .error
            .as_deref()
            .map(|e| e.starts_with("HTTP 429")),
        Some(true)
    );
    assert_eq!(
        (
            calls[1].1.attempt,
            calls[1].1.input_tokens,
            calls[1].1.output_tokens
        ),
        (2, 100, 10)
    );
    assert_eq!(calls[1].1.model, "openai:test-model");
    assert!((calls[1].1.cost_usd.unwrap() - 120e-6).abs() < 1e-12);
    assert_eq!(calls[5].0, "tokenize");

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 7);
    // The tools are offered as functions; the system prompt states the goal.
    assert_eq!(requests[0]["tools"].as_array().unwrap().len(), 5);
    assert_eq!(requests[0]["tools"][0]["type"], "function");
    assert_eq!(requests[0]["model"], "test-model");
    assert!(requests[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("build a language model"));
    // Every tool call got its answer under its id, the made-up one too.
    let third = requests[3]["messages"].as_array().unwrap();
    let ids: Vec<&str> = third
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0].starts_with("call_"));
    assert_eq!(&ids[1..], ["w1", "r1"]);
    // The nudge followed the text-only reply.
    let fourth = requests[4]["messages"].as_array().unwrap();
    assert!(fourth.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .starts_with("You answered without calling a tool"));
}

#[tokio::test]
async fn the_token_budget_ends_the_stage_and_unrun_calls_are_answered() {
    let call = |id: &str| {
        json!([{"id": id, "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"true\"}"}},
                                 {"id": format!("{id}b"), "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"true\"}"}}])
    };
    let (base, seen) = server(vec![
        reply(None, call("a"), (900, 100)),
        reply(None, call("b"), (900, 100)),
        reply(None, json!([{"id": "s", "type": "function", "function": {"name": "submit", "arguments": "{}"}}]), (10, 1)),
    ])
    .await;
    let suite = format!("{SUITE}\n").replace("max_steps = 10", "max_steps = 10\nmax_tokens = 1500");
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), &suite);
    let mut agent = LlmAgent::new(
        Box::new(OpenAi::new("unpriced", &base, None)),
        options(),
        None,
    );
    let mut result = r.run(&mut agent, "img").await;
    r.finish(&mut result);
    // 1000 tokens after the first reply, 2000 after the second: the stage ends before its second call.
    assert_eq!(result.stages[0].ended_by, EndReason::MaxTokens);
    assert_eq!(result.stages[0].steps, 3);
    assert_eq!(result.stages[1].ended_by, EndReason::Submit);
    let evs = events(tmp.path());
    let costs: Vec<Option<f64>> = evs
        .iter()
        .filter_map(|e| match e {
            Event::ModelCall { call, .. } => Some(call.cost_usd),
            _ => None,
        })
        .collect();
    assert_eq!(costs, [None, None, None], "an unlisted model has no cost");
    // The call cut off by the budget was still answered before the next stage's instruction.
    let last = seen.lock().unwrap()[2]["messages"]
        .as_array()
        .unwrap()
        .clone();
    let tool_ids: Vec<&str> = last
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(tool_ids, ["a", "ab", "b", "bb"]);
    assert!(last.iter().any(|m| m["role"] == "tool"
        && m["content"]
            .as_str()
            .unwrap()
            .contains("budget max_tokens ran out")));
}

/// The end-of-run verdict reaches the LLM agent as exec agents get it: the last message of its
/// conversation, recorded in the trace as its log in the last stage, with no extra model request.
#[tokio::test]
async fn the_verdict_ends_the_conversation_and_is_recorded() {
    let submit = |id: &str| json!([{"id": id, "type": "function", "function": {"name": "submit", "arguments": "{}"}}]);
    let (base, seen) = server(vec![
        reply(None, submit("s1"), (10, 1)),
        // A reply whose second call never runs: the stage ends at the submit.
        reply(None, json!([
            {"id": "s2", "type": "function", "function": {"name": "submit", "arguments": "{}"}},
            {"id": "x", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]), (10, 1)),
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), SUITE);
    let mut agent = LlmAgent::new(Box::new(OpenAi::new("m", &base, None)), options(), None);
    let mut result = r.run(&mut agent, "img").await;
    r.finish(&mut result);
    assert_eq!(seen.lock().unwrap().len(), 2, "no request for the verdict");
    let logs: Vec<(String, String)> = events(tmp.path())
        .into_iter()
        .filter_map(|e| match e {
            Event::AgentLog { stage, text } => Some((stage, text)),
            _ => None,
        })
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let (stage, text) = &logs[0];
    assert_eq!(stage, "tokenize");
    assert!(text.starts_with("The run is over"), "{text}");
    let done: Value = serde_json::from_str(text.split("\n\n").last().unwrap()).unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["level"], result.level);
    let stages: Vec<&str> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["crawl", "tokenize"]);
    for s in done["stages"].as_array().unwrap() {
        assert_eq!(s["ended_by"], "submit");
        assert!(s["passed"].is_boolean() && s["status"].is_string(), "{s}");
        assert!(s.get("metrics").is_none() && s.get("normalized").is_none());
    }
}

#[tokio::test]
async fn the_anthropic_backend_speaks_tool_use_and_tool_result_blocks() {
    let msg = |blocks: Value, tokens: (u64, u64)| {
        (
            200,
            json!({"type": "message", "role": "assistant", "content": blocks,
                   "usage": {"input_tokens": tokens.0, "output_tokens": tokens.1}}),
        )
    };
    let (base, seen) = server(vec![
        (
            529,
            json!({"type": "error", "error": {"type": "overloaded_error"}}),
        ),
        msg(
            json!([{"type": "text", "text": "Looking."},
                   {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}}]),
            (50, 5),
        ),
        msg(
            json!([{"type": "text", "text": "Done, I believe."}]),
            (60, 5),
        ),
        msg(
            json!([{"type": "tool_use", "id": "toolu_2", "name": "submit", "input": {}}]),
            (70, 5),
        ),
    ])
    .await;
    let suite = SUITE.replace("[[stages]]\nname = \"tokenize\"\n", "");
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), &suite);
    // Messages API paths are under /v1 of the base.
    let base = base.trim_end_matches("/v1").to_string();
    let mut agent = LlmAgent::new(
        Box::new(gptx::agent::llm::Anthropic::new(
            "claude-test",
            &base,
            Some("k".into()),
        )),
        options(),
        None,
    );
    let mut result = r.run(&mut agent, "img").await;
    r.finish(&mut result);
    assert_eq!(result.stages[0].ended_by, EndReason::Submit);
    assert_eq!(result.stages[0].steps, 2);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    assert!(requests[0]["system"]
        .as_str()
        .unwrap()
        .contains("build a language model"));
    assert_eq!(requests[0]["tools"][0]["name"], "bash");
    assert!(requests[0]["tools"][0]["input_schema"].is_object());
    let m = requests[2]["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(m[2]["content"][0]["type"], "tool_result");
    assert_eq!(m[2]["content"][0]["tool_use_id"], "toolu_1");
    let models: Vec<String> = events(tmp.path())
        .into_iter()
        .filter_map(|e| match e {
            Event::ModelCall { call, .. } => Some(call.model),
            _ => None,
        })
        .collect();
    assert_eq!(models.len(), 4);
    assert!(models.iter().all(|m| m == "anthropic:claude-test"));
}

#[tokio::test]
async fn the_cost_budget_ends_the_stage() {
    let bash = |id: &str| {
        reply(
            None,
            json!([{"id": id, "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"true\"}"}}]),
            (1000, 0),
        )
    };
    let submit = reply(
        None,
        json!([{"id": "s", "type": "function", "function": {"name": "submit", "arguments": "{}"}}]),
        (10, 0),
    );
    let (base, seen) = server(vec![bash("a"), bash("b"), bash("c"), submit]).await;
    let suite = SUITE.replace("max_steps = 10", "max_steps = 10\nmax_cost_usd = 1.5");
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), &suite);
    // $1000 per million input tokens: each reply costs $1.
    let price = Price {
        input_per_mtok: 1000.0,
        output_per_mtok: 0.0,
    };
    let mut agent = LlmAgent::new(
        Box::new(OpenAi::new("pricey", &base, None)),
        options(),
        Some(price),
    );
    let mut result = r.run(&mut agent, "img").await;
    r.finish(&mut result);
    assert_eq!(result.stages[0].ended_by, EndReason::MaxCostUsd);
    assert_eq!(result.stages[0].steps, 2);
    // The second stage starts with a fresh budget: its bash and submit run.
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(result.stages[1].ended_by, EndReason::Submit);
    assert_eq!(result.stages[1].steps, 2);
    // score.json's per-stage tokens and cost.
    let summary = &result.summaries()["crawl"];
    assert_eq!(summary.tokens, Some(2000));
    assert_eq!(summary.cost_usd, Some(2.0));
    let ended: Vec<String> = events(tmp.path())
        .into_iter()
        .filter_map(|e| match e {
            Event::StageEnded { ended_by, .. } => Some(format!("{ended_by:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(ended[0], "MaxCostUsd");
}

/// Replies every call of which has an id (made-up ids are random, so two runs would differ in them):
/// one call, two at once (one with invalid JSON), text alone (the nudge), submit; then a second
/// stage that ends without a tool call.
fn resumable_replies() -> Vec<(u16, Value)> {
    vec![
        (429, json!({"error": {"message": "slow down"}})),
        reply(
            None,
            json!([{"id": "b1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"echo hi\"}"}}]),
            (100, 10),
        ),
        reply(
            Some("two at once"),
            json!([
            {"id": "w1", "type": "function", "function": {"name": "write_file", "arguments": {"path": "a.txt", "content": "x"}}},
            {"id": "r1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": "}}]),
            (200, 20),
        ),
        reply(Some("I think I am done."), Value::Null, (300, 5)),
        reply(
            None,
            json!([{"id": "s1", "type": "function", "function": {"name": "submit", "arguments": ""}}]),
            (400, 5),
        ),
        reply(Some("Nothing to do."), Value::Null, (10, 1)),
        reply(Some("Still nothing."), Value::Null, (10, 1)),
    ]
}

fn llm(base: &str) -> LlmAgent {
    LlmAgent::new(
        Box::new(OpenAi::new("test-model", base, Some("k".into()))),
        options(),
        Some(Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        }),
    )
}

#[tokio::test]
async fn a_resumed_llm_run_sends_the_model_what_the_uninterrupted_run_sent() {
    // The run without an interrupt, and every request it sent.
    let (base, seen) = server(resumable_replies()).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut r = runner(tmp.path(), SUITE);
    let mut expected = r.run(&mut llm(&base), "img").await;
    r.finish(&mut expected);
    let whole = seen.lock().unwrap().clone();
    assert_eq!(whole.len(), 7);

    // The same run interrupted after each of its steps in turn: after the 2nd, the write_file of
    // the reply with two calls whose read_file has not run; after the 4th, the submit that ended
    // the first stage (its nudge is then part of what is rebuilt).
    for (cut, want_sent) in [(1, 2), (2, 3), (3, 3), (4, 5)] {
        let (base, seen) = server(resumable_replies()).await;
        let tmp2 = tempfile::tempdir().unwrap();
        let mut r = runner(tmp2.path(), SUITE);
        r.events.reporters.push(Box::new(common::CancelAfter {
            after: cut,
            seen: 0,
            cancel: r.cancel.clone(),
        }));
        let mut first = r.run(&mut llm(&base), "img").await;
        r.finish(&mut first);
        assert_eq!(first.status, trace::rundir::RunStatus::Interrupted);
        let sent = seen.lock().unwrap().len();
        assert_eq!(sent, want_sent, "requests before a cut after step {cut}");
        assert_eq!(seen.lock().unwrap()[..], whole[..sent]);

        // Resumed: a new agent, a new server holding the replies not yet given.
        let run_dir = tmp2.path().join("run");
        let (base, seen) = server(resumable_replies()[sent..].to_vec()).await;
        let sandbox = Arc::new(
            RecordingSandbox::with_workspace(&run_dir.join("workspace"), vec![Reply::ok("hi\n")])
                .unwrap(),
        );
        let log = EventLog::open_existing(&run_dir.join("events.jsonl")).unwrap();
        let mut r = Runner::new(
            common::home(),
            Suite::parse(SUITE, std::path::Path::new("fake.toml")).unwrap(),
            "llm-run".into(),
            run_dir.clone(),
            sandbox,
            EventSink::new(Recorder::new(log), vec![]),
            None,
            CancellationToken::new(),
        );
        let mut result = r
            .resume(&mut llm(&base), "img", common::resume_from(&run_dir))
            .await;
        r.finish(&mut result);
        let after = seen.lock().unwrap().clone();
        // The first request after resuming carries the conversation the uninterrupted run had sent
        // at that point, and so does every one after it.
        assert_eq!(after.len(), whole.len() - sent);
        assert_eq!(
            after[0], whole[sent],
            "the first request after a cut after step {cut}"
        );
        assert_eq!(after[..], whole[sent..]);
        assert_eq!(result.level, expected.level);
        assert_eq!(result.bootstrap_index, expected.bootstrap_index);
        let ends = |r: &gptx::runner::RunResult| {
            r.stages
                .iter()
                .map(|o| (o.steps, o.ended_by, o.usage))
                .collect::<Vec<_>>()
        };
        // Steps, how each stage ended, and tokens and cost used count what came before the stop.
        assert_eq!(ends(&result), ends(&expected), "a cut after step {cut}");
    }
}
