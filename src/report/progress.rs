//! The live progress line on stderr: a reporter that turns run events into one updating status line.

use indicatif::{ProgressBar, ProgressStyle};

use crate::trace::replay::Replay;
use crate::trace::{Event, Reporter};

/// A ticking spinner with `template`, or a hidden bar when `quiet`.
fn spinner(quiet: bool, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(ProgressStyle::with_template(template).expect("template"));
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}

/// Shows `[stage i/n] step k/max · tool summary` while a run goes, and a line per finished stage.
pub struct Progress {
    bar: ProgressBar,
    /// The run so far.
    replay: Replay,
}

impl Progress {
    /// A progress line; hidden when `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        let bar = spinner(quiet, "{spinner} {prefix:.bold} [{elapsed}] {wide_msg}");
        Self {
            bar,
            replay: Replay::default(),
        }
    }
}

fn summary(args: &serde_json::Value) -> String {
    let s = match args.get("cmd").or_else(|| args.get("path")) {
        Some(serde_json::Value::String(s)) => s.lines().next().unwrap_or("").to_string(),
        _ => String::new(),
    };
    crate::report::term::terminal_safe(&s.chars().take(60).collect::<String>(), false)
}

impl Reporter for Progress {
    fn report(&mut self, event: &Event) {
        self.replay.apply(event);
        let stages = self.replay.planned().len();
        // The stage under way: its steps started so far and its step budget.
        let (steps, max_steps) = self.replay.current().map_or((0, 0), |s| {
            (
                s.steps_started,
                s.started.as_ref().map_or(0, |b| b.budgets.max_steps),
            )
        });
        match event {
            Event::RunStarted { run_id, .. } => {
                self.bar.set_prefix(run_id.clone());
            }
            Event::StageStarted { stage, index, .. } => {
                self.bar
                    .set_prefix(format!("{stage} [{}/{stages}]", index + 1));
                self.bar.set_message("waiting for the agent");
            }
            Event::StepStarted { tool, args, .. } => {
                self.bar.set_message(format!(
                    "step {steps}/{max_steps} · {tool} {}",
                    summary(args)
                ));
            }
            Event::StageEnded { stage, .. } => {
                self.bar.set_message(if stage == "selfhost" {
                    "scoring: rebuilding from bootstrap.sh in a fresh sandbox, then verifying both models".to_string()
                } else {
                    "scoring on hidden data".to_string()
                });
            }
            Event::Rescue {
                stage, ok, detail, ..
            } => {
                self.bar.println(format!(
                    "  rescue after {stage}{}: {}",
                    if *ok { "" } else { " failed" },
                    crate::report::term::terminal_safe(detail, false)
                ));
            }
            Event::StageScored { stage, score } => {
                self.bar.println(format!(
                    "  {stage:<9} {:<16} passed={} {}",
                    score.status,
                    score.passed,
                    crate::report::term::terminal_safe(
                        score.reason.as_deref().unwrap_or(""),
                        false
                    )
                ));
            }
            Event::RunFinished { .. } => self.bar.finish_and_clear(),
            _ => {}
        }
    }
}

/// The progress of a world build: a spinner per phase, then a bar over T's documents for the
/// conditional-xz baseline (the slow part).
pub struct WorldBar {
    bar: ProgressBar,
}

impl WorldBar {
    pub fn new(quiet: bool) -> Self {
        let bar = spinner(quiet, "{spinner} world [{elapsed}] {wide_msg}");
        Self { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl crate::world::BuildProgress for WorldBar {
    fn phase(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
    fn start_baselines(&self, docs: u64) {
        self.bar.set_length(docs);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} world [{elapsed}] {wide_msg} {pos}/{len} documents, eta {eta}",
            )
            .expect("template"),
        );
    }
    fn tick(&self) {
        self.bar.inc(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::suite::Budgets;

    #[test]
    fn the_line_names_the_stage_and_its_steps_against_the_budget() {
        let mut p = Progress::new(true);
        p.report(&Event::RunStarted {
            run_id: "r1".into(),
            suite: "mini".into(),
            agent: "null".into(),
            seed: 1,
            gptx_version: "0".into(),
            world_hash: None,
            image: "img".into(),
            stages: vec!["crawl".into(), "tokenize".into()],
        });
        assert_eq!(p.bar.prefix(), "r1");
        p.report(&Event::StageStarted {
            stage: "tokenize".into(),
            index: 1,
            budgets: Budgets {
                max_steps: 12,
                max_sandbox_seconds: 1.0,
                max_wall_seconds: 1.0,
                max_step_seconds: 1.0,
                default_step_seconds: 1.0,
                max_tokens: None,
                max_cost_usd: None,
            },
            network: None,
            instruction_sha256: String::new(),
        });
        assert_eq!(p.bar.prefix(), "tokenize [2/2]");
        for n in 1..=2 {
            p.report(&Event::StepStarted {
                stage: "tokenize".into(),
                step: n,
                tool: "bash".into(),
                args: serde_json::json!({"cmd": format!("make {n}\nmore")}),
            });
        }
        assert_eq!(p.bar.message(), "step 2/12 · bash make 2");
    }
}
