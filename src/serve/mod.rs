//! `gptx serve`: the web viewer (axum, server-rendered HTML, assets embedded in the binary).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::suite::Home;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub runs_dir: PathBuf,
    pub home: Option<Home>,
}

impl AppState {
    pub fn new(runs_dir: PathBuf, home: Option<Home>) -> Self {
        Self { runs_dir, home }
    }
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (listener, state, cancel);
    anyhow::bail!("the viewer is not available yet")
}
