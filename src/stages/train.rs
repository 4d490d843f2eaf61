//! The train stage's grading: verified bits per byte of `bin/lm` on T, out-of-domain bpb, and its standing on the baseline ladder.
//!
//! The verification itself lives in [`crate::stages::bpb`]; this module picks the documents (T graded, the
//! out-of-domain set scored alongside under hidden ids), draws fresh randomness, applies the L3 gate
//! (below per-document `xz -9e` on T) and reports the model against every rung of the world's ladder.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::agent::tools::ToolError;
use crate::stages::bpb::{self, Verification};
use crate::stages::common::{
    hidden_docs, own_sample, plan, program_problem, CHECK_POSITIONS, CHECK_SAMPLE_BYTES,
};
use crate::stages::scale;
use crate::stages::scorer::{ScoreContext, Scorer};
use crate::trace::{round, StageScore};
use crate::world::{Baselines, World};

pub(crate) use crate::stages::contract::LM_PROGRAM as PROGRAM;

/// Grades the train stage on the world's hidden documents.
pub(crate) struct TrainScorer {
    pub world: Arc<World>,
}

/// The names of the ladder's rungs, weakest first (the keys of the train stage's `ladder` metric).
pub const LADDER: [&str; 5] = ["uniform", "unigram", "gzip", "xz", "xz_conditional"];

/// The ladder of §4 as (name, bpb), weakest first.
pub fn ladder(b: &Baselines) -> [(&'static str, f64); 5] {
    [
        ("uniform", b.uniform),
        ("unigram", b.unigram),
        ("gzip", b.gzip),
        ("xz", b.xz),
        ("xz_conditional", b.xz_conditional),
    ]
}

/// The stage's score from a verification (pure: unit-tested).
pub fn stage_score(
    v: &Verification,
    baselines: &Baselines,
    gates: &BTreeMap<String, f64>,
    reference_bpb: Option<f64>,
) -> StageScore {
    let mut m = Map::new();
    let score_seconds = v.score_seconds();
    let mut verification = v.record();
    let ladder_map: Map<String, Value> = ladder(baselines)
        .iter()
        .map(|(k, x)| (k.to_string(), json!(round(*x, 4))))
        .collect();
    m.insert("ladder".into(), Value::Object(ladder_map));
    let verified = match &v.result {
        Ok(ok) => ok,
        Err(rej) => return v.rejected(rej, m, verification, rej.to_string()),
    };
    let bpb = verified.bpb;
    verification["max_next_diff"] = json!(verified.max_next_diff);
    verification["max_sum_error"] = json!(verified.max_sum_error);
    verification["repeated"] = json!(verified.repeated);
    verification["per_doc"] = json!(verified.per_doc);
    m.insert("verified".into(), json!(true));
    m.insert("bpb".into(), json!(round(bpb, 5)));
    if let Some(o) = verified.extra_bpb {
        m.insert("ood_bpb".into(), json!(round(o, 5)));
    }
    m.insert("test_bytes".into(), json!(verified.bytes));
    m.insert("tokens".into(), json!(verified.tokens));
    m.insert(
        "bytes_per_token".into(),
        json!(round(
            verified.bytes as f64 / verified.tokens.max(1) as f64,
            4
        )),
    );
    let beats: Map<String, Value> = ladder(baselines)
        .iter()
        .map(|(k, x)| (k.to_string(), json!(bpb < *x)))
        .collect();
    m.insert("beats".into(), Value::Object(beats));
    m.insert("beats_xz".into(), json!(bpb < baselines.xz));
    m.insert(
        "beats_conditional_xz".into(),
        json!(bpb < baselines.xz_conditional),
    );
    m.insert(
        "vs_conditional_xz".into(),
        json!(round(bpb - baselines.xz_conditional, 5)),
    );
    if let Some(s) = score_seconds {
        m.insert("score_seconds".into(), json!(round(s, 3)));
        if s > 0.0 {
            m.insert(
                "verify_overhead".into(),
                json!(round(v.harness_seconds / s, 6)),
            );
        }
    }
    m.insert("verification".into(), verification);
    let ratio = crate::config::gates::TRAIN_XZ_RATIO.value(gates);
    let bar = ratio * baselines.xz;
    let passed = bpb < bar;
    StageScore {
        status: "scored".into(),
        passed,
        metrics: m,
        reason: (!passed).then(|| {
            format!(
                "gate not met: verified bpb {bpb:.4} is not below per-document xz -9e ({:.4}{})",
                baselines.xz,
                if ratio != 1.0 {
                    format!(" × {ratio}")
                } else {
                    String::new()
                }
            )
        }),
        normalized: Some(scale::score(passed, scale::model(bpb, bar, reference_bpb))),
        public_reason: (!passed).then(|| {
            format!(
                "gate not met: the verified bpb on the hidden documents is not below {}per-document xz -9e",
                if ratio != 1.0 {
                    format!("{ratio} × ")
                } else {
                    String::new()
                }
            )
        }),
    }
}

#[async_trait]
impl Scorer for TrainScorer {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        let ws = ctx.workspace();
        if let Some(p) = program_problem(ws, PROGRAM) {
            return Ok(json!({"ok": false, "errors": [p]}));
        }
        let Some(programs) = ctx.programs else {
            return Ok(json!({"ok": false, "errors": ["this run has no scoring sandbox"]}));
        };
        let docs = own_sample(ws, CHECK_SAMPLE_BYTES);
        if docs.is_empty() {
            return Ok(
                json!({"ok": false, "errors": ["data/corpus.jsonl has no documents to check the model on"]}),
            );
        }
        let plan = plan(docs, vec![], CHECK_POSITIONS, ctx.scoring);
        let v = bpb::verify(programs, &plan).await;
        Ok(match &v.result {
            Ok(ok) => json!({
                "ok": true,
                "bpb": round(ok.bpb, 5),
                "bytes": ok.bytes,
                "tokens": ok.tokens,
                "positions_checked": ok.checks.len(),
                "max_next_diff": ok.max_next_diff,
                "score_seconds": v.score_seconds().map(|s| round(s, 3)),
                "errors": [],
                "message": "verified on the first documents of your corpus (text the model has probably seen, so the bpb is optimistic); the grade uses hidden documents",
            }),
            Err(rej) => json!({"ok": false, "errors": [rej.to_string()], "rejection": rej}),
        })
    }

    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore {
        let ws = ctx.workspace();
        if let Some(p) = program_problem(ws, PROGRAM) {
            return StageScore::precondition("failed", p);
        }
        let Some(programs) = ctx.programs else {
            return StageScore::zero("error", "this run has no scoring sandbox");
        };
        let (docs, extra) = match hidden_docs(&self.world) {
            Ok(d) => d,
            Err(e) => return StageScore::zero("error", e),
        };
        let mut plan = plan(docs, extra, ctx.scoring.positions, ctx.scoring);
        plan.hidden = true;
        let v = bpb::verify(programs, &plan).await;
        let mut score = stage_score(
            &v,
            &self.world.manifest.baselines,
            ctx.gates,
            ctx.reference.get("train_bpb").copied(),
        );
        if score.metrics.get("verified") == Some(&json!(true)) {
            let (key, value) = samples(programs, ctx.scoring).await;
            score.metrics.insert(key.into(), value);
        }
        score
    }
}

/// Fixed prompts for the samples shown in reports (not from the hidden set, so nothing leaks).
pub(crate) const SAMPLE_PROMPTS: [&str; 3] = ["The ", "In this article we", "How to "];
/// Bytes asked of each sample.
pub(crate) const SAMPLE_BYTES: u64 = 160;

/// `bin/lm sample` on [`SAMPLE_PROMPTS`]: `("samples", [{prompt, text}])`, or
/// `("samples_error", reason)`. Informational only: it never changes the grade.
pub async fn samples(
    programs: &dyn crate::sandbox::programs::Programs,
    scoring: &crate::config::suite::ScoringLimits,
) -> (&'static str, Value) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut stdin = Vec::new();
    for (i, p) in SAMPLE_PROMPTS.iter().enumerate() {
        let line = json!({"id": format!("s{i}"), "prompt_b64": b64.encode(p), "max_bytes": SAMPLE_BYTES, "seed": i});
        stdin.extend_from_slice(line.to_string().as_bytes());
        stdin.push(b'\n');
    }
    let call = crate::sandbox::programs::ProgramCall {
        label: "sample".into(),
        cmd: format!("./{PROGRAM} sample"),
        stdin,
        timeout: Duration::from_secs_f64(scoring.timeout_seconds.min(120.0)),
        hidden: false,
    };
    let run = match programs.run(&call).await {
        Ok(r) => r,
        Err(e) => return ("samples_error", json!(e.to_string())),
    };
    if let Some(f) = run.failure(&call) {
        return ("samples_error", json!(f));
    }
    let mut out = Vec::new();
    for (i, line) in run
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let parsed: Option<(String, String)> =
            serde_json::from_slice::<Value>(line).ok().and_then(|v| {
                let id = v.get("id")?.as_str()?.to_string();
                let text = b64.decode(v.get("text_b64")?.as_str()?).ok()?;
                Some((id, String::from_utf8_lossy(&text).into_owned()))
            });
        let Some((id, text)) = parsed else {
            return (
                "samples_error",
                json!(format!(
                    "bin/lm sample: line {} is not {{\"id\", \"text_b64\"}}",
                    i + 1
                )),
            );
        };
        let prompt = id
            .strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| SAMPLE_PROMPTS.get(n))
            .copied()
            .unwrap_or("");
        out.push(json!({"prompt": prompt, "text": text}));
    }
    ("samples", Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::bpb::{RejectKind, Rejection, Verified};

    fn baselines() -> Baselines {
        Baselines {
            uniform: 8.0,
            unigram: 4.8,
            gzip: 2.7,
            xz: 2.6,
            xz_conditional: 1.8,
            test_bytes: 1000,
            context_bytes: 10_000,
            seconds: 1.0,
        }
    }

    fn verification(result: Result<Verified, Rejection>) -> Verification {
        Verification {
            result,
            seed: 7,
            positions: vec![("t1".into(), 3)],
            calls: vec![bpb::CallRecord {
                label: "score".into(),
                seconds: 2.5,
                program_seconds: 2.0,
                cpu_seconds: 1.9,
                max_rss_kb: 1000,
                stdin_bytes: 10,
                stdout_bytes: 100,
            }],
            harness_seconds: 0.02,
            sandbox_error: None,
        }
    }

    fn verified(bpb: f64) -> Verified {
        Verified {
            bpb,
            bits: bpb * 1000.0,
            bytes: 1000,
            tokens: 500,
            extra_bpb: Some(3.0),
            per_doc: vec![],
            checks: vec![],
            max_next_diff: 0.0,
            max_sum_error: 0.0,
            repeated: vec![],
        }
    }

    #[test]
    fn verified_model_is_placed_on_the_ladder_and_gated_by_xz() {
        let (b, g) = (baselines(), BTreeMap::new());
        let s = stage_score(&verification(Ok(verified(2.0))), &b, &g, Some(1.6));
        assert!(s.passed, "{:?}", s.reason);
        assert_eq!(s.metrics["beats"]["xz"], true);
        assert_eq!(s.metrics["beats_conditional_xz"], false);
        assert_eq!(s.metrics["vs_conditional_xz"], 0.2);
        assert_eq!(s.metrics["bytes_per_token"], 2.0);
        assert_eq!(s.metrics["verify_overhead"], 0.01);
        let q = (2.6f64 / 2.0).ln() / (2.6f64 / 1.6).ln(); // log bpb, from the gate (xz 2.6)
        assert!((s.normalized.unwrap() - (0.5 + 0.5 * q)).abs() < 1e-12);
        let s = stage_score(&verification(Ok(verified(2.65))), &b, &g, Some(1.6));
        assert_eq!((s.passed, s.normalized), (false, Some(0.0)));
        assert!(s
            .reason
            .unwrap()
            .contains("not below per-document xz -9e (2.6000)"));
    }

    #[test]
    fn rejected_model_scores_zero_with_the_reason() {
        let rej = Rejection::new(
            RejectKind::Inconsistent,
            "doc t3 position 812: score -2.1000, next -0.3100",
        );
        let s = stage_score(
            &verification(Err(rej)),
            &baselines(),
            &BTreeMap::new(),
            Some(1.6),
        );
        assert_eq!(s.status, "rejected");
        assert!(!s.passed);
        assert_eq!(s.normalized, Some(0.0));
        assert_eq!(
            s.reason.unwrap(),
            "inconsistent: doc t3 position 812: score -2.1000, next -0.3100"
        );
        assert_eq!(s.metrics["verification"]["seed"], 7);
    }
}
