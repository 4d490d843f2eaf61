//! The validated plan's inputs: suites, stages, budgets, gates, scoring limits, image recipes and reference values.
//!
//! Imported by every other folder; imports nothing of gptx but `files`. Nothing here runs anything:
//! it reads and validates files into values.

pub mod embedded;
pub mod gates;
pub mod image;
pub mod reference;
pub mod stages;
pub mod suite;
