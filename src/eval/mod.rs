//! Evaluation: suites of cases asked of targets (the local model, hosted providers) on the same
//! prompts, scored, and summarised with confidence intervals, latency and cost.
//!
//! - [`suite_file`]: the suite file as written (keys, defaults, output type).
//! - [`suite`]: a suite loaded: its cases as chat requests; [`likelihood`]: its cases scored by
//!   log-likelihood, as lm-evaluation-harness does.
//! - [`scorers`]: what a case's answer is worth, and why it failed.
//! - [`runner`]: the concurrent run: cache, resume, rate limits and retries (through
//!   [`crate::providers`]), results streamed to disk.
//! - [`results`]: the result rows, Parquet, and the summaries and paired comparisons.
//! - [`stats`]: intervals and tests.
//! - [`targets`]: target names resolved to specs (a targets file, `local`, `PRESET:MODEL`), judges
//!   included.

pub mod import;
pub mod likelihood;
pub mod results;
pub mod runner;
pub mod scorers;
pub mod stats;
pub mod suite;
pub mod suite_file;
pub mod targets;

use std::path::PathBuf;

use crate::data::DataError;
use crate::util::FileError;
pub use results::{Comparison, ResultRow, SummaryRow};
pub use runner::{EvalObserver, RunOptions, RunReport};
pub use suite::{Case, Suite};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {detail}")]
    Suite { path: PathBuf, detail: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    File(#[from] FileError),
    /// Results could not be made into a table (polars).
    #[error("{path}: {detail}")]
    Table { path: PathBuf, detail: String },
    #[error(transparent)]
    Target(#[from] crate::providers::ProviderError),
    #[error(transparent)]
    Targets(#[from] targets::TargetsError),
}

impl EvalError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EvalError::File(FileError::io(path, source))
    }
}
