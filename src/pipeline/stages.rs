//! Stage bookkeeping: a stage is fresh (skipped) when its outputs exist and the fingerprint of
//! its inputs matches the one recorded after it last finished (`.stages/STAGE.json`).

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::util::{FileError, now_s, write_atomic, write_json};

/// A fingerprint of files (their paths and contents) and some settings.
pub fn fingerprint(paths: &[PathBuf], extra: &str) -> Result<String, FileError> {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.display().to_string().as_bytes());
        h.update(std::fs::read(p).map_err(|e| FileError::io(p, e))?);
    }
    h.update(extra.as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

pub struct Stages {
    dir: PathBuf,
    force: bool,
}

impl Stages {
    pub fn new(run: &Path, force: bool) -> Self {
        Self {
            dir: run.join(".stages"),
            force,
        }
    }

    fn path(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("{stage}.json"))
    }

    /// Whether the stage can be skipped.
    pub fn fresh(&self, stage: &str, fingerprint: &str, outputs: &[PathBuf]) -> bool {
        !self.force
            && outputs.iter().all(|p| p.exists())
            && std::fs::read_to_string(self.path(stage))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["fingerprint"] == fingerprint)
    }

    /// Note that the stage started on these inputs (so that an interrupted run resumes it).
    pub fn start(&self, stage: &str, fingerprint: &str) -> Result<(), FileError> {
        write_atomic(
            &self.path(&format!("{stage}-started")),
            fingerprint.as_bytes(),
        )
    }

    /// Whether the stage last started on these inputs.
    pub fn started_with(&self, stage: &str, fingerprint: &str) -> bool {
        std::fs::read_to_string(self.path(&format!("{stage}-started")))
            .is_ok_and(|t| t.contains(fingerprint))
    }

    pub fn done(&self, stage: &str, fingerprint: &str) -> Result<(), FileError> {
        let v = json!({"stage": stage, "fingerprint": fingerprint, "finished_at": now_s()});
        write_json(&self.path(stage), &v)
    }

    /// The finished stages' records, by stage.
    pub fn records(&self, stages: &[&str]) -> serde_json::Map<String, serde_json::Value> {
        stages
            .iter()
            .filter_map(|s| {
                let t = std::fs::read_to_string(self.path(s)).ok()?;
                Some((s.to_string(), serde_json::from_str(&t).ok()?))
            })
            .collect()
    }
}
