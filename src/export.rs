//! Exports of a run for other tools: an Inspect AI eval log (JSON) and JUnit XML.

use crate::rundir::RunDir;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An Inspect AI eval log in its JSON form (`EvalLog`).
    Inspect,
    /// JUnit XML: one testcase per stage.
    Junit,
}

/// The run in `format`, as text.
pub fn export(run: &RunDir, format: Format) -> anyhow::Result<String> {
    anyhow::bail!(
        "{}: export to {format:?} is not available yet",
        run.path.display()
    )
}
