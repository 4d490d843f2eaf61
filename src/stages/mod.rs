//! The five stages: what each is, how it is graded, levels and the Bootstrap Index, and bpb verification.

pub mod bpb;
pub(crate) mod common;
pub mod contract;
pub mod crawl;
pub mod eval;
pub mod levels;
pub mod selfhost;
pub mod tokenize;
pub mod train;
