//! Checkpoints: the adapter (PEFT layout), the optimiser moments and the loop's state, written to
//! a temporary folder and renamed into place, so a killed run never leaves a half checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::weights::adapter::PeftAdapter;
use crate::weights::hf_folder::{SafetensorsFolder, write_safetensors};
use crate::weights::{HostTensor, WeightSource, WeightsError, write_atomic};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub best_val_loss: Option<f64>,
    pub evals_without_improvement: usize,
    pub tokens_seen: usize,
    pub elapsed_s: f64,
    /// A hash of what determines the data and the math; resuming with another recipe is refused.
    pub fingerprint: String,
}

pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

fn step_dir(output: &Path, step: usize) -> PathBuf {
    checkpoints_dir(output).join(format!("step-{step:06}"))
}

/// Checkpoints present, oldest first.
pub fn list(output: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(output)) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Write a checkpoint, then drop the oldest beyond `keep`.
pub fn save(
    output: &Path,
    state: &TrainerState,
    adapter: &PeftAdapter,
    moments: &BTreeMap<String, HostTensor>,
    keep: Option<usize>,
) -> Result<PathBuf, WeightsError> {
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root).map_err(|e| WeightsError::io(&root, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&root)
        .map_err(|e| WeightsError::io(&root, e))?;
    adapter.write(tmp.path())?;
    write_safetensors(&tmp.path().join(OPTIMIZER_FILE), moments)?;
    let text =
        serde_json::to_string_pretty(state).map_err(|e| WeightsError::Other(e.to_string()))?;
    write_atomic(&tmp.path().join(STATE_FILE), text.as_bytes())?;
    let dest = step_dir(output, state.step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| WeightsError::io(&dest, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &dest).map_err(|e| WeightsError::io(&dest, e))?;
    if let Some(keep) = keep {
        let all = list(output);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old).map_err(|e| WeightsError::io(old, e))?;
        }
    }
    Ok(dest)
}

/// A checkpoint read back.
pub struct Loaded {
    pub state: TrainerState,
    pub adapter: PeftAdapter,
    pub moments: BTreeMap<String, HostTensor>,
    pub path: PathBuf,
}

pub fn load(dir: &Path) -> Result<Loaded, WeightsError> {
    let state: TrainerState = crate::weights::hf_folder::read_json(&dir.join(STATE_FILE))?;
    let adapter = PeftAdapter::read(dir)?;
    let opt = SafetensorsFolder::open_file(&dir.join(OPTIMIZER_FILE))?;
    let mut moments = BTreeMap::new();
    for name in opt.names() {
        moments.insert(name.clone(), opt.get(&name)?.expect("listed"));
    }
    Ok(Loaded {
        state,
        adapter,
        moments,
        path: dir.to_path_buf(),
    })
}
