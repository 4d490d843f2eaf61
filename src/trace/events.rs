//! The typed events of a run: the only thing the runner tells reporters, and the lines of `events.jsonl`.

use serde::{Deserialize, Serialize};

use crate::config::suite::Budgets;

/// Why a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The agent called `submit`.
    Submit,
    /// The agent had nothing more to do (a script ran out, an external agent exited).
    AgentFinished,
    MaxSteps,
    MaxSandboxSeconds,
    MaxWallSeconds,
    /// An LLM agent's tokens in this stage reached `max_tokens`.
    MaxTokens,
    /// An LLM agent's cost in this stage reached `max_cost_usd`.
    MaxCostUsd,
    /// The agent failed in a way the harness could not recover from within the stage.
    AgentError,
    Interrupted,
}

impl EndReason {
    /// The budget that ended the stage, if one did.
    pub fn budget(self) -> Option<&'static str> {
        match self {
            Self::MaxSteps => Some("max_steps"),
            Self::MaxSandboxSeconds => Some("max_sandbox_seconds"),
            Self::MaxWallSeconds => Some("max_wall_seconds"),
            Self::MaxTokens => Some("max_tokens"),
            Self::MaxCostUsd => Some("max_cost_usd"),
            _ => None,
        }
    }
}

/// Sandbox resources one step used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepUsage {
    pub cpu_seconds: f64,
    pub max_rss_kb: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_peak_bytes: Option<u64>,
    pub timed_out: bool,
    pub oom_killed: bool,
}

/// Where a full output stream is kept, when it did not fit inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub stream: String,
    /// File name under `outputs/`.
    pub sha256: String,
    /// Bytes kept in that file.
    pub bytes_kept: u64,
    /// Bytes the command produced on that stream.
    pub bytes_total: u64,
}

/// One tool call and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub stage: String,
    /// 1-based over the whole run.
    pub step: u64,
    /// 1-based within the stage.
    pub stage_step: u64,
    pub tool: String,
    pub args: serde_json::Value,
    pub ok: bool,
    /// What the agent was given: the tool's output, or `{code, message}` when `ok` is false.
    pub result: serde_json::Value,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_ms: f64,
    /// Time that counts against `max_sandbox_seconds`.
    pub sandbox_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage: Option<StepUsage>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub outputs: Vec<OutputRef>,
    /// The workspace commit this step made, if it changed the workspace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub commit: Option<String>,
}

/// One entry of a run's integrity ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityNote {
    /// The stage it happened in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `processes_killed`, `file_refused`, `supervisor_line`, ...
    pub kind: String,
    pub count: u64,
    pub detail: String,
}

/// How a stage was graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageScore {
    /// scored, failed, rejected, ungraded, error.
    pub status: String,
    pub passed: bool,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The normalised score n (`stages::scale`): a pass credit plus RE-Bench's form on the metric.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub normalized: Option<f64>,
    /// Why the stage did not pass, in words that give nothing hidden away (no hidden bpb, no output
    /// of a program run on hidden data): what the agent is told at the end of the run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_reason: Option<String>,
}

impl StageScore {
    /// A stage that could not be graded on its merits: not passed, no metrics, score 0, the reason.
    pub fn zero(status: &str, reason: impl Into<String>) -> Self {
        Self {
            status: status.into(),
            passed: false,
            metrics: serde_json::Map::new(),
            reason: Some(reason.into()),
            normalized: Some(0.0),
            public_reason: None,
        }
    }

    /// A stage that failed before anything hidden was used (an artifact missing or malformed): the
    /// reason is the agent's to know, so it is also the public one.
    pub fn precondition(status: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            public_reason: Some(reason.clone()),
            ..Self::zero(status, reason)
        }
    }

    /// The same score with this public reason.
    pub fn with_public(mut self, reason: impl Into<String>) -> Self {
        self.public_reason = Some(reason.into());
        self
    }

    /// What the agent is told of this stage: None when it passed; otherwise the public reason, or
    /// only the status when the scorer gave none that is safe to show.
    pub fn told(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        Some(
            self.public_reason
                .clone()
                .unwrap_or_else(|| format!("not passed ({})", self.status)),
        )
    }

    /// The same score with these metrics (what was measured before the stage failed).
    pub fn with_metrics(mut self, metrics: serde_json::Map<String, serde_json::Value>) -> Self {
        self.metrics = metrics;
        self
    }
}

/// `x` rounded to `digits` decimals, for metrics meant to be read.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// One request of an LLM agent to its model (SPEC §6 `model_call`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    /// `openai:<model>`, `anthropic:<model>`.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: f64,
    /// From the price table; None for a model it does not list.
    pub cost_usd: Option<f64>,
    /// 1 for the first try of a request, 2 for its first retry, ...
    pub attempt: u32,
    /// Why the request failed (it was retried, or the agent gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the model answered (its text and tool calls), from which a resumed run rebuilds the
    /// conversation. None for a failed request, and in traces written before replies were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ModelReply>,
}

/// A model's answer as the trace keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub calls: Vec<ModelToolUse>,
}

/// One tool call of a [`ModelReply`]: the id the model gave it, the tool, and the arguments as the
/// server sent them (a JSON string or an object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelToolUse {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// What a resumed run took up again (the `run_resumed` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// Why the run had stopped (run.json's reason, or its status).
    pub reason: String,
    /// The last step that completed before it stopped (0: none); steps go on from the next.
    pub after_step: u64,
    /// The stage the run goes on with; None when every stage it reached was graded and it goes on
    /// with the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The workspace as the run goes on: `kept` (the one on disk matched the last commit) or
    /// `restored` (written from `workspace.git` at `commit`).
    pub workspace: String,
    /// The last commit of a completed step (or rescue), the workspace's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Where a workspace on disk that differed from the commit was kept (relative to the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aside: Option<String>,
    /// Files the commit lists too large to keep that could not be found again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// `rebuilt` (the agent's state was rebuilt from the trace) or `fresh` (an external agent,
    /// started again with the stage's task and a note).
    pub agent: String,
    /// A step the harness failed as the run stopped (the engine went away under it): not counted
    /// as the agent's, its call is made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redo: Option<u64>,
    /// What the stage gone on with had used of its budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<BudgetsUsed>,
}

/// A stage's budgets used so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetsUsed {
    pub steps: u64,
    pub sandbox_seconds: f64,
    pub wall_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Everything that happens in a run, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        suite: String,
        agent: String,
        seed: u64,
        gptx_version: String,
        #[serde(default)]
        world_hash: Option<String>,
        image: String,
        stages: Vec<String>,
    },
    StageStarted {
        stage: String,
        index: usize,
        budgets: Budgets,
        network: Option<String>,
        instruction_sha256: String,
    },
    StepStarted {
        stage: String,
        step: u64,
        tool: String,
        args: serde_json::Value,
    },
    Step(StepRecord),
    StageEnded {
        stage: String,
        ended_by: EndReason,
        steps: u64,
        sandbox_seconds: f64,
        wall_seconds: f64,
    },
    StageScored {
        stage: String,
        score: StageScore,
    },
    Warning {
        message: String,
    },
    ModelCall {
        stage: String,
        #[serde(flatten)]
        call: ModelCall,
    },
    /// What an external agent wrote to its stderr (collected between its messages), or the verdict
    /// an LLM agent's conversation ended with.
    AgentLog {
        stage: String,
        text: String,
    },
    /// The harness handed the agent the reference artifact of a failed stage (`--rescue`).
    Rescue {
        stage: String,
        ok: bool,
        /// Workspace files written.
        files: Vec<String>,
        detail: String,
        seconds: f64,
        #[serde(default)]
        commit: Option<String>,
    },
    /// Something the harness refused, cleaned up or caught on the agent's side: an entry of the run's
    /// integrity ledger (processes killed at a stage's end, files refused or changed between
    /// selection and copy, forged or malformed supervisor lines).
    Integrity(IntegrityNote),
    /// An interrupted run goes on (`gptx resume`): what it took up again.
    RunResumed(Resumed),
    RunFinished {
        status: crate::trace::rundir::RunStatus,
        level: String,
        bootstrap_index: f64,
        wall_seconds: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assisted_level: Option<String>,
    },
}

impl Event {
    /// The `type` tag as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run_started",
            Self::StageStarted { .. } => "stage_started",
            Self::StepStarted { .. } => "step_started",
            Self::Step(_) => "step",
            Self::StageEnded { .. } => "stage_ended",
            Self::StageScored { .. } => "stage_scored",
            Self::Warning { .. } => "warning",
            Self::Rescue { .. } => "rescue",
            Self::AgentLog { .. } => "agent_log",
            Self::ModelCall { .. } => "model_call",
            Self::Integrity(_) => "integrity",
            Self::RunResumed(_) => "run_resumed",
            Self::RunFinished { .. } => "run_finished",
        }
    }
}
