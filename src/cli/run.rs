//! `switchyard run PIPELINE.toml`: the main job (`crate::pipeline`), in this process, with
//! its stages and progress printed as they go.

use std::path::{Path, PathBuf};

use crate::eval::EvalObserver;
use crate::pipeline::{self, PipelineError, PipelineObserver, PipelineOptions};
use crate::providers::TargetSpec;
use crate::train::TrainObserver;
use crate::util::Interrupt;
use clap::Args;

use super::progress::{Counter, EvalProgress, TrainProgress, describe};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file (TOML), e.g. recipes/pipeline.toml.
    pipeline: PathBuf,
    /// Run every stage even when its inputs are unchanged.
    #[arg(long)]
    force: bool,
}

/// The pipeline's stages as lines, training and eval as their own progress.
struct Printer {
    train: TrainProgress,
    eval: EvalProgress,
    fetch: Option<Counter>,
}

impl PipelineObserver for Printer {
    fn stage(&mut self, stage: &str, what: &str) {
        eprintln!("\n== {stage}: {what}");
    }

    fn skipped(&mut self, stage: &str, output: &Path) {
        eprintln!("\n== {stage}: unchanged, skipped ({})", output.display());
    }

    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }

    fn fetching(&mut self, i: usize, n: usize) {
        let c = self
            .fetch
            .get_or_insert_with(|| Counter::new("converting", "tensors"));
        c.update(i, n);
        if i == n {
            c.finish();
        }
    }

    fn target(&mut self, spec: &TargetSpec) {
        eprintln!("target {}: {}", spec.name, describe(spec));
    }

    fn train(&mut self) -> &mut dyn TrainObserver {
        &mut self.train
    }

    fn eval(&mut self) -> &mut dyn EvalObserver {
        &mut self.eval
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let interrupt = Interrupt::new();
    super::on_ctrl_c(
        &interrupt,
        "stopping the current stage at its next safe point",
    );
    let opts = PipelineOptions {
        force: a.force,
        interrupt,
    };
    let mut printer = Printer {
        train: TrainProgress::new(),
        eval: EvalProgress::new(),
        fetch: None,
    };
    match pipeline::run(&a.pipeline, &opts, &mut printer) {
        Ok(done) => {
            eprintln!("\ndone: {}", done.report.display());
            Ok(())
        }
        Err(e @ PipelineError::Interrupted(_)) => {
            eprintln!("{e}");
            std::process::exit(130);
        }
        Err(e) => Err(e.into()),
    }
}
