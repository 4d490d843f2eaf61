//! `gptx leaderboard`: runs grouped by suite, world hash and agent; statistics; md/json/html reports.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::suite::Home;

/// What to rank.
#[derive(Debug, Clone)]
pub struct Options {
    pub suite: Option<String>,
    pub resamples: usize,
}

/// One leaderboard: the runs of one suite on one world hash.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub suite: String,
    pub world_hash: Option<String>,
}

/// Reads every run under `runs_dir` and ranks them.
pub fn collect(runs_dir: &Path, home: Option<&Home>, opts: &Options) -> anyhow::Result<Vec<Board>> {
    let _ = (runs_dir, home, opts);
    Ok(Vec::new())
}

/// Writes the reports; returns the files written.
pub fn write(boards: &[Board], out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let _ = (boards, out);
    Ok(Vec::new())
}

/// The markdown report.
pub fn markdown(boards: &[Board]) -> String {
    format!("{} leaderboards\n", boards.len())
}
