//! What people read: terminal views, the leaderboard and its charts, exports, the live status line.

pub mod charts;
pub mod export;
pub mod leaderboard;
pub mod progress;
pub mod show;
pub mod term;
