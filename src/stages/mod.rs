//! The five stages: what each is, how it is graded (the scorer seam), levels and the Bootstrap Index, and bpb verification.
//!
//! Imported by `runner`, `docker`, `report` and `synth`; imports `config`, `trace`, `sandbox`,
//! `world` and `agent` (tool errors). Scorers reach programs and rebuilds only through
//! `sandbox::programs::Programs` and `selfhost::Rebuilder`, never Docker, uids or the session.

use std::sync::Arc;

use crate::world::World;

pub mod bpb;
pub(crate) mod common;
pub mod contamination;
pub mod contract;
pub mod crawl;
pub mod eval;
pub mod levels;
pub mod scale;
pub mod scorer;
pub mod selfhost;
pub mod tokenize;
pub mod train;

use scorer::{Scorer, Ungraded};

/// The scorer for a stage by name; stages that need the world get it (a crawl without a world is
/// graded by nothing and says so).
pub fn scorer_for(stage: &str, world: Option<&Arc<World>>) -> Box<dyn Scorer> {
    match (stage, world) {
        ("crawl", Some(w)) => Box::new(crawl::CrawlScorer { world: w.clone() }),
        ("tokenize", Some(w)) => Box::new(tokenize::TokenizeScorer { world: w.clone() }),
        ("train", Some(w)) => Box::new(train::TrainScorer { world: w.clone() }),
        ("eval", Some(w)) => Box::new(eval::EvalScorer { world: w.clone() }),
        ("selfhost", Some(w)) => Box::new(selfhost::SelfhostScorer::new(w.clone())),
        _ => Box::new(Ungraded {
            stage: stage.to_string(),
        }),
    }
}
