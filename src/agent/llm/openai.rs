//! The OpenAI-compatible chat-completions backend (OpenAI, vLLM, llama.cpp's server, Ollama, ...).

use super::*;

/// Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's server, Ollama, ...).
pub struct OpenAi(Endpoint);

impl OpenAi {
    /// `OPENAI_BASE_URL` (default `https://api.openai.com/v1`) and `OPENAI_API_KEY`.
    pub(crate) fn from_env(model: &str) -> Self {
        Self(Endpoint::from_env(
            model,
            "OPENAI_BASE_URL",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
        ))
    }

    pub fn new(model: &str, base: &str, key: Option<String>) -> Self {
        Self(Endpoint::new(model, base, key))
    }
}

/// The conversation as chat-completions messages.
pub(crate) fn openai_messages(msgs: &[Msg]) -> Vec<Value> {
    msgs.iter()
        .map(|m| match m {
            Msg::System(s) => json!({"role": "system", "content": s}),
            Msg::User(s) => json!({"role": "user", "content": s}),
            Msg::Assistant { text, calls } => {
                let mut v = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    v["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            let args = match &c.arguments {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": args}})
                        })
                        .collect();
                }
                v
            }
            Msg::Tool { id, content } => {
                json!({"role": "tool", "tool_call_id": id, "content": content})
            }
        })
        .collect()
}

/// Reads a chat-completions reply (pure: unit-tested); ids the server left out are made up.
pub(crate) fn parse_openai(v: &Value) -> Result<ChatReply, String> {
    let msg = v
        .pointer("/choices/0/message")
        .ok_or("the reply has no choices[0].message")?;
    let text = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(String::from);
    let mut calls = Vec::new();
    if let Some(list) = msg.get("tool_calls").and_then(Value::as_array) {
        for (i, c) in list.iter().enumerate() {
            let f = c.get("function").unwrap_or(c);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return Err(format!("tool_calls[{i}] has no function name"));
            };
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .unwrap_or_else(|| format!("call_{:08x}", rand::random::<u32>()));
            calls.push(ToolUse {
                id,
                name: name.into(),
                arguments: f.get("arguments").cloned().unwrap_or(Value::Null),
            });
        }
    }
    Ok(ChatReply {
        text,
        calls,
        input_tokens: usage(v, "prompt_tokens"),
        output_tokens: usage(v, "completion_tokens"),
    })
}

#[async_trait]
impl ChatBackend for OpenAi {
    fn spec(&self) -> String {
        format!("openai:{}", self.0.model)
    }

    async fn chat(
        &self,
        msgs: &[Msg],
        tools: &[Value],
        opts: &LlmOptions,
    ) -> Result<ChatReply, ChatError> {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| json!({"type": "function", "function": t}))
            .collect();
        let body = json!({"messages": openai_messages(msgs), "tools": tools});
        let auth = self
            .0
            .key
            .as_ref()
            .map(|k| ("authorization", format!("Bearer {k}")));
        let v = self
            .0
            .post("/chat/completions", body, opts, auth.as_slice())
            .await?;
        parse_openai(&v).map_err(ChatError::Retry)
    }
}
