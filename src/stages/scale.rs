//! The normalised score of a stage (SPEC §7): credit for passing its gate, plus RE-Bench's form on its metric.
//!
//! `n = PASS_CREDIT · [gate passed] + (1 − PASS_CREDIT) · q`, where `q` is RE-Bench's
//! `(floor − m) / (floor − m_ref)` on the stage's metric, clipped below at 0 and open above. The
//! null agent passes nothing and has q = 0 everywhere (n = 0); the reference passes everything and
//! has q = 1 (n = 1); a passed stage never scores below `PASS_CREDIT`.
//!
//! The metrics and floors are chosen so that, above the reference, a better model moves the index
//! more than a better crawl: the model's metric is log bits per byte with the floor at the train
//! gate (per-document `xz -9e` on T), so each time the bpb is multiplied by 0.8 the score rises by
//! the same amount, and the crawl's F1 cannot pass 1.

use crate::config::stages::STAGES;

/// The version of these formulas, recorded in every `score.json` (`RunScore::scoring`): the
/// leaderboard ranks only runs scored by the current one. 0 is a run from before versions were
/// recorded (n = RE-Bench's form alone, from the null floor: train on 8 − bpb); 1 is this file's.
pub const SCORING: u32 = 1;

/// What passing a stage's gate is worth before its metric counts: half of the reference's score.
pub const PASS_CREDIT: f64 = 0.5;

/// `PASS_CREDIT · [passed] + (1 − PASS_CREDIT) · q`, q clipped below at 0 (no q: no reference
/// value to measure against, or a metric that is not finite: q counts 0).
pub fn score(passed: bool, quality: Option<f64>) -> f64 {
    let q = quality.filter(|q| q.is_finite()).unwrap_or(0.0).max(0.0);
    let credit = if passed { PASS_CREDIT } else { 0.0 };
    credit + (1.0 - PASS_CREDIT) * q
}

/// RE-Bench's `(floor − m) / (floor − reference)` for a metric where lower is better; None unless
/// the reference is measurably better than the floor (no division by nearly nothing).
fn rebench(m: f64, floor: f64, reference: f64) -> Option<f64> {
    (floor - reference > 1e-9).then(|| (floor - m) / (floor - reference))
}

/// The crawl's q on 1 − F1 with the floor at 1 (nothing collected): `F1 / F1_ref`.
pub fn crawl(f1: f64, reference_f1: Option<f64>) -> Option<f64> {
    rebench(1.0 - f1, 1.0, 1.0 - reference_f1?)
}

/// The tokenizer's q on bytes per token (higher is better) with the floor at 1 (a byte a token):
/// `(bpt − 1) / (bpt_ref − 1)`.
pub fn tokenize(bytes_per_token: f64, reference: Option<f64>) -> Option<f64> {
    rebench(-bytes_per_token, -1.0, -reference?)
}

/// A model's q (train, and selfhost's rebuilt model) on log bits per byte with the floor at the
/// train gate's bound `floor` (per-document `xz -9e` on T): `ln(floor / bpb) / ln(floor / bpb_ref)`.
/// A model at the gate has q = 0, the reference's q = 1, and each time the bpb is multiplied by
/// 0.8, q rises by the same amount.
pub fn model(bpb: f64, floor: f64, reference: Option<f64>) -> Option<f64> {
    let r = reference?;
    if !(bpb > 0.0 && floor > 0.0 && r > 0.0) {
        return None;
    }
    rebench(bpb.ln(), floor.ln(), r.ln())
}

/// The eval stage's q on the claim error plus the generalisation gap, with the floor at 1 (off by
/// 100% in all): `(1 − e) / (1 − e_ref)`.
pub fn eval(error: f64, reference: Option<f64>) -> Option<f64> {
    rebench(error, 1.0, reference?.max(0.0))
}

/// The stage's q in words, as its instruction states it; `x` names the train gate's bound.
pub fn quality_text(stage: &str, x: &str) -> Option<String> {
    Some(match stage {
        "crawl" => "q = F1 / F1_ref, F1 being the harmonic mean of recall and precision (RE-Bench's form on 1 − F1, floor 1: an empty corpus)".into(),
        "tokenize" => "q = (b − 1) / (b_ref − 1) on bytes per token b (floor 1: a byte a token), and q = 0 unless every round trip is exact and every id is below `vocab_size`".into(),
        "train" => format!("q = ln(X / bpb) / ln(X / bpb_ref), where X is the gate's bound ({x}): RE-Bench's form on log bits per byte, so q is 0 at the gate and rises by the same amount each time the bpb is multiplied by 0.8"),
        "eval" => "q = (1 − e) / (1 − e_ref), where e is |claimed − measured| / measured plus |validation − hidden| / hidden (floor 1: off by 100% in all)".into(),
        "selfhost" => format!("q = ln(X / bpb) / ln(X / bpb_ref) on the rebuilt model's verified bits per byte, X being the train gate's bound ({x}); a recipe that fails (a non-zero exit, its time budget) scores n = 0"),
        _ => return None,
    })
}

/// How a stage is scored and how the runs are ranked, for the stage's instruction; `train_ratio`
/// is the suite's train gate (`train_xz_ratio`).
pub fn instruction_text(stage: &str, train_ratio: f64) -> Option<String> {
    let def = STAGES.iter().find(|d| d.name == stage)?;
    Some(format!(
        "Your score on this stage is n = {p} if you pass its gate, plus {p} × q, where {q}, and _ref is the reference agent's value on this world (without reference values, q = 0); q is clipped below at 0 and open above. The Bootstrap Index is 100 × the sum of weight × n over the stages ({w}; this one {this}): 0 is the null agent, 100 the reference. Agents are ranked by the mean level of their runs (the gates passed in order), then by their mean index; an agent's best run is its highest level, then index.",
        p = PASS_CREDIT,
        q = quality_text(stage, &gate_bound(train_ratio))?,
        w = weights(),
        this = def.weight,
    ))
}

/// The train gate's bound in words: `per-document `xz -9e` on the hidden documents`, times the
/// suite's ratio when it is not 1.
fn gate_bound(ratio: f64) -> String {
    let xz = "per-document `xz -9e` on the hidden documents";
    if ratio == 1.0 {
        xz.into()
    } else {
        format!("{ratio} × {xz}")
    }
}

/// The formula in a sentence, for the leaderboard's header.
pub fn formula() -> String {
    format!(
        "Each stage scores n = {p} × [gate passed] + {p} × q, with q RE-Bench's (floor − m) / (floor − reference) on its metric, clipped at 0 and open above: crawl F1 / F1_ref; tokenize (bytes per token − 1) / (reference − 1); train and selfhost ln(X / bpb) / ln(X / reference bpb), X the train gate's bound (per-document xz -9e on T, times the suite's train_xz_ratio); eval (1 − error) / (1 − reference error). Bootstrap Index = 100 × Σ weight × n ({}).",
        weights(),
        p = PASS_CREDIT
    )
}

/// `crawl 0.15, tokenize 0.15, …`, from the stage table.
fn weights() -> String {
    STAGES
        .iter()
        .map(|d| format!("{} {}", d.name, d.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frontier world's reference values and baselines (`tasks/worlds/frontier.reference.json`,
    /// `reports/frontier/`): F1 0.75136, 4.1915 bytes per token, 1.41621 bpb, eval error 0.06794;
    /// per-document xz -9e 3.143.
    const F1: f64 = 0.75136;
    const BPT: f64 = 4.1915;
    const BPB: f64 = 1.41621;
    const ERR: f64 = 0.06794;
    const XZ: f64 = 3.143;

    #[test]
    fn the_frontier_values_here_are_the_measured_ones() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tasks/worlds/frontier.reference.json"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let values = &v["values"];
        for (key, here) in [("crawl_f1", F1), ("tokenize_bytes_per_token", BPT)] {
            assert_eq!(values[key].as_f64(), Some(here), "{key}");
        }
        for (key, here) in [("train_bpb", BPB), ("eval_error", ERR)] {
            assert_eq!(values[key].as_f64(), Some(here), "{key}");
        }
    }

    fn weight(stage: &str) -> f64 {
        STAGES.iter().find(|d| d.name == stage).unwrap().weight
    }

    /// Index points a stage's n adds over the reference's.
    fn points_over_reference(stage: &str, n: f64) -> f64 {
        100.0 * weight(stage) * (n - 1.0)
    }

    #[test]
    fn the_reference_scores_one_and_the_null_agent_zero() {
        assert!((score(true, crawl(F1, Some(F1))) - 1.0).abs() < 1e-12);
        assert!((score(true, tokenize(BPT, Some(BPT))) - 1.0).abs() < 1e-12);
        assert!((score(true, model(BPB, XZ, Some(BPB))) - 1.0).abs() < 1e-12);
        assert!((score(true, eval(ERR, Some(ERR))) - 1.0).abs() < 1e-12);
        // The null agent: an empty corpus, no tokenizer, no model, no report.
        assert_eq!(score(false, crawl(0.0, Some(F1))), 0.0);
        assert_eq!(score(false, Some(0.0)), 0.0);
        assert_eq!(score(false, eval(1.0, Some(ERR))), 0.0);
    }

    #[test]
    fn on_frontier_a_model_twenty_percent_better_adds_more_than_a_perfect_crawl() {
        let better_model = score(true, model(0.8 * BPB, XZ, Some(BPB)));
        let perfect_crawl = score(true, crawl(1.0, Some(F1)));
        let model_points = points_over_reference("train", better_model);
        let crawl_points = points_over_reference("crawl", perfect_crawl);
        assert!(
            model_points > 2.0 * crawl_points,
            "{model_points} vs {crawl_points}"
        );
        // The old floor (the uniform 8 bits per byte) did not: +1.7 against +5.0.
        let old_model = (8.0 - 0.8 * BPB) / (8.0 - BPB);
        assert!(points_over_reference("train", old_model) < 100.0 * 0.15 * (1.0 / F1 - 1.0));
    }

    #[test]
    fn a_passed_gate_never_scores_zero_whatever_the_metric() {
        // A model just under the gate, one rebuilt far worse than xz, no reference values at all.
        assert!(score(true, model(XZ - 1e-9, XZ, Some(BPB))) >= PASS_CREDIT);
        assert!(score(true, model(6.0, XZ, Some(BPB))) >= PASS_CREDIT);
        assert!(score(true, crawl(0.7, None)) >= PASS_CREDIT);
        assert_eq!(score(true, Some(f64::NAN)), PASS_CREDIT);
        // A failed gate keeps half of what its metric earns: a crawl of too little recall.
        assert!((score(false, crawl(0.6, Some(F1))) - 0.5 * 0.6 / F1).abs() < 1e-12);
    }

    #[test]
    fn degenerate_references_and_metrics_give_no_quality() {
        assert_eq!(model(1.0, 3.0, Some(3.5)), None);
        assert_eq!(model(0.0, 3.0, Some(1.0)), None);
        assert_eq!(tokenize(3.0, Some(1.0)), None);
        assert_eq!(crawl(0.5, Some(0.0)), None);
        assert!((tokenize(3.0, Some(4.0)).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((eval(0.2, Some(0.0)).unwrap() - 0.8).abs() < 1e-12);
    }

    #[test]
    fn every_stage_has_its_quality_in_words() {
        for d in STAGES {
            let t = instruction_text(d.name, 1.0).unwrap();
            assert!(t.contains(&format!("this one {}", d.weight)), "{t}");
            assert!(t.contains(&PASS_CREDIT.to_string()));
        }
        assert!(formula().contains("train 0.4"));
        assert!(instruction_text("train", 0.9)
            .unwrap()
            .contains("(0.9 × per-document `xz -9e`"));
    }
}
