//! What people read: terminal views, the leaderboard and its charts, exports, the live status line.
//!
//! Imported by `serve` (the leaderboard and its charts) and `cli`; reads run directories through
//! `trace` and the stage table in `config::stages`.

pub mod charts;
pub mod export;
pub mod leaderboard;
pub mod progress;
pub mod show;
pub mod term;
