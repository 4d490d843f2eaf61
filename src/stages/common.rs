//! Shared helpers of the stages: hidden documents, program problems, samples, verification plans.

use std::time::Duration;

use serde_json::Value;

use crate::config::suite::ScoringLimits;
use crate::sandbox::{WorkspacePath, WorkspaceRoot};
use crate::stages::bpb::{Doc, VerifyPlan};
use crate::stages::contract::LM_PROGRAM;
use crate::world::World;

/// Bytes of the agent's own documents a `check` verifies `bin/lm` on.
pub(crate) const CHECK_SAMPLE_BYTES: usize = 48 * 1024;
/// Positions a `check` of `bin/lm` tests (the grade uses the suite's K).
pub(crate) const CHECK_POSITIONS: usize = 16;

/// The world's hidden documents: T and the out-of-domain set.
pub(crate) fn hidden_docs(world: &World) -> Result<(Vec<Doc>, Vec<Doc>), String> {
    let test = world
        .test_docs()
        .map_err(|e| format!("reading the world's hidden documents: {e}"))?;
    let path = world.dir.join(&world.manifest.ood.file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ood = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let d: crate::world::generate::HiddenDoc = serde_json::from_str(line)
            .map_err(|e| format!("{}, line {}: {e}", path.display(), i + 1))?;
        ood.push(Doc {
            name: d.id,
            bytes: d.text.into_bytes(),
        });
    }
    let test = test
        .into_iter()
        .map(|d| Doc {
            name: d.id,
            bytes: d.text.into_bytes(),
        })
        .collect();
    Ok((test, ood))
}

/// Says why `bin/...` cannot run, when that can be seen from outside (a symlink is left to the
/// scoring sandbox to resolve: its target may exist only in the image).
pub(crate) fn program_problem(ws: &WorkspaceRoot, program: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(ws.path().join(program)) {
        Err(_) => Some(format!("{program} does not exist")),
        Ok(m) if m.file_type().is_symlink() => None,
        Ok(m) if !m.is_file() => Some(format!("{program} is not a file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Some(format!("{program} is not executable (chmod +x {program})"))
        }
        Ok(_) => None,
    }
}

/// The agent's own documents for `check`: the first ones of `data/corpus.jsonl`, up to a sample size.
pub(crate) fn own_sample(ws: &WorkspaceRoot, max_bytes: usize) -> Vec<Doc> {
    let p = WorkspacePath::parse("data/corpus.jsonl").expect("valid constant path");
    let Ok((data, _)) = ws.read(&p, 32 * 1024 * 1024) else {
        return vec![];
    };
    let mut out = Vec::new();
    let mut total = 0;
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(text) = v.get("text").and_then(Value::as_str) else {
            continue;
        };
        let take = text.len().min(max_bytes - total);
        let mut cut = take;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            break;
        }
        out.push(Doc {
            name: format!("data/corpus.jsonl line {}", i + 1),
            bytes: text.as_bytes()[..cut].to_vec(),
        });
        total += cut;
        if total >= max_bytes {
            break;
        }
    }
    out
}

/// A verification of `bin/lm` with fresh randomness, within the suite's scoring time limit.
pub(crate) fn plan(
    docs: Vec<Doc>,
    extra: Vec<Doc>,
    positions: usize,
    scoring: &ScoringLimits,
) -> VerifyPlan {
    VerifyPlan {
        docs,
        extra,
        positions,
        timeout: Duration::from_secs_f64(scoring.timeout_seconds),
        seed: rand::random(),
        program: format!("./{LM_PROGRAM}"),
        hidden: false,
    }
}
