//! Anthropic's Messages API backend, with `tool_use` / `tool_result` blocks.

use super::*;

/// Anthropic's Messages API with `tool_use` / `tool_result` blocks.
pub struct Anthropic(Endpoint);

impl Anthropic {
    /// `ANTHROPIC_BASE_URL` (default `https://api.anthropic.com`) and `ANTHROPIC_API_KEY`.
    pub(crate) fn from_env(model: &str) -> Self {
        Self(Endpoint::from_env(
            model,
            "ANTHROPIC_BASE_URL",
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
        ))
    }

    pub fn new(model: &str, base: &str, key: Option<String>) -> Self {
        Self(Endpoint::new(model, base, key))
    }
}

/// The conversation as Messages API input: the system prompt apart, tool results as `user` turns
/// of `tool_result` blocks, consecutive turns of one role merged (the API wants them alternating).
pub(crate) fn anthropic_messages(msgs: &[Msg]) -> (String, Vec<Value>) {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    let mut push = |role: &str, block: Value| match out.last_mut() {
        Some(last) if last["role"] == role => {
            last["content"].as_array_mut().expect("blocks").push(block)
        }
        _ => out.push(json!({"role": role, "content": [block]})),
    };
    for m in msgs {
        match m {
            Msg::System(s) => system.push(s.clone()),
            Msg::User(s) => push("user", json!({"type": "text", "text": s})),
            Msg::Assistant { text, calls } => {
                if let Some(t) = text {
                    push("assistant", json!({"type": "text", "text": t}));
                }
                for c in calls {
                    let call = raw_call(c);
                    let input = if call.invalid.is_none() {
                        call.args
                    } else {
                        json!({})
                    };
                    push(
                        "assistant",
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
            }
            Msg::Tool { id, content } => push(
                "user",
                json!({"type": "tool_result", "tool_use_id": id, "content": content}),
            ),
        }
    }
    (system.join("\n\n"), out)
}

/// Reads a Messages API reply (pure: unit-tested).
pub(crate) fn parse_anthropic(v: &Value) -> Result<ChatReply, String> {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or("the reply has no content blocks")?;
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push(b["text"].as_str().unwrap_or("").to_string()),
            Some("tool_use") => {
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(format!("content[{i}] (tool_use) has no name"))?;
                calls.push(ToolUse {
                    id: b
                        .get("id")
                        .and_then(Value::as_str)
                        .map(String::from)
                        .unwrap_or_else(|| format!("toolu_{:08x}", rand::random::<u32>())),
                    name: name.into(),
                    arguments: b.get("input").cloned().unwrap_or(Value::Null),
                });
            }
            _ => {}
        }
    }
    let text = text.join("\n");
    Ok(ChatReply {
        text: (!text.trim().is_empty()).then_some(text),
        calls,
        input_tokens: usage(v, "input_tokens"),
        output_tokens: usage(v, "output_tokens"),
    })
}

#[async_trait]
impl ChatBackend for Anthropic {
    fn spec(&self) -> String {
        format!("anthropic:{}", self.0.model)
    }

    async fn chat(
        &self,
        msgs: &[Msg],
        tools: &[Value],
        opts: &LlmOptions,
    ) -> Result<ChatReply, ChatError> {
        let (system, messages) = anthropic_messages(msgs);
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"name": t["name"], "description": t["description"],
                       "input_schema": t["parameters"]})
            })
            .collect();
        let body = json!({"system": system, "messages": messages, "tools": tools});
        let mut headers = vec![("anthropic-version", "2023-06-01".to_string())];
        if let Some(k) = &self.0.key {
            headers.push(("x-api-key", k.clone()));
        }
        let v = self.0.post("/v1/messages", body, opts, &headers).await?;
        parse_anthropic(&v).map_err(ChatError::Retry)
    }
}
