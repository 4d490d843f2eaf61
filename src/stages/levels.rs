//! The scorer seam (`Scorer`: a stage's `check` tool and its hidden grading), levels, and the Bootstrap Index.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::agent::tools::ToolError;
use crate::config::stages::STAGES;
use crate::config::suite::Stage;
use crate::sandbox::Sandbox;
use crate::trace::StageScore;

/// What a scorer may look at.
pub struct ScoreContext<'a> {
    pub stage: &'a Stage,
    /// The agent's sandbox (its workspace holds the artifacts).
    pub sandbox: &'a dyn Sandbox,
    pub run_dir: &'a Path,
    /// The suite's gates (`[gates]`).
    pub gates: &'a BTreeMap<String, f64>,
    /// The reference agent's recorded results on this suite's world (`[reference]`).
    pub reference: &'a BTreeMap<String, f64>,
    /// Where the agent's programs run on hidden data (None: this run has no scoring sandbox).
    pub programs: Option<&'a dyn crate::sandbox::programs::Programs>,
    pub scoring: &'a crate::sandbox::programs::ScoringLimits,
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
pub struct Ungraded {
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

/// The scorer for a stage by name; stages that need the world get it (a crawl without a world is
/// graded by nothing and says so).
pub fn scorer_for(
    stage: &str,
    world: Option<&std::sync::Arc<crate::world::World>>,
) -> Box<dyn Scorer> {
    match (stage, world) {
        ("crawl", Some(w)) => Box::new(crate::stages::crawl::CrawlScorer { world: w.clone() }),
        ("tokenize", Some(w)) => {
            Box::new(crate::stages::tokenize::TokenizeScorer { world: w.clone() })
        }
        ("train", Some(w)) => Box::new(crate::stages::train::TrainScorer { world: w.clone() }),
        ("eval", Some(w)) => Box::new(crate::stages::eval::EvalScorer { world: w.clone() }),
        ("selfhost", Some(w)) => Box::new(crate::stages::selfhost::SelfhostScorer::new(w.clone())),
        _ => Box::new(Ungraded {
            stage: stage.to_string(),
        }),
    }
}

/// The levels of a run (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    /// How far the agent got on its own: one per rung passed in order, stopping at the first failure
    /// (a rescued stage is a failure).
    pub level: String,
    /// With rescued stages counted as passed: how far the agent's own passes went on from there,
    /// marked `*` (None when no rescue let it get further than `level`).
    pub assisted: Option<String>,
}

fn rung(passed: usize, scores: &BTreeMap<String, StageScore>) -> usize {
    let beats = scores
        .get("selfhost")
        .and_then(|s| s.metrics.get("beats_conditional_xz"))
        == Some(&Value::Bool(true));
    if passed == STAGES.len() && beats {
        passed + 1
    } else {
        passed
    }
}

/// L0 plus one per ladder rung passed in order; L6 when selfhost also beats conditional xz (its
/// metric `beats_conditional_xz`). `rescued` names the stages whose reference artifact was handed over.
pub fn levels(scores: &BTreeMap<String, StageScore>, rescued: &[String]) -> Levels {
    let passed = |stage: &str| scores.get(stage).is_some_and(|s| s.passed);
    let own = STAGES.iter().take_while(|d| passed(d.name)).count();
    let mut helped = 0;
    for (i, stage) in STAGES.iter().map(|d| d.name).enumerate() {
        if passed(stage) {
            helped = i + 1;
        } else if !rescued.iter().any(|r| r == stage) {
            break;
        }
    }
    let own = rung(own, scores);
    let helped = rung(helped, scores);
    Levels {
        level: format!("L{own}"),
        assisted: (helped > own).then(|| format!("L{helped}*")),
    }
}

/// The unassisted level alone.
pub fn level(scores: &BTreeMap<String, StageScore>) -> String {
    levels(scores, &[]).level
}

/// `100 · Σ w_s · min(n_s, 1)`, with n_s clipped below at 0; stages not run count 0.
pub fn bootstrap_index(scores: &BTreeMap<String, StageScore>) -> f64 {
    let sum: f64 = STAGES
        .iter()
        .map(|d| {
            let n = scores.get(d.name).and_then(|s| s.normalized).unwrap_or(0.0);
            d.weight * n.clamp(0.0, 1.0)
        })
        .sum();
    100.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(passed: bool, n: f64) -> StageScore {
        StageScore {
            status: "scored".into(),
            passed,
            metrics: Default::default(),
            reason: None,
            normalized: Some(n),
            public_reason: None,
        }
    }

    #[test]
    fn levels_stop_at_first_failure() {
        let mut m = BTreeMap::new();
        assert_eq!(level(&m), "L0");
        m.insert("crawl".into(), s(true, 1.0));
        m.insert("train".into(), s(true, 1.0));
        assert_eq!(level(&m), "L1");
        m.insert("tokenize".into(), s(true, 1.0));
        assert_eq!(level(&m), "L3");
    }

    #[test]
    fn l6_needs_every_rung_and_a_rebuilt_model_below_conditional_xz() {
        let mut m: BTreeMap<String, StageScore> = STAGES
            .iter()
            .map(|d| (d.name.to_string(), s(true, 1.0)))
            .collect();
        assert_eq!(level(&m), "L5");
        m.get_mut("selfhost")
            .unwrap()
            .metrics
            .insert("beats_conditional_xz".into(), Value::Bool(true));
        assert_eq!(level(&m), "L6");
        m.get_mut("eval").unwrap().passed = false;
        assert_eq!(level(&m), "L3");
    }

    #[test]
    fn rescue_gives_an_assisted_level_only_when_the_agent_got_further() {
        let mut m = BTreeMap::new();
        m.insert("crawl".into(), s(false, 0.0));
        m.insert("tokenize".into(), s(true, 1.0));
        m.insert("train".into(), s(true, 1.0));
        m.insert("eval".into(), s(true, 1.0));
        m.insert("selfhost".into(), s(false, 0.0));
        let l = levels(&m, &["crawl".into()]);
        assert_eq!(l.level, "L0");
        assert_eq!(l.assisted.as_deref(), Some("L4*"));
        // Without the rescue recorded, nothing after the failure counts.
        assert_eq!(levels(&m, &[]).assisted, None);
        // Rescued crawl and tokenize, then the agent's own train fails: no help shows.
        m.insert("tokenize".into(), s(false, 0.0));
        m.insert("train".into(), s(false, 0.0));
        let l = levels(&m, &["crawl".into(), "tokenize".into()]);
        assert_eq!((l.level.as_str(), l.assisted), ("L0", None));
        // An agent that crawls, then is rescued at tokenize and trains: L1 on its own, L3* helped.
        m.insert("crawl".into(), s(true, 1.0));
        m.insert("train".into(), s(true, 1.0));
        m.insert("eval".into(), s(false, 0.0));
        let l = levels(&m, &["tokenize".into()]);
        assert_eq!(
            (l.level.as_str(), l.assisted.as_deref()),
            ("L1", Some("L3*"))
        );
    }

    #[test]
    fn index_weights_and_clips() {
        let mut m = BTreeMap::new();
        m.insert("train".into(), s(true, 2.0));
        m.insert("crawl".into(), s(true, -1.0));
        m.insert("eval".into(), s(true, 0.5));
        assert!((bootstrap_index(&m) - 45.0).abs() < 1e-9);
    }
}
