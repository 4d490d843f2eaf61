//! The reference values (`m_ref`) of each world: measured by a run of the reference agent, stored as `tasks/worlds/<world>.reference.json`, read into suites for normalised scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::suite::Home;

/// `tasks/worlds/<world>.reference.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceValues {
    pub world: String,
    /// The world these were measured on; a run on another hash gets a warning.
    pub world_hash: String,
    pub suite: String,
    pub run_id: String,
    pub measured_at: String,
    pub gptx_version: String,
    /// The run's level and wall time, for the record.
    pub level: String,
    pub wall_seconds: f64,
    pub values: BTreeMap<String, f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("the reference run did not pass stage {stage}: {reason}; no values written")]
    NotPassed { stage: String, reason: String },
    #[error("the reference run's {stage} score has no {metric}")]
    Missing { stage: String, metric: String },
}

pub fn path(home: &Home, world: &str) -> PathBuf {
    home.tasks()
        .join("worlds")
        .join(format!("{world}.reference.json"))
}

/// The stored values of a world, if it has any.
pub fn load(home: &Home, world: &str) -> Result<Option<ReferenceValues>, ReferenceError> {
    read(&path(home, world))
}

pub fn read(p: &Path) -> Result<Option<ReferenceValues>, ReferenceError> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReferenceError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ReferenceError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        })
}

/// What [`values`] needs of one stage's result in a finished run.
pub struct StageResult<'a> {
    pub passed: bool,
    /// Why it failed (its reason, else its status).
    pub reason: &'a str,
    pub metrics: &'a serde_json::Map<String, serde_json::Value>,
}

/// The values of a finished reference run, one per stage of the table
/// ([`crate::config::stages::StageDef::reference`]); every stage must have passed.
pub fn values<'a>(
    stage: impl Fn(&str) -> Option<StageResult<'a>>,
) -> Result<BTreeMap<String, f64>, ReferenceError> {
    let mut out = BTreeMap::new();
    for def in &crate::config::stages::STAGES {
        let (metric, key) = def.reference;
        let Some(s) = stage(def.name) else {
            return Err(ReferenceError::NotPassed {
                stage: def.name.into(),
                reason: "it was not run".into(),
            });
        };
        if !s.passed {
            return Err(ReferenceError::NotPassed {
                stage: def.name.into(),
                reason: s.reason.to_string(),
            });
        }
        let v = s
            .metrics
            .get(metric)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| ReferenceError::Missing {
                stage: def.name.into(),
                metric: metric.into(),
            })?;
        out.insert(key.to_string(), v);
    }
    Ok(out)
}

/// Writes the file (pretty JSON, a newline at the end).
pub fn write(p: &Path, values: &ReferenceValues) -> Result<(), ReferenceError> {
    crate::files::write_json_atomic(p, values).map_err(|e| ReferenceError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::rundir::{RunScore, RunStatus, StageSummary};
    use serde_json::json;

    fn stage(passed: bool, metrics: serde_json::Value) -> StageSummary {
        let mut s = StageSummary::from_score(&crate::trace::StageScore {
            status: "scored".into(),
            passed,
            metrics: metrics.as_object().unwrap().clone(),
            reason: (!passed).then(|| "gate not met".into()),
            normalized: Some(1.0),
            public_reason: None,
        });
        s.steps = 1;
        s
    }

    #[test]
    fn values_come_from_every_passed_stage() {
        let mut score = RunScore {
            run_id: "r".into(),
            suite: "mini".into(),
            agent: "reference".into(),
            seed: 1,
            world_hash: Some("h".into()),
            status: RunStatus::Done,
            level: "L6".into(),
            assisted_level: None,
            bootstrap_index: 100.0,
            stages: BTreeMap::from([
                ("crawl".into(), stage(true, json!({"f1": 0.99}))),
                (
                    "tokenize".into(),
                    stage(true, json!({"bytes_per_token": 4})),
                ),
                ("train".into(), stage(true, json!({"bpb": 1.4}))),
                ("eval".into(), stage(true, json!({"eval_error": 0.03}))),
                ("selfhost".into(), stage(true, json!({"bpb": 1.41}))),
            ]),
            integrity: vec![],
            resumed: 0,
            scoring: crate::stages::scale::SCORING,
        };
        let v = score.reference_values().unwrap();
        assert_eq!(v["crawl_f1"], 0.99);
        assert_eq!(v["selfhost_bpb"], 1.41);
        assert_eq!(v.len(), 5);
        score
            .stages
            .insert("eval".into(), stage(false, json!({"eval_error": 0.5})));
        let e = score.reference_values().unwrap_err().to_string();
        assert_eq!(
            e,
            "the reference run did not pass stage eval: gate not met; no values written"
        );
        score.stages.insert("eval".into(), stage(true, json!({})));
        let e = score.reference_values().unwrap_err().to_string();
        assert!(e.contains("has no eval_error"), "{e}");
    }

    #[test]
    fn files_round_trip_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.reference.json");
        assert_eq!(read(&p).unwrap(), None);
        let v = ReferenceValues {
            world: "mini".into(),
            world_hash: "abc".into(),
            suite: "mini".into(),
            run_id: "r".into(),
            measured_at: "2026-01-01T00:00:00Z".into(),
            gptx_version: "0.1.0".into(),
            level: "L6".into(),
            wall_seconds: 200.0,
            values: BTreeMap::from([("train_bpb".into(), 1.4)]),
        };
        write(&p, &v).unwrap();
        assert_eq!(read(&p).unwrap(), Some(v));
        std::fs::write(&p, "{").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .starts_with(&p.display().to_string()));
    }
}
