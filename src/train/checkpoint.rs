//! Checkpoints: the adapter (PEFT layout), the optimiser moments and the loop's state, written to
//! a temporary folder and renamed into place, so a killed run never leaves a half checkpoint.
//! [`Checkpointer`] is what the loop holds: it saves the model's state and restores it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::optim::Moments;
use super::recipe::LoadedRecipe;
use super::{TrainError, lora};
use crate::formats::adapter::PeftAdapter;
use crate::formats::shards::{SafetensorsFolder, write_safetensors};
use crate::formats::{FormatError, HostTensor, TensorSource};
use crate::model::CausalLm;
use crate::util::{read_json, write_json};

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
) -> Result<PathBuf, FormatError> {
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root).map_err(|e| FormatError::io(&root, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&root)
        .map_err(|e| FormatError::io(&root, e))?;
    adapter.write(tmp.path())?;
    write_safetensors(&tmp.path().join(OPTIMIZER_FILE), moments)?;
    write_json(&tmp.path().join(STATE_FILE), state)?;
    let dest = step_dir(output, state.step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| FormatError::io(&dest, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &dest).map_err(|e| FormatError::io(&dest, e))?;
    if let Some(keep) = keep {
        let all = list(output);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old).map_err(|e| FormatError::io(old, e))?;
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

pub fn load(dir: &Path) -> Result<Loaded, FormatError> {
    let state: TrainerState = read_json(&dir.join(STATE_FILE))?;
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

/// Saves and restores a run's trainable state: the adapters (named as PEFT names them), their
/// AdamW moments, and the loop's counters.
pub struct Checkpointer<'a> {
    pub out: PathBuf,
    /// The trainable tensors' names, in `lora::params` order.
    pub names: Vec<String>,
    pub keep: Option<usize>,
    pub recipe: &'a LoadedRecipe,
    /// The base model, as the adapter config records it.
    pub base: &'a str,
}

impl Checkpointer<'_> {
    pub fn save(
        &self,
        model: &CausalLm,
        moments: &[Moments],
        state: &TrainerState,
    ) -> Result<PathBuf, TrainError> {
        let mut host_m = BTreeMap::new();
        for (name, m) in self.names.iter().zip(moments) {
            host_m.insert(format!("{name}.exp_avg"), lora::host(m.m.clone()));
            host_m.insert(format!("{name}.exp_avg_sq"), lora::host(m.v.clone()));
        }
        let adapter = lora::to_peft(model, self.recipe, self.base);
        Ok(save(&self.out, state, &adapter, &host_m, self.keep)?)
    }

    /// Put the checkpoint in `dir` into `model` and `moments`; its state must carry
    /// `fingerprint` (the same recipe, data and model).
    pub fn restore(
        &self,
        dir: &Path,
        fingerprint: &str,
        model: &mut CausalLm,
        moments: &mut [Moments],
        device: &Device,
    ) -> Result<TrainerState, TrainError> {
        let ck = load(dir)?;
        if ck.state.fingerprint != fingerprint {
            return Err(TrainError::OtherRecipe {
                dir: dir.to_path_buf(),
            });
        }
        lora::load_weights(model, &ck.adapter, &device.clone().autodiff(), dir)?;
        for (name, m) in self.names.iter().zip(moments.iter_mut()) {
            let get = |suffix: &str| {
                let key = format!("{name}.{suffix}");
                ck.moments
                    .get(&key)
                    .map(|t| lora::upload(t, device))
                    .ok_or_else(|| TrainError::Checkpoint {
                        dir: dir.to_path_buf(),
                        what: format!("optimiser state lacks `{key}`"),
                    })
            };
            *m = Moments {
                m: get("exp_avg")?,
                v: get("exp_avg_sq")?,
            };
        }
        Ok(ck.state)
    }
}
