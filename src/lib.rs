//! gptx measures how far an AI agent gets at building a language model by itself.
//!
//! # Layout
//!
//! A run flows left to right through these modules:
//!
//! - [`cli`] parses arguments into a validated [`session::RunPlan`] (suite, agent, budgets) and maps
//!   errors to documented exit codes; `main.rs` only calls [`cli::main`].
//! - [`suite`] reads `tasks/suites/*.toml` into stages with resolved [`suite::Budgets`], and finds
//!   gptx's own files ([`suite::Home`]).
//! - [`session`] does one run on the real engine: run directory, image ([`images`]), internal network,
//!   the agent's [`sandbox::docker::DockerSandbox`], the [`runner`], then teardown that always happens.
//! - Agents: [`agent`] (the trait, null, script, reference), [`exec_agent`] (`exec:<command>`,
//!   SPEC §8's JSON lines with an external program) and [`llm`] (`openai:<model>`: the tool loop
//!   over a chat API); [`mcp`] serves the tools to an MCP client that is the run's agent.
//! - [`runner`] is the loop: stages in order, the [`agent::Agent`]'s tool calls ([`tools`]) executed
//!   against a `dyn` [`sandbox::Sandbox`], budgets enforced, each stage graded by a
//!   [`scoring::Scorer`]. Its only output is the typed [`trace::Event`] stream.
//! - Scorers: [`crawl`] (the corpus against the world's gold and request log), [`tokenize`],
//!   [`train`] and [`eval`], which run the agent's programs on hidden data through
//!   [`programs::Programs`] (a fresh scoring sandbox per call); [`lm`] is the verified bits-per-byte
//!   procedure. [`selfhost`] picks the recipe and rebuilds from it through
//!   [`selfhost::Rebuilder`] ([`rebuild`] on the engine: fresh sandbox, web server and request log).
//! - [`scoring`] turns stage scores into levels (with rescue's assisted levels) and the Bootstrap
//!   Index; the [`runner`] hands over reference artifacts when crawl or tokenize fails (`--rescue`).
//! - [`trace`] turns events into the record: the hash-chained `events.jsonl`, `outputs/`, and
//!   `workspace.git` ([`trace::WorkspaceHistory`]); [`progress`] turns them into the live status line.
//! - [`rundir`] owns `run.json` / `score.json`; [`show`] renders runs in the terminal.
//! - After runs: [`leaderboard`] ranks agents per suite and world hash (with [`charts`]), [`serve`]
//!   is the web viewer (a trace index per run, live runs), [`export`] writes Inspect AI logs and
//!   JUnit XML; [`synth`] writes whole synthetic runs for their tests and benches.
//! - [`reference`] keeps each world's reference values (`m_ref`, measured by `gptx world reference`).
//! - [`engine`] holds the Docker connection, the labels on every resource, and `gc`.
//! - [`contract`] is what each stage's instruction promises about its grade (gates, command lines,
//!   copy caps, networks), rendered into the instruction from the values the scorers use.
//! - [`quota`] gives each workspace a filesystem of the suite's size (a loop-mounted image).
//! - [`audit`] checks a run directory against its own trace (`gptx verify`, the leaderboard);
//!   [`term`] escapes agent text for terminals.
//! - [`bench`] measures the harness itself.

pub mod agent;
pub mod cli;
pub mod config;
pub mod docker;
pub mod files;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod serve;
pub mod stages;
#[cfg(feature = "synth")]
pub mod synth;
pub mod trace;
pub mod world;
