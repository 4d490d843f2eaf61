//! The scorer seam: `Scorer` (a stage's `check` tool and its hidden grading), what it may look at, and `Ungraded`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::agent::tools::ToolError;
use crate::config::suite::Stage;
use crate::sandbox::Sandbox;
use crate::trace::StageScore;

/// What a scorer may look at.
pub struct ScoreContext<'a> {
    pub stage: &'a Stage,
    /// The agent's sandbox (its workspace holds the artifacts).
    pub sandbox: &'a dyn Sandbox,
    pub run_dir: &'a crate::trace::rundir::RunDir,
    /// The suite's gates (`[gates]`).
    pub gates: &'a BTreeMap<String, f64>,
    /// The reference agent's recorded results on this suite's world (`[reference]`).
    pub reference: &'a BTreeMap<String, f64>,
    /// Where the agent's programs run on hidden data (None: this run has no scoring sandbox).
    pub programs: Option<&'a dyn crate::sandbox::programs::Programs>,
    pub scoring: &'a crate::config::suite::ScoringLimits,
    /// Where the selfhost stage rebuilds from the recipe (None: this run cannot rebuild).
    pub rebuilder: Option<&'a dyn crate::stages::selfhost::Rebuilder>,
    /// The selfhost rebuild's sandbox time: the sum of the earlier stages' budgets.
    pub rebuild_seconds: f64,
    /// The size of the rebuild's workspace filesystem (the suite's `[sandbox] disk_mb`).
    pub disk_mb: u64,
    /// When grading: the private copy of the workspace made after the stage's processes were
    /// killed, which the scorer reads instead of the live one (None in `check`).
    pub graded: Option<&'a crate::sandbox::WorkspaceRoot>,
}

impl ScoreContext<'_> {
    /// The workspace a scorer reads: the graded copy when grading, else the agent's own.
    pub fn workspace(&self) -> &crate::sandbox::WorkspaceRoot {
        self.graded.unwrap_or_else(|| self.sandbox.workspace())
    }
}

/// What the agent asked of its `check` call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CheckRequest {
    /// selfhost: run the recipe as the grade will (`{"rebuild": true}`).
    pub rebuild: bool,
    /// The stage's command time left, which a long check may use and counts against.
    pub remaining_sandbox_seconds: f64,
}

/// A `check` answer, and the sandbox time it took that counts against the stage's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub output: Value,
    pub sandbox_seconds: f64,
}

impl From<Value> for Checked {
    fn from(output: Value) -> Self {
        Self {
            output,
            sandbox_seconds: 0.0,
        }
    }
}

/// Grades one stage. `check` answers the agent's `check` tool on visible data; `score` grades on hidden data.
#[async_trait]
pub trait Scorer: Send + Sync {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError>;
    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore;
    /// `check` with the agent's arguments: the plain check, unless the stage offers more (selfhost's
    /// trial rebuild).
    async fn check_with(
        &self,
        ctx: &ScoreContext<'_>,
        req: &CheckRequest,
    ) -> Result<Checked, ToolError> {
        if req.rebuild {
            return Err(ToolError::bad_request(format!(
                "check: `rebuild` is for the selfhost stage only (this is {})",
                ctx.stage.name
            )));
        }
        self.check(ctx).await.map(Checked::from)
    }
}

/// The scorer of a stage that cannot be graded in this suite (every stage is graded on the world's
/// hidden data, and the suite has no world): score 0, never passes, and says so.
pub(crate) struct Ungraded {
    pub stage: String,
}

#[async_trait]
impl Scorer for Ungraded {
    async fn check(&self, _ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        Ok(json!({
            "ok": false,
            "errors": [],
            "message": format!("stage {} is graded on a world's hidden data and this suite has no world; nothing was checked", self.stage),
        }))
    }

    async fn score(&self, _ctx: &ScoreContext<'_>) -> StageScore {
        StageScore::precondition(
            "ungraded",
            format!(
                "stage {} is graded on a world's hidden data and this suite has no world",
                self.stage
            ),
        )
    }
}
