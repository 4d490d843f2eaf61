//! The run loop: stages in order, the agent's tool calls executed against a sandbox, budgets, events out.
//!
//! Imported by `docker` (the session runs it) and `cli` (`gptx bench`); imports the folders below
//! it, never `docker`.
//!
//! The runner knows nothing of Docker or terminals: it drives a `dyn Sandbox` and a `dyn Agent`, and its
//! only output is the typed event stream handed to reporters (the recorder among them).

mod exec;
mod rescue;
mod resume;

pub use resume::{Current, ResumeState};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::agent::tools::{self, RawCall, ToolCall, ToolError};
use crate::agent::{Agent, StageTask, StageVerdict, Turn, Verdict};
use crate::config::suite::{Budgets, Home, Stage, StageNetwork, Suite};
use crate::sandbox::{ExecRequest, OutStream, Sandbox};
use crate::stages::levels;
use crate::stages::scorer::{CheckRequest, ScoreContext, Scorer};
use crate::trace::rundir::RunDir;
use crate::trace::rundir::{RunMeta, RunScore, RunStatus, StageSummary};
use crate::trace::{
    EndReason, Event, EventSink, IntegrityNote, OutputRef, OutputStore, StageScore, StepRecord,
    StepUsage, WorkspaceHistory,
};

/// A stage's outcome as the run result reports it.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub stage: String,
    pub ended_by: EndReason,
    pub steps: u64,
    pub sandbox_seconds: f64,
    pub wall_seconds: f64,
    pub score: Option<StageScore>,
    /// The harness handed over this stage's reference artifact after it failed.
    pub rescued: bool,
    /// An LLM agent's model tokens and cost (None: unpriced) in this stage.
    pub usage: Option<(u64, Option<f64>)>,
    /// CPU seconds the stage's commands used in the sandbox (the container's cgroup where known).
    pub cpu_seconds: f64,
}

/// The end of a run as the runner saw it.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub status: RunStatus,
    pub level: String,
    /// The level with rescued stages counted (`L4*`), when rescue let the agent get further.
    pub assisted_level: Option<String>,
    pub bootstrap_index: f64,
    pub stages: Vec<StageOutcome>,
    pub wall_seconds: f64,
    pub trace_sha256: Option<String>,
    pub events: u64,
    /// The integrity ledger: what was refused or cleaned up on the agent's side.
    pub integrity: Vec<IntegrityNote>,
}

impl RunResult {
    /// The run's `score.json`, scored by the current formulas (`stages::scale::SCORING`).
    pub fn score(&self, suite: &str, meta: &RunMeta) -> RunScore {
        RunScore {
            run_id: meta.run_id.clone(),
            suite: suite.to_string(),
            agent: meta.agent.clone(),
            seed: meta.seed,
            world_hash: meta.world_hash.clone(),
            status: self.status,
            level: self.level.clone(),
            assisted_level: self.assisted_level.clone(),
            bootstrap_index: self.bootstrap_index,
            stages: self.summaries(),
            integrity: self.integrity.clone(),
            resumed: meta.resumes.len() as u32,
            scoring: crate::stages::scale::SCORING,
        }
    }

    /// Per-stage summaries for score.json and `--json`.
    pub fn summaries(&self) -> BTreeMap<String, StageSummary> {
        self.stages
            .iter()
            .map(|o| {
                let mut s = match &o.score {
                    Some(score) => StageSummary::from_score(score),
                    None => StageSummary::from_score(&StageScore {
                        status: "not_scored".into(),
                        passed: false,
                        metrics: Default::default(),
                        reason: Some(format!("the stage ended by {:?}", o.ended_by)),
                        normalized: None,
                        public_reason: None,
                    }),
                };
                s.ended_by = Some(o.ended_by);
                s.rescued = o.rescued;
                if let Some((tokens, cost)) = o.usage {
                    s.tokens = Some(tokens);
                    s.cost_usd = cost;
                }
                s.steps = o.steps;
                s.sandbox_seconds = o.sandbox_seconds;
                s.wall_seconds = o.wall_seconds;
                s.cpu_seconds = Some(crate::trace::round(o.cpu_seconds, 3));
                (o.stage.clone(), s)
            })
            .collect()
    }
}

/// What a resumed run starts from: its trace folded, why it had stopped, and how the session
/// brought the workspace back.
pub struct ResumeFrom {
    pub state: ResumeState,
    pub reason: String,
    /// `kept` or `restored`.
    pub workspace: String,
    pub aside: Option<String>,
    pub missing: Vec<String>,
}

/// How [`Runner::run_stage`] takes up a stage begun before the run stopped.
struct Continue {
    steps: u64,
    sandbox_seconds: f64,
    wall_seconds: f64,
    cpu_seconds: f64,
    /// The agent's part had ended: the stage is only graded.
    ended: Option<EndReason>,
    /// The agent's state was rebuilt: it goes on without `begin_stage`.
    ready: bool,
    /// Tokens and cost the stage had used that the agent does not count (it was started afresh):
    /// they still count against `max_tokens` and `max_cost_usd`.
    usage_before: Option<(u64, Option<f64>)>,
}

/// The agent's tokens and cost with what the stage had used before it was started afresh.
fn usage_with(
    now: Option<(u64, Option<f64>)>,
    before: Option<(u64, Option<f64>)>,
) -> Option<(u64, Option<f64>)> {
    match (now, before) {
        (Some((t, c)), Some((t0, c0))) => Some((
            t + t0,
            match (c, c0) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        )),
        (now, None) => now,
        (None, before) => before,
    }
}

/// What a fresh agent is told when the stage it is given was begun before the run stopped.
fn resumed_note(c: &Current, budgets: &Budgets, reason: &str) -> String {
    format!(
        "\n\nThis stage was interrupted ({reason}) and is now resumed. The workspace holds the work done so far in it, as it was after its last completed step ({} steps). Left of this stage's budgets: {} tool calls, {:.0} s of command time, {:.0} s in all.",
        c.steps,
        budgets.max_steps.saturating_sub(c.steps),
        (budgets.max_sandbox_seconds - c.sandbox_seconds).max(0.0),
        (budgets.max_wall_seconds - c.wall_seconds).max(0.0),
    )
}

/// Everything the loop needs besides the agent.
pub struct Runner {
    pub home: Home,
    pub suite: Suite,
    pub run_id: String,
    pub run_dir: RunDir,
    pub sandbox: Arc<dyn Sandbox>,
    /// The run's internal network, joined in stages whose network is `world`.
    pub world_network: Option<String>,
    /// The built world, when the suite has one (the crawl scorer grades against it).
    pub world: Option<Arc<crate::world::World>>,
    /// Where scorers run the agent's programs on hidden data (fresh scoring sandboxes).
    pub programs: Option<Arc<dyn crate::sandbox::programs::Programs>>,
    /// Where the selfhost stage rebuilds from the recipe.
    pub rebuilder: Option<Arc<dyn crate::stages::selfhost::Rebuilder>>,
    /// Makes the scoring sandboxes for a private copy of the workspace: with it, every stage is
    /// graded from a read-only copy made after its processes were killed (without it, from the live
    /// workspace: the fake sandbox of the tests).
    pub graded_programs: Option<GradedPrograms>,
    /// Hand over the reference artifact of a failed crawl or tokenize stage (`--rescue`).
    pub rescue: bool,
    pub events: EventSink,
    pub history: Option<WorkspaceHistory>,
    pub outputs: OutputStore,
    pub cancel: CancellationToken,
    step: u64,
    /// The run's integrity ledger so far (also emitted as `integrity` events).
    ledger: Vec<IntegrityNote>,
    /// Bytes of agent logs recorded so far (capped at [`AGENT_LOG_CAP`] per run).
    agent_log_bytes: u64,
    /// The contamination ledger, built at the first stage's end (Err: it could not be).
    contamination: Option<Result<crate::stages::contamination::Ledger, String>>,
    /// The stage's tool calls as recorded, for its contamination scan.
    stage_calls: Vec<crate::stages::contamination::Call>,
    /// Why the run stopped when the engine behind the sandbox went away.
    pub lost: Option<String>,
    /// What was measured in the run's image when it was built: the instructions state it.
    pub image_facts: Option<crate::config::image::ImageFacts>,
}

/// The recipe files the selfhost copy refused for what they were, not for their size or place: a
/// link, a FIFO or device, a file that changed while it was read. An integrity note when any.
fn refused_note(stage: &str, score: &StageScore) -> Option<IntegrityNote> {
    let refused = score.metrics.get("recipe")?.get("refused")?.as_array()?;
    let odd: Vec<String> = refused
        .iter()
        .filter(|r| {
            let why = r["reason"].as_str().unwrap_or("");
            [
                "symlink",
                "not a regular file",
                "following links",
                "grew",
                "changed while",
            ]
            .iter()
            .any(|k| why.contains(k))
        })
        .map(|r| r["path"].as_str().unwrap_or("?").to_string())
        .collect();
    (!odd.is_empty()).then(|| IntegrityNote {
        stage: Some(stage.to_string()),
        kind: "files_refused".into(),
        count: odd.len() as u64,
        detail: format!(
            "not copied into the rebuild (links, FIFOs, files that changed): {}",
            odd.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Whether the workspace's own filesystem (of `disk_mb`) is full at a stage's end: the agent hit its
/// disk limit. None for a workspace without one (its filesystem is larger than the limit).
fn disk_full(workspace: &std::path::Path, disk_mb: u64) -> Option<String> {
    let st = rustix::fs::statvfs(workspace).ok()?;
    let total = st.f_blocks * st.f_frsize;
    let free = st.f_bavail * st.f_frsize;
    (total <= (disk_mb << 20) && free < (total / 100).max(1 << 20)).then(|| {
        format!(
            "the workspace's {disk_mb} MiB disk was full ({} KiB free) when the stage ended",
            free >> 10
        )
    })
}

/// Copies the workspace into `<run>/graded/` (`cp -a --sparse=always`: links stay links, FIFOs stay
/// FIFOs, holes stay holes; the agent's disk limit bounds it) and opens it: what the stage is graded
/// on, fixed after the stage's processes were killed.
fn graded_copy(
    workspace: &std::path::Path,
    run_dir: &RunDir,
) -> Result<(std::path::PathBuf, crate::sandbox::WorkspaceRoot), String> {
    let to = run_dir.graded();
    crate::sandbox::quota::copy_tree(workspace, &to).map_err(|e| e.to_string())?;
    let root = crate::sandbox::WorkspaceRoot::open(&to, None)
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok((to, root))
}

/// Makes [`crate::sandbox::programs::Programs`] for a copy of the workspace at a path.
pub(crate) type GradedPrograms =
    Arc<dyn Fn(&std::path::Path) -> Arc<dyn crate::sandbox::programs::Programs> + Send + Sync>;

/// Bytes of an external agent's stderr one run records; the rest is counted, not kept.
pub(crate) const AGENT_LOG_CAP: u64 = 16 << 20;

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        home: Home,
        suite: Suite,
        run_id: String,
        run_dir: PathBuf,
        sandbox: Arc<dyn Sandbox>,
        events: EventSink,
        history: Option<WorkspaceHistory>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            home,
            suite,
            run_id,
            outputs: OutputStore::new(&RunDir::new(run_dir.clone()).outputs()),
            run_dir: RunDir::new(run_dir),
            sandbox,
            world_network: None,
            world: None,
            programs: None,
            rebuilder: None,
            graded_programs: None,
            rescue: false,
            events,
            history,
            cancel,
            step: 0,
            ledger: Vec::new(),
            agent_log_bytes: 0,
            contamination: None,
            stage_calls: Vec::new(),
            lost: None,
            image_facts: None,
        }
    }

    /// After a failed sandbox operation: is the engine gone? Then the run stops as interrupted
    /// (a lost engine is nobody's grade), and the reason is kept.
    async fn engine_gone(&mut self) -> bool {
        if self.lost.is_some() {
            return true;
        }
        match self.sandbox.engine_lost().await {
            Some(why) => {
                let why = format!("the Docker engine stopped answering ({why}); the run stopped");
                self.warn(why.clone());
                self.lost = Some(why);
                self.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Sends an event to the recorder, then to every reporter.
    pub fn emit(&mut self, event: Event) {
        self.events.emit(event);
    }

    fn warn(&mut self, message: String) {
        self.events.warn(message);
    }

    /// Records an entry of the integrity ledger.
    fn note(&mut self, note: IntegrityNote) {
        self.ledger.push(note.clone());
        self.emit(Event::Integrity(note));
    }

    /// Runs every stage of the suite with `agent`; the caller then tears down and calls [`Runner::finish`].
    pub async fn run(&mut self, agent: &mut dyn Agent, image: &str) -> RunResult {
        self.run_started(agent, image);
        self.run_from(agent, Vec::new(), 0, None, 0.0).await
    }

    /// Emits `run_started`.
    fn run_started(&mut self, agent: &dyn Agent, image: &str) {
        self.emit(Event::RunStarted {
            run_id: self.run_id.clone(),
            suite: self.suite.name.clone(),
            agent: agent.spec(),
            seed: self.suite.seed,
            gptx_version: env!("CARGO_PKG_VERSION").into(),
            world_hash: None,
            image: image.into(),
            stages: self.suite.stage_names(),
        });
    }

    /// Goes on with an interrupted run whose trace this runner's recorder continues: graded stages
    /// keep their grades, the stage begun goes on with what is left of its budgets, and the agent
    /// is rebuilt from the trace or, when it cannot be, given the stage afresh with a note. Emits
    /// `run_resumed` first.
    pub async fn resume(
        &mut self,
        agent: &mut dyn Agent,
        image: &str,
        from: ResumeFrom,
    ) -> RunResult {
        let st = from.state;
        // A run stopped before it had begun has no `run_started`: it gets one now.
        if !st.started {
            self.run_started(agent, image);
        }
        self.step = st.step;
        self.ledger = st.ledger.clone();
        self.agent_log_bytes = st.agent_log_bytes;
        let stages = self.suite.stages.clone();
        let past = self.past_stages(&st.past);
        // Only a stage the agent is still in needs its state; a stage begun anew gets begin_stage.
        let rebuilt = match agent.resume(&past).await {
            Ok(b) => b,
            Err(e) => {
                self.warn(format!(
                    "the agent's state could not be rebuilt from the trace ({e}); it is given the stage afresh"
                ));
                false
            }
        };
        let current = st.current.clone();
        self.stage_calls = current
            .as_ref()
            .map(|c| c.calls.clone())
            .unwrap_or_default();
        self.emit(Event::RunResumed(crate::trace::Resumed {
            reason: from.reason.clone(),
            after_step: st.step,
            stage: current.as_ref().map(|c| c.name.clone()),
            workspace: from.workspace,
            commit: st.last_commit.clone(),
            aside: from.aside,
            missing: from.missing,
            agent: if rebuilt { "rebuilt" } else { "fresh" }.into(),
            redo: st.redo,
            used: current.as_ref().map(|c| crate::trace::BudgetsUsed {
                steps: c.steps,
                sandbox_seconds: crate::trace::round(c.sandbox_seconds, 3),
                wall_seconds: crate::trace::round(c.wall_seconds, 3),
                tokens: c.tokens,
                cost_usd: c.cost_usd,
            }),
        }));
        let mut outcomes = st.done.clone();
        // A failed stage whose rescue the stop cut short is rescued now, before the next stage.
        if current.is_none() && self.rescue {
            let later = outcomes.len() < stages.len();
            if let Some(last) = outcomes.last_mut() {
                let failed = last.score.as_ref().is_some_and(|s| !s.passed);
                if failed
                    && later
                    && !st.rescue_tried.contains(&last.stage)
                    && crate::config::stages::find(&last.stage).is_some_and(|d| d.rescuable)
                {
                    let name = last.stage.clone();
                    let ok = self.rescue_stage(&name).await;
                    if let Some(last) = outcomes.last_mut() {
                        last.rescued = ok;
                    }
                }
            }
        }
        let cont = current.map(|c| {
            let note = stages
                .get(c.index)
                .filter(|_| !rebuilt && c.ended.is_none())
                .map(|s| resumed_note(&c, &s.budgets, &from.reason));
            (
                Continue {
                    steps: c.steps,
                    sandbox_seconds: c.sandbox_seconds,
                    wall_seconds: c.wall_seconds,
                    cpu_seconds: c.cpu_seconds,
                    ended: c.ended,
                    ready: rebuilt,
                    // A rebuilt agent counts its own; one started afresh does not know them.
                    usage_before: (!rebuilt)
                        .then(|| c.tokens.map(|t| (t, c.cost_usd)))
                        .flatten(),
                },
                note,
            )
        });
        let first = st.next_index();
        outcomes.truncate(first);
        self.run_from(agent, outcomes, first, cont, st.wall_seconds)
            .await
    }

    /// The stages the agent ended before the stop, with their tasks, as a rebuilt agent is told.
    fn past_stages(&mut self, past: &[resume::PastOf]) -> Vec<crate::agent::PastStage> {
        let stages = self.suite.stages.clone();
        let mut out = Vec::new();
        for p in past {
            if let Some(stage) = stages.get(p.index) {
                let task = self.task_for(stage, p.index).1;
                let (events, ended) = (p.events.clone(), p.ended);
                out.push(crate::agent::PastStage {
                    task,
                    events,
                    ended,
                });
            }
        }
        out
    }

    /// The stages from `first` on (the outcomes of those before given), the first of them taken up
    /// as `cont` says when given.
    async fn run_from(
        &mut self,
        agent: &mut dyn Agent,
        mut outcomes: Vec<StageOutcome>,
        first: usize,
        mut cont: Option<(Continue, Option<String>)>,
        wall_before: f64,
    ) -> RunResult {
        let started = Instant::now();
        let mut status = RunStatus::Done;
        let stages = self.suite.stages.clone();
        for (index, stage) in stages.iter().enumerate().skip(first) {
            let mut outcome = self.run_stage(agent, stage, index, cont.take()).await;
            let interrupted = outcome.ended_by == EndReason::Interrupted;
            let failed = outcome.score.as_ref().is_some_and(|s| !s.passed);
            let later = index + 1 < stages.len();
            if !interrupted
                && failed
                && later
                && self.rescue
                && crate::config::stages::find(&stage.name).is_some_and(|d| d.rescuable)
            {
                outcome.rescued = self.rescue_stage(&stage.name).await;
            }
            outcomes.push(outcome);
            if let Some(why) = self.events.recorder.broken() {
                tracing::error!("the trace could not be written ({why}); the run stops as failed");
                status = RunStatus::Failed;
                break;
            }
            if interrupted {
                status = RunStatus::Interrupted;
                break;
            }
        }
        let scores: BTreeMap<String, StageScore> = outcomes
            .iter()
            .filter_map(|o| o.score.clone().map(|s| (o.stage.clone(), s)))
            .collect();
        let rescued: Vec<String> = outcomes
            .iter()
            .filter(|o| o.rescued)
            .map(|o| o.stage.clone())
            .collect();
        let levels = levels::levels(&scores, &rescued);
        let level = levels.level;
        let bootstrap_index = levels::bootstrap_index(&scores);
        if status == RunStatus::Done {
            let verdict = Verdict {
                level: level.clone(),
                bootstrap_index,
                stages: outcomes
                    .iter()
                    .map(|o| StageVerdict {
                        stage: o.stage.clone(),
                        passed: o.score.as_ref().is_some_and(|s| s.passed),
                        status: o
                            .score
                            .as_ref()
                            .map(|s| s.status.clone())
                            .unwrap_or_else(|| "not scored".into()),
                        ended_by: o.ended_by,
                        reason: o.score.as_ref().and_then(|s| s.told()),
                    })
                    .collect(),
            };
            agent.done(&verdict).await;
            if let Some(last) = stages.last() {
                self.agent_log(agent, &last.name);
            }
        }
        let wall_seconds = wall_before + started.elapsed().as_secs_f64();
        RunResult {
            status,
            level,
            assisted_level: levels.assisted,
            bootstrap_index,
            stages: outcomes,
            wall_seconds,
            trace_sha256: None,
            events: 0,
            integrity: self.ledger.clone(),
        }
    }

    /// The network a stage's sandbox is on, and the task its agent is given.
    fn task_for(&mut self, stage: &Stage, index: usize) -> (Option<String>, StageTask) {
        let network = match stage.network {
            StageNetwork::World => self.world_network.clone(),
            StageNetwork::None => None,
        };
        let manifest = self.world.as_ref().map(|w| &w.manifest);
        let seeds = manifest.map(|m| m.seed_urls.clone()).unwrap_or_default();
        let instruction = match crate::stages::contract::instruction(
            &self.home,
            &self.suite,
            stage,
            &seeds,
            manifest.and_then(|m| m.request_budget),
            self.image_facts.as_ref(),
        ) {
            Ok(text) => text,
            Err(e) => {
                self.warn(e.to_string());
                format!("Stage {}: see SPEC §3 for what to produce.\n", stage.name)
            }
        };
        let task = StageTask {
            stage: stage.name.clone(),
            index,
            instruction,
            tools: tools::schemas(),
            limits: stage.budgets.clone(),
        };
        (network, task)
    }

    async fn run_stage(
        &mut self,
        agent: &mut dyn Agent,
        stage: &Stage,
        index: usize,
        cont: Option<(Continue, Option<String>)>,
    ) -> StageOutcome {
        let started = Instant::now();
        let budgets = stage.budgets.clone();
        let (network, mut task) = self.task_for(stage, index);
        if let Err(e) = self.sandbox.set_network(network.as_deref()).await {
            self.warn(format!(
                "stage {}: could not set the sandbox network: {e}",
                stage.name
            ));
        }
        let (cont, note) = match cont {
            Some((c, note)) => (Some(c), note),
            None => (None, None),
        };
        if cont.is_none() {
            self.stage_calls.clear();
            self.emit(Event::StageStarted {
                stage: stage.name.clone(),
                index,
                budgets: budgets.clone(),
                network: network.clone(),
                instruction_sha256: crate::trace::sha256_hex(task.instruction.as_bytes()),
            });
        }
        let scorer = crate::stages::scorer_for(&stage.name, self.world.as_ref());
        let mut steps = cont.as_ref().map_or(0, |c| c.steps);
        let mut sandbox_seconds = cont.as_ref().map_or(0.0, |c| c.sandbox_seconds);
        let mut cpu_seconds = cont.as_ref().map_or(0.0, |c| c.cpu_seconds);
        let wall_before = cont.as_ref().map_or(0.0, |c| c.wall_seconds);
        let usage_before = cont.as_ref().and_then(|c| c.usage_before);
        let wall_deadline =
            started + Duration::from_secs_f64((budgets.max_wall_seconds - wall_before).max(0.0));
        if let Some(note) = &note {
            task.instruction.push_str(note);
            task.limits.max_steps = budgets.max_steps.saturating_sub(steps);
            task.limits.max_sandbox_seconds =
                (budgets.max_sandbox_seconds - sandbox_seconds).max(0.0);
            task.limits.max_wall_seconds = (budgets.max_wall_seconds - wall_before).max(0.0);
        }
        let ended_by = 'stage: {
            if let Some(ended) = cont.as_ref().and_then(|c| c.ended) {
                break 'stage ended;
            }
            if !cont.as_ref().is_some_and(|c| c.ready) {
                let begun = agent.begin_stage(&task).await;
                self.agent_log(agent, &stage.name);
                if let Err(e) = begun {
                    self.warn(e.to_string());
                    break 'stage EndReason::AgentError;
                }
            }
            loop {
                if self.cancel.is_cancelled() || self.events.recorder.broken().is_some() {
                    break 'stage EndReason::Interrupted;
                }
                if steps >= budgets.max_steps {
                    break 'stage EndReason::MaxSteps;
                }
                if sandbox_seconds >= budgets.max_sandbox_seconds {
                    break 'stage EndReason::MaxSandboxSeconds;
                }
                if let Some((tokens, cost)) = usage_with(agent.usage(), usage_before) {
                    if budgets.max_tokens.is_some_and(|m| tokens >= m) {
                        break 'stage EndReason::MaxTokens;
                    }
                    if let (Some(m), Some(c)) = (budgets.max_cost_usd, cost) {
                        if c >= m {
                            break 'stage EndReason::MaxCostUsd;
                        }
                    }
                }
                let now = Instant::now();
                if now >= wall_deadline {
                    break 'stage EndReason::MaxWallSeconds;
                }
                let turn = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break 'stage EndReason::Interrupted,
                    t = tokio::time::timeout_at(wall_deadline.into(), agent.next()) => t,
                };
                self.agent_log(agent, &stage.name);
                let call = match turn {
                    Err(_) => break 'stage EndReason::MaxWallSeconds,
                    Ok(Err(e)) => {
                        self.warn(e.to_string());
                        break 'stage EndReason::AgentError;
                    }
                    Ok(Ok(Turn::Finished)) => break 'stage EndReason::AgentFinished,
                    Ok(Ok(Turn::Call(call))) => call,
                };
                steps += 1;
                self.step += 1;
                let step = self.step;
                self.emit(Event::StepStarted {
                    stage: stage.name.clone(),
                    step,
                    tool: call.tool.clone(),
                    args: call.args.clone(),
                });
                let begun = chrono::Utc::now();
                let t0 = Instant::now();
                let parsed = ToolCall::parse(&call);
                let remaining_sandbox = budgets.max_sandbox_seconds - sandbox_seconds;
                let remaining_wall = wall_deadline.saturating_duration_since(Instant::now());
                let exec = self.execute(
                    &parsed,
                    &call,
                    &budgets,
                    remaining_sandbox,
                    remaining_wall,
                    stage,
                    scorer.as_ref(),
                );
                let res = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => None,
                    r = exec => Some(r),
                };
                let Some(mut res) = res else {
                    break 'stage EndReason::Interrupted;
                };
                // A command the harness failed (the sandbox operation failed, or its supervisor
                // went away) is the agent's doing unless the engine is gone: then it is no step of
                // the agent's, recorded as the harness's failure, and the run stops.
                let harness_failed = matches!(&res.result, Err(e) if e.code == "sandbox_error")
                    || res.harness_fault.is_some();
                let lost = harness_failed && self.engine_gone().await;
                if let (true, Some(why)) = (lost, &res.harness_fault) {
                    res.result = Err(ToolError::new(
                        "sandbox_error",
                        format!("the Docker engine went away during this command ({why})"),
                    ));
                }
                sandbox_seconds += res.sandbox_seconds;
                if let Some(u) = &res.usage {
                    cpu_seconds += u.container_cpu_seconds.unwrap_or(u.cpu_seconds);
                }
                let commit = if matches!(parsed, Ok(ToolCall::ReadFile { .. })) {
                    None
                } else {
                    self.snapshot(step, &stage.name, &call).await
                };
                let ok = res.result.is_ok();
                let result_value = match &res.result {
                    Ok(v) => v.clone(),
                    Err(e) => json!({"code": e.code, "message": e.message}),
                };
                self.stage_calls
                    .push((step, call.tool.clone(), res.recorded_args.clone()));
                self.emit(Event::Step(StepRecord {
                    stage: stage.name.clone(),
                    step,
                    stage_step: steps,
                    tool: call.tool.clone(),
                    args: res.recorded_args,
                    ok,
                    result: result_value,
                    started_at: begun,
                    duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    sandbox_seconds: res.sandbox_seconds,
                    usage: res.usage.clone(),
                    outputs: res.outputs.clone(),
                    commit,
                }));
                if lost {
                    break 'stage EndReason::Interrupted;
                }
                if let Err(e) = agent.observe(&call, &res.result).await {
                    self.warn(e.to_string());
                    break 'stage EndReason::AgentError;
                }
                if matches!(parsed, Ok(ToolCall::Submit)) {
                    break 'stage EndReason::Submit;
                }
            }
        };
        if let Some(budget) = ended_by.budget() {
            if cont.as_ref().is_none_or(|c| c.ended.is_none()) {
                agent.stopped(budget).await;
            }
        }
        let swept = self.sweep(stage).await;
        self.agent_log(agent, &stage.name);
        let usage = usage_with(agent.usage(), usage_before);
        let wall_seconds = wall_before + started.elapsed().as_secs_f64();
        self.emit(Event::StageEnded {
            stage: stage.name.clone(),
            ended_by,
            steps,
            sandbox_seconds,
            wall_seconds,
        });
        let mut ended_by = ended_by;
        if swept.is_err() && ended_by != EndReason::Interrupted && self.engine_gone().await {
            ended_by = EndReason::Interrupted;
        }
        let score = match swept {
            _ if ended_by == EndReason::Interrupted => None,
            Err(e) => Some(self.scored(
                stage,
                StageScore::zero(
                    "error",
                    format!("not graded: the agent's processes could not be stopped ({e})"),
                ),
            )),
            Ok(()) => self.grade(stage, scorer.as_ref()).await,
        };
        if score.is_none() {
            ended_by = EndReason::Interrupted;
        }
        StageOutcome {
            stage: stage.name.clone(),
            ended_by,
            steps,
            sandbox_seconds,
            wall_seconds,
            score,
            rescued: false,
            usage,
            cpu_seconds,
        }
    }

    /// Ends the stage in the sandbox: every process of the agent's is killed (SPEC §5), and what the
    /// sweep found goes into the integrity ledger. Err: the processes could not be stopped.
    async fn sweep(&mut self, stage: &Stage) -> Result<(), String> {
        let s = match self.sandbox.end_stage().await {
            Ok(s) => s,
            Err(e) => {
                self.warn(format!(
                    "stage {}: the agent's processes could not be stopped: {e}",
                    stage.name
                ));
                return Err(e.to_string());
            }
        };
        let note = |kind: &str, count: u64, detail: String| IntegrityNote {
            stage: Some(stage.name.clone()),
            kind: kind.into(),
            count,
            detail,
        };
        if s.bad_lines > 0 {
            self.note(note(
                "supervisor_lines",
                s.bad_lines,
                "lines from the sandbox's supervisor that were not its protocol were dropped"
                    .into(),
            ));
        }
        if let Some(full) = disk_full(self.sandbox.workspace().path(), self.suite.sandbox.disk_mb) {
            self.note(note("disk_full", 1, full));
        }
        if s.killed > 0 {
            let detail = format!(
                "still running when the stage ended: {}",
                s.commands.join(" | ")
            );
            self.note(note("processes_killed", s.killed, detail));
        }
        Ok(())
    }

    /// Emits a stage's score and gives it back.
    fn scored(&mut self, stage: &Stage, score: StageScore) -> StageScore {
        self.emit(Event::StageScored {
            stage: stage.name.clone(),
            score: score.clone(),
        });
        score
    }

    /// Grades a stage whose agent's processes are gone: a private copy of the workspace, the
    /// contamination scan of what the agent wrote (a hit rejects the stage unscored), then the
    /// scorer. None: interrupted while scoring.
    async fn grade(&mut self, stage: &Stage, scorer: &dyn Scorer) -> Option<StageScore> {
        // The grade reads a private copy, made now that nothing of the agent runs.
        let graded = match &self.graded_programs {
            Some(make) => match graded_copy(self.sandbox.workspace().path(), &self.run_dir) {
                Ok((path, root)) => Some((make(&path), root, path)),
                Err(e) => {
                    let why =
                        format!("not graded: the workspace could not be copied for grading ({e})");
                    return Some(self.scored(stage, StageScore::zero("error", why)));
                }
            },
            None => None,
        };
        let files = match &graded {
            Some((_, _, path)) => (path.clone(), "the graded copy"),
            None => (
                self.sandbox.workspace().path().to_path_buf(),
                "the workspace",
            ),
        };
        let scored = match self.contamination(stage, files).await {
            Some(rejected) => Some(rejected),
            None => {
                let mut ctx = self.score_context(stage);
                if let Some((programs, root, _)) = &graded {
                    ctx.programs = Some(programs.as_ref());
                    ctx.graded = Some(root);
                }
                // Scoring can take long (a selfhost rebuild); an interrupt drops it, and the
                // session's sweep removes whatever containers it had made.
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => None,
                    s = scorer.score(&ctx) => Some(s),
                }
            }
        };
        if let Some((_, _, path)) = graded {
            let _ = std::fs::remove_dir_all(&path);
        }
        // A grade that failed on the harness's side because the engine went away is no grade: the
        // stage stays ungraded and the run stops.
        let scored = match scored {
            Some(s) if s.status == "error" && self.engine_gone().await => None,
            other => other,
        };
        let Some(score) = scored else {
            self.warn(format!("stage {}: interrupted while scoring", stage.name));
            return None;
        };
        let score = self.scored(stage, score);
        if let Some(note) = refused_note(&stage.name, &score) {
            self.note(note);
        }
        Some(score)
    }

    /// The contamination scan of a stage (the ledger built at the first stage's end, on a blocking
    /// thread): its calls' arguments, its commits and `files`, the files the grade reads. A hit is an
    /// integrity note and the rejected score, and every later stage is rejected unscanned; a scan
    /// that cannot be made is a warning, and the stage is graded as usual.
    async fn contamination(
        &mut self,
        stage: &Stage,
        (files, label): (PathBuf, &'static str),
    ) -> Option<StageScore> {
        use crate::stages::contamination::{earlier_hit, later_rejection, StageWork};
        let calls = std::mem::take(&mut self.stage_calls);
        if let Some(found_in) = earlier_hit(&self.ledger, &stage.name) {
            return Some(later_rejection(found_in));
        }
        let mut ledger = self.contamination_ledger(stage).await?;
        let (name, git, outputs) = (
            stage.name.clone(),
            self.run_dir.git(),
            self.run_dir.outputs(),
        );
        let history = self.history.is_some();
        let joined = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let finding = ledger.scan(&StageWork {
                stage: &name,
                calls: &calls,
                outputs: &outputs,
                history: history.then_some(git.as_path()),
                files: &files,
                files_label: label,
            });
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!("stage {name}: scanned for text of T in {secs:.2} s");
            (ledger, finding)
        })
        .await;
        let Ok((ledger, finding)) = joined else {
            self.warn(format!(
                "stage {}: the scan for text of the hidden test documents failed; graded as usual",
                stage.name
            ));
            return None;
        };
        self.contamination = Some(Ok(ledger));
        for w in &finding.warnings {
            self.warn(format!("stage {}: the scan for text of the hidden test documents could not read everything ({w}); the rest was scanned", stage.name));
        }
        if let Some(note) = finding.unscanned_note(&stage.name) {
            self.note(note);
        }
        if !finding.hit() {
            return None;
        }
        self.note(finding.note(&stage.name));
        Some(finding.rejection())
    }

    /// The run's contamination ledger, built on a blocking thread at its first use. None (and a
    /// warning) when it cannot be.
    async fn contamination_ledger(
        &mut self,
        stage: &Stage,
    ) -> Option<crate::stages::contamination::Ledger> {
        use crate::stages::contamination::{Ledger, SpanIndex};
        let (world, home) = (self.world.clone()?, self.home.clone());
        let built = match self.contamination.take() {
            Some(l) => l.map(|l| (l, Vec::new())),
            None => tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                let (index, warnings) =
                    SpanIndex::of_world(&world, &home).map_err(|e| e.to_string())?;
                let secs = t0.elapsed().as_secs_f64();
                tracing::info!("contamination ledger: {} spans in {secs:.2} s", index.len());
                Ok((Ledger::new(Arc::new(index)), warnings))
            })
            .await
            .unwrap_or_else(|e| Err(format!("the index task failed: {e}"))),
        };
        match built {
            Ok((ledger, warnings)) => {
                for w in warnings {
                    self.warn(format!("contamination ledger: {w}"));
                }
                Some(ledger)
            }
            Err(e) => {
                self.contamination = Some(Err(e.clone()));
                self.warn(format!("stage {}: not scanned for text of the hidden test documents ({e}); graded as usual", stage.name));
                None
            }
        }
    }

    /// Records what the agent logged (an external agent's stderr) since the last look.
    fn agent_log(&mut self, agent: &mut dyn Agent, stage: &str) {
        for call in agent.take_model_calls() {
            self.emit(Event::ModelCall {
                stage: stage.into(),
                call,
            });
        }
        if let Some(text) = agent.take_log() {
            let n = text.len() as u64;
            let before = self.agent_log_bytes;
            self.agent_log_bytes += n;
            if before + n <= AGENT_LOG_CAP {
                self.emit(Event::AgentLog {
                    stage: stage.into(),
                    text,
                });
            } else if before <= AGENT_LOG_CAP {
                self.warn(format!(
                    "the agent's log passed the run's cap of {} MiB; the rest is not recorded",
                    AGENT_LOG_CAP >> 20
                ));
            }
        }
    }

    /// What a scorer may look at for `stage`, in `check` and in the grade alike.
    fn score_context<'a>(&'a self, stage: &'a Stage) -> ScoreContext<'a> {
        ScoreContext {
            stage,
            sandbox: self.sandbox.as_ref(),
            run_dir: &self.run_dir,
            gates: &self.suite.gates,
            reference: &self.suite.reference,
            programs: self.programs.as_deref(),
            scoring: &self.suite.scoring,
            rebuilder: self.rebuilder.as_deref(),
            rebuild_seconds: self.suite.rebuild_seconds,
            disk_mb: self.suite.sandbox.disk_mb,
            graded: None,
        }
    }

    /// Emits `run_finished` (after the caller tore the sandbox down) and pins the trace's tail hash.
    pub fn finish(&mut self, result: &mut RunResult) {
        finish(&mut self.events, result);
    }
}

/// Emits `run_finished` and fills in the trace's tail hash and event count.
pub fn finish(events: &mut EventSink, result: &mut RunResult) {
    events.emit(Event::RunFinished {
        status: result.status,
        level: result.level.clone(),
        bootstrap_index: result.bootstrap_index,
        wall_seconds: result.wall_seconds,
        assisted_level: result.assisted_level.clone(),
    });
    result.trace_sha256 = events.recorder.last_hash();
    result.events = events.recorder.count();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_agents_usage_adds_to_what_the_stage_had_used() {
        assert_eq!(
            usage_with(Some((100, Some(0.5))), Some((900, Some(1.5)))),
            Some((1000, Some(2.0)))
        );
        // An agent that counts nothing (an exec: agent) still meets the budget of what was used.
        assert_eq!(usage_with(None, Some((900, None))), Some((900, None)));
        assert_eq!(usage_with(Some((7, None)), None), Some((7, None)));
        assert_eq!(usage_with(None, None), None);
    }
}
