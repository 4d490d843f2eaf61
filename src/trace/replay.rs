//! The one fold of a run's event stream into per-run and per-stage state, fed event by event.
//!
//! Every reader of a trace (the terminal view, the web viewer's index, the exports, the synthetic
//! runs, the audit, the progress line) applies events to a [`Replay`] in trace order and reads what
//! it needs from it; none of them folds events into stage state of its own. A replay can be fed a
//! whole trace ([`Replay::of`]) or one event at a time as a live trace grows ([`Replay::apply`],
//! [`Replay::apply_at`]); a lazy index that does not parse steps counts them with
//! [`Replay::step_seen`].
//!
//! The rules, in one place:
//! - A stage is known from the first event that names it (`stage_started`, `step`, `stage_ended`,
//!   `stage_scored`, `model_call`, `agent_log`, `rescue`, an `integrity` note naming it), or from the
//!   list the replay was made with ([`Replay::with_stages`], run.json's order); stages the trace adds
//!   come after, in the order they first appear. A `step_started` adds no stage.
//! - Later events of a kind replace earlier ones (the last `stage_started`, `stage_ended`,
//!   `stage_scored` and `run_finished` count); steps, model calls and rescues add up.
//! - A warning, and an integrity note that names no stage, belong to the stage started last.
//! - A `run_resumed` event (`gptx resume`) makes the run unfinished again and the stage it names
//!   running again (its earlier `stage_ended`, of an interrupted stage, no longer counts); the
//!   stage's steps go on adding up.

use chrono::{DateTime, Utc};

use crate::config::suite::Budgets;
use crate::trace::log::Envelope;
use crate::trace::rundir::RunStatus;
use crate::trace::{EndReason, Event, IntegrityNote, ModelCall, StageScore, StepRecord, StepUsage};

/// A step that did not do what was asked: a tool error, a non-zero exit, a timeout or an OOM kill.
pub(crate) fn step_failed(s: &StepRecord) -> bool {
    !s.ok
        || s.result
            .get("exit_code")
            .is_some_and(|c| c.as_i64() != Some(0))
        || s.result.get("timed_out") == Some(&serde_json::Value::Bool(true))
        || s.result.get("oom_killed") == Some(&serde_json::Value::Bool(true))
}

/// CPU seconds of a step: the container's cgroup when known, else the command tree's.
pub(crate) fn step_cpu(u: &StepUsage) -> f64 {
    u.container_cpu_seconds.unwrap_or(u.cpu_seconds)
}

/// Peak memory of a step: the container's peak when known, else the command tree's max RSS.
pub(crate) fn step_peak_memory(u: &StepUsage) -> u64 {
    u.container_peak_bytes.unwrap_or(u.max_rss_kb * 1024)
}

/// Bytes a step's command wrote to stdout and stderr, as far as the trace tells: a stream kept in
/// `outputs/` counts its full size, any other its copy in the event.
pub(crate) fn step_output_bytes(s: &StepRecord) -> u64 {
    ["stdout", "stderr"]
        .iter()
        .map(
            |stream| match s.outputs.iter().find(|o| o.stream == *stream) {
                Some(r) => r.bytes_total,
                None => s
                    .result
                    .get(*stream)
                    .and_then(|v| v.as_str())
                    .map_or(0, |t| t.len() as u64),
            },
        )
        .sum()
}

/// What the steps of a stage (or of the whole run) add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTotals {
    /// Steps recorded (or, for a lazy index, seen).
    pub count: u64,
    /// Steps whose records were read: the fields below are theirs (equal to `count` unless steps
    /// were only seen, see [`Replay::step_seen`]).
    pub measured: u64,
    /// Steps that failed ([`step_failed`]).
    pub failed: u64,
    /// Steps whose command timed out, or was killed for memory.
    pub timed_out: u64,
    pub oom_killed: u64,
    /// Wall time of the tool calls, in milliseconds.
    pub duration_ms: f64,
    /// Time that counted against `max_sandbox_seconds`.
    pub sandbox_seconds: f64,
    /// CPU seconds of the commands ([`step_cpu`]).
    pub cpu_seconds: f64,
    /// The highest peak memory of any step ([`step_peak_memory`]).
    pub peak_memory_bytes: u64,
    /// Bytes written to stdout and stderr ([`step_output_bytes`]).
    pub output_bytes: u64,
    /// Steps that committed the workspace.
    pub commits: u64,
}

impl StepTotals {
    fn add(&mut self, s: &StepRecord) {
        self.count += 1;
        self.measured += 1;
        if step_failed(s) {
            self.failed += 1;
        }
        self.duration_ms += s.duration_ms;
        self.sandbox_seconds += s.sandbox_seconds;
        if let Some(u) = &s.usage {
            self.cpu_seconds += step_cpu(u);
            self.peak_memory_bytes = self.peak_memory_bytes.max(step_peak_memory(u));
            self.timed_out += u64::from(u.timed_out);
            self.oom_killed += u64::from(u.oom_killed);
        }
        self.output_bytes += step_output_bytes(s);
        self.commits += u64::from(s.commit.is_some());
    }
}

/// What an LLM agent's model calls add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTotals {
    pub calls: u64,
    /// Calls that failed (and were retried, or ended the agent).
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The cost of the priced calls; None when no call had a price.
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
}

impl ModelTotals {
    fn add(&mut self, c: &ModelCall) {
        self.calls += 1;
        self.errors += u64::from(c.error.is_some());
        self.input_tokens += c.input_tokens;
        self.output_tokens += c.output_tokens;
        self.cost_usd = match (self.cost_usd, c.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.latency_ms += c.latency_ms;
    }

    /// Input and output tokens.
    pub(crate) fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// What `stage_started` said.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The stage's index in the suite, as the runner numbered it.
    pub index: usize,
    pub budgets: Budgets,
    pub network: Option<String>,
    pub instruction_sha256: String,
    /// The event's time, when the replay was given it.
    pub at: Option<DateTime<Utc>>,
}

/// What `stage_ended` said: why, and the totals the harness measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Ended {
    pub by: EndReason,
    pub steps: u64,
    pub sandbox_seconds: f64,
    pub wall_seconds: f64,
    pub at: Option<DateTime<Utc>>,
}

/// Where a stage stands: the last of its `stage_started`, `stage_ended` and `stage_scored` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    NotStarted,
    Running,
    /// Ended and not (yet) scored.
    Ended,
    Scored,
}

/// One stage as the trace tells it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct StageState {
    pub name: String,
    /// Its place in the replay's list of stages.
    pub position: usize,
    pub phase: Phase,
    pub started: Option<Started>,
    pub ended: Option<Ended>,
    pub score: Option<StageScore>,
    /// The steps recorded in this stage.
    pub steps: StepTotals,
    /// `step_started` events of this stage (a step in flight is started and not recorded).
    pub steps_started: u64,
    pub model: ModelTotals,
    /// A rescue handed over this stage's reference artifact.
    pub rescued: bool,
}

impl StageState {
    fn new(name: &str, position: usize) -> Self {
        Self {
            name: name.to_string(),
            position,
            phase: Phase::NotStarted,
            started: None,
            ended: None,
            score: None,
            steps: StepTotals::default(),
            steps_started: 0,
            model: ModelTotals::default(),
            rescued: false,
        }
    }
}

/// What `run_finished` said.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub status: RunStatus,
    pub level: String,
    pub assisted_level: Option<String>,
    pub bootstrap_index: f64,
    pub wall_seconds: f64,
    pub at: Option<DateTime<Utc>>,
}

/// A rescue, as the `rescue` event tells it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rescue {
    pub stage: String,
    pub ok: bool,
    /// Workspace files written.
    pub files: Vec<String>,
    pub detail: String,
}

/// The last `step_started` that no `step` has followed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingStep {
    pub stage: String,
    pub step: u64,
    pub tool: String,
    pub args: serde_json::Value,
    pub at: Option<DateTime<Utc>>,
}

/// A run's state, folded from its events in order.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    stages: Vec<StageState>,
    /// The stages `run_started` announced.
    planned: Vec<String>,
    current: Option<usize>,
    steps: StepTotals,
    model: ModelTotals,
    pending: Option<PendingStep>,
    warnings: Vec<String>,
    integrity: Vec<IntegrityNote>,
    rescues: Vec<Rescue>,
    /// Positions of the scored stages, in the order of their (last) scores.
    scored: Vec<usize>,
    finished: Option<Finished>,
    /// The `run_resumed` events, in order.
    resumes: Vec<crate::trace::events::Resumed>,
}

impl Replay {
    /// A replay that knows these stages, in this order, before any event (run.json's list).
    pub(crate) fn with_stages<S: AsRef<str>>(names: &[S]) -> Self {
        let mut r = Self::default();
        for n in names {
            r.stage_mut(n.as_ref());
        }
        r
    }

    /// The replay of a whole trace.
    pub fn of(events: &[Envelope]) -> Self {
        let mut r = Self::default();
        for env in events {
            r.apply_at(env.ts, &env.event);
        }
        r
    }

    /// Applies the next event, its time unknown. Returns the position of the stage it belongs to
    /// (see the module's rules), None for a run-level event.
    pub(crate) fn apply(&mut self, ev: &Event) -> Option<usize> {
        self.fold(None, ev)
    }

    /// Applies the next event, written at `at` (its envelope's `ts`); see [`Replay::apply`].
    pub(crate) fn apply_at(&mut self, at: DateTime<Utc>, ev: &Event) -> Option<usize> {
        self.fold(Some(at), ev)
    }

    /// A step known only by its stage, as an index that parses steps lazily sees it: counted, with
    /// nothing measured.
    pub(crate) fn step_seen(&mut self, stage: &str) -> usize {
        let i = self.stage_mut(stage);
        self.stages[i].steps.count += 1;
        self.steps.count += 1;
        i
    }

    fn fold(&mut self, at: Option<DateTime<Utc>>, ev: &Event) -> Option<usize> {
        match ev {
            Event::RunStarted { stages, .. } => {
                self.planned = stages.clone();
                None
            }
            Event::StageStarted {
                stage,
                index,
                budgets,
                network,
                instruction_sha256,
            } => {
                let i = self.stage_mut(stage);
                let s = &mut self.stages[i];
                s.phase = Phase::Running;
                s.started = Some(Started {
                    index: *index,
                    budgets: budgets.clone(),
                    network: network.clone(),
                    instruction_sha256: instruction_sha256.clone(),
                    at,
                });
                self.current = Some(i);
                Some(i)
            }
            Event::StepStarted {
                stage,
                step,
                tool,
                args,
            } => {
                self.pending = Some(PendingStep {
                    stage: stage.clone(),
                    step: *step,
                    tool: tool.clone(),
                    args: args.clone(),
                    at,
                });
                let i = self.position(stage)?;
                self.stages[i].steps_started += 1;
                Some(i)
            }
            Event::Step(s) => {
                self.pending = None;
                let i = self.stage_mut(&s.stage);
                self.stages[i].steps.add(s);
                self.steps.add(s);
                Some(i)
            }
            Event::StageEnded {
                stage,
                ended_by,
                steps,
                sandbox_seconds,
                wall_seconds,
            } => {
                let i = self.stage_mut(stage);
                let s = &mut self.stages[i];
                s.phase = Phase::Ended;
                s.ended = Some(Ended {
                    by: *ended_by,
                    steps: *steps,
                    sandbox_seconds: *sandbox_seconds,
                    wall_seconds: *wall_seconds,
                    at,
                });
                Some(i)
            }
            Event::StageScored { stage, score } => {
                let i = self.stage_mut(stage);
                let s = &mut self.stages[i];
                s.phase = Phase::Scored;
                s.score = Some(score.clone());
                self.scored.retain(|&j| j != i);
                self.scored.push(i);
                Some(i)
            }
            Event::Warning { message } => {
                self.warnings.push(message.clone());
                self.current
            }
            Event::ModelCall { stage, call } => {
                let i = self.stage_mut(stage);
                self.stages[i].model.add(call);
                self.model.add(call);
                Some(i)
            }
            Event::AgentLog { stage, .. } => Some(self.stage_mut(stage)),
            Event::Rescue {
                stage,
                ok,
                files,
                detail,
                ..
            } => {
                let i = self.stage_mut(stage);
                self.stages[i].rescued |= ok;
                self.rescues.push(Rescue {
                    stage: stage.clone(),
                    ok: *ok,
                    files: files.clone(),
                    detail: detail.clone(),
                });
                Some(i)
            }
            Event::Integrity(note) => {
                self.integrity.push(note.clone());
                match &note.stage {
                    Some(s) => Some(self.stage_mut(s)),
                    None => self.current,
                }
            }
            Event::RunResumed(r) => {
                // The run goes again: it is not finished, no step is in flight, and the stage it
                // goes on with is running again.
                self.finished = None;
                self.pending = None;
                self.resumes.push(r.clone());
                let i = r.stage.as_deref().map(|s| self.stage_mut(s))?;
                let s = &mut self.stages[i];
                if s.phase != Phase::Scored {
                    s.phase = Phase::Running;
                    s.ended = None;
                }
                self.current = Some(i);
                Some(i)
            }
            Event::RunFinished {
                status,
                level,
                bootstrap_index,
                wall_seconds,
                assisted_level,
            } => {
                self.finished = Some(Finished {
                    status: *status,
                    level: level.clone(),
                    assisted_level: assisted_level.clone(),
                    bootstrap_index: *bootstrap_index,
                    wall_seconds: *wall_seconds,
                    at,
                });
                None
            }
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    fn stage_mut(&mut self, name: &str) -> usize {
        match self.position(name) {
            Some(i) => i,
            None => {
                let i = self.stages.len();
                self.stages.push(StageState::new(name, i));
                i
            }
        }
    }

    /// How the run was resumed, each time (empty for a run that never stopped).
    pub fn resumes(&self) -> &[crate::trace::events::Resumed] {
        &self.resumes
    }

    /// The stages known so far, in order.
    pub fn stages(&self) -> &[StageState] {
        &self.stages
    }

    pub fn stage(&self, name: &str) -> Option<&StageState> {
        self.position(name).map(|i| &self.stages[i])
    }

    /// The stage started last.
    pub(crate) fn current(&self) -> Option<&StageState> {
        self.current.map(|i| &self.stages[i])
    }

    /// The stages the run was to go through, as `run_started` listed them.
    pub(crate) fn planned(&self) -> &[String] {
        &self.planned
    }

    /// The (last) `run_finished`, once the run has finished.
    pub fn finished(&self) -> Option<&Finished> {
        self.finished.as_ref()
    }

    /// The steps of the whole run, added up in trace order.
    pub fn steps(&self) -> &StepTotals {
        &self.steps
    }

    /// The model calls of the whole run, added up in trace order.
    pub(crate) fn model(&self) -> &ModelTotals {
        &self.model
    }

    /// The step started last, when no step has been recorded since.
    pub fn pending(&self) -> Option<&PendingStep> {
        self.pending.as_ref()
    }

    /// The warnings, in order.
    pub(crate) fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The integrity ledger, in order.
    pub(crate) fn integrity(&self) -> &[IntegrityNote] {
        &self.integrity
    }

    /// The rescues, in order.
    pub(crate) fn rescues(&self) -> &[Rescue] {
        &self.rescues
    }

    /// Each scored stage and whether it passed, in the order of their scores.
    pub(crate) fn verdicts(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.scored.iter().map(|&i| {
            let s = &self.stages[i];
            (s.name.as_str(), s.score.as_ref().is_some_and(|x| x.passed))
        })
    }

    /// The run's wall time: `run_finished`'s, else the ended stages' added up.
    pub fn wall_seconds(&self) -> f64 {
        self.finished
            .as_ref()
            .map(|f| f.wall_seconds)
            .unwrap_or_else(|| {
                self.stages
                    .iter()
                    .filter_map(|s| s.ended)
                    .map(|e| e.wall_seconds)
                    .sum()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::OutputRef;
    use serde_json::json;

    fn budgets() -> Budgets {
        Budgets {
            max_steps: 10,
            max_sandbox_seconds: 60.0,
            max_wall_seconds: 120.0,
            max_step_seconds: 30.0,
            default_step_seconds: 10.0,
            max_tokens: None,
            max_cost_usd: None,
        }
    }

    fn started(stage: &str, index: usize) -> Event {
        Event::StageStarted {
            stage: stage.into(),
            index,
            budgets: budgets(),
            network: (stage == "crawl").then(|| "world".into()),
            instruction_sha256: format!("sha-{stage}"),
        }
    }

    fn step(stage: &str, n: u64, exit: i64, usage: Option<StepUsage>) -> Event {
        Event::Step(StepRecord {
            stage: stage.into(),
            step: n,
            stage_step: n,
            tool: "bash".into(),
            args: json!({"cmd": "make"}),
            ok: true,
            result: json!({"exit_code": exit, "stdout": "12345", "stderr": "ab"}),
            started_at: Utc::now(),
            duration_ms: 250.0,
            sandbox_seconds: 0.25,
            usage,
            outputs: vec![],
            commit: (exit == 0).then(|| "c".repeat(40)),
        })
    }

    fn usage(cpu: f64, container_cpu: Option<f64>, rss_kb: u64, peak: Option<u64>) -> StepUsage {
        StepUsage {
            cpu_seconds: cpu,
            max_rss_kb: rss_kb,
            container_cpu_seconds: container_cpu,
            container_peak_bytes: peak,
            timed_out: false,
            oom_killed: false,
        }
    }

    fn ended(stage: &str, by: EndReason, steps: u64, wall: f64) -> Event {
        Event::StageEnded {
            stage: stage.into(),
            ended_by: by,
            steps,
            sandbox_seconds: 0.5,
            wall_seconds: wall,
        }
    }

    fn scored(stage: &str, passed: bool) -> Event {
        let mut metrics = serde_json::Map::new();
        metrics.insert("recall".into(), json!(0.9));
        Event::StageScored {
            stage: stage.into(),
            score: StageScore {
                status: if passed { "scored" } else { "failed" }.into(),
                passed,
                metrics,
                reason: (!passed).then(|| "recall too low".into()),
                normalized: Some(if passed { 0.75 } else { 0.0 }),
                public_reason: None,
            },
        }
    }

    fn replay(events: &[Event]) -> Replay {
        let mut r = Replay::default();
        for e in events {
            r.apply(e);
        }
        r
    }

    #[test]
    fn a_stage_with_steps_adds_them_up() {
        let mut big = match step("crawl", 3, 0, None) {
            Event::Step(s) => s,
            _ => unreachable!(),
        };
        big.outputs = vec![OutputRef {
            stream: "stdout".into(),
            sha256: "f".repeat(64),
            bytes_kept: 1000,
            bytes_total: 5000,
        }];
        let r = replay(&[
            started("crawl", 0),
            step(
                "crawl",
                1,
                0,
                Some(usage(1.0, Some(1.5), 1000, Some(64 << 20))),
            ),
            Event::StepStarted {
                stage: "crawl".into(),
                step: 2,
                tool: "bash".into(),
                args: json!({"cmd": "false"}),
            },
            step("crawl", 2, 1, Some(usage(0.5, None, 2048, None))),
            Event::Step(big),
            ended("crawl", EndReason::Submit, 3, 4.5),
        ]);
        let s = r.stage("crawl").unwrap();
        assert_eq!(s.position, 0);
        assert_eq!(s.phase, Phase::Ended);
        let st = s.started.as_ref().unwrap();
        assert_eq!(
            (st.index, st.network.as_deref(), st.budgets.max_steps),
            (0, Some("world"), 10)
        );
        assert_eq!(st.instruction_sha256, "sha-crawl");
        let t = &s.steps;
        assert_eq!((t.count, t.measured, t.failed, t.commits), (3, 3, 1, 2));
        assert_eq!(t.duration_ms, 750.0);
        assert_eq!(t.sandbox_seconds, 0.75);
        // The container's CPU where known (1.5), else the command tree's (0.5).
        assert_eq!(t.cpu_seconds, 2.0);
        // The container's peak (64 MiB) beats 2048 KiB of RSS.
        assert_eq!(t.peak_memory_bytes, 64 << 20);
        // 7 inline bytes twice, then 5000 from outputs/ plus 2 of inline stderr.
        assert_eq!(t.output_bytes, 7 + 7 + 5002);
        assert_eq!(s.steps_started, 1);
        assert_eq!(r.steps(), t, "one stage: the run's totals are its own");
        assert!(r.pending().is_none(), "the started step was recorded");
        let e = s.ended.unwrap();
        assert_eq!((e.by, e.steps, e.wall_seconds), (EndReason::Submit, 3, 4.5));
        assert_eq!(r.wall_seconds(), 4.5);
        assert!(s.score.is_none() && !s.rescued);
    }

    #[test]
    fn a_scored_stage_keeps_its_score_and_verdict() {
        let r = replay(&[
            started("crawl", 0),
            step("crawl", 1, 0, None),
            ended("crawl", EndReason::Submit, 1, 2.0),
            scored("crawl", true),
            Event::ModelCall {
                stage: "tokenize".into(),
                call: ModelCall {
                    model: "openai:m".into(),
                    input_tokens: 100,
                    output_tokens: 20,
                    latency_ms: 500.0,
                    cost_usd: Some(0.25),
                    attempt: 1,
                    error: None,
                    reply: None,
                },
            },
            Event::ModelCall {
                stage: "tokenize".into(),
                call: ModelCall {
                    model: "openai:m".into(),
                    input_tokens: 10,
                    output_tokens: 2,
                    latency_ms: 100.0,
                    cost_usd: None,
                    attempt: 2,
                    error: Some("rate limited".into()),
                    reply: None,
                },
            },
            started("tokenize", 1),
            ended("tokenize", EndReason::MaxSteps, 0, 3.0),
            scored("tokenize", false),
        ]);
        let crawl = r.stage("crawl").unwrap();
        assert_eq!(crawl.phase, Phase::Scored);
        let sc = crawl.score.as_ref().unwrap();
        assert_eq!((sc.status.as_str(), sc.passed), ("scored", true));
        assert_eq!(sc.normalized, Some(0.75));
        assert_eq!(sc.metrics["recall"], json!(0.9));
        let tok = r.stage("tokenize").unwrap();
        assert_eq!(tok.position, 1);
        assert_eq!(
            tok.score.as_ref().unwrap().reason.as_deref(),
            Some("recall too low")
        );
        let m = &tok.model;
        assert_eq!((m.calls, m.errors, m.tokens()), (2, 1, 132));
        assert_eq!(m.cost_usd, Some(0.25), "only priced calls count");
        assert_eq!(r.model(), m);
        assert!(crawl.model.cost_usd.is_none(), "no calls: no cost");
        let v: Vec<(&str, bool)> = r.verdicts().collect();
        assert_eq!(v, [("crawl", true), ("tokenize", false)]);
        assert_eq!(r.wall_seconds(), 5.0, "no run_finished: the stages' walls");
    }

    #[test]
    fn a_rescued_stage_is_marked_and_the_rescue_kept() {
        let r = replay(&[
            Event::RunStarted {
                run_id: "r1".into(),
                suite: "mini".into(),
                agent: "null".into(),
                seed: 7,
                gptx_version: "0".into(),
                world_hash: None,
                image: "img".into(),
                stages: vec!["crawl".into(), "tokenize".into()],
            },
            started("crawl", 0),
            ended("crawl", EndReason::Submit, 0, 1.0),
            scored("crawl", false),
            Event::Rescue {
                stage: "crawl".into(),
                ok: true,
                files: vec!["corpus/gold.txt".into()],
                detail: "wrote the gold corpus".into(),
                seconds: 1.5,
                commit: Some("d".repeat(40)),
            },
            Event::Rescue {
                stage: "tokenize".into(),
                ok: false,
                files: vec![],
                detail: "no rescue".into(),
                seconds: 0.0,
                commit: None,
            },
            started("tokenize", 1),
            Event::Warning {
                message: "slow".into(),
            },
        ]);
        assert_eq!(r.planned(), ["crawl", "tokenize"]);
        assert!(r.stage("crawl").unwrap().rescued);
        assert!(!r.stage("tokenize").unwrap().rescued, "a failed rescue");
        assert_eq!(r.rescues().len(), 2);
        assert_eq!(r.rescues()[0].files, ["corpus/gold.txt"]);
        assert_eq!(r.rescues()[1].detail, "no rescue");
        assert_eq!(r.warnings(), ["slow"]);
        assert_eq!(r.current().unwrap().name, "tokenize");
        assert_eq!(r.stage("tokenize").unwrap().phase, Phase::Running);
    }

    #[test]
    fn a_run_that_failed_mid_stage() {
        let t0 = Utc::now();
        let mut r = Replay::with_stages(&["crawl", "tokenize", "train"]);
        let events = [
            started("crawl", 0),
            step("crawl", 1, 0, Some(usage(2.0, None, 10, None))),
            ended("crawl", EndReason::Submit, 1, 2.0),
            scored("crawl", true),
            started("tokenize", 1),
            step("tokenize", 2, 0, Some(usage(1.0, None, 10, None))),
            Event::StepStarted {
                stage: "tokenize".into(),
                step: 3,
                tool: "bash".into(),
                args: json!({"cmd": "train_bpe"}),
            },
            Event::Warning {
                message: "the sandbox stopped answering".into(),
            },
            Event::Integrity(IntegrityNote {
                stage: None,
                kind: "processes_killed".into(),
                count: 2,
                detail: "at the stage's end".into(),
            }),
            ended("tokenize", EndReason::AgentError, 1, 7.0),
            Event::RunFinished {
                status: RunStatus::Failed,
                level: "L1".into(),
                bootstrap_index: 12.5,
                wall_seconds: 10.0,
                assisted_level: None,
            },
        ];
        let mut belongs = Vec::new();
        for (k, e) in events.iter().enumerate() {
            belongs.push(r.apply_at(t0 + chrono::Duration::seconds(k as i64), e));
        }
        // The warning and the note naming no stage go to the stage started last.
        assert_eq!(belongs[7], Some(1));
        assert_eq!(belongs[8], Some(1));
        assert_eq!(belongs[10], None);
        let names: Vec<&str> = r.stages().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["crawl", "tokenize", "train"]);
        let tok = r.stage("tokenize").unwrap();
        assert_eq!(tok.phase, Phase::Ended);
        assert!(tok.score.is_none());
        let e = tok.ended.unwrap();
        assert_eq!((e.by, e.steps), (EndReason::AgentError, 1));
        assert_eq!(e.at, Some(t0 + chrono::Duration::seconds(9)));
        assert_eq!(
            tok.started.as_ref().unwrap().at,
            Some(t0 + chrono::Duration::seconds(4))
        );
        assert_eq!((tok.steps.count, tok.steps_started), (1, 1));
        let train = r.stage("train").unwrap();
        assert_eq!(train.phase, Phase::NotStarted);
        assert!(train.started.is_none() && train.ended.is_none());
        // The step started last was never recorded.
        let p = r.pending().unwrap();
        assert_eq!(
            (p.stage.as_str(), p.step, p.tool.as_str()),
            ("tokenize", 3, "bash")
        );
        assert_eq!(r.steps().count, 2);
        assert_eq!(r.steps().cpu_seconds, 3.0);
        let f = r.finished().unwrap();
        assert_eq!((f.status, f.level.as_str()), (RunStatus::Failed, "L1"));
        assert_eq!(f.bootstrap_index, 12.5);
        assert_eq!(r.wall_seconds(), 10.0, "run_finished's wall");
        assert_eq!(r.integrity()[0].count, 2);
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [("crawl", true)]);
    }

    #[test]
    fn a_lazily_indexed_step_is_counted_not_measured() {
        let mut r = Replay::default();
        r.apply(&started("train", 2));
        assert_eq!(r.step_seen("train"), 0);
        assert_eq!(r.step_seen("eval"), 1, "a stage the trace adds");
        let t = &r.stage("train").unwrap().steps;
        assert_eq!((t.count, t.measured), (1, 0));
        assert_eq!(r.steps().count, 2);
        // A step_started adds no stage.
        let none = r.apply(&Event::StepStarted {
            stage: "selfhost".into(),
            step: 9,
            tool: "bash".into(),
            args: json!({}),
        });
        assert_eq!(none, None);
        assert!(r.stage("selfhost").is_none());
    }
}
