//! LoRA fine-tuning from a recipe, split by concern:
//!
//! - [`recipe`]: the recipe file, its keys and checks.
//! - [`plan`]: model files and data prepared, the plan worked out before any step runs.
//! - [`lora`]: adapters attached to the frozen base, and converted to and from PEFT's layout.
//! - [`fit`]: the loop (AdamW with warmup and a schedule, gradient accumulation, global-norm
//!   clipping, validation, early stopping), with a [`checkpoint::Checkpointer`] that writes
//!   atomic checkpoints which resume to the same losses.
//! - [`metrics`]: the `metrics.jsonl` file.
//! - [`observer`]: what the loop tells whoever watches it; it stops when an
//!   [`crate::util::Interrupt`] is set.
//! - [`throughput`]: training tokens/s on fixed batches (`switchyard bench train`).

pub mod checkpoint;
pub mod fit;
pub mod lora;
pub mod metrics;
pub mod observer;
pub mod optim;
pub mod plan;
pub mod recipe;
pub mod throughput;

use std::path::PathBuf;

use serde::Serialize;

pub use fit::{TrainOptions, time_one_step, train};
pub use observer::{Quiet, StepReport, TrainObserver};
pub use plan::{Plan, Prepared, prepare};
pub use recipe::{LoadedRecipe, Recipe, RecipeError, Schedule};
pub use throughput::throughput;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    #[error(transparent)]
    File(#[from] crate::util::FileError),
    #[error(
        "{path}: no training samples left (rows: {rows}, dropped as longer than sequence_len {sequence_len}: {dropped})"
    )]
    NoSamples {
        path: PathBuf,
        rows: usize,
        sequence_len: usize,
        dropped: usize,
    },
    #[error(
        "{dir} has checkpoints of an earlier run (newest: step {step}); pass --resume to continue it or --overwrite to start over"
    )]
    EarlierRun { dir: PathBuf, step: usize },
    #[error(
        "{dir}: this checkpoint was made with a different recipe, data or model; pass --overwrite to start over"
    )]
    OtherRecipe { dir: PathBuf },
    #[error("{dir}: {what}")]
    Checkpoint { dir: PathBuf, what: String },
    #[error("loss became {loss} at step {step}; lower learning_rate or check the data")]
    NotFinite { loss: f64, step: usize },
    #[error("the adapter of `{0}` got no gradient")]
    NoGradient(String),
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub steps: usize,
    pub interrupted: bool,
    pub early_stopped: bool,
    pub final_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub adapter_dir: Option<PathBuf>,
    pub checkpoint: Option<PathBuf>,
}

/// Where a run's adapter goes.
pub fn adapter_dir(output: &std::path::Path) -> PathBuf {
    output.join("adapter")
}
