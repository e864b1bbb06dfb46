//! Before any step runs: the base model's files and the data loaded, the plan worked out (steps,
//! warmup, adapted modules, parameter counts), and how the data is ordered into micro-batches.

use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;

use super::recipe::{LoadedRecipe, RecipeError};
use super::{TrainError, lora};
use crate::data::{self, DataStats, HostBatch, Sample, Sequence};
use crate::load::{self, ModelFiles};

/// What the plan looks like before any step runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: String,
    pub train: DataStats,
    pub val_samples: usize,
    pub sequences: usize,
    pub micro_batches_per_epoch: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub targets: Vec<String>,
    pub adapted_modules: usize,
    pub trainable_params: usize,
    pub base_params: usize,
    pub scale: f64,
    /// The frozen base weights' dtype (the recipe's `bf16` on its device).
    pub precision: crate::model::Precision,
}

/// Everything a run needs, prepared: model files, data, plan.
pub struct Prepared {
    pub recipe: LoadedRecipe,
    pub files: ModelFiles,
    pub train: Vec<Sequence>,
    pub val: Vec<Sequence>,
    pub plan: Plan,
}

/// Load the base model's files and the data, and work out the plan.
pub fn prepare(recipe: LoadedRecipe) -> Result<Prepared, TrainError> {
    let r = &recipe.recipe;
    let mut files = load::open(r.base_model.as_deref())?;
    files.precision = r.bf16.precision(r.device);
    // Positions past the model's context have no RoPE table (and were never trained).
    let context = files
        .resolved
        .max_positions
        .min(crate::model::MAX_ROPE_POSITIONS);
    if r.sequence_len > context {
        return Err(TrainError::Recipe(RecipeError::Invalid {
            path: recipe.path.clone(),
            line: recipe.line_of("sequence_len"),
            key: "sequence_len".into(),
            detail: format!(
                "{} is longer than the model's context ({context} positions, max_position_embeddings)",
                r.sequence_len
            ),
        }));
    }
    let specs: Vec<_> = r
        .datasets
        .iter()
        .map(|d| (d.clone(), recipe.resolve(&d.path)))
        .collect();
    let (samples, mut stats) = data::load_samples(
        &specs,
        &files.tokenizer,
        r.train_on_inputs,
        r.sequence_len,
        r.seed,
    )?;
    let (train, val) = data::split(samples, r.val_set_size, r.seed);
    if train.is_empty() {
        return Err(TrainError::NoSamples {
            path: recipe.path.clone(),
            rows: stats.rows,
            sequence_len: r.sequence_len,
            dropped: stats.dropped_too_long,
        });
    }
    stats.samples = train.len();
    stats.tokens = train.iter().map(|s| s.ids.len()).sum();
    stats.trained_tokens = train.iter().map(Sample::trained_tokens).sum();
    let train = data::sequences(&train, r.sample_packing, r.sequence_len);
    let val = data::sequences(&val, false, r.sequence_len);
    let micro = train.len().div_ceil(r.micro_batch_size);
    let total_steps = match r.max_steps {
        Some(s) => s,
        None => ((r.num_epochs * micro as f64).ceil() as usize)
            .div_ceil(r.gradient_accumulation_steps)
            .max(1),
    };
    let warmup_steps = match (r.warmup_steps, r.warmup_ratio) {
        (Some(w), _) => w,
        (None, Some(ratio)) => (ratio * total_steps as f64).ceil() as usize,
        (None, None) => 0,
    };
    let targets = recipe.targets();
    let cfg = &files.resolved;
    let (mut modules, mut trainable) = (0, 0);
    for (name, p) in cfg.projections() {
        if lora::is_target(&name, &targets) {
            modules += 1;
            trainable += r.lora_r * (p.d_in + p.d_out);
        }
    }
    if modules == 0 {
        return Err(TrainError::Recipe(RecipeError::Invalid {
            path: recipe.path.clone(),
            line: recipe.line_of("lora_target_modules"),
            key: "lora_target_modules".into(),
            detail: "matches no projection of the model".into(),
        }));
    }
    let plan = Plan {
        model: files.origin.clone(),
        val_samples: val.len(),
        sequences: train.len(),
        micro_batches_per_epoch: micro,
        total_steps,
        warmup_steps,
        targets,
        adapted_modules: modules,
        trainable_params: trainable,
        base_params: cfg.num_parameters(),
        scale: crate::formats::adapter::lora_scale(r.lora_alpha, r.lora_r, r.peft_use_rslora),
        precision: files.precision,
        train: stats,
    };
    Ok(Prepared {
        recipe,
        files,
        train,
        val,
        plan,
    })
}

impl Prepared {
    /// A fingerprint of what fixes the data order and the math: resuming under another recipe
    /// would silently train something else.
    pub fn fingerprint(&self) -> String {
        let r = &self.recipe.recipe;
        let key = json!({
            "model": self.plan.model, "seqs": self.train.len(), "tokens": self.plan.train.tokens,
            "r": r.lora_r, "alpha": r.lora_alpha, "targets": self.plan.targets, "rslora": r.peft_use_rslora,
            "mbs": r.micro_batch_size, "gas": r.gradient_accumulation_steps, "lr": r.learning_rate,
            "steps": self.plan.total_steps, "seed": r.seed, "packing": r.sample_packing,
            "sched": r.lr_scheduler, "wd": r.weight_decay, "clip": r.max_grad_norm,
        });
        crate::util::sha256_hex(crate::util::canonical_json(&key).as_bytes())[..16].to_string()
    }

    /// The token that pads batches (the first EOS id).
    pub fn pad_id(&self) -> u32 {
        self.files.tokenizer.eos_ids.first().copied().unwrap_or(0)
    }

    /// The micro-batch with global index `k`: epochs run back to back, each in its own seeded
    /// order.
    pub fn micro_batch(&self, k: usize, window: Option<usize>) -> HostBatch {
        let r = &self.recipe.recipe;
        let (seqs, mbs) = (&self.train, r.micro_batch_size);
        let per_epoch = seqs.len().div_ceil(mbs);
        let (epoch, j) = (k / per_epoch, k % per_epoch);
        let order = epoch_order(seqs.len(), r.seed, epoch);
        let pick: Vec<&Sequence> = order[j * mbs..((j + 1) * mbs).min(seqs.len())]
            .iter()
            .map(|&i| &seqs[i])
            .collect();
        HostBatch::new(&pick, self.pad_id(), window)
    }
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_add(1 + epoch as u64),
    ));
    idx
}
