//! `metrics.jsonl`: one JSON line per logged step, appended and flushed as the run goes; on
//! resume, the lines after the checkpoint's step are dropped so the file reads as one run.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::{FileError, write_atomic};

pub struct Metrics {
    path: PathBuf,
    file: std::fs::File,
}

impl Metrics {
    /// Start the file afresh, or (`keep_until`) keep the lines up to that step.
    pub fn open(path: PathBuf, keep_until: Option<usize>) -> Result<Self, FileError> {
        let kept: String = match keep_until {
            Some(step) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            None => String::new(),
        };
        write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| FileError::io(&path, e))?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log(&mut self, v: &serde_json::Value) -> Result<(), FileError> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| FileError::io(&self.path, e))
    }
}
