//! The validated plan's inputs: suites, stages, budgets, gates, scoring limits, image recipes and reference values.

pub mod gates;
pub mod image;
pub mod reference;
pub mod stages;
pub mod suite;
