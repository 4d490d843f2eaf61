//! The agent seam: the `Agent` trait the runner drives, agent specs, and the built-in `null`, `reference` and `script:` agents.
//!
//! Imported by `stages` (the tool errors a `check` returns), `runner`, `docker` and `cli`; imports
//! `config`, `sandbox` and `trace`.

pub mod confine;
pub mod exec;
pub mod llm;
pub mod mcp;
pub mod tools;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;

use crate::agent::tools::{RawCall, ToolError};
use crate::config::suite::Budgets;

/// What a stage hands the agent.
#[derive(Debug, Clone)]
pub struct StageTask {
    pub stage: String,
    pub index: usize,
    pub instruction: String,
    pub tools: Vec<Value>,
    pub limits: Budgets,
}

/// What the agent is told when the run is over: its level and index, and per stage whether it
/// passed and, if not, why in words that give nothing hidden away ([`crate::trace::StageScore::told`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub level: String,
    pub bootstrap_index: f64,
    pub stages: Vec<StageVerdict>,
}

/// One stage of a [`Verdict`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageVerdict {
    pub stage: String,
    pub passed: bool,
    /// The grade's status (`scored`, `failed`, `rejected`...), or `not scored`.
    pub status: String,
    /// What ended the stage (`submit`, `max_steps`...).
    pub ended_by: crate::trace::EndReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Verdict {
    /// The `done` message of SPEC §8: level, index, and per stage passed, status, what ended it and
    /// why it did not pass. What every agent is told at the end, and nothing hidden.
    pub fn message(&self) -> Value {
        serde_json::json!({"type": "done", "level": self.level,
            "bootstrap_index": self.bootstrap_index, "stages": self.stages})
    }

    /// `passed: crawl, tokenize; failed: train (why)`, for agents that read text.
    pub fn summary(&self) -> String {
        let passed: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| s.passed)
            .map(|s| s.stage.as_str())
            .collect();
        let failed: Vec<String> = self
            .stages
            .iter()
            .filter(|s| !s.passed)
            .map(|s| match &s.reason {
                Some(r) => format!("{} ({r})", s.stage),
                None => s.stage.clone(),
            })
            .collect();
        let mut parts = Vec::new();
        if !passed.is_empty() {
            parts.push(format!("passed: {}", passed.join(", ")));
        }
        if !failed.is_empty() {
            parts.push(format!("not passed: {}", failed.join("; ")));
        }
        parts.join(". ")
    }
}

/// A stage of an interrupted run as its trace tells it, for [`Agent::resume`]: the task the agent
/// was given, what happened in it, in trace order, and how it ended if it did.
#[derive(Debug, Clone)]
pub struct PastStage {
    pub task: StageTask,
    pub events: Vec<Past>,
    /// What ended the stage (None: the run goes on with it).
    pub ended: Option<crate::trace::EndReason>,
}

/// One thing that happened to the agent in a [`PastStage`].
#[derive(Debug, Clone)]
pub enum Past {
    /// A request to the model (LLM agents), with its reply when it succeeded.
    Model(crate::trace::ModelCall),
    /// A tool call that completed, and the result the agent was given.
    Step {
        tool: String,
        result: Result<Value, ToolError>,
    },
}

impl Past {
    /// The completed step of a step record, as the agent observed it.
    pub fn of_step(r: &crate::trace::StepRecord) -> Self {
        let result = if r.ok {
            Ok(r.result.clone())
        } else {
            let text = |k: &str| {
                r.result
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            Err(ToolError {
                code: text("code"),
                message: text("message"),
            })
        };
        Self::Step {
            tool: r.tool.clone(),
            result,
        }
    }
}

/// Steps completed in a past stage.
fn steps_done(p: &PastStage) -> usize {
    p.events
        .iter()
        .filter(|e| matches!(e, Past::Step { .. }))
        .count()
}

/// The agent's move.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Call(RawCall),
    /// The agent has nothing more to do in this stage.
    Finished,
}

/// An agent that could not go on (a crashed process, an API that keeps failing).
#[derive(Debug, thiserror::Error)]
#[error("agent {agent}: {message}")]
pub struct AgentError {
    pub agent: String,
    pub message: String,
}

/// A participant. The runner calls `begin_stage`, then alternates `next` and `observe` until the stage ends.
#[async_trait]
pub trait Agent: Send {
    /// The spec it was made from (`null`, `script:path`), as recorded in the run.
    fn spec(&self) -> String;
    async fn begin_stage(&mut self, task: &StageTask) -> Result<(), AgentError>;
    async fn next(&mut self) -> Result<Turn, AgentError>;
    /// The result of the agent's last call (scripted agents ignore it).
    async fn observe(
        &mut self,
        _call: &RawCall,
        _result: &Result<Value, ToolError>,
    ) -> Result<(), AgentError> {
        Ok(())
    }
    /// A budget ended the stage before the agent submitted.
    async fn stopped(&mut self, _reason: &str) {}
    /// The run is over.
    async fn done(&mut self, _verdict: &Verdict) {}
    /// What the agent logged since the last call (an external agent's stderr; the verdict an LLM
    /// agent's conversation ended with), for the trace.
    fn take_log(&mut self) -> Option<String> {
        None
    }
    /// The model requests made since the last call (LLM agents), for `model_call` events.
    fn take_model_calls(&mut self) -> Vec<crate::trace::ModelCall> {
        Vec::new()
    }
    /// Tokens and cost (None: unknown price) used in the current stage (LLM agents), for the
    /// `max_tokens` and `max_cost_usd` budgets.
    fn usage(&self) -> Option<(u64, Option<f64>)> {
        None
    }
    /// The process group of an agent that runs as host processes (`exec:`), recorded in run.json
    /// so that a gptx killed outright does not leave it running: marking the run kills the group.
    fn process_group(&self) -> Option<u32> {
        None
    }
    /// An interrupted run goes on (`gptx resume`): rebuild the state this agent had after the last
    /// event of `past` (every stage the run reached, in order; the last is the one it goes on
    /// with, its `begin_stage` included), so that its next move is the one it would have made.
    /// Returns false when it cannot (an external program, whose state is its own): it is then
    /// started on that stage afresh with `begin_stage`.
    async fn resume(&mut self, _past: &[PastStage]) -> Result<bool, AgentError> {
        Ok(false)
    }
}

/// A parsed `--agent` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSpec {
    Null,
    Script(PathBuf),
    /// The reference solutions; `Some(stages)` plays only those and submits the rest at once (the
    /// partial agents of the tests: `reference:crawl` crawls and nothing else).
    Reference(Option<Vec<String>>),
    /// The reference solutions with a neural language model in PyTorch: each stage's
    /// `tasks/<stage>/reference-torch/` laid over its `reference/` (needs an image with torch).
    ReferenceTorch,
    /// An external program speaking SPEC §8's JSON lines (`exec:<command>`, run with `sh -c`).
    Exec(String),
    /// A model behind an OpenAI-compatible chat-completions API (`openai:<model>`).
    OpenAi(String),
    /// A model behind Anthropic's Messages API (`anthropic:<model>`).
    Anthropic(String),
}

impl std::str::FromStr for AgentSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "null" => return Ok(Self::Null),
            "reference" => return Ok(Self::Reference(None)),
            "reference-torch" => return Ok(Self::ReferenceTorch),
            _ => {}
        }
        let llms: [(&str, &str, LlmSpec); 2] = [
            ("openai:", "gpt-4o", Self::OpenAi),
            ("anthropic:", "claude-sonnet-4-5", Self::Anthropic),
        ];
        for (prefix, example, make) in llms {
            if let Some(model) = s.strip_prefix(prefix) {
                if model.trim().is_empty() {
                    return Err(format!("{prefix} needs a model, e.g. {prefix}{example}"));
                }
                return Ok(make(model.to_string()));
            }
        }
        if let Some(cmd) = s.strip_prefix("exec:") {
            if cmd.trim().is_empty() {
                return Err(
                    "exec: needs a command, e.g. exec:python3 tasks/agents/example_agent.py".into(),
                );
            }
            return Ok(Self::Exec(cmd.to_string()));
        }
        if let Some(list) = s.strip_prefix("reference:") {
            return reference_of(list);
        }
        if let Some(path) = s.strip_prefix("script:") {
            if path.is_empty() {
                return Err("script: needs a path, e.g. script:tasks/agents/smoke.jsonl".into());
            }
            return Ok(Self::Script(path.into()));
        }
        Err(format!(
            "unknown agent {s:?}; available: null, reference, reference:<stage,...>, reference-torch, script:<path to a JSON-lines file>, exec:<command>, openai:<model>, anthropic:<model>"
        ))
    }
}

/// How an LLM agent's spec is made from its model's name.
type LlmSpec = fn(String) -> AgentSpec;

/// `reference:<stage,...>`: the reference playing those stages alone.
fn reference_of(list: &str) -> Result<AgentSpec, String> {
    let stages: Vec<String> = list
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if let Some(bad) = stages
        .iter()
        .find(|x| crate::config::stages::find(x).is_none())
    {
        return Err(format!(
            "reference:{list}: {bad:?} is not a stage (one of: {})",
            crate::config::stages::names()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if stages.is_empty() {
        return Err("reference: needs stages, e.g. reference:crawl,tokenize".into());
    }
    Ok(AgentSpec::Reference(Some(stages)))
}

impl AgentSpec {
    /// Builds the agent; `home` holds the reference solutions and the price table.
    /// An LLM agent of `model` with its provider's backend and the model's price.
    fn llm_agent(
        &self,
        model: &str,
        home: &crate::config::suite::Home,
        llm: &crate::agent::llm::LlmOptions,
    ) -> Result<Box<dyn Agent>, AgentError> {
        let openai = matches!(self, Self::OpenAi(_));
        let spec = if openai { "openai" } else { "anthropic" };
        let prices = crate::agent::llm::load_prices(&home.tasks().join("prices.toml")).map_err(
            |message| AgentError {
                agent: format!("{spec}:{model}"),
                message,
            },
        )?;
        let backend: Box<dyn crate::agent::llm::ChatBackend> = if openai {
            Box::new(crate::agent::llm::OpenAi::from_env(model))
        } else {
            Box::new(crate::agent::llm::Anthropic::from_env(model))
        };
        let price = crate::agent::llm::price_of(&prices, model);
        Ok(Box::new(crate::agent::llm::LlmAgent::new(
            backend,
            llm.clone(),
            price,
        )))
    }

    pub fn build(
        &self,
        home: &crate::config::suite::Home,
        llm: &crate::agent::llm::LlmOptions,
        agent_env: &[String],
    ) -> Result<Box<dyn Agent>, AgentError> {
        Ok(match self {
            Self::OpenAi(model) | Self::Anthropic(model) => self.llm_agent(model, home, llm)?,
            Self::Null => Box::new(NullAgent),
            Self::Script(path) => Box::new(ScriptAgent::load(path)?),
            Self::Exec(cmd) => Box::new(exec::ExecAgent::spawn(cmd, agent_env, &home.cache())?),
            Self::Reference(_) | Self::ReferenceTorch => Box::new(ReferenceAgent::of(self, home)),
        })
    }
}

/// The next call of a scripted stage, or the end of it.
fn replay(calls: &mut VecDeque<RawCall>) -> Turn {
    match calls.pop_front() {
        Some(call) => Turn::Call(call),
        None => Turn::Finished,
    }
}

/// Submits every stage at once: the floor.
pub(crate) struct NullAgent;

#[async_trait]
impl Agent for NullAgent {
    fn spec(&self) -> String {
        "null".into()
    }
    async fn begin_stage(&mut self, _task: &StageTask) -> Result<(), AgentError> {
        Ok(())
    }
    async fn next(&mut self) -> Result<Turn, AgentError> {
        Ok(Turn::Call(RawCall {
            tool: "submit".into(),
            args: Value::Null,
            invalid: None,
        }))
    }
    async fn resume(&mut self, _past: &[PastStage]) -> Result<bool, AgentError> {
        Ok(true)
    }
}

/// Replays a JSON-lines file of `{"tool": ..., "args": {...}}`. Each `submit` closes a block; the n-th
/// block is played in the n-th stage of the run. A stage ended early by a budget skips the rest of its block.
pub struct ScriptAgent {
    spec: String,
    blocks: VecDeque<VecDeque<RawCall>>,
    current: VecDeque<RawCall>,
}

impl ScriptAgent {
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let spec = format!("script:{}", path.display());
        let fail = |message: String| AgentError {
            agent: spec.clone(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, &spec, &path.display().to_string()).map_err(fail)
    }

    /// Parses script text; errors name `shown:line`.
    pub fn parse(text: &str, spec: &str, shown: &str) -> Result<Self, String> {
        let mut blocks = VecDeque::new();
        let mut block = VecDeque::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let call: RawCall = serde_json::from_str(line).map_err(|e| {
                format!(
                    "{shown}:{}: expected {{\"tool\": ..., \"args\": {{...}}}}: {e}",
                    i + 1
                )
            })?;
            let submit = call.tool == "submit";
            block.push_back(call);
            if submit {
                blocks.push_back(std::mem::take(&mut block));
            }
        }
        if !block.is_empty() {
            blocks.push_back(block);
        }
        Ok(Self {
            spec: spec.into(),
            blocks,
            current: VecDeque::new(),
        })
    }
}

#[async_trait]
impl Agent for ScriptAgent {
    fn spec(&self) -> String {
        self.spec.clone()
    }
    async fn begin_stage(&mut self, _task: &StageTask) -> Result<(), AgentError> {
        self.current = self.blocks.pop_front().unwrap_or_default();
        Ok(())
    }
    async fn next(&mut self) -> Result<Turn, AgentError> {
        Ok(replay(&mut self.current))
    }
    /// One block per stage reached, and the calls of the last one already made.
    async fn resume(&mut self, past: &[PastStage]) -> Result<bool, AgentError> {
        for p in past {
            self.begin_stage(&p.task).await?;
        }
        let done = past.last().map_or(0, steps_done);
        self.current.drain(..done.min(self.current.len()));
        Ok(true)
    }
}

/// The URLs an instruction lists, one per markdown list item (`- http://...`), as a reader of it
/// finds them; characters a shell would read are never part of one.
fn seed_urls(instruction: &str) -> Vec<String> {
    instruction
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .filter(|u| {
            u.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/:.-_~%?=&#".contains(c))
        })
        .map(str::to_string)
        .collect()
}

/// The directory of `reference-torch`'s solutions beside each stage's `reference/`.
const TORCH_OVERLAY: &str = "reference-torch";

/// The built-in reference agent: for each stage with a `tasks/<stage>/reference/` directory it writes
/// those files into the workspace under `<stage>/reference/`, runs `sh <stage>/reference/run.sh`
/// through `bash` (with `GPTX_TIME_LIMIT` set to the step's time limit minus a margin), calls
/// `check`, and submits. A stage without a reference solution is submitted at once.
#[derive(Default)]
pub(crate) struct ReferenceAgent {
    tasks: PathBuf,
    current: VecDeque<RawCall>,
    /// Play only these stages' solutions (None: all).
    pub only: Option<Vec<String>>,
    /// A directory beside each stage's `reference/` whose files replace (or join) its own, written
    /// under the same `<stage>/reference/`, so the selfhost recipe runs them alike.
    pub overlay: Option<&'static str>,
}

impl ReferenceAgent {
    pub fn new(tasks: PathBuf) -> Self {
        Self {
            tasks,
            ..Default::default()
        }
    }

    /// The agent `spec` names (`reference`, `reference:<stages>` or `reference-torch`).
    fn of(spec: &AgentSpec, home: &crate::config::suite::Home) -> Self {
        let only = match spec {
            AgentSpec::Reference(only) => only.clone(),
            _ => None,
        };
        let overlay = matches!(spec, AgentSpec::ReferenceTorch).then_some(TORCH_OVERLAY);
        Self {
            only,
            overlay,
            ..Self::new(home.tasks())
        }
    }

    /// A stage's solution files: workspace-relative name → file, the overlay's winning.
    fn solution(&self, stage: &str) -> Result<BTreeMap<String, PathBuf>, String> {
        let dirs = std::iter::once("reference").chain(self.overlay);
        let mut files = BTreeMap::new();
        for dir in dirs.map(|d| self.tasks.join(stage).join(d)) {
            if !dir.is_dir() {
                continue;
            }
            let mut found = Vec::new();
            collect_files(&dir, &dir, &mut found)
                .map_err(|e| format!("reading {}: {e}", dir.display()))?;
            files.extend(found.into_iter().map(|rel| (rel.clone(), dir.join(rel))));
        }
        Ok(files)
    }

    /// The calls for one stage.
    pub fn plan(&self, task: &StageTask) -> Result<VecDeque<RawCall>, String> {
        let mut calls = VecDeque::new();
        let playing = self
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == &task.stage));
        let files = self.solution(&task.stage)?;
        if playing && !files.is_empty() {
            for (rel, path) in &files {
                let bytes =
                    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                let target = format!("{}/reference/{rel}", task.stage);
                let args = match String::from_utf8(bytes) {
                    Ok(text) => serde_json::json!({"path": target, "content": text}),
                    Err(e) => {
                        use base64::Engine;
                        serde_json::json!({"path": target, "encoding": "base64",
                            "content": base64::engine::general_purpose::STANDARD.encode(e.as_bytes())})
                    }
                };
                calls.push_back(RawCall {
                    tool: "write_file".into(),
                    args,
                    invalid: None,
                });
            }
            if files.contains_key("run.sh") {
                let step = task.limits.max_step_seconds;
                let limit = (step - (step * 0.1).max(5.0)).max(1.0).floor();
                // The crawl instruction's URLs (its seed list) are the crawler's arguments.
                let urls: String = if task.stage == "crawl" {
                    seed_urls(&task.instruction)
                        .iter()
                        .map(|u| format!(" '{u}'"))
                        .collect()
                } else {
                    String::new()
                };
                calls.push_back(RawCall {
                    tool: "bash".into(),
                    args: serde_json::json!({
                        "cmd": format!("GPTX_TIME_LIMIT={limit} sh {}/reference/run.sh{urls}", task.stage),
                        "timeout_s": step,
                    }),
                    invalid: None,
                });
            }
            calls.push_back(RawCall {
                tool: "check".into(),
                args: Value::Null,
                invalid: None,
            });
        }
        calls.push_back(RawCall {
            tool: "submit".into(),
            args: Value::Null,
            invalid: None,
        });
        Ok(calls)
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        if e.file_type()?.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(
                p.strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .to_string(),
            );
        }
    }
    Ok(())
}

#[async_trait]
impl Agent for ReferenceAgent {
    fn spec(&self) -> String {
        let only = self.only.as_ref().map(|o| o.join(","));
        let name = only.map_or("reference".into(), |o| format!("reference:{o}"));
        self.overlay.map_or(name, str::to_string)
    }
    async fn begin_stage(&mut self, task: &StageTask) -> Result<(), AgentError> {
        self.current = self.plan(task).map_err(|message| AgentError {
            agent: "reference".into(),
            message,
        })?;
        Ok(())
    }
    async fn next(&mut self) -> Result<Turn, AgentError> {
        Ok(replay(&mut self.current))
    }
    /// The last stage's plan, less the calls already made (a stage's plan depends on it alone).
    async fn resume(&mut self, past: &[PastStage]) -> Result<bool, AgentError> {
        let Some(last) = past.last() else {
            return Ok(true);
        };
        self.begin_stage(&last.task).await?;
        let done = steps_done(last);
        self.current.drain(..done.min(self.current.len()));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reference_reads_the_seed_urls_of_its_instruction_and_nothing_a_shell_would_run() {
        let text = "Start from these:\n\n- http://docs.gptx.test/\n- http://sqlite.gptx.test/\n\
                    - not a url\n- http://x.gptx.test/';rm -rf /'\n  - https://pg.gptx.test/a?b=1\n";
        assert_eq!(
            super::seed_urls(text),
            [
                "http://docs.gptx.test/",
                "http://sqlite.gptx.test/",
                "https://pg.gptx.test/a?b=1"
            ]
        );
    }

    use super::*;

    /// `reference-torch` writes each stage's `reference/` with its `reference-torch/` laid over it,
    /// all under `<stage>/reference/` (so the selfhost recipe runs the torch trainer alike), and
    /// names itself so that a resumed run builds it again.
    #[test]
    fn reference_torch_lays_its_files_over_the_references() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::config::suite::Home {
            root: dir.path().to_path_buf(),
            cache_dir: None,
        };
        let put = |rel: &str, text: &str| {
            let path = home.tasks().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        put("train/reference/run.sh", "ngram");
        put("train/reference/split.py", "split");
        put("train/reference-torch/run.sh", "torch");
        put("train/reference-torch/lm.py", "lm");
        let spec: AgentSpec = "reference-torch".parse().unwrap();
        assert_eq!(spec, AgentSpec::ReferenceTorch);
        let agent = ReferenceAgent::of(&spec, &home);
        assert_eq!(agent.spec(), "reference-torch");
        let task = StageTask {
            stage: "train".into(),
            index: 2,
            instruction: String::new(),
            tools: vec![],
            limits: Budgets {
                max_steps: 10,
                max_sandbox_seconds: 600.0,
                max_wall_seconds: 900.0,
                max_step_seconds: 300.0,
                default_step_seconds: 60.0,
                max_tokens: None,
                max_cost_usd: None,
            },
        };
        let written: Vec<(String, String)> = agent
            .plan(&task)
            .unwrap()
            .into_iter()
            .filter(|c| c.tool == "write_file")
            .map(|c| {
                (
                    c.args["path"].as_str().unwrap().into(),
                    c.args["content"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want = [("lm.py", "lm"), ("run.sh", "torch"), ("split.py", "split")]
            .map(|(p, t)| (format!("train/reference/{p}"), t.to_string()));
        assert_eq!(written, want);
        let plain = ReferenceAgent::of(&"reference".parse().unwrap(), &home);
        assert_eq!(plain.spec(), "reference");
        assert_eq!(
            plain.solution("train").unwrap()["run.sh"],
            home.tasks().join("train/reference/run.sh")
        );
    }

    #[test]
    fn specs() {
        assert_eq!("null".parse::<AgentSpec>().unwrap(), AgentSpec::Null);
        assert_eq!(
            "script:a.jsonl".parse::<AgentSpec>().unwrap(),
            AgentSpec::Script("a.jsonl".into())
        );
        assert!("script:".parse::<AgentSpec>().is_err());
        assert_eq!(
            "reference:crawl,tokenize".parse::<AgentSpec>().unwrap(),
            AgentSpec::Reference(Some(vec!["crawl".into(), "tokenize".into()]))
        );
        assert!("reference:crawl,fly"
            .parse::<AgentSpec>()
            .unwrap_err()
            .contains("\"fly\" is not a stage"));
        assert!("gpt"
            .parse::<AgentSpec>()
            .unwrap_err()
            .contains("available"));
    }

    #[test]
    fn script_blocks_split_at_submit_and_errors_name_the_line() {
        let s = ScriptAgent::parse(
            "{\"tool\":\"bash\",\"args\":{\"cmd\":\"ls\"}}\n\n{\"tool\":\"submit\"}\n{\"tool\":\"check\"}\n",
            "script:x",
            "x",
        )
        .unwrap();
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(s.blocks[0].len(), 2);
        let e = ScriptAgent::parse("{\"tool\":\"bash\"}\nnot json\n", "script:x", "x.jsonl")
            .err()
            .unwrap();
        assert!(e.starts_with("x.jsonl:2:"), "{e}");
    }
}
