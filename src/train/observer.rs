//! What the training loop tells whoever watches it. The loop prints nothing itself (as
//! burn-train's `MetricsRenderer`): the CLI draws a bar on a terminal and plain lines elsewhere,
//! the pipeline passes its own observer down, tests count steps.

use std::path::Path;

use super::{Outcome, Plan};

/// One optimiser step, as the loop measured it.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Steps done (this one included).
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    /// The validation loss, when this step validated.
    pub val_loss: Option<f64>,
    /// The newest validation loss of the run so far.
    pub last_val_loss: Option<f64>,
    pub lr: f64,
    /// Tokens per second since this run (or resumption) started.
    pub tokens_per_s: f64,
    /// Seconds since this run (or resumption) started.
    pub elapsed_s: f64,
    /// Steps this process has run (excludes those done before a resumption).
    pub steps_this_run: usize,
}

impl StepReport {
    /// Seconds left at this run's pace so far.
    pub fn eta_s(&self) -> f64 {
        let per_step = self.elapsed_s / self.steps_this_run.max(1) as f64;
        per_step * self.total_steps.saturating_sub(self.step) as f64
    }
}

/// Watches a training run. Every method has a default that does nothing.
pub trait TrainObserver {
    /// Before the first step; `resumed` names the checkpoint continued from.
    fn started(&mut self, _plan: &Plan, _at_step: usize, _resumed: Option<&Path>) {}
    /// After each optimiser step.
    fn step(&mut self, _report: &StepReport) {}
    /// After a checkpoint is written.
    fn checkpoint(&mut self, _dir: &Path, _step: usize) {}
    /// When the run ends (finished, early-stopped or interrupted).
    fn finished(&mut self, _outcome: &Outcome) {}
}

/// An observer that watches nothing.
pub struct Quiet;

impl TrainObserver for Quiet {}
