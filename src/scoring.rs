//! The scorer seam (`Scorer`: a stage's `check` tool and its hidden grading), levels, and the Bootstrap Index.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::sandbox::Sandbox;
use crate::suite::Stage;
use crate::tools::ToolError;
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
    pub programs: Option<&'a dyn crate::programs::Programs>,
    pub scoring: &'a crate::programs::ScoringLimits,
}

/// Grades one stage. `check` answers the agent's `check` tool on visible data; `score` grades on hidden data.
#[async_trait]
pub trait Scorer: Send + Sync {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError>;
    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore;
}

/// The scorer of a stage whose grading does not exist yet: score 0, never passes, and says so.
pub struct NotImplemented {
    pub stage: String,
}

#[async_trait]
impl Scorer for NotImplemented {
    async fn check(&self, _ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        Ok(json!({
            "ok": false,
            "errors": [],
            "message": format!("stage {} has no validator in this version of gptx; nothing was checked", self.stage),
        }))
    }

    async fn score(&self, _ctx: &ScoreContext<'_>) -> StageScore {
        StageScore {
            status: "not_implemented".into(),
            passed: false,
            metrics: serde_json::Map::new(),
            reason: Some(format!(
                "stage {} has no scorer in this version of gptx",
                self.stage
            )),
            normalized: Some(0.0),
        }
    }
}

/// The scorer for a stage by name; stages that need the world get it (a crawl without a world is
/// graded by nothing and says so).
pub fn scorer_for(
    stage: &str,
    world: Option<&std::sync::Arc<crate::world::World>>,
) -> Box<dyn Scorer> {
    match (stage, world) {
        ("crawl", Some(w)) => Box::new(crate::crawl::CrawlScorer { world: w.clone() }),
        ("tokenize", Some(w)) => Box::new(crate::tokenize::TokenizeScorer { world: w.clone() }),
        ("train", Some(w)) => Box::new(crate::train::TrainScorer { world: w.clone() }),
        _ => Box::new(NotImplemented {
            stage: stage.to_string(),
        }),
    }
}

/// Bootstrap Index weights (SPEC §7).
pub const WEIGHTS: [(&str, f64); 5] = [
    ("crawl", 0.15),
    ("tokenize", 0.15),
    ("train", 0.40),
    ("eval", 0.10),
    ("selfhost", 0.20),
];

/// The level reached: L0 plus one per ladder rung passed in order; L6 when selfhost also beats
/// conditional xz (its metric `beats_conditional_xz`).
pub fn level(scores: &BTreeMap<String, StageScore>) -> String {
    let mut level = 0;
    for (stage, _) in WEIGHTS {
        match scores.get(stage) {
            Some(s) if s.passed => level += 1,
            _ => break,
        }
    }
    if level == 5
        && scores["selfhost"].metrics.get("beats_conditional_xz") == Some(&Value::Bool(true))
    {
        level = 6;
    }
    format!("L{level}")
}

/// `100 · Σ w_s · min(n_s, 1)`, with n_s clipped below at 0; stages not run count 0.
pub fn bootstrap_index(scores: &BTreeMap<String, StageScore>) -> f64 {
    let sum: f64 = WEIGHTS
        .iter()
        .map(|(stage, w)| {
            let n = scores.get(*stage).and_then(|s| s.normalized).unwrap_or(0.0);
            w * n.clamp(0.0, 1.0)
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
    fn index_weights_and_clips() {
        let mut m = BTreeMap::new();
        m.insert("train".into(), s(true, 2.0));
        m.insert("crawl".into(), s(true, -1.0));
        m.insert("eval".into(), s(true, 0.5));
        assert!((bootstrap_index(&m) - 45.0).abs() < 1e-9);
    }
}
