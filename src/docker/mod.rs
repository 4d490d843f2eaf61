//! Everything that talks to the Docker Engine: the connection, images, the agent's sandbox, scoring and rebuild sandboxes, the world's web server, and a whole run's session.
//!
//! Imported by `cli` alone: nothing else talks to the engine.

mod dockerfile;
pub mod engine;
pub mod flavor;
pub mod images;
pub mod podman;
mod probe;
pub mod profile;
pub mod programs;
pub mod rebuild;
mod rootless;
pub mod sandbox;
pub mod session;
pub(crate) mod supervisor;
pub mod web;
