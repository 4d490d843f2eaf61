//! LLM agents: the shared tool loop (conversation, shortened tool outputs, context budget, retries with backoff, tokens and cost) and its chat backends (`openai`, `anthropic`), prices and a scripted server for tests.
//!
//! Imported by the agent factory (`agent::AgentSpec::build`), `agent::mcp` (the system prompt),
//! `docker::session` (its options) and `cli`.
//!
//! The loop is backend-neutral: it keeps the conversation as [`Msg`]s and asks a [`ChatBackend`] for
//! the next reply. Each request becomes a [`ModelCall`] (tokens, latency, cost from
//! `tasks/prices.toml`); the runner turns them into `model_call` events and enforces `max_tokens` and
//! `max_cost_usd` from [`Agent::usage`].

mod anthropic;
mod openai;
mod prices;
pub mod scripted;

pub use anthropic::Anthropic;
#[cfg(test)]
use anthropic::{anthropic_messages, parse_anthropic};
pub use openai::OpenAi;
#[cfg(test)]
use openai::{openai_messages, parse_openai};
pub use prices::Price;
pub(crate) use prices::{load_prices, price_of};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::agent::tools::{RawCall, ToolError};
use crate::agent::{Agent, AgentError, StageTask, Turn, Verdict};
use crate::trace::ModelCall;

/// Knobs of the loop, from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmOptions {
    pub temperature: Option<f64>,
    pub max_output_tokens: u64,
    /// The conversation is kept under this many tokens (estimated at 4 characters a token) by
    /// eliding the oldest tool outputs.
    pub context_tokens: u64,
    /// Characters of one tool result the model sees (head and tail); the trace keeps it whole.
    pub tool_output_chars: usize,
    /// Tries of one request on 429, 5xx, timeouts and unreadable replies.
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
    pub request_timeout: Duration,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            temperature: None,
            max_output_tokens: 4096,
            context_tokens: 100_000,
            tool_output_chars: 8000,
            attempts: 4,
            backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// One tool call the model asked for. `arguments` is what the server sent: a JSON string (as the
/// OpenAI API does) or an object (as some servers do).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// The conversation, backend-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    System(String),
    User(String),
    Assistant {
        text: Option<String>,
        calls: Vec<ToolUse>,
    },
    Tool {
        id: String,
        content: String,
    },
}

impl Msg {
    fn chars(&self) -> usize {
        match self {
            Msg::System(s) | Msg::User(s) => s.len(),
            Msg::Assistant { text, calls } => {
                text.as_ref().map_or(0, String::len)
                    + calls
                        .iter()
                        .map(|c| c.arguments.to_string().len() + c.name.len())
                        .sum::<usize>()
            }
            Msg::Tool { content, .. } => content.len(),
        }
    }
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatReply {
    pub text: Option<String>,
    pub calls: Vec<ToolUse>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// Worth another try: 429, 5xx, a timeout, a reply that could not be read.
    #[error("{0}")]
    Retry(String),
    /// Another try would fail the same way: a 4xx other than 429.
    #[error("{0}")]
    Fatal(String),
}

/// A chat API with tool calling.
#[async_trait]
pub trait ChatBackend: Send + Sync {
    /// `openai:<model>`.
    fn spec(&self) -> String;
    async fn chat(
        &self,
        msgs: &[Msg],
        tools: &[Value],
        opts: &LlmOptions,
    ) -> Result<ChatReply, ChatError>;
}

/// What the model is told to do when it answers with text and no tool call (once per stage).
pub(crate) const NUDGE: &str = "You answered without calling a tool. Act only through the tools: call one now, or `submit` if the stage is done.";

const ELIDED: &str = "[elided by gptx to keep the conversation within its context budget; the full output is in the trace]";

/// The system prompt: the goal, the tools, how budgets work.
pub(crate) fn system_prompt() -> String {
    "You are an agent taking gptx, a benchmark of building a language model by yourself. Your goal is to build a language model. \
The work goes in stages (crawl, tokenize, train, eval, selfhost); each stage's instruction says what to produce. \
You act only through the tools: bash, read_file, write_file (paths relative to /workspace), check (validates your work on visible data) and submit (ends the stage; it is then graded on hidden data). \
Commands run in a sandbox with limited CPU, memory and time; each stage has budgets of tool calls, command time, wall time and tokens, stated in its instruction. \
Long tool outputs are shortened for you (head and tail). Work step by step, check before you submit.".into()
}

/// `text` cut to `max` characters: head and tail with a marker.
pub fn shorten(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let half = max / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(n - half).collect();
    format!(
        "{head}\n[... {} characters omitted by gptx ...]\n{tail}",
        n - 2 * half
    )
}

/// Elides the oldest tool outputs until the conversation is estimated under `budget` tokens.
pub(crate) fn fit_context(msgs: &mut [Msg], budget: u64) {
    let mut chars: usize = msgs.iter().map(Msg::chars).sum();
    let limit = (budget as usize).saturating_mul(4);
    for m in msgs.iter_mut() {
        if chars <= limit {
            break;
        }
        if let Msg::Tool { content, .. } = m {
            if content != ELIDED && content.len() > ELIDED.len() {
                chars -= content.len() - ELIDED.len();
                *content = ELIDED.to_string();
            }
        }
    }
}

/// The tool call the runner gets for a [`ToolUse`]: arguments as an object, or refused with the reason.
pub(crate) fn raw_call(u: &ToolUse) -> RawCall {
    let parsed = match &u.arguments {
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| e.to_string()),
        Value::Null => Ok(json!({})),
        other => Ok(other.clone()),
    };
    match parsed {
        Ok(v @ Value::Object(_)) => RawCall::new(&u.name, v),
        Ok(v) => RawCall {
            tool: u.name.clone(),
            args: json!({"arguments": v}),
            invalid: Some(format!("the arguments of {} must be a JSON object", u.name)),
        },
        Err(e) => RawCall {
            tool: u.name.clone(),
            args: json!({"arguments": u.arguments}),
            invalid: Some(format!(
                "the arguments of {} are not valid JSON ({e})",
                u.name
            )),
        },
    }
}

/// An agent driven by a chat model through [`ChatBackend`].
pub struct LlmAgent {
    backend: Box<dyn ChatBackend>,
    opts: LlmOptions,
    price: Option<Price>,
    msgs: Vec<Msg>,
    tools: Vec<Value>,
    queue: VecDeque<ToolUse>,
    /// The call whose result is owed.
    current: Option<String>,
    nudged: bool,
    stage_tokens: u64,
    stage_cost: f64,
    out: Untaken,
}

/// What the trace has not taken from the agent yet.
#[derive(Default)]
struct Untaken {
    /// Model requests ([`Agent::take_model_calls`]).
    calls: Vec<ModelCall>,
    /// The verdict the conversation ended with ([`Agent::take_log`]).
    log: Option<String>,
}

impl LlmAgent {
    pub fn new(backend: Box<dyn ChatBackend>, opts: LlmOptions, price: Option<Price>) -> Self {
        Self {
            backend,
            opts,
            price,
            msgs: Vec::new(),
            tools: Vec::new(),
            queue: VecDeque::new(),
            current: None,
            nudged: false,
            stage_tokens: 0,
            stage_cost: 0.0,
            out: Untaken::default(),
        }
    }

    /// Every tool call of the last reply gets an answer, even those that did not run.
    fn answer_unrun(&mut self, why: &str) {
        let ids: Vec<String> = self
            .current
            .take()
            .into_iter()
            .chain(self.queue.drain(..).map(|u| u.id))
            .collect();
        for id in ids {
            self.msgs.push(Msg::Tool {
                id,
                content: json!({"ok": false, "error": {"code": "not_run", "message": why}})
                    .to_string(),
            });
        }
    }

    async fn ask(&mut self) -> Result<ChatReply, AgentError> {
        fit_context(&mut self.msgs, self.opts.context_tokens);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let t0 = Instant::now();
            let res = self.backend.chat(&self.msgs, &self.tools, &self.opts).await;
            let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
            match res {
                Ok(r) => {
                    let cost = self.price.map(|p| p.cost(r.input_tokens, r.output_tokens));
                    self.stage_tokens += r.input_tokens + r.output_tokens;
                    self.stage_cost += cost.unwrap_or(0.0);
                    self.out.calls.push(ModelCall {
                        model: self.backend.spec(),
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        latency_ms,
                        cost_usd: cost,
                        attempt,
                        error: None,
                        reply: Some(crate::trace::ModelReply {
                            text: r.text.clone(),
                            calls: r
                                .calls
                                .iter()
                                .map(|c| crate::trace::ModelToolUse {
                                    id: c.id.clone(),
                                    name: c.name.clone(),
                                    arguments: c.arguments.clone(),
                                })
                                .collect(),
                        }),
                    });
                    return Ok(r);
                }
                Err(e) => {
                    self.out.calls.push(ModelCall {
                        model: self.backend.spec(),
                        input_tokens: 0,
                        output_tokens: 0,
                        latency_ms,
                        cost_usd: self.price.map(|_| 0.0),
                        attempt,
                        error: Some(e.to_string()),
                        reply: None,
                    });
                    let retry = matches!(e, ChatError::Retry(_)) && attempt < self.opts.attempts;
                    if !retry {
                        return Err(AgentError {
                            agent: self.backend.spec(),
                            message: format!(
                                "the model request failed after {attempt} attempt(s): {e}"
                            ),
                        });
                    }
                    tokio::time::sleep(self.opts.backoff * 2u32.pow(attempt - 1)).await;
                }
            }
        }
    }
}

#[async_trait]
impl Agent for LlmAgent {
    fn spec(&self) -> String {
        self.backend.spec()
    }

    async fn begin_stage(&mut self, task: &StageTask) -> Result<(), AgentError> {
        self.answer_unrun("the stage ended before this call ran");
        if self.msgs.is_empty() {
            self.msgs.push(Msg::System(system_prompt()));
        }
        self.tools = task.tools.clone();
        self.nudged = false;
        self.stage_tokens = 0;
        self.stage_cost = 0.0;
        let l = &task.limits;
        let mut limits = format!(
            "Budgets of this stage: {} tool calls, {:.0} s of command time, {:.0} s in all, {:.0} s per bash call",
            l.max_steps, l.max_sandbox_seconds, l.max_wall_seconds, l.max_step_seconds
        );
        if let Some(t) = l.max_tokens {
            limits.push_str(&format!(", {t} model tokens"));
        }
        if let Some(c) = l.max_cost_usd {
            limits.push_str(&format!(", ${c:.2} of model use"));
        }
        self.msgs.push(Msg::User(format!(
            "{}\n\n{limits}.",
            task.instruction.trim_end()
        )));
        Ok(())
    }

    async fn next(&mut self) -> Result<Turn, AgentError> {
        loop {
            if let Some(u) = self.queue.pop_front() {
                let call = raw_call(&u);
                self.current = Some(u.id);
                return Ok(Turn::Call(call));
            }
            let reply = self.ask().await?;
            self.msgs.push(Msg::Assistant {
                text: reply.text.clone(),
                calls: reply.calls.clone(),
            });
            if reply.calls.is_empty() {
                if self.nudged {
                    return Ok(Turn::Finished);
                }
                self.nudged = true;
                self.msgs.push(Msg::User(NUDGE.into()));
                continue;
            }
            self.queue.extend(reply.calls);
        }
    }

    async fn observe(
        &mut self,
        _call: &RawCall,
        result: &Result<Value, ToolError>,
    ) -> Result<(), AgentError> {
        let Some(id) = self.current.take() else {
            return Ok(());
        };
        let content = match result {
            Ok(v) => json!({"ok": true, "output": v}),
            Err(e) => json!({"ok": false, "error": {"code": e.code, "message": e.message}}),
        };
        self.msgs.push(Msg::Tool {
            id,
            content: shorten(&content.to_string(), self.opts.tool_output_chars),
        });
        Ok(())
    }

    async fn stopped(&mut self, reason: &str) {
        self.answer_unrun(&format!("the stage ended: budget {reason} ran out"));
    }

    /// The verdict ends the conversation as a last user message, the text of the `done` message an
    /// exec agent reads, and the trace records it as this agent's log. No request is sent: no tool
    /// call can follow, so nothing would read the reply, and it would cost tokens.
    async fn done(&mut self, verdict: &Verdict) {
        self.answer_unrun("the run ended before this call ran");
        let text = format!(
            "The run is over; no more tool calls will run. {}.\n\n{}",
            verdict.summary(),
            verdict.message()
        );
        self.msgs.push(Msg::User(text.clone()));
        self.out.log = Some(text);
    }

    fn take_log(&mut self) -> Option<String> {
        self.out.log.take()
    }

    fn take_model_calls(&mut self) -> Vec<ModelCall> {
        std::mem::take(&mut self.out.calls)
    }

    fn usage(&self) -> Option<(u64, Option<f64>)> {
        Some((self.stage_tokens, self.price.map(|_| self.stage_cost)))
    }

    /// The conversation rebuilt by playing the trace through this loop's own rules: each stage's
    /// task, each recorded reply (its tool calls queued, a nudge after a first reply without
    /// one), each completed step's result, and the answers owed when a budget ended a stage.
    /// Calls of the last reply that did not complete stay queued: they run next. The stage's
    /// tokens and cost are the recorded calls'. The next request is then the one the run would
    /// have sent.
    async fn resume(&mut self, past: &[crate::agent::PastStage]) -> Result<bool, AgentError> {
        use crate::agent::Past;
        self.msgs.clear();
        self.queue.clear();
        self.current = None;
        for p in past {
            self.begin_stage(&p.task).await?;
            for e in &p.events {
                match e {
                    Past::Model(call) => {
                        self.stage_tokens += call.input_tokens + call.output_tokens;
                        self.stage_cost += call.cost_usd.unwrap_or(0.0);
                        let Some(reply) = &call.reply else { continue };
                        let calls: Vec<ToolUse> = reply
                            .calls
                            .iter()
                            .map(|c| ToolUse {
                                id: c.id.clone(),
                                name: c.name.clone(),
                                arguments: c.arguments.clone(),
                            })
                            .collect();
                        self.msgs.push(Msg::Assistant {
                            text: reply.text.clone(),
                            calls: calls.clone(),
                        });
                        if calls.is_empty() {
                            if !self.nudged {
                                self.nudged = true;
                                self.msgs.push(Msg::User(NUDGE.into()));
                            }
                        } else {
                            self.queue.extend(calls);
                        }
                    }
                    Past::Step { tool, result } => {
                        let Some(u) = self.queue.pop_front() else {
                            return Err(AgentError {
                                agent: self.backend.spec(),
                                message: format!(
                                    "the trace does not fit this agent: a {tool} step in stage {} with no model reply asking for it",
                                    p.task.stage
                                ),
                            });
                        };
                        let call = raw_call(&u);
                        self.current = Some(u.id);
                        self.observe(&call, result).await?;
                    }
                }
            }
            if let Some(budget) = p.ended.and_then(|e| e.budget()) {
                self.stopped(budget).await;
            }
        }
        // Those requests are in the trace already.
        self.out.calls.clear();
        Ok(true)
    }
}

/// Where a chat API is and how to reach it.
struct Endpoint {
    client: reqwest::Client,
    base: String,
    key: Option<String>,
    model: String,
}

impl Endpoint {
    fn new(model: &str, base: &str, key: Option<String>) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            key,
            model: model.into(),
        }
    }

    /// The base URL and key from the environment (`<base_var>`, else `default`; `<key_var>`).
    fn from_env(model: &str, base_var: &str, default: &str, key_var: &str) -> Self {
        Self::new(
            model,
            &std::env::var(base_var).unwrap_or_else(|_| default.into()),
            std::env::var(key_var).ok(),
        )
    }
}

impl Endpoint {
    /// POSTs `body` (plus the model, `max_tokens` and the temperature) to `<base><path>` and reads
    /// the JSON reply.
    async fn post(
        &self,
        path: &str,
        mut body: Value,
        opts: &LlmOptions,
        headers: &[(&str, String)],
    ) -> Result<Value, ChatError> {
        body["model"] = json!(self.model);
        body["max_tokens"] = json!(opts.max_output_tokens);
        if let Some(t) = opts.temperature {
            body["temperature"] = json!(t);
        }
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .timeout(opts.request_timeout)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        send(req, &self.base).await
    }
}

/// A count from a reply's `usage` object (0 when the server sent none).
fn usage(v: &Value, key: &str) -> u64 {
    v.get("usage")
        .and_then(|u| u.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Sends a request and reads a JSON reply; 429, 5xx, transport errors and unreadable replies are
/// worth a retry, other 4xx are not.
async fn send(req: reqwest::RequestBuilder, base: &str) -> Result<Value, ChatError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ChatError::Retry(format!("{base}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| ChatError::Retry(format!("reading the reply: {e}")))?;
    if !status.is_success() {
        let msg = format!("HTTP {status}: {}", shorten(text.trim(), 300));
        return Err(if status.as_u16() == 429 || status.is_server_error() {
            ChatError::Retry(msg)
        } else {
            ChatError::Fatal(msg)
        });
    }
    serde_json::from_str(&text).map_err(|e| {
        ChatError::Retry(format!(
            "the reply is not JSON ({e}): {}",
            shorten(&text, 200)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn replies_with_string_or_object_arguments_and_missing_ids() {
        let v = json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}},
            {"type": "function", "function": {"name": "read_file", "arguments": {"path": "x"}}},
            {"id": "c", "function": {"name": "write_file", "arguments": "{not json"}}]}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30}});
        let r = parse_openai(&v).unwrap();
        assert_eq!((r.input_tokens, r.output_tokens), (120, 30));
        assert_eq!(r.calls.len(), 3);
        assert!(r.calls[1].id.starts_with("call_"));
        assert_eq!(raw_call(&r.calls[0]).args, json!({"cmd": "ls"}));
        assert_eq!(raw_call(&r.calls[1]).args, json!({"path": "x"}));
        let bad = raw_call(&r.calls[2]);
        assert_eq!(bad.tool, "write_file");
        assert!(bad
            .invalid
            .unwrap()
            .starts_with("the arguments of write_file are not valid JSON"));
        assert!(parse_openai(&json!({"error": "x"})).is_err());
    }

    #[test]
    fn anthropic_turns_alternate_and_tool_results_answer_tool_uses() {
        let msgs = vec![
            Msg::System("goal".into()),
            Msg::User("stage".into()),
            Msg::Assistant {
                text: Some("let me look".into()),
                calls: vec![
                    ToolUse {
                        id: "t1".into(),
                        name: "bash".into(),
                        arguments: json!("{\"cmd\":\"ls\"}"),
                    },
                    ToolUse {
                        id: "t2".into(),
                        name: "read_file".into(),
                        arguments: json!({"path": "a"}),
                    },
                ],
            },
            Msg::Tool {
                id: "t1".into(),
                content: "{}".into(),
            },
            Msg::Tool {
                id: "t2".into(),
                content: "{}".into(),
            },
            Msg::User("nudge".into()),
        ];
        let (system, m) = anthropic_messages(&msgs);
        assert_eq!(system, "goal");
        let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(m[1]["content"][1]["input"], json!({"cmd": "ls"}));
        assert_eq!(m[2]["content"][1]["tool_use_id"], "t2");
        assert_eq!(m[2]["content"][2]["text"], "nudge");
        let r = parse_anthropic(&json!({"content": [
            {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "x", "name": "submit", "input": {}}],
            "usage": {"input_tokens": 7, "output_tokens": 3}}))
        .unwrap();
        assert_eq!(
            (r.text.as_deref(), r.calls.len(), r.input_tokens),
            (Some("ok"), 1, 7)
        );
    }

    #[test]
    fn messages_round_trip_into_the_chat_format() {
        let msgs = vec![
            Msg::System("s".into()),
            Msg::Assistant {
                text: None,
                calls: vec![ToolUse {
                    id: "1".into(),
                    name: "bash".into(),
                    arguments: json!({"cmd": "ls"}),
                }],
            },
            Msg::Tool {
                id: "1".into(),
                content: "{}".into(),
            },
        ];
        let v = openai_messages(&msgs);
        assert_eq!(
            v[1]["tool_calls"][0]["function"]["arguments"],
            "{\"cmd\":\"ls\"}"
        );
        assert_eq!(v[2]["tool_call_id"], "1");
    }

    /// A backend that must not be asked.
    struct Silent;

    #[async_trait]
    impl ChatBackend for Silent {
        fn spec(&self) -> String {
            "silent:none".into()
        }
        async fn chat(
            &self,
            _: &[Msg],
            _: &[Value],
            _: &LlmOptions,
        ) -> Result<ChatReply, ChatError> {
            Err(ChatError::Fatal("no request was expected".into()))
        }
    }

    #[tokio::test]
    async fn the_verdict_is_the_last_message_of_the_conversation() {
        let mut a = LlmAgent::new(Box::new(Silent), LlmOptions::default(), None);
        a.msgs.push(Msg::System("s".into()));
        a.queue.push_back(ToolUse {
            id: "late".into(),
            name: "bash".into(),
            arguments: json!({}),
        });
        let verdict = Verdict {
            level: "L1".into(),
            bootstrap_index: 15.0,
            stages: vec![crate::agent::StageVerdict {
                stage: "crawl".into(),
                passed: false,
                status: "scored".into(),
                ended_by: crate::trace::EndReason::Submit,
                reason: Some("gate not met: recall below 0.5".into()),
            }],
        };
        a.done(&verdict).await;
        assert!(
            matches!(&a.msgs[1], Msg::Tool { id, content } if id == "late" && content.contains("not_run"))
        );
        let Some(Msg::User(text)) = a.msgs.last().cloned() else {
            panic!("{:?}", a.msgs)
        };
        assert!(
            text.contains("not passed: crawl (gate not met: recall below 0.5)"),
            "{text}"
        );
        assert!(text.ends_with(&verdict.message().to_string()), "{text}");
        assert_eq!(a.take_log(), Some(text));
        assert!(a.take_model_calls().is_empty(), "no request was sent");
    }

    #[test]
    fn shortening_and_the_context_budget() {
        let s = shorten(&"a".repeat(50).to_string(), 10);
        assert!(s.starts_with("aaaaa\n[... 40 characters omitted"));
        let mut msgs = vec![
            Msg::System("x".repeat(40)),
            Msg::Tool {
                id: "1".into(),
                content: "y".repeat(4000),
            },
            Msg::Tool {
                id: "2".into(),
                content: "z".repeat(4000),
            },
        ];
        fit_context(&mut msgs, 1500); // 6000 characters
        assert!(matches!(&msgs[1], Msg::Tool { content, .. } if content == ELIDED));
        assert!(matches!(&msgs[2], Msg::Tool { content, .. } if content.len() == 4000));
    }

    #[test]
    fn prices_match_exact_names_then_the_longest_prefix() {
        let p = BTreeMap::from([
            (
                "gpt-4o".to_string(),
                Price {
                    input_per_mtok: 2.5,
                    output_per_mtok: 10.0,
                },
            ),
            (
                "gpt-4o-mini".to_string(),
                Price {
                    input_per_mtok: 0.15,
                    output_per_mtok: 0.6,
                },
            ),
        ]);
        assert_eq!(
            price_of(&p, "gpt-4o-mini-2024-07-18")
                .unwrap()
                .input_per_mtok,
            0.15
        );
        assert_eq!(
            price_of(&p, "gpt-4o-2024-08-06").unwrap().input_per_mtok,
            2.5
        );
        assert_eq!(price_of(&p, "llama3"), None);
        assert!((p["gpt-4o"].cost(1_000_000, 100_000) - 3.5).abs() < 1e-12);
    }
}
