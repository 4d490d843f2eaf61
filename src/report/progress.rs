//! The live progress line on stderr: a reporter that turns run events into one updating status line.

use indicatif::{ProgressBar, ProgressStyle};

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
    stages: usize,
    stage_index: usize,
    max_steps: u64,
    stage_steps: u64,
}

impl Progress {
    /// A progress line; hidden when `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        let bar = spinner(quiet, "{spinner} {prefix:.bold} [{elapsed}] {wide_msg}");
        Self {
            bar,
            stages: 0,
            stage_index: 0,
            max_steps: 0,
            stage_steps: 0,
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
        match event {
            Event::RunStarted { run_id, stages, .. } => {
                self.stages = stages.len();
                self.bar.set_prefix(run_id.clone());
            }
            Event::StageStarted {
                stage,
                index,
                budgets,
                ..
            } => {
                self.stage_index = index + 1;
                self.max_steps = budgets.max_steps;
                self.stage_steps = 0;
                self.bar
                    .set_prefix(format!("{stage} [{}/{}]", self.stage_index, self.stages));
                self.bar.set_message("waiting for the agent");
            }
            Event::StepStarted { tool, args, .. } => {
                self.stage_steps += 1;
                self.bar.set_message(format!(
                    "step {}/{} · {tool} {}",
                    self.stage_steps,
                    self.max_steps,
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
