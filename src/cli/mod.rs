//! The command line: clap definitions, raw arguments turned into validated plans, dispatch, exit codes.
//!
//! Imported by `main.rs` alone.

pub mod bench;

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
    /// The environment is not ready: no Docker engine, an image cannot be built (not root, no debootstrap).
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent through a suite of stages in Docker sandboxes and score it.
    Run(RunArgs),
    /// Serve the benchmark's tools over MCP on stdin/stdout for one run whose agent is the MCP
    /// client (Claude Code, Codex CLI, ...): `gptx mcp --suite mini`. The scorecard goes to stderr.
    Mcp(McpArgs),
    /// List runs.
    Runs(RunsDirArg),
    /// Show a run's trace step by step, or one step with its workspace diff (`--step N`).
    Show(ShowArgs),
    /// Rank agents from their runs: reports/leaderboard.{md,json,html} and SVG charts.
    Leaderboard(LeaderboardArgs),
    /// Serve the web viewer: runs, run pages, steps with diffs, the leaderboard, live runs.
    Serve(ServeArgs),
    /// Write a run in another format: an Inspect AI eval log, or JUnit XML for CI systems.
    Export(ExportArgs),
    /// Check a run's trace hash chain (detects any edit after the fact).
    Verify(VerifyArgs),
    /// Build sandbox images from Debian's mirror (no registry needed).
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Suite name (tasks/suites/<name>.toml) or path to a suite file.
    #[arg(long, default_value = "mini")]
    pub suite: String,
    /// The agent: `null` (submits at once), `reference` (writes and runs tasks/<stage>/reference/
    /// through the tools), `reference:<stage,...>` (the reference for those stages only, submitting
    /// the others at once), `script:<file.jsonl>` (one {"tool","args"} per line; each `submit`
    /// ends a stage and the script goes on with the next stage), `exec:<command>` (an external
    /// program speaking gptx's JSON-lines protocol, e.g. exec:python3 tasks/agents/example_agent.py),
    /// `openai:<model>` (a model behind an OpenAI-compatible API at OPENAI_BASE_URL, key
    /// OPENAI_API_KEY; e.g. openai:gpt-4o), or `anthropic:<model>` (Anthropic's Messages API,
    /// ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL; e.g. anthropic:claude-sonnet-4-5).
    /// Repeat `--agent` to run several agents, one after another (or `--parallel N` at once).
    #[arg(long, required = true, value_name = "SPEC")]
    pub agent: Vec<String>,
    /// Seed (default: the suite's).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run each agent once per seed: a range `1-5` or a list `1,2,7`.
    #[arg(long, value_name = "SEEDS", value_parser = parse_seeds)]
    pub seeds: Option<Seeds>,
    /// With several runs (agents × seeds): how many run at once. Each run has its own sandbox,
    /// network and web server; the suite's CPU and memory limits apply to each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// With several runs (agents × seeds): run every pair again, even those the runs directory
    /// already holds a done, verified run of (same agent, seed, suite, world and budgets).
    #[arg(long)]
    pub force: bool,
    /// Only these stages, comma-separated, e.g. crawl,tokenize.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Print one JSON object with the result as the last thing on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// LLM agents: most tokens of one reply.
    #[arg(long, default_value_t = 4096)]
    pub max_output_tokens: u64,
    /// LLM agents: the conversation is kept under this many tokens by eliding the oldest tool outputs.
    #[arg(long, default_value_t = 100_000)]
    pub context_tokens: u64,
    /// `exec:` agents: pass this environment variable of gptx's through to the agent (repeat for
    /// more, e.g. `--agent-env OPENAI_API_KEY`). Nothing else of gptx's environment reaches it:
    /// it gets PATH, LANG, a scratch HOME and GPTX_PROTOCOL=1.
    #[arg(long, value_name = "NAME")]
    pub agent_env: Vec<String>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// When crawl or tokenize fails, hand the agent that stage's reference artifact (the world's
    /// gold corpus; the reference tokenizer) so later stages are still measured; levels reached
    /// after it are reported as assisted (`L4*`). On by default: `--rescue false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rescue: bool,
    #[command(flatten)]
    pub dir: RunsDirArg,
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
    pub dir: RunsDirArg,
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
    pub dir: RunsDirArg,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run id, or a unique prefix of it.
    pub run: String,
    /// inspect: an Inspect AI eval log (JSON); junit: one testcase per stage.
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
    /// Build images (default: base); skipped when the recipe's tag already exists.
    Build {
        /// Image names: recipes in sandboxes/ (base, ml).
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
    /// Per-step overhead: `bash true` through gptx against `docker exec <c> true`, interleaved, one container.
    Exec {
        /// Samples of each.
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
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
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,gptx=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GPTX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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

async fn dispatch(cmd: Command) -> Result<i32, Exit> {
    match cmd {
        Command::Run(args) => run(args).await,
        Command::Mcp(args) => mcp(args).await,
        Command::Runs(d) => crate::report::show::runs(&d.runs_dir).map_err(failed),
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
        Command::World(WorldCmd::Build(a)) => world(a, false),
        Command::World(WorldCmd::Show(a)) => world(a, true),
        Command::World(WorldCmd::Reference(a)) => measure_reference(a).await,
        Command::Gc { all, runs } => gc(all, &runs.runs_dir).await,
        Command::Bench(BenchCmd::Exec { n, json }) => {
            let home = Home::locate().map_err(env_error)?;
            crate::cli::bench::exec(&home, n, json)
                .await
                .map_err(env_error)?;
            Ok(exit::OK)
        }
    }
}

fn leaderboard(a: LeaderboardArgs) -> Result<i32, Exit> {
    let home = Home::locate().ok();
    let opts = crate::report::leaderboard::Options {
        suite: a.suite,
        resamples: a.resamples,
    };
    let boards = crate::report::leaderboard::collect(&a.dir.runs_dir, home.as_ref(), &opts)
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
        a.dir.runs_dir.display()
    );
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let mut state = crate::serve::AppState::new(a.dir.runs_dir.clone(), Home::locate().ok());
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

/// Turns `gptx run` arguments into a validated plan.
pub fn plan(args: &RunArgs) -> anyhow::Result<RunPlan> {
    let agent = match args.agent.as_slice() {
        [one] => one,
        [] => anyhow::bail!("--agent: give the agent to run"),
        _ => anyhow::bail!("--agent: plan() takes one agent; use plans() for several"),
    };
    plan_for(args, agent, args.seed)
}

/// The runs `gptx run` asks for: every `--agent` × every seed of `--seeds` (or `--seed`).
/// Each plan comes with the `--agent` text it was made from.
pub fn plans(args: &RunArgs) -> anyhow::Result<Vec<(String, RunPlan)>> {
    let seeds: Vec<Option<u64>> = match &args.seeds {
        Some(Seeds(list)) if !list.is_empty() => list.iter().map(|s| Some(*s)).collect(),
        _ => vec![args.seed],
    };
    let mut out = Vec::new();
    for agent in &args.agent {
        for seed in &seeds {
            out.push((agent.clone(), plan_for(args, agent, *seed)?));
        }
    }
    Ok(out)
}

fn plan_for(args: &RunArgs, agent: &str, seed: Option<u64>) -> anyhow::Result<RunPlan> {
    let home = Home::locate()?;
    let agent: AgentSpec = agent
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--agent {agent}: {e}"))?;
    let mut suite = home.suite(&args.suite).context("--suite")?;
    suite = suite.with_overrides(&BudgetOverrides {
        max_steps: args.max_steps,
        max_sandbox_seconds: args.max_sandbox_seconds,
        max_wall_seconds: args.max_wall_seconds,
        max_step_seconds: args.max_step_seconds,
        max_tokens: args.max_tokens,
        max_cost_usd: args.max_cost_usd,
        ..Default::default()
    })?;
    if !args.stages.is_empty() {
        suite = suite.select(&args.stages)?;
    }
    if let Some(seed) = seed {
        suite.seed = seed;
    }
    Ok(RunPlan {
        home,
        suite,
        agent,
        runs_dir: args.dir.runs_dir.clone(),
        rescue: args.rescue,
        prebuilt: None,
        llm: crate::agent::llm::LlmOptions {
            temperature: args.temperature,
            max_output_tokens: args.max_output_tokens,
            context_tokens: args.context_tokens,
            ..Default::default()
        },
        world: None,
        agent_env: args.agent_env.clone(),
    })
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

async fn run(args: RunArgs) -> Result<i32, Exit> {
    let mut plans = plans(&args).map_err(|e| Exit {
        code: exit::USAGE,
        error: e,
    })?;
    for p in mark_dead_runs(&args.dir.runs_dir) {
        eprintln!("gptx: {p}");
    }
    if plans.len() > 1 {
        return run_many(plans, &args).await;
    }
    let (_, plan) = plans.remove(0);
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, args.quiet, cancel).await?;
    if args.json {
        let stages: serde_json::Map<String, serde_json::Value> = out
            .score
            .stages
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).expect("json")))
            .collect();
        let obj = serde_json::json!({
            "run_id": out.run_id,
            "dir": out.dir.display().to_string(),
            "status": out.meta.status,
            "level": out.score.level,
            "assisted_level": out.score.assisted_level,
            "bootstrap_index": out.score.bootstrap_index,
            "stages": stages,
            "error": out.meta.error,
        });
        out_text(&format!("{obj}\n"));
    } else {
        out_text(&crate::report::show::scorecard(&out.meta, &out.score));
    }
    Ok(match out.meta.status {
        RunStatus::Done => exit::OK,
        RunStatus::Interrupted => exit::INTERRUPTED,
        RunStatus::Failed | RunStatus::Running => exit::FAILED,
    })
}

/// Several runs (agents × seeds), at most `--parallel` at once. Each finished run prints one line;
/// at the end a table of all of them. An interrupt stops the runs going and starts no more.
/// The world hash a plan's run will have (the world built or read from the cache), None without one.
fn world_hash_of(plan: &RunPlan) -> Option<String> {
    let name = plan.suite.world.as_ref()?;
    crate::world::ensure(
        &plan.home,
        name,
        plan.suite.world_seed,
        &crate::world::Quiet,
    )
    .ok()
    .map(|w| w.0.manifest.world_hash)
}

/// A done run below `runs_dir` of the same pair as `plan` (agent, seed, suite, world hash, budgets)
/// that verifies, as the batch reports it.
fn already_done(
    runs: &[(crate::trace::rundir::RunDir, crate::trace::rundir::RunMeta)],
    agent: &str,
    plan: &RunPlan,
    world_hash: &Option<String>,
) -> Option<session::RunOutput> {
    let budgets: std::collections::BTreeMap<String, crate::config::suite::Budgets> = plan
        .suite
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.budgets.clone()))
        .collect();
    runs.iter().rev().find_map(|(dir, meta)| {
        let same = meta.status == RunStatus::Done
            && meta.agent == agent
            && meta.seed == plan.suite.seed
            && meta.suite == plan.suite.name
            && &meta.world_hash == world_hash
            && meta.budgets == budgets;
        if !same {
            return None;
        }
        let score = crate::trace::rundir::read_json(&dir.score_json()).ok()?;
        let audit = crate::trace::audit::check(dir).ok()?;
        audit.problems.is_empty().then(|| session::RunOutput {
            run_id: meta.run_id.clone(),
            dir: dir.path.clone(),
            meta: meta.clone(),
            score,
        })
    })
}

async fn run_many(plans: Vec<(String, RunPlan)>, args: &RunArgs) -> Result<i32, Exit> {
    let total = plans.len();
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    // Pairs the runs directory already has done are kept, not run again (unless --force).
    let mut kept: Vec<Option<session::RunOutput>> = (0..total).map(|_| None).collect();
    let mut again = 0;
    if !args.force {
        let (runs, _) = crate::trace::rundir::list_runs(&args.dir.runs_dir);
        let hash = plans.first().and_then(|(_, p)| world_hash_of(p));
        for (i, (agent, plan)) in plans.iter().enumerate() {
            kept[i] = already_done(&runs, agent, plan, &hash);
            if kept[i].is_none()
                && runs.iter().any(|(_, m)| {
                    m.agent == *agent
                        && m.seed == plan.suite.seed
                        && m.suite == plan.suite.name
                        && m.status != RunStatus::Done
                })
            {
                again += 1;
            }
        }
    }
    let done = kept.iter().flatten().count();
    let was_kept: Vec<bool> = kept.iter().map(Option::is_some).collect();
    let to_run = total - done;
    let parallel = usize::from(args.parallel).min(to_run.max(1));
    eprintln!(
        "gptx run: {total} runs ({} agent(s) × {} seed(s)): {done} done already{}, {again} interrupted or failed before (run again: resuming is not built yet), {} new; {parallel} at a time",
        args.agent.len(),
        total / args.agent.len().max(1),
        if done > 0 { " (kept; --force runs them again)" } else { "" },
        to_run - again,
    );
    // The runs share this task (a run's future is not Send): `buffer_unordered` polls at most
    // `parallel` of them at once, and each spends its time waiting on the engine.
    use futures_util::StreamExt;
    let mut results: Vec<Option<(String, Result<session::RunOutput, Exit>)>> =
        (0..total).map(|_| None).collect();
    let mut todo = Vec::new();
    for (i, (agent, plan)) in plans.into_iter().enumerate() {
        match kept[i].take() {
            Some(out) => {
                results[i] = Some((format!("{agent} seed {}", plan.suite.seed), Ok(out)));
            }
            None => todo.push((i, (agent, plan))),
        }
    }
    let mut labels: Vec<String> = vec![String::new(); total];
    for (i, (agent, plan)) in &todo {
        labels[*i] = format!("{agent} seed {}", plan.suite.seed);
    }
    let mut stream = futures_util::stream::iter(todo)
        .map(|(i, (agent, plan))| {
            let cancel = cancel.clone();
            let label = format!("{agent} seed {}", plan.suite.seed);
            async move {
                if cancel.is_cancelled() {
                    return (i, label, None);
                }
                // One progress line cannot show several runs: parallel runs are quiet.
                let r = execute(plan, parallel > 1 || args.quiet, cancel).await;
                (i, label, Some(r))
            }
        })
        .buffer_unordered(parallel);
    let mut finished = done;
    while let Some((i, label, r)) = stream.next().await {
        let Some(r) = r else {
            continue;
        };
        finished += 1;
        match &r {
            Ok(out) => eprintln!(
                "[{finished}/{total}] {label}: {} {}{} · Bootstrap Index {:.1} · {}",
                out.meta.status,
                out.score.level,
                out.score
                    .assisted_level
                    .as_deref()
                    .map(|a| format!(" (assisted {a})"))
                    .unwrap_or_default(),
                out.score.bootstrap_index,
                out.run_id
            ),
            Err(e) => eprintln!("[{finished}/{total}] {label}: error: {:#}", e.error),
        }
        results[i] = Some((label, r));
    }
    drop(stream);
    let mut code = exit::OK;
    let mut lines = Vec::new();
    let width = results
        .iter()
        .flatten()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut table = format!(
        "{:<width$} {:<11} {:<10} {:>6}  run\n",
        "agent / seed", "status", "level", "index"
    );
    for (i, slot) in results.iter().enumerate() {
        let Some((label, r)) = slot else {
            code = exit::INTERRUPTED;
            table.push_str(&format!(
                "{:<width$} not finished: the batch was interrupted\n",
                labels[i]
            ));
            continue;
        };
        match r {
            Ok(out) => {
                let level = match &out.score.assisted_level {
                    Some(a) => format!("{} ({a})", out.score.level),
                    None => out.score.level.clone(),
                };
                table.push_str(&format!(
                    "{label:<width$} {:<11} {level:<10} {:>6.1}  {}{}\n",
                    out.meta.status.to_string(),
                    out.score.bootstrap_index,
                    out.run_id,
                    if was_kept[i] { " (kept)" } else { "" }
                ));
                match out.meta.status {
                    RunStatus::Done => {}
                    RunStatus::Interrupted => code = exit::INTERRUPTED,
                    _ if code == exit::OK => code = exit::FAILED,
                    _ => {}
                }
                lines.push(serde_json::json!({
                    "run_id": out.run_id,
                    "agent": out.meta.agent,
                    "seed": out.meta.seed,
                    "status": out.meta.status,
                    "level": out.score.level,
                    "assisted_level": out.score.assisted_level,
                    "bootstrap_index": out.score.bootstrap_index,
                    "error": out.meta.error,
                    "kept": was_kept[i],
                }));
            }
            Err(e) => {
                table.push_str(&format!("{label:<width$} error: {:#}\n", e.error));
                if code == exit::OK {
                    code = e.code;
                }
            }
        }
    }
    if cancel.is_cancelled() {
        code = exit::INTERRUPTED;
    }
    if args.json {
        let mut text = String::new();
        for l in lines {
            text.push_str(&format!("{l}\n"));
        }
        out_text(&text);
    } else {
        out_text(&table);
    }
    Ok(code)
}

/// Prints a run's result. A reader that went away (`| head`) is not an error: the run is over and
/// recorded, and SIGPIPE may be ignored (an external agent was run), so `print!` would panic.
fn out_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// `gptx mcp`: a run whose agent is the MCP client on stdin/stdout.
async fn mcp(a: McpArgs) -> Result<i32, Exit> {
    let args = RunArgs {
        suite: a.suite,
        agent: vec!["null".into()],
        seed: a.seed,
        seeds: None,
        parallel: 1,
        force: false,
        stages: a.stages,
        json: false,
        max_steps: None,
        max_sandbox_seconds: None,
        max_wall_seconds: None,
        max_step_seconds: None,
        max_tokens: None,
        max_cost_usd: None,
        temperature: None,
        max_output_tokens: 4096,
        context_tokens: 100_000,
        agent_env: vec![],
        quiet: true,
        rescue: a.rescue,
        dir: a.dir,
    };
    let mut plan = plan(&args).map_err(|e| Exit {
        code: exit::USAGE,
        error: e,
    })?;
    let (agent, server) = crate::agent::mcp::pair();
    plan.prebuilt = Some(Box::new(agent));
    // Over stdio the client is our parent process; over HTTP it is whoever connects.
    if a.http.is_none() {
        if let Some(w) = crate::agent::mcp::client_warning(rustix::process::getppid(), &plan.home) {
            eprintln!("gptx mcp: warning: {w}");
            tracing::warn!("{w}");
        }
    }
    let serving = match a.http {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                return Err(Exit {
                    code: exit::USAGE,
                    error: anyhow::anyhow!(
                        "--http {addr}: the MCP server binds to loopback only (127.0.0.1 or ::1)"
                    ),
                });
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| failed(anyhow::anyhow!("--http {addr}: {e}")))?;
            let bound = listener.local_addr().map_err(failed)?;
            let token = crate::agent::mcp::new_token();
            // The token is in the URL (or send `Authorization: Bearer <token>`): only who reads this
            // line can talk to the run.
            eprintln!("gptx mcp: listening on http://{bound}/mcp?token={token}");
            tokio::spawn(server.serve_http(listener, token))
        }
        None => tokio::spawn(server.serve(tokio::io::stdin(), tokio::io::stdout())),
    };
    let http = a.http.is_some();
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, true, cancel).await?;
    eprint!("{}", crate::report::show::scorecard(&out.meta, &out.score));
    // The client hears the end in its last tool result; give it a moment (stdio: to hang up).
    let grace = std::time::Duration::from_secs(if http { 2 } else { 10 });
    let _ = tokio::time::timeout(grace, serving).await;
    Ok(match out.meta.status {
        RunStatus::Done => exit::OK,
        RunStatus::Interrupted => exit::INTERRUPTED,
        RunStatus::Failed | RunStatus::Running => exit::FAILED,
    })
}

/// `gptx world reference`: a full reference run, then its scores as the world's reference values.
async fn measure_reference(a: ReferenceArgs) -> Result<i32, Exit> {
    let usage = |e: anyhow::Error| Exit {
        code: exit::USAGE,
        error: e,
    };
    let home = Home::locate().map_err(env_error)?;
    let suite = home.suite(&a.suite).map_err(|e| usage(e.into()))?;
    let Some(world) = suite.world.clone() else {
        return Err(usage(anyhow::anyhow!(
            "suite {} has no world to measure reference values on",
            suite.name
        )));
    };
    let plan = RunPlan {
        home: home.clone(),
        suite,
        agent: AgentSpec::Reference(None),
        runs_dir: a.dir.runs_dir.clone(),
        rescue: false,
        prebuilt: None,
        llm: Default::default(),
        world: None,
        agent_env: vec![],
    };
    let cancel = CancellationToken::new();
    install_interrupts(cancel.clone());
    let out = execute(plan, a.quiet, cancel).await?;
    print!("{}", crate::report::show::scorecard(&out.meta, &out.score));
    let values = out.score.reference_values().map_err(failed)?;
    let record = crate::config::reference::ReferenceValues {
        world: world.clone(),
        world_hash: out.meta.world_hash.clone().unwrap_or_default(),
        suite: out.meta.suite.clone(),
        run_id: out.run_id.clone(),
        measured_at: out
            .meta
            .ended_at
            .unwrap_or_else(chrono::Utc::now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gptx_version: out.meta.gptx_version.clone(),
        level: out.score.level.clone(),
        wall_seconds: out
            .meta
            .ended_at
            .map(|e| (e - out.meta.started_at).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0),
        values,
    };
    let path = crate::config::reference::path(&home, &world);
    crate::config::reference::write(&path, &record).map_err(failed)?;
    println!("wrote {}:", path.display());
    for (k, v) in &record.values {
        println!("  {k:<26} {v}");
    }
    Ok(exit::OK)
}

/// Builds the world if the suite has one, then does the run with a progress line.
async fn execute(
    mut plan: RunPlan,
    quiet: bool,
    cancel: CancellationToken,
) -> Result<session::RunOutput, Exit> {
    if let Some(name) = plan.suite.world.clone() {
        let home = plan.home.clone();
        let seed = plan.suite.world_seed;
        let world = tokio::task::spawn_blocking(move || {
            let bar = crate::report::progress::WorldBar::new(quiet);
            let r = crate::world::ensure(&home, &name, seed, &bar);
            bar.finish();
            r
        })
        .await
        .map_err(failed)?
        .map_err(|e| match e {
            crate::world::WorldError::NotFound { .. } | crate::world::WorldError::Config { .. } => {
                Exit {
                    code: exit::USAGE,
                    error: anyhow::Error::from(e).context("--suite"),
                }
            }
            other => env_error(other),
        })?;
        plan.world = Some(std::sync::Arc::new(world.0));
    }
    let reporters: Vec<Box<dyn crate::trace::Reporter>> =
        vec![Box::new(crate::report::progress::Progress::new(quiet))];
    session::run(plan, reporters, cancel)
        .await
        .map_err(|e| match e {
            session::SessionError::Engine(_) | session::SessionError::Image(_) => env_error(e),
            other => failed(other),
        })
}

async fn images_build(names: Vec<String>, force: bool, json: bool) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let names = if names.is_empty() {
        vec!["base".to_string()]
    } else {
        names
    };
    let mut results = Vec::new();
    for name in &names {
        let built = crate::docker::images::build(&docker, &home, name, force, json)
            .await
            .map_err(|e| match e {
                crate::docker::images::ImageError::Recipe(_) => Exit {
                    code: exit::USAGE,
                    error: e.into(),
                },
                other => env_error(other),
            })?;
        if !json {
            println!(
                "{:<6} {}  {}  ({:.1} s{})",
                built.name,
                built.tag,
                crate::docker::engine::short(built.id.trim_start_matches("sha256:")),
                built.seconds,
                if built.built {
                    ", built"
                } else {
                    ", already built: skipped"
                }
            );
        }
        results.push(built);
    }
    if json {
        println!("{}", serde_json::to_string(&results).expect("json"));
    }
    Ok(exit::OK)
}

async fn images_list() -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    for name in crate::config::suite::toml_names(&home.sandboxes()) {
        let recipe = crate::docker::images::Recipe::load(&home, &name).map_err(failed)?;
        let tag = recipe.tag();
        let have = crate::docker::images::image_id(&docker, &tag)
            .await
            .map_err(failed)?;
        println!(
            "{name:<6} {tag:<24} {:<9} {}",
            if have.is_some() { "built" } else { "not built" },
            recipe.description
        );
    }
    Ok(exit::OK)
}

fn world(a: WorldArgs, show: bool) -> Result<i32, Exit> {
    let home = Home::locate().map_err(env_error)?;
    let suite = home.suite(&a.suite).map_err(|e| Exit {
        code: exit::USAGE,
        error: e.into(),
    })?;
    let Some(name) = suite.world.clone() else {
        return Err(Exit {
            code: exit::USAGE,
            error: anyhow::anyhow!(
                "suite {} has no world (no `world = ...` in {})",
                suite.name,
                suite.path.display()
            ),
        });
    };
    let seed = a.seed.unwrap_or(suite.world_seed);
    let bar = crate::report::progress::WorldBar::new(a.json);
    let (w, built) = crate::world::ensure(&home, &name, seed, &bar).map_err(|e| match e {
        crate::world::WorldError::NotFound { .. } | crate::world::WorldError::Config { .. } => {
            Exit {
                code: exit::USAGE,
                error: e.into(),
            }
        }
        other => failed(other),
    })?;
    bar.finish();
    if a.json {
        let mut v = serde_json::to_value(&w.manifest).map_err(failed)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("served");
            o.remove("canaries");
            o.insert("dir".into(), w.dir.display().to_string().into());
            o.insert("built".into(), built.into());
        }
        println!("{v}");
    } else if show {
        print!("{}", crate::report::show::world(&w));
        match crate::config::reference::load(&home, &name) {
            Ok(Some(r)) => {
                let stale = if r.world_hash == w.manifest.world_hash {
                    ""
                } else {
                    " — measured on another world hash: run `gptx world reference` again"
                };
                println!(
                    "reference values (run {}, {}, {}){stale}:",
                    r.run_id, r.measured_at, r.level
                );
                for (k, v) in &r.values {
                    println!("  {k:<26} {v}");
                }
            }
            Ok(None) => println!(
                "no reference values yet: `gptx world reference --suite {}` measures them",
                a.suite
            ),
            Err(e) => println!("reference values: {e}"),
        }
    } else {
        let m = &w.manifest;
        println!(
            "world {} (seed {}) {}  {}  ({:.1} s{})",
            m.name,
            m.seed,
            &m.world_hash[..12],
            w.dir.display(),
            m.stats.build_seconds,
            if built {
                ", built"
            } else {
                ", cached: skipped"
            }
        );
    }
    Ok(exit::OK)
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

async fn gc(all: bool, runs_dir: &std::path::Path) -> Result<i32, Exit> {
    let mut marking = mark_dead_runs(runs_dir);
    let docker = crate::docker::engine::connect().await.map_err(env_error)?;
    let (removed, mut warnings) = crate::docker::engine::gc(&docker, all)
        .await
        .map_err(failed)?;
    println!(
        "removed {} container(s), {} network(s), {} volume(s)",
        removed.containers.len(),
        removed.networks.len(),
        removed.volumes.len()
    );
    // Workspace disks of runs that have no container left: their gptx is gone.
    let mut released = 0;
    for (mount, run) in crate::sandbox::quota::orphans() {
        let alive = crate::docker::engine::leftovers(&docker, &run)
            .await
            .unwrap_or(1)
            > 0;
        if alive && !all {
            continue;
        }
        match crate::sandbox::quota::release_orphan(&mount) {
            Ok(()) => released += 1,
            Err(e) => warnings.push(e.to_string()),
        }
    }
    if released > 0 {
        println!("released {released} workspace disk(s) of dead runs (their contents kept)");
    }
    warnings.append(&mut marking);
    for w in &warnings {
        eprintln!("gptx gc: {w}");
    }
    Ok(if warnings.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
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
        assert_eq!(args.agent, vec!["null", "reference:crawl,tokenize"]);
        assert_eq!(args.parallel, 2);
        let plans = plans(&args).unwrap();
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
        format!("{:#}", plans(&args).err().expect("an error"))
    }
}
