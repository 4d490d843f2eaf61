//! Checks a run directory against its own trace: the hash chain, `outputs/` by their hashes, the workspace commits the steps name, and `score.json` against the `stage_scored` events.
//!
//! `gptx verify` prints the result; the leaderboard ranks only runs that pass it.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::trace::replay::Replay;
use crate::trace::rundir::{self, RunDir, RunMeta, RunScore};
use crate::trace::{self, Event};

/// What [`check`] found: the events read and every problem, each naming what is wrong.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub events: u64,
    /// The tail was pinned in run.json (the run finished).
    pub pinned: bool,
    pub outputs_checked: usize,
    pub commits_checked: usize,
    pub problems: Vec<String>,
}

impl Audit {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Audits `dir`. An Err is a run directory that cannot be read at all.
pub fn check(dir: &RunDir) -> anyhow::Result<Audit> {
    let meta: RunMeta = rundir::read_json(&dir.run_json())?;
    let mut a = Audit {
        pinned: meta.trace_sha256.is_some(),
        ..Default::default()
    };
    match trace::verify(&dir.events(), meta.trace_sha256.as_deref()) {
        Ok(v) => a.events = v.events,
        Err(e) => {
            a.problems.push(format!("trace: {e}"));
            return Ok(a);
        }
    }
    let events = trace::log::read_events(&dir.events())?;
    let repo = git2::Repository::open_bare(dir.git()).ok();
    let mut replay = Replay::default();
    for env in &events {
        replay.apply(&env.event);
        let Event::Step(s) = &env.event else {
            continue;
        };
        for o in &s.outputs {
            a.outputs_checked += 1;
            let path = dir.output(&o.sha256);
            match sha256_file(&path) {
                Ok(h) if h == o.sha256 => {}
                Ok(h) => a.problems.push(format!(
                    "step {}: outputs/{} hashes to {h}",
                    s.step, o.sha256
                )),
                Err(e) => a
                    .problems
                    .push(format!("step {}: outputs/{}: {e}", s.step, o.sha256)),
            }
        }
        if let Some(c) = &s.commit {
            a.commits_checked += 1;
            let found = repo.as_ref().is_some_and(|r| {
                git2::Oid::from_str(c)
                    .ok()
                    .is_some_and(|id| r.find_commit(id).is_ok())
            });
            if !found {
                a.problems.push(format!(
                    "step {}: commit {c} is not in workspace.git",
                    s.step
                ));
            }
        }
    }
    if dir.score_json().exists() {
        let score: RunScore = rundir::read_json(&dir.score_json())?;
        let scored = |stage: &str| replay.stage(stage).and_then(|s| s.score.as_ref());
        for (stage, s) in &score.stages {
            let Some(t) = scored(stage) else {
                if s.status != "not scored" && s.status != "interrupted" && s.passed {
                    a.problems.push(format!(
                        "score.json: stage {stage} passed, but the trace has no stage_scored for it"
                    ));
                }
                continue;
            };
            if t.passed != s.passed || t.status != s.status || t.normalized != s.normalized {
                a.problems.push(format!(
                    "score.json: stage {stage} says passed={} status={} score={:?}, the trace passed={} status={} score={:?}",
                    s.passed, s.status, s.normalized, t.passed, t.status, t.normalized
                ));
            }
        }
        let mut traced: Vec<&str> = replay
            .stages()
            .iter()
            .filter(|s| s.score.is_some())
            .map(|s| s.name.as_str())
            .collect();
        traced.sort_unstable();
        for stage in traced {
            if !score.stages.contains_key(stage) {
                a.problems
                    .push(format!("score.json: stage {stage} of the trace is missing"));
            }
        }
        if let Some(f) = replay.finished() {
            let (level, index) = (&f.level, f.bootstrap_index);
            if *level != score.level || (index - score.bootstrap_index).abs() > 1e-9 {
                a.problems.push(format!(
                    "score.json: level {} index {:.3}, the trace's run_finished level {level} index {index:.3}",
                    score.level, score.bootstrap_index
                ));
            }
        }
    }
    Ok(a)
}
