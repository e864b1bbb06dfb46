//! Evaluation: suites of cases asked of targets (the local model, hosted providers) on the same
//! prompts, scored, and summarised with confidence intervals, latency and cost.
//!
//! - [`suite`]: the suite file and its cases.
//! - [`scorers`]: what a case's answer is worth, and why it failed.
//! - [`runner`]: the concurrent run: cache, resume, rate limits and retries (through
//!   [`crate::providers`]), results streamed to disk.
//! - [`results`]: the result rows, Parquet, and the summaries and paired comparisons.
//! - [`stats`]: intervals and tests.

pub mod results;
pub mod runner;
pub mod scorers;
pub mod stats;
pub mod suite;

use std::path::PathBuf;

use crate::data::DataError;
pub use results::{Comparison, ResultRow, SummaryRow};
pub use runner::{RunOptions, RunReport};
pub use suite::{Case, Suite};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {detail}")]
    Suite { path: PathBuf, detail: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl EvalError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
