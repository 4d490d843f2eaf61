//! The command line: clap definitions, raw arguments turned into validated plans, dispatch, exit codes.
//!
//! Imported by `main.rs` alone.

mod admin;
pub mod bench;
mod bench_plan;
mod k8s;
pub(crate) mod plan_cmd;
mod run;
pub(crate) mod slurm;

use admin::{gc, images_build, images_list, world};
use run::{mcp, measure_reference, resume, run};
pub use run::{plan, plans};

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::agent::AgentSpec;
use crate::config::suite::{BudgetOverrides, Home};
use crate::docker::session::{self, RunPlan};
use crate::trace::rundir::RunStatus;

/// Exit codes of `gptx`.
pub mod exit {
    /// Success; for `run`, the run finished (whatever level it reached).
    pub const OK: i32 = 0;
    /// An error, or a run that failed (the harness could not carry it out).
    pub const FAILED: i32 = 1;
    /// Bad command-line usage.
    pub(crate) const USAGE: i32 = 2;
    /// The environment is not ready: no Docker engine, an image cannot be built (not root, no debootstrap, a failed Dockerfile step) or breaks the sandbox profile.
    pub(crate) const ENVIRONMENT: i32 = 3;
    /// `verify`: the trace does not verify.
    pub(crate) const TAMPERED: i32 = 4;
    /// The run was interrupted (Ctrl-C / SIGTERM); it was cleaned up.
    pub(crate) const INTERRUPTED: i32 = 130;
}

const AFTER_HELP: &str = "\
Exit codes: 0 ok (a run finished) · 1 error or failed run · 2 usage · 3 environment not ready \
(Docker, images) · 4 trace does not verify · 130 interrupted.";

/// gptx: how far can an AI agent get at building a language model by itself?
#[derive(Debug, Parser)]
#[command(name = "gptx", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// A gptx checkout whose tasks/ and sandboxes/ to use (edited suites, worlds, recipes); the same
    /// as GPTX_HOME. Without either, gptx uses the checkout it runs in or was built from, else the
    /// task files built into it, unpacked into the user's cache (XDG_CACHE_HOME, else ~/.cache).
    #[arg(long, global = true, value_name = "DIR", value_parser = non_empty_path)]
    pub home: Option<PathBuf>,
    /// The container engine: `docker` (DOCKER_HOST, else the local socket); `podman`, for an
    /// ordinary user without a running engine (gptx starts a rootless `podman system service` of
    /// its own for as long as it runs); or an API address (`unix:///PATH`, `tcp://HOST:PORT`).
    #[arg(
        long,
        global = true,
        env = "GPTX_ENGINE",
        value_name = "ENGINE",
        default_value = "docker"
    )]
    pub engine: crate::docker::podman::Choice,
}

impl Command {
    /// Whether the command talks to the engine (a Podman service is started only for those).
    fn needs_engine(&self) -> bool {
        matches!(
            self,
            Command::Run(_)
                | Command::Mcp(_)
                | Command::Resume(_)
                | Command::Images(_)
                | Command::Gc { .. }
                | Command::Bench(_)
        )
    }
}

/// A path flag's value, refused when empty (it would name no directory at all).
fn non_empty_path(s: &str) -> Result<PathBuf, String> {
    match s.is_empty() {
        true => Err("an empty path names no directory".into()),
        false => Ok(PathBuf::from(s)),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent through a suite of stages in Docker sandboxes and score it.
    Run(RunArgs),
    /// Serve the benchmark's tools over MCP on stdin/stdout for one run whose agent is the MCP
    /// client (Claude Code, Codex CLI, ...): `gptx mcp --suite mini`. The scorecard goes to stderr.
    Mcp(McpArgs),
    /// Go on with an interrupted run from its last completed step: the workspace is brought back to
    /// that step, graded stages keep their grades, and the stage it stopped in goes on with what is
    /// left of its budgets. Built-in and LLM agents are rebuilt from the trace; `exec:` agents are
    /// started again with the stage's task and a note.
    Resume(ResumeArgs),
    /// Write a batch (agents × seeds of a suite, with its budgets) as a plan file whose items a
    /// scheduler places: `gptx run --plan FILE --item K` runs item K anywhere.
    Plan(PlanArgs),
    /// Run a plan on a Slurm cluster: an sbatch job array with one task per unfinished item.
    #[command(subcommand)]
    Slurm(SlurmCmd),
    /// Run a plan on Kubernetes: write an Indexed Job manifest, one completion per item.
    #[command(subcommand)]
    K8s(K8sCmd),
    /// List runs; with --plan, where each item of a plan stands.
    Runs(RunsArgs),
    /// Show a run's trace step by step, or one step with its workspace diff (`--step N`).
    Show(ShowArgs),
    /// Rank agents from their runs (by mean level, then by Bootstrap Index): reports/leaderboard.{md,json,html} and SVG charts.
    Leaderboard(LeaderboardArgs),
    /// Serve the web viewer: runs, run pages, steps with diffs, the leaderboard, live runs.
    Serve(ServeArgs),
    /// Write a run in another format: an Inspect AI eval log, JUnit XML for CI systems, or an ATIF trajectory (Harbor, Terminal-Bench).
    Export(ExportArgs),
    /// Check a run's trace hash chain (detects any edit after the fact).
    Verify(VerifyArgs),
    /// Build sandbox images from Debian's mirror or a Dockerfile (no registry needed), and save or load them.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Build or describe the offline web world of a suite.
    #[command(subcommand)]
    World(WorldCmd),
    /// Remove containers, networks and volumes of runs whose gptx process is gone.
    Gc {
        /// Remove every gptx resource, even of runs still going.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        runs: RunsDirArg,
    },
    /// Measure the harness.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Args)]
pub struct RunsDirArg {
    /// Where runs are kept.
    #[arg(long, default_value = "runs", env = "GPTX_RUNS_DIR")]
    pub runs_dir: PathBuf,
}

/// What a batch is: the suite, agents, seeds, stages, budgets and options. `gptx run` takes them
/// on its command line, `gptx plan` writes them into a plan file.
#[derive(Debug, Args, Default)]
pub struct BatchArgs {
    /// Suite name (tasks/suites/<name>.toml) or path to a suite file [default: mini].
    #[arg(long)]
    pub suite: Option<String>,
    /// The agent: `null` (submits at once), `reference` (writes and runs tasks/<stage>/reference/
    /// through the tools), `reference:<stage,...>` (the reference for those stages only, submitting
    /// the others at once), `script:<file.jsonl>` (one {"tool","args"} per line; each `submit`
    /// ends a stage and the script goes on with the next stage), `exec:<command>` (an external
    /// program speaking gptx's JSON-lines protocol, e.g. exec:python3 tasks/agents/example_agent.py),
    /// `openai:<model>` (a model behind an OpenAI-compatible API at OPENAI_BASE_URL, key
    /// OPENAI_API_KEY; e.g. openai:gpt-4o), or `anthropic:<model>` (Anthropic's Messages API,
    /// ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL; e.g. anthropic:claude-sonnet-4-5).
    /// Repeat `--agent` to run several agents, one after another (or `--parallel N` at once).
    #[arg(long, value_name = "SPEC")]
    pub agent: Vec<String>,
    /// Seed (default: the suite's).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run each agent once per seed: a range `1-5` or a list `1,2,7`.
    #[arg(long, value_name = "SEEDS", value_parser = parse_seeds)]
    pub seeds: Option<Seeds>,
    /// Only these stages, comma-separated, e.g. crawl,tokenize.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Override every stage's max_steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Override every stage's max_sandbox_seconds.
    #[arg(long)]
    pub max_sandbox_seconds: Option<f64>,
    /// Override every stage's max_wall_seconds.
    #[arg(long)]
    pub max_wall_seconds: Option<f64>,
    /// Override every stage's max_step_seconds (the cap on one bash call).
    #[arg(long)]
    pub max_step_seconds: Option<f64>,
    /// LLM agents: tokens (input + output) one stage may use; the stage ends when reached.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// LLM agents: dollars one stage may spend (priced by tasks/prices.toml); the stage ends when reached.
    #[arg(long)]
    pub max_cost_usd: Option<f64>,
    /// LLM agents: sampling temperature (default: the server's).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// LLM agents: most tokens of one reply [default: 4096].
    #[arg(long)]
    pub max_output_tokens: Option<u64>,
    /// LLM agents: the conversation is kept under this many tokens by eliding the oldest tool
    /// outputs [default: 100000].
    #[arg(long)]
    pub context_tokens: Option<u64>,
    /// `exec:` agents: pass this environment variable of gptx's through to the agent (repeat for
    /// more, e.g. `--agent-env OPENAI_API_KEY`). Nothing else of gptx's environment reaches it:
    /// it gets PATH, LANG, a scratch HOME and GPTX_PROTOCOL=1.
    #[arg(long, value_name = "NAME")]
    pub agent_env: Vec<String>,
    /// When crawl or tokenize fails, hand the agent that stage's reference artifact (the world's
    /// gold corpus; the reference tokenizer) so later stages are still measured; levels reached
    /// after it are reported as assisted (`L4*`). On by default: `--rescue false` turns it off.
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rescue: Option<bool>,
}

/// `--max-output-tokens`' default.
pub(crate) const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
/// `--context-tokens`' default.
pub(crate) const DEFAULT_CONTEXT_TOKENS: u64 = 100_000;

impl BatchArgs {
    /// The suite asked for.
    pub fn suite(&self) -> &str {
        self.suite.as_deref().unwrap_or("mini")
    }

    /// The flags given, by name: a plan fixes all of them, so `gptx run --plan` refuses each.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |on: bool, name: &'static str| {
            if on {
                out.push(name);
            }
        };
        note(self.suite.is_some(), "--suite");
        note(!self.agent.is_empty(), "--agent");
        note(self.seed.is_some(), "--seed");
        note(self.seeds.is_some(), "--seeds");
        note(!self.stages.is_empty(), "--stages");
        note(self.max_steps.is_some(), "--max-steps");
        note(self.max_sandbox_seconds.is_some(), "--max-sandbox-seconds");
        note(self.max_wall_seconds.is_some(), "--max-wall-seconds");
        note(self.max_step_seconds.is_some(), "--max-step-seconds");
        note(self.max_tokens.is_some(), "--max-tokens");
        note(self.max_cost_usd.is_some(), "--max-cost-usd");
        note(self.temperature.is_some(), "--temperature");
        note(self.max_output_tokens.is_some(), "--max-output-tokens");
        note(self.context_tokens.is_some(), "--context-tokens");
        note(!self.agent_env.is_empty(), "--agent-env");
        note(self.rescue.is_some(), "--rescue");
        out
    }

    /// The options a run records (rescue, LLM options, `--agent-env`).
    pub(crate) fn options(&self) -> crate::trace::rundir::RunOptions {
        crate::trace::rundir::RunOptions {
            rescue: self.rescue.unwrap_or(true),
            temperature: self.temperature,
            max_output_tokens: self.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
            context_tokens: self.context_tokens.unwrap_or(DEFAULT_CONTEXT_TOKENS),
            agent_env: self.agent_env.clone(),
        }
    }

    /// The budget overrides given.
    pub(crate) fn overrides(&self) -> crate::plan::Overrides {
        crate::plan::Overrides {
            max_steps: self.max_steps,
            max_sandbox_seconds: self.max_sandbox_seconds,
            max_wall_seconds: self.max_wall_seconds,
            max_step_seconds: self.max_step_seconds,
            max_tokens: self.max_tokens,
            max_cost_usd: self.max_cost_usd,
        }
    }

    /// The seeds of the batch: `--seeds`, `--seed`, or None (the suite's).
    pub(crate) fn seed_list(&self) -> Vec<Option<u64>> {
        match &self.seeds {
            Some(Seeds(list)) if !list.is_empty() => list.iter().map(|s| Some(*s)).collect(),
            _ => vec![self.seed],
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Run the items of this plan file (made by `gptx plan`) instead of a batch given by flags:
    /// every item (`--parallel` at a time), or only `--item`. The plan fixes the suite, agents,
    /// seeds, budgets and runs directory.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// With --plan: run only this item, by index (0, 1, ...: what a job array's task index
    /// gives) or by id. Does nothing if the item is done, resumes it if it was interrupted, and
    /// otherwise starts it; waits up to --item-wait seconds for another gptx running it to stop.
    #[arg(long, value_name = "K", requires = "plan")]
    pub item: Option<String>,
    /// With --item: seconds to wait for the item's lock when another gptx holds it.
    #[arg(long, value_name = "S", default_value_t = 120.0, requires = "item")]
    pub item_wait: f64,
    /// With several runs (agents × seeds): how many run at once. Each run has its own sandbox,
    /// network and web server; the suite's CPU and memory limits apply to each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// With several runs (agents × seeds): run every pair again, even those the runs directory
    /// already holds a done, verified run of (same agent, seed, suite, world and budgets).
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object with the result as the last thing on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    /// The plan file to write.
    #[arg(long, short, value_name = "FILE", default_value = "plan.json")]
    pub out: PathBuf,
    /// Where the items' run directories go: relative to the plan file's folder, or absolute
    /// (on a cluster: a folder every node mounts).
    #[arg(long, value_name = "DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Print the plan as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// The seeds of `--seeds`, in order, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

/// Parses `--seeds`: `1-5`, `1,2,7`, or a mix (`1-3,9`).
pub(crate) fn parse_seeds(text: &str) -> Result<Seeds, String> {
    let mut out: Vec<u64> = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("{text:?}: an empty item (write e.g. 1-5 or 1,2,7)"));
        }
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{text:?}: {s:?} is not a seed (a whole number)"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("{text:?}: the range {part} runs backwards"));
        }
        if hi - lo >= 1000 {
            return Err(format!("{text:?}: {part} is more than 1000 seeds"));
        }
        for s in lo..=hi {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(Seeds(out))
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Each item of this plan file: done, running, interrupted, failed or missing, with its run.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// With --plan: print JSON.
    #[arg(long, requires = "plan")]
    pub json: bool,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Run id, or a unique prefix of it: an interrupted run (or one whose gptx is gone).
    pub run: String,
    /// Print one JSON object with the result as the last thing on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Suite name (tasks/suites/<name>.toml) or path to a suite file.
    #[arg(long, default_value = "mini")]
    pub suite: String,
    /// Seed (default: the suite's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only these stages, comma-separated, e.g. crawl,tokenize.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Hand over the reference artifact of a failed crawl or tokenize stage (see `gptx run --help`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rescue: bool,
    /// Serve MCP's streamable HTTP transport at this loopback address (e.g. 127.0.0.1:8765, port 0
    /// for any) at the path /mcp, instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Run id, or a unique prefix of it.
    pub run: String,
    /// Print the events as JSON lines instead.
    #[arg(long)]
    pub json: bool,
    /// Show only step N (numbered over the whole run) with its output and workspace diff.
    #[arg(long, value_name = "N")]
    pub step: Option<u64>,
    /// Colours: auto (when stdout is a terminal and NO_COLOR is unset), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Run id, or a unique prefix of it.
    pub run: String,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

/// When to colour terminal output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout.
    pub(crate) fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
        }
    }
}

#[derive(Debug, Args)]
pub struct LeaderboardArgs {
    /// Only this suite (default: every suite with runs; each suite and world hash is ranked apart).
    #[arg(long)]
    pub suite: Option<String>,
    /// Where to write leaderboard.{md,json,html} and the charts.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Resamples for the bootstrap confidence intervals.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    #[command(flatten)]
    pub dirs: RunsDirsArg,
}

/// Several runs directories and plans, merged into one view.
#[derive(Debug, Args)]
pub struct RunsDirsArg {
    /// Where runs are kept; repeat to merge several (e.g. one per cluster or machine). A run found
    /// in two of them counts once.
    #[arg(
        long = "runs-dir",
        value_name = "DIR",
        default_value = "runs",
        env = "GPTX_RUNS_DIR"
    )]
    pub runs_dirs: Vec<PathBuf>,
    /// A plan file (repeat for more): its runs directory is read too, and the board of its suite
    /// says how many of its items are done, running, interrupted, failed or missing. A board
    /// with a plan not done is marked INCOMPLETE and does not rank its agents.
    #[arg(long, value_name = "FILE")]
    pub plan: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; loopback only unless --public.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Allow a non-loopback --addr (the viewer has no authentication).
    #[arg(long)]
    pub public: bool,
    /// A host name the viewer answers to besides localhost and its own address (repeat for more):
    /// requests naming any other Host are refused, which stops DNS-rebinding pages.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
    #[command(flatten)]
    pub dirs: RunsDirsArg,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run id, or a unique prefix of it.
    pub run: String,
    /// inspect: an Inspect AI eval log (JSON); junit: one testcase per stage; atif: an ATIF-v1.8 trajectory.
    #[arg(long, value_enum)]
    pub format: crate::report::export::Format,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// Build images (default: base); skipped when the recipe's tag already exists. A recipe with a
    /// `sandboxes/<name>.Dockerfile` is built through the engine's build API; the others with
    /// debootstrap as root, or `mmdebstrap --mode=unshare` without root. An image that cannot host
    /// a sandbox is refused with the reason.
    Build {
        /// Image names: recipes in sandboxes/ (base, ml, minimal, torch2).
        names: Vec<String>,
        /// Rebuild even if the tag exists.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recipes, their tags, and whether they are built.
    List,
    /// Write built images (default: base) to a tar file, for nodes that cannot reach a Debian
    /// mirror: `gptx images load FILE` there.
    Save {
        /// Image names: recipes in sandboxes/ (base, ml).
        names: Vec<String>,
        /// The tar file to write.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Load images written by `gptx images save`. Each `gptx/<name>:<tag>` it holds is checked
    /// against this checkout's recipe: a tag that is not the recipe's is loaded with a warning
    /// (runs here will build their own).
    Load {
        /// The tar file `gptx images save` wrote.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlurmCmd {
    /// Write an sbatch job array of the plan's unfinished items and submit it with sbatch
    /// (options after `--` go to sbatch, e.g. `-- --partition=gpu --time=02:00:00`).
    Submit(SlurmSubmitArgs),
    /// Each item's state beside its Slurm task's (from squeue and sacct).
    Status(SlurmStatusArgs),
}

#[derive(Debug, Args)]
pub struct SlurmSubmitArgs {
    /// The plan file (made by `gptx plan`); on a cluster, on a filesystem every node mounts.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// A failed task (gptx exit 1 or 3: the harness could not carry the run out) requeues
    /// itself this many times; a requeued task resumes its item.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub retries: u32,
    /// Write the job script and print it, without submitting it.
    #[arg(long)]
    pub dry_run: bool,
    /// The gptx binary the tasks run (default: this one); it must be at this path on every node.
    #[arg(long, value_name = "PATH")]
    pub gptx: Option<PathBuf>,
    /// Options for sbatch, after `--`.
    #[arg(last = true, value_name = "SBATCH_OPTIONS")]
    pub sbatch: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SlurmStatusArgs {
    /// The plan file.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum K8sCmd {
    /// Write the plan as a Kubernetes Indexed Job (and its results claim) to stdout or --out.
    Manifest(K8sManifestArgs),
}

#[derive(Debug, Args)]
pub struct K8sManifestArgs {
    /// The plan file (made by `gptx plan`).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// The container image with gptx and this checkout's tasks/ and sandboxes/ in it.
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Pods at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub parallelism: u32,
    /// Retries of one item (index) before it is marked failed.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub backoff_limit_per_index: u32,
    /// The ReadWriteMany PersistentVolumeClaim the runs directory is on (made by the manifest
    /// unless --existing-claim).
    #[arg(long, default_value = "gptx-runs", value_name = "NAME")]
    pub claim: String,
    /// Use an existing claim instead of writing one.
    #[arg(long)]
    pub existing_claim: bool,
    /// Size of the claim the manifest writes.
    #[arg(long, default_value = "50Gi", value_name = "SIZE")]
    pub claim_size: String,
    /// The namespace.
    #[arg(long, default_value = "gptx", value_name = "NS")]
    pub namespace: String,
    /// Write here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum WorldCmd {
    /// Build the suite's world into the cache (skipped when it is there), with its baselines.
    Build(WorldArgs),
    /// Print the world's statistics and baseline ladder (builds it first if needed).
    Show(WorldArgs),
    /// Measure the world's reference values (m_ref): run the reference agent through every stage
    /// of the suite and write tasks/worlds/<world>.reference.json from its scores.
    Reference(ReferenceArgs),
}

#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// Suite name (tasks/suites/<name>.toml) or path to a suite file; all its stages are run.
    #[arg(long, default_value = "mini")]
    pub suite: String,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct WorldArgs {
    /// Suite name (tasks/suites/<name>.toml) or path to a suite file.
    #[arg(long, default_value = "mini")]
    pub suite: String,
    /// World seed (default: the suite file's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the manifest summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// The cost of a step, side by side in one sandbox: `bash true` through gptx against the docker
    /// CLI and against `bash -c true` timed inside the box; 1 GiB of stdout through gptx against
    /// the same to /dev/null in the box, with gptx's peak memory; an `echo` step at 200 files and at
    /// 200,000 files in the workspace, and a step there in which a name comes and goes (the
    /// snapshot then stats every file).
    Exec(bench::BenchExecArgs),
    /// A fresh plan run start to end, here or on Slurm: its wall time and each item's overhead
    /// (scheduler dispatch plus gptx's start, up to the item's first tool call).
    Plan(bench_plan::BenchPlanArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

/// A usage error (exit 2): a bad flag, suite, stage or agent.
fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: exit::USAGE,
        error: e.into(),
    }
}

fn env_error(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: exit::ENVIRONMENT,
        error: e.into(),
    }
}

fn failed(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: exit::FAILED,
        error: e.into(),
    }
}

/// Parses arguments, runs, and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let _service = match before_threads(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gptx: {e}");
            return exit::ENVIRONMENT;
        }
    };
    init_log(cli.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gptx: cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(Exit { code, error }) => {
            eprintln!("gptx: {error:#}");
            code
        }
    }
}

/// Log lines to stderr: warnings, or more with `-v`, or what `GPTX_LOG` says.
fn init_log(verbose: u8) {
    let filter = ["warn", "info,gptx=debug", "debug"][usize::from(verbose.min(2))];
    let filter = tracing_subscriber::EnvFilter::try_from_env("GPTX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let log = tracing_subscriber::fmt().with_env_filter(filter);
    log.with_writer(std::io::stderr).init();
}

/// What must happen before any other thread exists, since it sets the environment: GPTX_HOME
/// (every Home::locate, and a child gptx, reads it) and the engine's DOCKER_HOST, with the Podman
/// service `--engine podman` starts (it lives as long as the value returned).
fn before_threads(cli: &Cli) -> Result<Option<crate::docker::podman::Service>, String> {
    if let Some(home) = cli.home.as_ref().and_then(|h| std::path::absolute(h).ok()) {
        std::env::set_var("GPTX_HOME", home);
    }
    match cli.command.needs_engine() {
        true => crate::docker::podman::select(&cli.engine),
        false => Ok(None),
    }
}

async fn dispatch(cmd: Command) -> Result<i32, Exit> {
    match cmd {
        Command::Run(args) => run(args).await,
        Command::Resume(args) => resume(args).await,
        Command::Mcp(args) => mcp(args).await,
        Command::Plan(a) => plan_cmd::make(a).await,
        Command::Runs(a) => match &a.plan {
            Some(p) => plan_cmd::status(p, a.json),
            None => crate::report::show::runs(&a.dir.runs_dir).map_err(failed),
        },
        Command::Show(a) => crate::report::show::show(
            &a.dir.runs_dir,
            &a.run,
            &crate::report::show::ShowOptions {
                json: a.json,
                step: a.step,
                color: a.color.enabled(),
            },
        )
        .map_err(failed),
        Command::Leaderboard(a) => leaderboard(a),
        Command::Serve(a) => serve(a).await,
        Command::Export(a) => export(a),
        Command::Verify(a) => {
            crate::report::show::verify(&a.dir.runs_dir, &a.run).map_err(|e| Exit {
                code: exit::TAMPERED,
                error: e,
            })
        }
        Command::Images(ImagesCmd::Build { names, force, json }) => {
            images_build(names, force, json).await
        }
        Command::Images(ImagesCmd::List) => images_list().await,
        Command::Images(ImagesCmd::Save { names, out }) => admin::images_save(names, &out).await,
        Command::Images(ImagesCmd::Load { file }) => admin::images_load(&file).await,
        Command::Slurm(SlurmCmd::Submit(a)) => slurm::submit(a).await,
        Command::Slurm(SlurmCmd::Status(a)) => slurm::status(a).await,
        Command::K8s(K8sCmd::Manifest(a)) => k8s::manifest(a),
        Command::World(WorldCmd::Build(a)) => world(a, false),
        Command::World(WorldCmd::Show(a)) => world(a, true),
        Command::World(WorldCmd::Reference(a)) => measure_reference(a).await,
        Command::Gc { all, runs } => gc(all, &runs.runs_dir).await,
        Command::Bench(BenchCmd::Plan(a)) => bench_plan::bench_plan(a).await,
        Command::Bench(BenchCmd::Exec(a)) => bench::exec(a).await,
    }
}

fn leaderboard(a: LeaderboardArgs) -> Result<i32, Exit> {
    let home = Home::locate().ok();
    let opts = crate::report::leaderboard::Options {
        suite: a.suite,
        resamples: a.resamples,
    };
    let boards = crate::report::leaderboard::collect_many(
        &a.dirs.runs_dirs,
        &a.dirs.plan,
        home.as_ref(),
        &opts,
    )
    .map_err(|e| Exit {
        code: exit::USAGE,
        error: e,
    })?;
    let written = crate::report::leaderboard::write(&boards, &a.out).map_err(failed)?;
    out_text(&crate::report::leaderboard::markdown(&boards));
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(exit::OK)
}

async fn serve(a: ServeArgs) -> Result<i32, Exit> {
    if !a.addr.ip().is_loopback() && !a.public {
        return Err(Exit {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "--addr {}: the viewer listens on loopback only (127.0.0.1 or ::1) unless --public is given",
                a.addr
            ),
        });
    }
    let listener = tokio::net::TcpListener::bind(a.addr)
        .await
        .map_err(|e| Exit {
            code: exit::USAGE,
            error: anyhow::anyhow!("--addr {}: {e}", a.addr),
        })?;
    let bound = listener.local_addr().map_err(failed)?;
    eprintln!(
        "gptx serve: http://{bound}/ (runs from {})",
        a.dirs
            .runs_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let mut dirs = a.dirs.runs_dirs.clone();
    let first = if dirs.is_empty() {
        PathBuf::from("runs")
    } else {
        dirs.remove(0)
    };
    let mut state = crate::serve::AppState::new(first, Home::locate().ok());
    state.more_runs_dirs = dirs;
    state.plans = a.dirs.plan.clone();
    state.allowed_hosts = a.allow_host.clone();
    crate::serve::serve(listener, state, cancel)
        .await
        .map_err(failed)?;
    Ok(exit::OK)
}

fn export(a: ExportArgs) -> Result<i32, Exit> {
    let dir = crate::trace::rundir::find_run(&a.dir.runs_dir, &a.run).map_err(|e| Exit {
        code: exit::USAGE,
        error: e,
    })?;
    let text = crate::report::export::export(&dir, a.format).map_err(failed)?;
    match &a.out {
        Some(path) => {
            std::fs::write(path, text.as_bytes())
                .map_err(|e| failed(anyhow::anyhow!("--out {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
        None => out_text(&text),
    }
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM cancels the run once; a second one exits at once.
fn install_interrupts(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut hits = 0;
        loop {
            let got = match term.as_mut() {
                Some(t) => tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    r = t.recv() => r.is_some(),
                },
                None => tokio::signal::ctrl_c().await.is_ok(),
            };
            if !got {
                return;
            }
            hits += 1;
            if hits == 1 {
                eprintln!("\ngptx: interrupted; stopping the step and removing the run's containers (Ctrl-C again to quit at once; then run `gptx gc`)");
                cancel.cancel();
            } else {
                std::process::exit(exit::INTERRUPTED);
            }
        }
    });
}

/// Prints a run's result. A reader that went away (`| head`) is not an error: the run is over and
/// recorded, and SIGPIPE may be ignored (an external agent was run), so `print!` would panic.
fn out_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Marks the runs below `runs_dir` whose gptx is gone `interrupted`, saying so; the problems come back.
fn mark_dead_runs(runs_dir: &std::path::Path) -> Vec<String> {
    let (marked, mut problems) = crate::trace::rundir::mark_dead(runs_dir);
    // Their workspace disks: nothing of theirs runs any more.
    for (mount, run) in crate::sandbox::quota::orphans() {
        if marked.iter().any(|m| m.run_id == run) {
            if let Err(e) = crate::sandbox::quota::release_orphan(&mount) {
                problems.push(e.to_string());
            }
        }
    }
    for m in &marked {
        eprintln!(
            "gptx: run {} marked interrupted: {}{}",
            m.run_id,
            crate::trace::rundir::OWNER_GONE,
            if m.cut_bytes > 0 {
                format!(
                    " (a half-written trace line of {} bytes cut off)",
                    m.cut_bytes
                )
            } else {
                String::new()
            }
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_ranges_and_lists() {
        assert_eq!(parse_seeds("1-5").unwrap(), Seeds(vec![1, 2, 3, 4, 5]));
        assert_eq!(parse_seeds("1,2,7").unwrap(), Seeds(vec![1, 2, 7]));
        assert_eq!(parse_seeds("1-3,2,9").unwrap(), Seeds(vec![1, 2, 3, 9]));
        assert!(parse_seeds("5-1").unwrap_err().contains("backwards"));
        assert!(parse_seeds("x").unwrap_err().contains("not a seed"));
        assert!(parse_seeds("1,,2").unwrap_err().contains("empty"));
        assert!(parse_seeds("0-5000").unwrap_err().contains("1000"));
    }

    #[test]
    fn several_agents_and_seeds_make_every_pair() {
        let cli = Cli::try_parse_from([
            "gptx",
            "run",
            "--agent",
            "null",
            "--agent",
            "reference:crawl,tokenize",
            "--seeds",
            "1-3",
            "--parallel",
            "2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.batch.agent, vec!["null", "reference:crawl,tokenize"]);
        assert_eq!(args.parallel, 2);
        let plans = plans(&args.batch, &args.dir.runs_dir).unwrap();
        let pairs: Vec<(String, u64)> = plans
            .iter()
            .map(|(a, p)| (a.clone(), p.suite.seed))
            .collect();
        assert_eq!(pairs.len(), 6);
        assert_eq!(pairs[0], ("null".to_string(), 1));
        assert_eq!(pairs[5], ("reference:crawl,tokenize".to_string(), 3));
        assert!(Cli::try_parse_from([
            "gptx", "run", "--agent", "null", "--seed", "1", "--seeds", "1-2"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["gptx", "run", "--agent", "null", "--parallel", "0"]).is_err()
        );
        let err = plans_err(&["gptx", "run", "--agent", "null", "--agent", "bogus"]);
        assert!(err.contains("--agent bogus"), "{err}");
    }

    fn plans_err(argv: &[&str]) -> String {
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not run");
        };
        format!(
            "{:#}",
            plans(&args.batch, &args.dir.runs_dir)
                .err()
                .expect("an error")
        )
    }
}
