//! The validated plan's inputs: suites, stages, budgets, gates, scoring limits, image recipes and reference values.

pub mod reference;
pub mod suite;
