//! The agent's tools (SPEC §2): raw calls parsed into typed ones, their JSON Schemas, and error codes.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sandbox::{PathError, WorkspacePath};

/// A tool call as an agent sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawCall {
    pub tool: String,
    #[serde(default)]
    pub args: Value,
    /// Set when the agent's message was not a tool call at all (an external agent's malformed line):
    /// why, so the call is refused with `bad_request` and the agent is told.
    #[serde(skip)]
    pub invalid: Option<String>,
}

impl RawCall {
    pub fn new(tool: &str, args: Value) -> Self {
        Self {
            tool: tool.into(),
            args,
            invalid: None,
        }
    }

    /// A message that was not a call: recorded as the tool `(malformed)` with `args`, refused.
    pub fn invalid(why: String, args: Value) -> Self {
        Self {
            tool: "(malformed)".into(),
            args,
            invalid: Some(why),
        }
    }
}

/// A parsed, validated tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCall {
    Bash {
        cmd: String,
        timeout_s: Option<f64>,
    },
    ReadFile {
        path: WorkspacePath,
    },
    WriteFile {
        path: WorkspacePath,
        content: Vec<u8>,
    },
    Check {
        /// selfhost: try the recipe as the grade runs it.
        rebuild: bool,
    },
    Submit,
}

/// Names of the tools, in the order agents see them.
pub(crate) const TOOL_NAMES: [&str; 5] = ["bash", "read_file", "write_file", "check", "submit"];

/// A tool error as the agent receives it: `{code, message}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    pub code: String,
    pub message: String,
}

impl ToolError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
}

impl From<PathError> for ToolError {
    fn from(e: PathError) -> Self {
        let code = match e {
            PathError::NotFound(_) => "not_found",
            PathError::IsDir { .. } => "is_directory",
            PathError::Io { .. } => "io_error",
            _ => "path_refused",
        };
        ToolError::new(code, e.to_string())
    }
}

fn string_arg<'a>(args: &'a Value, tool: &str, name: &str) -> Result<&'a str, ToolError> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ToolError::bad_request(format!(
            "{tool}: argument `{name}` must be a string, got {}",
            json_kind(other)
        ))),
        None => Err(ToolError::bad_request(format!(
            "{tool}: missing argument `{name}`"
        ))),
    }
}

/// What a JSON value is, for messages: "a string", "an array", ...
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn no_extra(args: &Value, tool: &str, allowed: &[&str]) -> Result<(), ToolError> {
    match args {
        Value::Null => Ok(()),
        Value::Object(map) => {
            if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(ToolError::bad_request(format!(
                    "{tool}: unknown argument `{k}` (takes: {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
            Ok(())
        }
        other => Err(ToolError::bad_request(format!(
            "{tool}: arguments must be an object, got {}",
            json_kind(other)
        ))),
    }
}

impl ToolCall {
    /// Validates a raw call; the error is what the agent is told (code `bad_request` or `path_refused`).
    pub fn parse(raw: &RawCall) -> Result<Self, ToolError> {
        if let Some(why) = &raw.invalid {
            return Err(ToolError::bad_request(format!(
                "the message is not a tool call: {why}"
            )));
        }
        let args = &raw.args;
        match raw.tool.as_str() {
            "bash" => {
                no_extra(args, "bash", &["cmd", "timeout_s"])?;
                let cmd = string_arg(args, "bash", "cmd")?.to_string();
                let timeout_s = match args.get("timeout_s") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(t) if t > 0.0 && t.is_finite() => Some(t),
                        _ => {
                            return Err(ToolError::bad_request(
                                "bash: `timeout_s` must be a positive number of seconds",
                            ))
                        }
                    },
                    Some(other) => {
                        return Err(ToolError::bad_request(format!(
                            "bash: `timeout_s` must be a number, got {}",
                            json_kind(other)
                        )))
                    }
                };
                Ok(ToolCall::Bash { cmd, timeout_s })
            }
            "read_file" => {
                no_extra(args, "read_file", &["path"])?;
                let path = WorkspacePath::parse(string_arg(args, "read_file", "path")?)?;
                Ok(ToolCall::ReadFile { path })
            }
            "write_file" => {
                no_extra(args, "write_file", &["path", "content", "encoding"])?;
                let path = WorkspacePath::parse(string_arg(args, "write_file", "path")?)?;
                let content = string_arg(args, "write_file", "content")?;
                let content = match args.get("encoding").and_then(Value::as_str) {
                    None | Some("utf-8") | Some("utf8") | Some("text") => {
                        content.as_bytes().to_vec()
                    }
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(content)
                        .map_err(|e| {
                            ToolError::bad_request(format!(
                                "write_file: `content` is not valid base64: {e}"
                            ))
                        })?,
                    Some(other) => {
                        return Err(ToolError::bad_request(format!(
                            "write_file: unknown encoding {other:?} (use \"utf-8\" or \"base64\")"
                        )))
                    }
                };
                Ok(ToolCall::WriteFile { path, content })
            }
            "check" => {
                no_extra(args, "check", &["rebuild"])?;
                let rebuild = match args.get("rebuild") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(ToolError::bad_request(format!(
                            "check: `rebuild` must be true or false, got {}",
                            json_kind(other)
                        )))
                    }
                };
                Ok(ToolCall::Check { rebuild })
            }
            "submit" => {
                no_extra(args, "submit", &[])?;
                Ok(ToolCall::Submit)
            }
            other => Err(ToolError::bad_request(format!(
                "unknown tool {other:?} (tools: {})",
                TOOL_NAMES.join(", ")
            ))),
        }
    }
}

/// The tools as JSON Schemas (name, description, parameters), for agents that want them.
pub fn schemas() -> Vec<Value> {
    vec![
        json!({"name": "bash", "description": "Run a bash command in /workspace inside the sandbox. Returns exit_code, stdout, stderr, truncated, duration_ms.",
               "parameters": {"type": "object", "properties": {
                   "cmd": {"type": "string", "description": "The command, run with bash -c."},
                   "timeout_s": {"type": "number", "description": "Seconds before the command is killed (capped by the stage)."}},
                   "required": ["cmd"], "additionalProperties": false}}),
        json!({"name": "read_file", "description": "Read a file under /workspace. Returns content (base64 with encoding \"base64\" when not UTF-8) and truncated.",
               "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false}}),
        json!({"name": "write_file", "description": "Write a file under /workspace (parents are created). Returns bytes_written.",
               "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"},
                   "encoding": {"type": "string", "enum": ["utf-8", "base64"]}}, "required": ["path", "content"], "additionalProperties": false}}),
        json!({"name": "check", "description": "Run the stage's public validator on visible data: format errors and a dev metric, never the hidden score.",
               "parameters": {"type": "object", "properties": {
                   "rebuild": {"type": "boolean", "description": "selfhost only: run bootstrap.sh in a fresh sandbox exactly as the grade does and verify the rebuilt bin/lm on your own documents (slow; counts against the stage's command time)."}},
                   "additionalProperties": false}}),
        json!({"name": "submit", "description": "End the stage; it is scored and the next stage begins.",
               "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tool: &str, args: Value) -> Result<ToolCall, ToolError> {
        ToolCall::parse(&RawCall {
            tool: tool.into(),
            args,
            invalid: None,
        })
    }

    #[test]
    fn parses_every_tool() {
        assert_eq!(
            call("bash", json!({"cmd": "ls", "timeout_s": 3})).unwrap(),
            ToolCall::Bash {
                cmd: "ls".into(),
                timeout_s: Some(3.0)
            }
        );
        assert!(matches!(
            call("write_file", json!({"path": "a", "content": "aGk=", "encoding": "base64"})).unwrap(),
            ToolCall::WriteFile { content, .. } if content == b"hi"
        ));
        assert_eq!(call("submit", Value::Null).unwrap(), ToolCall::Submit);
        assert_eq!(
            call("check", json!({})).unwrap(),
            ToolCall::Check { rebuild: false }
        );
        assert_eq!(
            call("check", json!({"rebuild": true})).unwrap(),
            ToolCall::Check { rebuild: true }
        );
        assert!(call("check", json!({"rebuild": "yes"}))
            .unwrap_err()
            .message
            .contains("true or false"));
    }

    #[test]
    fn bad_calls_say_what_is_wrong() {
        let e = call("bash", json!({})).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("cmd"));
        assert!(call("bash", json!({"cmd": 1}))
            .unwrap_err()
            .message
            .contains("string"));
        assert!(call("bash", json!({"cmd": "x", "timeout_s": -1})).is_err());
        assert!(call("bash", json!({"cmd": "x", "extra": 1}))
            .unwrap_err()
            .message
            .contains("extra"));
        assert_eq!(
            call("read_file", json!({"path": "../x"})).unwrap_err().code,
            "path_refused"
        );
        assert!(call("fly", json!({}))
            .unwrap_err()
            .message
            .contains("unknown tool"));
        assert!(call("submit", json!([1])).is_err());
    }
}
