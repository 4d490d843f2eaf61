//! gptx measures how far an AI agent gets at building a language model by itself.
//!
//! # Layout
//!
//! The folders are the pipeline, and each imports only the ones above it in this list (a test,
//! `tests/layout.rs`, holds the tree to it):
//!
//! - [`files`]: atomic JSON writes, JSON reads that name the file, root-only directories.
//! - [`config`]: the validated plan's inputs. Suites (`tasks/suites/*.toml`: stages, budgets,
//!   sandbox and scoring limits), the gates, image recipes, reference values, and the stage table
//!   ([`config::stages`]: one row per stage with its level, weight, rescue, network, headline
//!   metrics, gate text and reference key, read by everything that needs a per-stage fact).
//! - [`trace`]: the record of a run. Typed [`trace::Event`]s (the only thing the runner tells
//!   reporters), the hash-chained `events.jsonl`, `outputs/`, `workspace.git`, the run directory
//!   ([`trace::rundir::RunDir`] owns every path in it), `gptx verify`'s audit, and the replay that
//!   folds an event stream into per-run and per-stage state.
//! - [`sandbox`]: the [`sandbox::Sandbox`] seam, path confinement, the recording fake, the
//!   [`sandbox::programs::Programs`] seam (an agent program on hidden input), disk limits, the
//!   GPUs a sandbox lists.
//! - [`world`]: the offline web: generated deterministically into the cache, with gold text,
//!   hidden splits and baselines; extra documentation sites and a vertical target in
//!   `world/sites.rs`; which pages are hidden (pages, or whole families) in `world/holdout.rs`;
//!   the private variant of a public corpus in `world/private.rs`.
//! - [`agent`]: the [`agent::Agent`] seam and its factory ([`agent::AgentSpec::build`]); the
//!   built-in agents, `exec:` programs over JSON lines, MCP, LLM agents over chat APIs, and the
//!   tools they call.
//! - [`stages`]: how each stage is graded ([`stages::scorer::Scorer`]: `check` on visible data,
//!   `score` on hidden data): crawl, tokenize, train, eval and selfhost, none importing another,
//!   their shared helpers, what each instruction promises ([`stages::contract`]), verified bpb
//!   ([`stages::bpb`]), each stage's normalised score ([`stages::scale`]), levels and the Bootstrap
//!   Index ([`stages::levels`]).
//! - [`runner`]: the loop. Stages in order, tool calls executed against a `dyn Sandbox`, budgets,
//!   grading, rescue, and going on with an interrupted run folded from its trace
//!   ([`runner::ResumeState`]); its only output is the event stream.
//! - [`docker`]: everything that talks to the engine, and nothing else does. The connection and
//!   labels, which engine answers (Docker or rootless Podman) and what that changes, images (a Debian root filesystem or a Dockerfile, measured, and checked against the
//!   sandbox profile before a run), the agent's sandbox, scoring and rebuild sandboxes, the injected static
//!   supervisor they all run commands through (its source is `supervisor/main.rs`, outside `src/`,
//!   built by `build.rs`), the world's web server, and [`docker::session`], one whole run on the
//!   real engine with teardown that always happens.
//! - [`plan`]: batches as plan files for a scheduler to place: one stable id per item, the pins
//!   every item runs under, the item lock, item states; Slurm job arrays ([`plan::slurm`]) and
//!   Kubernetes Indexed Jobs ([`plan::k8s`]).
//! - [`report`]: what people read. `gptx show`, the leaderboard and its charts, the Inspect AI and
//!   JUnit exports, the live status line.
//! - [`serve`]: the web viewer.
//! - `synth` (feature `synth`, on for tests and benches): whole synthetic run directories.
//! - [`cli`]: arguments into validated plans, dispatch, documented exit codes, `gptx bench`;
//!   `main.rs` only calls [`cli::main`].

pub mod agent;
pub mod cli;
pub mod config;
pub mod docker;
pub mod files;
pub mod plan;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod serve;
pub mod stages;
#[cfg(feature = "synth")]
pub mod synth;
pub mod trace;
pub mod world;
