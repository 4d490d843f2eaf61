//! Where an interrupted run stands, folded from its trace: the stages it finished, the stage it goes on with and what that stage used, and what its agent lived through.

use crate::agent::Past;
use crate::runner::StageOutcome;
use crate::trace::log::Envelope;
use crate::trace::{EndReason, Event, IntegrityNote};

/// The stage a resumed run goes on with, as the trace left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    /// Its index in the suite.
    pub index: usize,
    pub name: String,
    /// Steps completed in it.
    pub steps: u64,
    pub sandbox_seconds: f64,
    /// Wall time it ran, over every stretch before this one.
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// The agent's part of it ended (the run stopped while it was being graded): it is only graded.
    pub ended: Option<EndReason>,
    /// Tokens and cost of its model calls (None: none were made).
    pub tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Its tool calls as recorded, for its contamination scan.
    pub calls: Vec<crate::stages::contamination::Call>,
}

/// A stage the agent went through, for rebuilding its state.
#[derive(Debug, Clone)]
pub struct PastOf {
    pub index: usize,
    pub events: Vec<Past>,
    pub ended: Option<EndReason>,
}

/// An interrupted run, from its trace.
#[derive(Debug, Clone)]
pub struct ResumeState {
    /// The stages graded, in order, with their outcomes.
    pub done: Vec<StageOutcome>,
    /// The stage begun and not graded.
    pub current: Option<Current>,
    /// The last step number of the run.
    pub step: u64,
    pub ledger: Vec<IntegrityNote>,
    /// Every stage begun, in order (the current one last).
    pub past: Vec<PastOf>,
    /// The last workspace commit of a completed step or a rescue.
    pub last_commit: Option<String>,
    /// Wall time of the run before this stretch.
    pub wall_seconds: f64,
    /// Bytes of agent logs recorded.
    pub agent_log_bytes: u64,
    /// The last step of the stage begun failed on the harness's side (`sandbox_error`: the engine
    /// went away under it) before the run stopped: it does not count as completed, and the agent's
    /// call is made again.
    pub redo: Option<u64>,
    /// The trace has `run_started` (a run stopped before it has none).
    pub started: bool,
    /// Stages whose rescue was tried (done or not): never tried again.
    pub rescue_tried: Vec<String>,
}

/// A stage begun in the fold.
struct Open {
    cur: Current,
    events: Vec<Past>,
    /// Wall time before the stretch the stage is in now, and when that stretch began.
    wall_base: f64,
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl ResumeState {
    /// Folds a verified trace. Errors say what in it does not make a run that can go on.
    pub fn of(events: &[Envelope]) -> Result<Self, String> {
        let mut st = ResumeState {
            done: Vec::new(),
            current: None,
            step: 0,
            ledger: Vec::new(),
            past: Vec::new(),
            last_commit: None,
            wall_seconds: 0.0,
            agent_log_bytes: 0,
            redo: None,
            started: false,
            rescue_tried: Vec::new(),
        };
        let mut open: Option<Open> = None;
        // The last commit before the latest step, for a step that turns out not to count.
        let mut commit_before_step: Option<String> = None;
        // The run's wall time: what finished stretches recorded, and when the open one began.
        let mut run_since: Option<chrono::DateTime<chrono::Utc>> = None;
        // The time of the last event the run itself wrote: a warning may be the mark `gptx gc`
        // wrote long after the run died, which is no time the run used.
        let mut last_ts: Option<chrono::DateTime<chrono::Utc>> = None;
        let span = |a: Option<chrono::DateTime<chrono::Utc>>,
                    b: Option<chrono::DateTime<chrono::Utc>>| match (a, b) {
            (Some(a), Some(b)) => ((b - a).num_milliseconds() as f64 / 1000.0).max(0.0),
            _ => 0.0,
        };
        for env in events {
            match &env.event {
                Event::RunStarted { .. } => {
                    st.started = true;
                    run_since = Some(env.ts);
                }
                Event::RunResumed(r) => {
                    // A stretch that ended without `run_finished` (its gptx was killed) counts up to
                    // its last event.
                    st.wall_seconds += span(run_since, last_ts);
                    run_since = Some(env.ts);
                    if let Some(o) = &mut open {
                        if let Some(u) = &r.used {
                            o.wall_base = u.wall_seconds;
                        } else {
                            o.wall_base += span(o.since, last_ts);
                        }
                        o.since = Some(env.ts);
                    }
                }
                Event::RunFinished { wall_seconds, .. } => {
                    st.wall_seconds = *wall_seconds;
                    run_since = None;
                }
                Event::StageStarted { stage, index, .. } => {
                    if let Some(o) = open.take() {
                        return Err(format!(
                            "stage {} began before stage {} was graded",
                            stage, o.cur.name
                        ));
                    }
                    open = Some(Open {
                        cur: Current {
                            index: *index,
                            name: stage.clone(),
                            ..Current::default()
                        },
                        events: Vec::new(),
                        wall_base: 0.0,
                        since: Some(env.ts),
                    });
                }
                Event::Step(r) => {
                    st.step = r.step;
                    commit_before_step = st.last_commit.clone();
                    if r.commit.is_some() {
                        st.last_commit = r.commit.clone();
                    }
                    let Some(o) = open.as_mut().filter(|o| o.cur.name == r.stage) else {
                        return Err(format!("step {} is outside its stage {}", r.step, r.stage));
                    };
                    o.cur.steps = r.stage_step;
                    o.cur.sandbox_seconds += r.sandbox_seconds;
                    if let Some(u) = &r.usage {
                        o.cur.cpu_seconds += crate::trace::replay::step_cpu(u);
                    }
                    o.events.push(Past::of_step(r));
                    o.cur.calls.push((r.step, r.tool.clone(), r.args.clone()));
                    // A completed submit ends the agent's part, even when the stop came before
                    // `stage_ended` was written.
                    if r.ok && r.tool == "submit" {
                        o.cur.ended = Some(EndReason::Submit);
                        o.wall_base += span(o.since, Some(env.ts));
                        o.cur.wall_seconds = o.wall_base;
                        o.since = None;
                    }
                }
                Event::ModelCall { stage, call } => {
                    if let Some(o) = open.as_mut().filter(|o| &o.cur.name == stage) {
                        o.cur.tokens = Some(
                            o.cur.tokens.unwrap_or(0) + call.input_tokens + call.output_tokens,
                        );
                        if let Some(c) = call.cost_usd {
                            o.cur.cost_usd = Some(o.cur.cost_usd.unwrap_or(0.0) + c);
                        }
                        o.events.push(Past::Model(call.clone()));
                    }
                }
                Event::AgentLog { text, .. } => st.agent_log_bytes += text.len() as u64,
                Event::StageEnded {
                    stage,
                    ended_by,
                    wall_seconds,
                    ..
                } => {
                    if let Some(o) = open.as_mut().filter(|o| &o.cur.name == stage) {
                        if *ended_by == EndReason::Interrupted {
                            // Not an end: the stage goes on from here.
                            o.wall_base = *wall_seconds;
                            o.since = None;
                        } else {
                            o.cur.ended = Some(*ended_by);
                            o.cur.wall_seconds = *wall_seconds;
                            o.wall_base = *wall_seconds;
                            o.since = None;
                        }
                    }
                }
                Event::StageScored { stage, score } => {
                    let Some(o) = open.take().filter(|o| &o.cur.name == stage) else {
                        return Err(format!("stage {stage} was graded without being begun"));
                    };
                    let c = o.cur;
                    st.past.push(PastOf {
                        index: c.index,
                        events: o.events,
                        ended: c.ended,
                    });
                    st.done.push(StageOutcome {
                        stage: c.name,
                        ended_by: c.ended.unwrap_or(EndReason::Interrupted),
                        steps: c.steps,
                        sandbox_seconds: c.sandbox_seconds,
                        wall_seconds: c.wall_seconds,
                        score: Some(score.clone()),
                        rescued: false,
                        usage: c.tokens.map(|t| (t, c.cost_usd)),
                        cpu_seconds: c.cpu_seconds,
                    });
                }
                Event::Rescue {
                    stage, ok, commit, ..
                } => {
                    if let Some(d) = st.done.iter_mut().rev().find(|d| &d.stage == stage) {
                        d.rescued |= ok;
                    }
                    st.rescue_tried.push(stage.clone());
                    if commit.is_some() {
                        st.last_commit = commit.clone();
                    }
                }
                Event::Integrity(n) => st.ledger.push(n.clone()),
                Event::StepStarted { .. } | Event::Warning { .. } => {}
            }
            if !matches!(env.event, Event::Warning { .. }) {
                last_ts = Some(env.ts);
            }
        }
        let secs = |a: Option<chrono::DateTime<chrono::Utc>>| span(a, last_ts);
        st.wall_seconds += secs(run_since);
        if let Some(mut o) = open {
            let mut c = o.cur;
            if c.ended.is_none() {
                c.wall_seconds = o.wall_base + secs(o.since);
                // A step the harness failed as the run stopped is no step of the agent's.
                if let Some(Past::Step { result: Err(e), .. }) = o.events.last() {
                    if e.code == "sandbox_error" {
                        o.events.pop();
                        c.steps = c.steps.saturating_sub(1);
                        st.redo = Some(st.step);
                        // Its partial effects are not the workspace's state either.
                        st.last_commit = commit_before_step;
                    }
                }
            }
            st.past.push(PastOf {
                index: c.index,
                events: o.events,
                ended: c.ended,
            });
            st.current = Some(c);
        }
        Ok(st)
    }

    /// The index of the stage the run goes on with.
    pub fn next_index(&self) -> usize {
        match &self.current {
            Some(c) => c.index,
            None => self.done.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{StageScore, StepRecord};

    fn env(seq: u64, secs: i64, event: Event) -> Envelope {
        Envelope {
            seq,
            ts: chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            prev_sha256: String::new(),
            event,
        }
    }

    fn step(stage: &str, step: u64, stage_step: u64, commit: Option<&str>) -> Event {
        Event::Step(StepRecord {
            stage: stage.into(),
            step,
            stage_step,
            tool: "bash".into(),
            args: serde_json::json!({"cmd": "true"}),
            ok: true,
            result: serde_json::json!({"exit_code": 0}),
            started_at: chrono::Utc::now(),
            duration_ms: 10.0,
            sandbox_seconds: 1.5,
            usage: None,
            outputs: vec![],
            commit: commit.map(str::to_string),
        })
    }

    fn started(stage: &str, index: usize) -> Event {
        Event::StageStarted {
            stage: stage.into(),
            index,
            budgets: crate::config::suite::Budgets {
                max_steps: 10,
                max_sandbox_seconds: 60.0,
                max_wall_seconds: 60.0,
                max_step_seconds: 30.0,
                default_step_seconds: 30.0,
                max_tokens: None,
                max_cost_usd: None,
            },
            network: None,
            instruction_sha256: String::new(),
        }
    }

    #[test]
    fn a_run_killed_mid_stage_goes_on_with_that_stage_and_its_budgets_used() {
        let score = StageScore::zero("scored", "x");
        let events = vec![
            env(
                0,
                0,
                Event::Warning {
                    message: "w".into(),
                },
            ),
            env(1, 0, started("crawl", 0)),
            env(2, 5, step("crawl", 1, 1, Some("c1"))),
            env(
                3,
                9,
                Event::StageEnded {
                    stage: "crawl".into(),
                    ended_by: EndReason::Submit,
                    steps: 1,
                    sandbox_seconds: 1.5,
                    wall_seconds: 9.0,
                },
            ),
            env(
                4,
                10,
                Event::StageScored {
                    stage: "crawl".into(),
                    score,
                },
            ),
            env(5, 10, started("tokenize", 1)),
            env(6, 12, step("tokenize", 2, 1, Some("c2"))),
            env(7, 20, step("tokenize", 3, 2, None)),
            env(
                8,
                21,
                Event::StepStarted {
                    stage: "tokenize".into(),
                    step: 4,
                    tool: "bash".into(),
                    args: serde_json::Value::Null,
                },
            ),
        ];
        let st = ResumeState::of(&events).unwrap();
        assert_eq!(st.done.len(), 1);
        assert_eq!(st.done[0].ended_by, EndReason::Submit);
        assert_eq!(st.step, 3);
        assert_eq!(st.last_commit.as_deref(), Some("c2"));
        let c = st.current.clone().unwrap();
        assert_eq!((c.index, c.steps, c.ended), (1, 2, None));
        assert_eq!(c.sandbox_seconds, 3.0);
        assert_eq!(c.wall_seconds, 11.0);
        assert_eq!(st.next_index(), 1);
        assert_eq!(st.past.len(), 2);
        assert_eq!(st.past[1].events.len(), 2);
    }

    #[test]
    fn an_interrupted_stage_end_is_no_end_and_its_wall_time_adds_up() {
        let events = vec![
            env(0, 0, started("crawl", 0)),
            env(1, 4, step("crawl", 1, 1, None)),
            env(
                2,
                6,
                Event::StageEnded {
                    stage: "crawl".into(),
                    ended_by: EndReason::Interrupted,
                    steps: 1,
                    sandbox_seconds: 1.5,
                    wall_seconds: 6.0,
                },
            ),
            env(
                3,
                7,
                Event::RunFinished {
                    status: crate::trace::rundir::RunStatus::Interrupted,
                    level: "L0".into(),
                    bootstrap_index: 0.0,
                    wall_seconds: 7.0,
                    assisted_level: None,
                },
            ),
            env(4, 100, resumed(None)),
            env(5, 103, step("crawl", 2, 2, None)),
        ];
        let st = ResumeState::of(&events).unwrap();
        let c = st.current.unwrap();
        assert_eq!((c.steps, c.ended), (2, None));
        assert_eq!(c.wall_seconds, 9.0);
        assert_eq!(st.wall_seconds, 10.0);
        // The stage's calls over both stretches, for its contamination scan.
        let steps: Vec<u64> = c.calls.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(steps, [1, 2]);
        assert_eq!(c.calls[0].2["cmd"], "true");
    }

    #[test]
    fn a_step_the_harness_failed_as_the_run_stopped_is_made_again() {
        let mut failed = step("crawl", 2, 2, Some("c2"));
        if let Event::Step(r) = &mut failed {
            r.ok = false;
            r.result = serde_json::json!({"code": "sandbox_error", "message": "engine gone"});
        }
        let events = vec![
            env(0, 0, started("crawl", 0)),
            env(1, 1, step("crawl", 1, 1, Some("c1"))),
            env(2, 2, failed),
        ];
        let st = ResumeState::of(&events).unwrap();
        assert_eq!(st.redo, Some(2));
        assert_eq!(st.last_commit.as_deref(), Some("c1"));
        assert_eq!(st.step, 2, "step numbers go on");
        assert_eq!(st.current.unwrap().steps, 1);
        assert_eq!(st.past[0].events.len(), 1);
    }

    fn resumed(used_wall: Option<f64>) -> Event {
        Event::RunResumed(crate::trace::Resumed {
            reason: "owner process gone".into(),
            after_step: 1,
            stage: Some("crawl".into()),
            workspace: "kept".into(),
            commit: None,
            aside: None,
            missing: vec![],
            agent: "rebuilt".into(),
            redo: None,
            used: used_wall.map(|w| crate::trace::BudgetsUsed {
                steps: 1,
                sandbox_seconds: 1.5,
                wall_seconds: w,
                tokens: None,
                cost_usd: None,
            }),
        })
    }

    #[test]
    fn killed_twice_the_time_it_lay_dead_is_not_charged_and_no_stretch_is_lost() {
        let mark = |at| Event::Warning {
            message: format!("owner process gone: marked at {at}"),
        };
        let events = vec![
            env(
                0,
                0,
                Event::RunStarted {
                    run_id: "r".into(),
                    suite: "mini".into(),
                    agent: "reference".into(),
                    seed: 1,
                    gptx_version: "0".into(),
                    world_hash: None,
                    image: "i".into(),
                    stages: vec!["crawl".into()],
                },
            ),
            env(1, 0, started("crawl", 0)),
            env(2, 40, step("crawl", 1, 1, None)),
            // Killed; marked by gc 1000 s later.
            env(3, 1040, mark(1040)),
            env(4, 2000, resumed(Some(40.0))),
            env(5, 2030, step("crawl", 2, 2, None)),
            // Killed again; marked much later.
            env(6, 5000, mark(5000)),
        ];
        let st = ResumeState::of(&events).unwrap();
        let c = st.current.unwrap();
        assert_eq!(
            c.wall_seconds, 70.0,
            "40 s, then 30 s; never the hours it lay dead"
        );
        assert_eq!(st.wall_seconds, 70.0);
        assert!(st.started);
    }

    #[test]
    fn a_completed_submit_ends_the_agents_part_without_stage_ended() {
        let mut submit = step("crawl", 2, 2, None);
        if let Event::Step(r) = &mut submit {
            r.tool = "submit".into();
            r.result = serde_json::json!({"submitted": true});
        }
        let events = vec![
            env(0, 0, started("crawl", 0)),
            env(1, 1, step("crawl", 1, 1, None)),
            env(2, 3, submit),
        ];
        let st = ResumeState::of(&events).unwrap();
        let c = st.current.unwrap();
        assert_eq!(c.ended, Some(EndReason::Submit), "it is only graded");
        assert_eq!(c.wall_seconds, 3.0);
        assert!(!st.started, "no run_started: the resume writes one");
    }

    #[test]
    fn a_step_outside_its_stage_is_refused() {
        let events = vec![env(0, 0, step("crawl", 1, 1, None))];
        assert!(ResumeState::of(&events)
            .unwrap_err()
            .contains("outside its stage"));
    }
}
