//! Levels (with rescue's assisted levels) and the Bootstrap Index.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::stages::STAGES;
use crate::trace::StageScore;

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

/// What an index above 100 means, said wherever the index is shown.
pub const ABOVE_100: &str = "0 is the null agent and 100 the reference agent; above 100 beats the reference (some stage scored above 1.00).";

/// Whether an index, as shown (one decimal), is above 100: the agent beat the reference.
pub fn above_reference(index: f64) -> bool {
    index >= 100.05
}

/// `100 · Σ w_s · n_s` (SPEC §7), with n_s clipped below at 0 and open above; stages not run
/// count 0. 0 is the null agent, 100 the reference agent, above 100 an agent that beats the
/// reference (a stage's n above 1), so agents at the top stay apart.
pub fn bootstrap_index(scores: &BTreeMap<String, StageScore>) -> f64 {
    let sum: f64 = STAGES
        .iter()
        .map(|d| {
            let n = scores.get(d.name).and_then(|s| s.normalized).unwrap_or(0.0);
            d.weight * if n.is_finite() { n.max(0.0) } else { 0.0 }
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
    fn index_weights_clips_below_and_is_open_above() {
        let mut m = BTreeMap::new();
        m.insert("train".into(), s(true, 2.0));
        m.insert("crawl".into(), s(true, -1.0));
        m.insert("eval".into(), s(true, 0.5));
        m.insert("tokenize".into(), s(true, f64::NAN));
        assert!((bootstrap_index(&m) - 85.0).abs() < 1e-9);
    }

    #[test]
    fn beating_the_reference_on_train_scores_above_100_and_above_a_tie() {
        let tie: BTreeMap<String, StageScore> = crate::config::stages::names()
            .map(|n| (n.to_string(), s(true, 1.0)))
            .collect();
        let mut better = tie.clone();
        better.insert("train".into(), s(true, 1.05));
        assert!((bootstrap_index(&tie) - 100.0).abs() < 1e-9);
        assert!((bootstrap_index(&better) - 102.0).abs() < 1e-9);
        assert_eq!(level(&better), level(&tie));
    }
}
