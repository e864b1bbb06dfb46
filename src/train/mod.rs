//! LoRA fine-tuning from a recipe: data, adapters on a frozen base, AdamW with warmup and a
//! schedule, gradient accumulation and global-norm clipping, validation and early stopping,
//! atomic checkpoints that resume to the same losses, metrics, and a PEFT adapter at the end.

pub mod checkpoint;
pub mod optim;
pub mod recipe;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Param;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sha2::Digest;

use crate::data::{self, DataStats, HostBatch, Sample, Sequence};
use crate::model::{Batch, CausalLm, LoraAdapter};
use crate::weights::adapter::{AdapterConfig, LoraPair, PeftAdapter};
use crate::weights::resolve::{self, ModelFiles};
use crate::weights::{HostTensor, write_atomic};
use checkpoint::TrainerState;
use optim::{AdamW, Moments};
pub use recipe::{LoadedRecipe, Recipe, RecipeError, Schedule};

/// Set by Ctrl-C: the loop saves a checkpoint at the end of the current step and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub dry_run: bool,
    /// Continue from the newest checkpoint in the output folder.
    pub resume: bool,
    /// Delete an earlier run's checkpoints and outputs first.
    pub overwrite: bool,
    pub progress: bool,
    /// Behave as if Ctrl-C came after this step (for tests of resuming).
    pub interrupt_after: Option<usize>,
}

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
    let files = resolve::open(r.base_model.as_deref())?;
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
        return Err(TrainError::Other(format!(
            "{}: no training samples left (rows: {}, dropped as longer than sequence_len {}: {})",
            recipe.path.display(),
            stats.rows,
            r.sequence_len,
            stats.dropped_too_long
        )));
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
    for (name, [d_in, d_out]) in projection_shapes(cfg) {
        if is_target(&name, &targets) {
            modules += 1;
            trainable += r.lora_r * (d_in + d_out);
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
    let base_params = parameter_count(cfg);
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
        base_params,
        scale: crate::weights::adapter::lora_scale(r.lora_alpha, r.lora_r, r.peft_use_rslora),
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

/// Parameters of the base model, from the config alone (reading the weights would dequantise
/// a whole GGUF just to count them).
fn parameter_count(cfg: &crate::model::ResolvedConfig) -> usize {
    let (h, q, kv) = (
        cfg.hidden,
        cfg.heads * cfg.head_dim,
        cfg.kv_heads * cfg.head_dim,
    );
    let projections: usize = projection_shapes(cfg).iter().map(|(_, [i, o])| i * o).sum();
    let per_layer_bias = if cfg.qkv_bias { q + 2 * kv } else { 0 }
        + if cfg.mlp_bias {
            2 * cfg.intermediate + h
        } else {
            0
        };
    let heads = if cfg.tied_embeddings { 1 } else { 2 };
    projections + cfg.layers * (per_layer_bias + 2 * h) + h + heads * cfg.vocab * h
}

/// Module names and `[in, out]` of every projection, from the config alone.
fn projection_shapes(cfg: &crate::model::ResolvedConfig) -> Vec<(String, [usize; 2])> {
    let (h, q, kv, f) = (
        cfg.hidden,
        cfg.heads * cfg.head_dim,
        cfg.kv_heads * cfg.head_dim,
        cfg.intermediate,
    );
    let mut out = Vec::new();
    for i in 0..cfg.layers {
        for (n, d) in [
            ("self_attn.q_proj", [h, q]),
            ("self_attn.k_proj", [h, kv]),
            ("self_attn.v_proj", [h, kv]),
            ("self_attn.o_proj", [q, h]),
            ("mlp.gate_proj", [h, f]),
            ("mlp.up_proj", [h, f]),
            ("mlp.down_proj", [f, h]),
        ] {
            out.push((format!("model.layers.{i}.{n}"), d));
        }
    }
    out
}

fn is_target(module: &str, targets: &[String]) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module);
    targets.iter().any(|t| t == last || t == module)
}

/// A fingerprint of what fixes the data order and the math: resuming under another recipe would
/// silently train something else.
fn fingerprint(p: &Prepared) -> String {
    let r = &p.recipe.recipe;
    let key = json!({
        "model": p.plan.model, "seqs": p.train.len(), "tokens": p.plan.train.tokens,
        "r": r.lora_r, "alpha": r.lora_alpha, "targets": p.plan.targets, "rslora": r.peft_use_rslora,
        "mbs": r.micro_batch_size, "gas": r.gradient_accumulation_steps, "lr": r.learning_rate,
        "steps": p.plan.total_steps, "seed": r.seed, "packing": r.sample_packing,
        "sched": r.lr_scheduler, "wd": r.weight_decay, "clip": r.max_grad_norm,
    });
    format!("{:x}", sha2::Sha256::digest(key.to_string().as_bytes()))[..16].to_string()
}

/// The micro-batch with global index `k`: epochs run back to back, each in its own seeded order.
fn micro_batch(
    seqs: &[Sequence],
    mbs: usize,
    seed: u64,
    k: usize,
    pad: u32,
    window: Option<usize>,
) -> HostBatch {
    let per_epoch = seqs.len().div_ceil(mbs);
    let (epoch, j) = (k / per_epoch, k % per_epoch);
    let order = epoch_order(seqs.len(), seed, epoch);
    let pick: Vec<&Sequence> = order[j * mbs..((j + 1) * mbs).min(seqs.len())]
        .iter()
        .map(|&i| &seqs[i])
        .collect();
    HostBatch::new(&pick, pad, window)
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_add(1 + epoch as u64),
    ));
    idx
}

fn tensors(b: &HostBatch, device: &Device) -> (Batch, Tensor<1, Int>, Tensor<1, Int>) {
    let (rows, len) = (b.rows, b.len);
    let batch = Batch {
        tokens: Tensor::from_data(TensorData::new(b.ids.clone(), [rows, len]), device),
        positions: Tensor::from_data(TensorData::new(b.positions.clone(), [rows, len]), device),
        mask: Tensor::from_data(TensorData::new(b.mask.clone(), [rows, 1, len, len]), device),
    };
    let n = b.labels.len();
    let at = Tensor::from_data(TensorData::new(b.predict_at.clone(), [n]), device);
    let labels = Tensor::from_data(TensorData::new(b.labels.clone(), [n]), device);
    (batch, at, labels)
}

/// What fresh adapters look like.
struct AdapterInit<'a> {
    targets: &'a [String],
    rank: usize,
    scale: f64,
    dropout: f64,
    seed: u64,
}

fn attach_adapters(model: &mut CausalLm, p: &Prepared, device: &Device) {
    let r = &p.recipe.recipe;
    let init = AdapterInit {
        targets: &p.plan.targets,
        rank: r.lora_r,
        scale: p.plan.scale,
        dropout: r.lora_dropout,
        seed: r.seed,
    };
    attach(model, &init, device);
}

/// Attach fresh adapters (PEFT's init: A uniform in ±1/√in, B zero) to the targeted projections.
fn attach(model: &mut CausalLm, init: &AdapterInit<'_>, device: &Device) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(init.seed);
    let r = init.rank;
    for (name, proj) in model.projections_mut() {
        if !is_target(&name, init.targets) {
            continue;
        }
        let [d_in, d_out] = proj.dims();
        let bound = 1.0 / (d_in as f32).sqrt();
        // PEFT draws A as [r, in]; draw in that order and transpose, so seeds mean the same layout.
        let a_rin: Vec<f32> = (0..r * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = transpose(&a_rin, r, d_in);
        proj.lora = Some(LoraAdapter::from_host(
            a,
            vec![0.0; r * d_out],
            [d_in, r, d_out],
            init.scale,
            init.dropout,
            device,
        ));
    }
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

fn host(t: Tensor<2>) -> HostTensor {
    let [a, b] = t.dims();
    HostTensor::new(
        vec![a, b],
        t.into_data().convert::<f32>().try_to_vec().expect("f32"),
    )
}

/// The adapters as a PEFT adapter (factors transposed to PEFT's `[r, in]` / `[out, r]`).
pub fn to_peft(model: &CausalLm, recipe: &LoadedRecipe, base: &str) -> PeftAdapter {
    let r = &recipe.recipe;
    let mut pairs = BTreeMap::new();
    for (name, proj) in model.projections() {
        if let Some(l) = &proj.lora {
            pairs.insert(
                name,
                LoraPair {
                    a: host(l.a.val().inner().transpose()),
                    b: host(l.b.val().inner().transpose()),
                },
            );
        }
    }
    let mut config = AdapterConfig::new(
        r.lora_r,
        r.lora_alpha,
        r.lora_dropout,
        r.peft_use_rslora,
        recipe.targets(),
    );
    config.base_model_name_or_path = Some(base.to_string());
    PeftAdapter { config, pairs }
}

/// Put a checkpoint's adapter weights into the model's adapters.
fn load_adapter_weights(
    model: &mut CausalLm,
    adapter: &PeftAdapter,
    device: &Device,
) -> Result<(), TrainError> {
    for (name, proj) in model.projections_mut() {
        let Some(l) = proj.lora.as_mut() else {
            continue;
        };
        let pair = adapter
            .pairs
            .get(&name)
            .ok_or_else(|| TrainError::Other(format!("checkpoint has no adapter for `{name}`")))?;
        let up = |t: &HostTensor| {
            Tensor::<2>::from_data(
                TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]),
                device,
            )
            .transpose()
        };
        l.a = Param::from_tensor(up(&pair.a));
        l.b = Param::from_tensor(up(&pair.b));
    }
    Ok(())
}

/// The trainable tensors, in a fixed order, with their names (`<module>.lora_A` / `.lora_B`).
fn param_names(model: &CausalLm) -> Vec<String> {
    model
        .projections()
        .into_iter()
        .filter(|(_, p)| p.lora.is_some())
        .flat_map(|(n, _)| [format!("{n}.lora_A"), format!("{n}.lora_B")])
        .collect()
}

fn params(model: &CausalLm) -> Vec<Tensor<2>> {
    model
        .projections()
        .into_iter()
        .filter_map(|(_, p)| p.lora.as_ref().map(|l| [l.a.val(), l.b.val()]))
        .flatten()
        .collect()
}

fn set_params(model: &mut CausalLm, values: Vec<Tensor<2>>) {
    let mut it = values.into_iter();
    for (_, proj) in model.projections_mut() {
        if let Some(l) = proj.lora.as_mut() {
            l.a = Param::from_tensor(it.next().expect("a").autodiff());
            l.b = Param::from_tensor(it.next().expect("b").autodiff());
        }
    }
}

/// Mean loss over the validation sequences (no dropout, no graph).
fn validate(
    model: &CausalLm,
    val: &[Sequence],
    mbs: usize,
    pad: u32,
    window: Option<usize>,
) -> Option<f64> {
    if val.is_empty() {
        return None;
    }
    let m = model.valid();
    let device = m.embed_tokens.val().device();
    let (mut nll, mut n) = (0f64, 0usize);
    for chunk in val.chunks(mbs) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let hb = HostBatch::new(&refs, pad, window);
        let (batch, at, labels) = tensors(&hb, &device);
        nll += m.nll_sum(batch, at, labels).into_scalar::<f32>() as f64;
        n += hb.trained_tokens();
    }
    Some(nll / n.max(1) as f64)
}

/// Append-only metrics with a rewrite on resume (lines after the checkpoint's step are dropped).
struct Metrics {
    path: PathBuf,
    file: std::fs::File,
}

impl Metrics {
    fn open(path: PathBuf, keep_until: Option<usize>) -> Result<Self, TrainError> {
        let io =
            |e: std::io::Error| TrainError::Weights(crate::weights::WeightsError::io(&path, e));
        if let Some(step) = keep_until {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_atomic(&path, kept.as_bytes())?;
        } else {
            write_atomic(&path, b"")?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self { path, file })
    }

    fn log(&mut self, v: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::Weights(crate::weights::WeightsError::io(&self.path, e)))
    }
}

/// Where the run's files go.
pub fn adapter_dir(output: &Path) -> PathBuf {
    output.join("adapter")
}

/// Write the tokenizer files and chat template used, beside the adapter.
fn write_tokenizer_files(dir: &Path, files: &ModelFiles) -> Result<(), TrainError> {
    let t = &files.tokenizer;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json");
    write_atomic(&dir.join("tokenizer.json"), pretty(&t.json).as_bytes())?;
    write_atomic(
        &dir.join("tokenizer_config.json"),
        pretty(&t.config).as_bytes(),
    )?;
    if let Some(tmpl) = &t.template {
        write_atomic(&dir.join("chat_template.jinja"), tmpl.source.as_bytes())?;
    }
    Ok(())
}

/// Time one micro-batch forward and backward, for the dry run's estimate.
pub fn time_one_step(p: &Prepared, device: &Device) -> Result<f64, TrainError> {
    let ad = device.clone().autodiff();
    let mut model = CausalLm::load(&p.files.resolved, p.files.source.as_ref(), &ad)?.no_grad();
    attach_adapters(&mut model, p, &ad);
    let pad = pad_id(&p.files);
    let window = model.sliding_window();
    let hb = micro_batch(
        &p.train,
        p.recipe.recipe.micro_batch_size,
        p.recipe.recipe.seed,
        0,
        pad,
        window,
    );
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let started = Instant::now();
        let (batch, at, labels) = tensors(&hb, &ad);
        let loss = model.nll_sum(batch, at, labels);
        let grads = loss.backward();
        for t in params(&model) {
            let _ = t.grad(&grads);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn pad_id(files: &ModelFiles) -> u32 {
    files.tokenizer.eos_ids.first().copied().unwrap_or(0)
}

/// Run (or resume) training.
pub fn train(p: &Prepared, device: &Device, opts: &TrainOptions) -> Result<Outcome, TrainError> {
    let r = &p.recipe.recipe;
    let out = p.recipe.output_dir();
    let existing = checkpoint::list(&out);
    if !existing.is_empty() && !opts.resume && !opts.overwrite {
        return Err(TrainError::Other(format!(
            "{} has checkpoints of an earlier run (newest: step {}); pass --resume to continue it or --overwrite to start over",
            out.display(),
            existing.last().map_or(0, |c| c.0)
        )));
    }
    if opts.overwrite && out.exists() {
        for sub in ["checkpoints", "adapter"] {
            let d = out.join(sub);
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| crate::weights::WeightsError::io(&d, e))?;
            }
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| crate::weights::WeightsError::io(&out, e))?;
    write_atomic(&out.join("recipe.toml"), p.recipe.text.as_bytes())?;

    let ad = device.clone().autodiff();
    let mut model = CausalLm::load(&p.files.resolved, p.files.source.as_ref(), &ad)?.no_grad();
    attach_adapters(&mut model, p, &ad);
    let names = param_names(&model);
    let fp = fingerprint(p);
    let mut moments: Vec<Moments> = params(&model)
        .iter()
        .map(|t| Moments::zeros(&t.clone().inner()))
        .collect();
    let mut state = TrainerState {
        step: 0,
        total_steps: p.plan.total_steps,
        best_val_loss: None,
        evals_without_improvement: 0,
        tokens_seen: 0,
        elapsed_s: 0.0,
        fingerprint: fp.clone(),
    };
    let resumed = if opts.resume
        && let Some((_, dir)) = existing.last()
    {
        let ck = checkpoint::load(dir)?;
        if ck.state.fingerprint != fp {
            return Err(TrainError::Other(format!(
                "{}: this checkpoint was made with a different recipe, data or model; pass --overwrite to start over",
                dir.display()
            )));
        }
        load_adapter_weights(&mut model, &ck.adapter, &ad)?;
        for (name, m) in names.iter().zip(moments.iter_mut()) {
            let get = |suffix: &str| {
                ck.moments
                    .get(&format!("{name}.{suffix}"))
                    .map(|t| {
                        Tensor::<2>::from_data(
                            TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]),
                            device,
                        )
                    })
                    .ok_or_else(|| {
                        TrainError::Other(format!(
                            "{}: optimiser state lacks `{name}.{suffix}`",
                            dir.display()
                        ))
                    })
            };
            *m = Moments {
                m: get("exp_avg")?,
                v: get("exp_avg_sq")?,
            };
        }
        state = ck.state;
        eprintln!(
            "resuming from {} (step {}/{})",
            dir.display(),
            state.step,
            state.total_steps
        );
        true
    } else {
        false
    };
    let mut metrics = Metrics::open(out.join("metrics.jsonl"), resumed.then_some(state.step))?;

    let pad = pad_id(&p.files);
    let window = model.sliding_window();
    let (mbs, gas) = (r.micro_batch_size, r.gradient_accumulation_steps);
    let opt = AdamW {
        beta1: r.adam_beta1,
        beta2: r.adam_beta2,
        eps: r.adam_epsilon,
        weight_decay: r.weight_decay,
    };
    let total = p.plan.total_steps;
    let bar = progress_bar(total, state.step, opts.progress);
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let tokens_before = state.tokens_seen;
    let (mut last_loss, mut last_val) = (None, state.best_val_loss);
    let mut early_stopped = false;
    let mut interrupted = false;
    let save = |model: &CausalLm,
                moments: &[Moments],
                state: &TrainerState|
     -> Result<PathBuf, TrainError> {
        let mut host_m = BTreeMap::new();
        for (name, m) in names.iter().zip(moments) {
            host_m.insert(format!("{name}.exp_avg"), host(m.m.clone()));
            host_m.insert(format!("{name}.exp_avg_sq"), host(m.v.clone()));
        }
        Ok(checkpoint::save(
            &out,
            state,
            &to_peft(model, &p.recipe, &p.plan.model),
            &host_m,
            r.save_total_limit,
        )?)
    };
    let mut last_ck = None;

    while state.step < total {
        let step = state.step;
        let step_start = Instant::now();
        let lr = optim::lr_at(
            step,
            r.learning_rate,
            p.plan.warmup_steps,
            total,
            r.lr_scheduler,
        );
        // Dropout masks depend on the step alone, so a resumed run draws the same ones.
        ad.seed(r.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let micro: Vec<HostBatch> = (0..gas)
            .map(|i| micro_batch(&p.train, mbs, r.seed, step * gas + i, pad, window))
            .collect();
        let n_trained: usize = micro.iter().map(HostBatch::trained_tokens).sum();
        let n_tokens: usize = micro.iter().map(|b| b.ids.len()).sum();
        let (nll, grad_norm) = optimizer_step(
            &mut model,
            &mut moments,
            &micro,
            &ad,
            &opt,
            lr,
            step + 1,
            r.max_grad_norm,
        )?;
        state.step += 1;
        state.tokens_seen += n_tokens;
        let loss = nll / n_trained.max(1) as f64;
        if !loss.is_finite() {
            return Err(TrainError::Other(format!(
                "loss became {loss} at step {}; lower learning_rate or check the data",
                state.step
            )));
        }
        last_loss = Some(loss);
        let step_s = step_start.elapsed().as_secs_f64();
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let mut line = json!({
            "step": state.step, "epoch": (state.step * gas) as f64 / p.plan.micro_batches_per_epoch as f64,
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens, "trained_tokens": n_trained,
            "tokens_per_s": n_tokens as f64 / step_s, "elapsed_s": state.elapsed_s,
        });
        let eval_now =
            r.eval_steps.is_some_and(|e| state.step.is_multiple_of(e)) || state.step == total;
        if eval_now && let Some(v) = validate(&model, &p.val, mbs, pad, window) {
            line["val_loss"] = json!(v);
            line["val_ppl"] = json!(v.exp());
            last_val = Some(v);
            if state.best_val_loss.is_none_or(|b| v < b) {
                state.best_val_loss = Some(v);
                state.evals_without_improvement = 0;
            } else {
                state.evals_without_improvement += 1;
            }
            if r.early_stopping_patience
                .is_some_and(|pat| state.evals_without_improvement >= pat)
            {
                early_stopped = true;
            }
        }
        if state.step.is_multiple_of(r.logging_steps) || eval_now || state.step == total {
            metrics.log(&line)?;
        }
        let rate = (state.tokens_seen - tokens_before) as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {loss:.4}{} · {rate:.0} tok/s",
            last_val
                .map(|v| format!(" · val {v:.4}"))
                .unwrap_or_default()
        ));
        bar.set_position(state.step as u64);
        if opts.interrupt_after == Some(state.step) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
        interrupted = INTERRUPTED.load(Ordering::SeqCst);
        let save_now = r.save_steps.is_some_and(|s| state.step.is_multiple_of(s));
        if save_now || interrupted || early_stopped || state.step == total {
            last_ck = Some(save(&model, &moments, &state)?);
        }
        if interrupted || early_stopped {
            break;
        }
    }
    bar.finish_and_clear();
    let tokens_per_s =
        (state.tokens_seen - tokens_before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let adapter_out = if interrupted {
        None
    } else {
        let dir = adapter_dir(&out);
        to_peft(&model, &p.recipe, &p.plan.model).write(&dir)?;
        write_tokenizer_files(&dir, &p.files)?;
        Some(dir)
    };
    let outcome = Outcome {
        steps: state.step,
        interrupted,
        early_stopped,
        final_loss: last_loss,
        final_val_loss: last_val,
        tokens_per_s,
        adapter_dir: adapter_out,
        checkpoint: last_ck,
    };
    let summary = json!({"plan": p.plan, "outcome": outcome, "elapsed_s": state.elapsed_s});
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(outcome)
}

/// One optimiser step over `micro` (gradient accumulation): forward, backward, global-norm
/// clipping, AdamW. Returns the summed NLL and the gradient norm before clipping.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    model: &mut CausalLm,
    moments: &mut [Moments],
    micro: &[HostBatch],
    device: &Device,
    opt: &AdamW,
    lr: f64,
    t: usize,
    max_grad_norm: f64,
) -> Result<(f64, f64), TrainError> {
    let n_trained: usize = micro.iter().map(HostBatch::trained_tokens).sum();
    let mut acc: Vec<Option<Tensor<2>>> = vec![None; moments.len()];
    let mut nll = 0f64;
    for hb in micro {
        let (batch, at, labels) = tensors(hb, device);
        let loss_sum = model.nll_sum(batch, at, labels);
        let grads = (loss_sum.clone() / n_trained as f32).backward();
        nll += loss_sum.inner().into_scalar::<f32>() as f64;
        for (slot, p) in acc.iter_mut().zip(params(model)) {
            let g = p
                .grad(&grads)
                .ok_or_else(|| TrainError::Other("an adapter got no gradient".into()))?;
            *slot = Some(match slot.take() {
                Some(prev) => prev + g,
                None => g,
            });
        }
    }
    let mut grads: Vec<Tensor<2>> = acc.into_iter().map(|g| g.expect("accumulated")).collect();
    let grad_norm = optim::clip_global_norm(&mut grads, max_grad_norm);
    let updated: Vec<Tensor<2>> = params(model)
        .into_iter()
        .zip(grads)
        .zip(moments.iter_mut())
        .map(|((p, g), m)| opt.update(p.inner(), g, m, lr, t))
        .collect();
    set_params(model, updated);
    Ok((nll, grad_norm))
}

/// Training throughput on fixed batches: LoRA of rank `r` on `targets`, all tokens trained, fp32
/// AdamW, global-norm clipping at 1. Returns tokens/s over `steps` timed steps after one warm-up.
pub fn throughput(
    files: &ModelFiles,
    targets: &[String],
    r: usize,
    rows: &[Vec<u32>],
    steps: usize,
    device: &Device,
) -> Result<f64, TrainError> {
    let ad = device.clone().autodiff();
    let mut model = CausalLm::load(&files.resolved, files.source.as_ref(), &ad)?.no_grad();
    let init = AdapterInit {
        targets,
        rank: r,
        scale: 2.0,
        dropout: 0.0,
        seed: 0,
    };
    attach(&mut model, &init, &ad);
    let mut moments: Vec<Moments> = params(&model)
        .iter()
        .map(|t| Moments::zeros(&t.clone().inner()))
        .collect();
    let samples: Vec<Sequence> = rows
        .iter()
        .map(|ids| {
            vec![Sample {
                ids: ids.clone(),
                trained: vec![true; ids.len()],
            }]
        })
        .collect();
    let refs: Vec<&Sequence> = samples.iter().collect();
    let hb = HostBatch::new(&refs, 0, model.sliding_window());
    let opt = AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    // Step 1 warms up (first-touch allocations); steps 2..=steps+1 are timed.
    let mut started = Instant::now();
    for t in 1..=steps + 1 {
        if t == 2 {
            started = Instant::now();
        }
        let micro = std::slice::from_ref(&hb);
        optimizer_step(&mut model, &mut moments, micro, &ad, &opt, 1e-4, t, 1.0)?;
    }
    Ok((steps * hb.tokens()) as f64 / started.elapsed().as_secs_f64())
}

fn progress_bar(total: usize, at: usize, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "train [{bar:30}] {pos}/{len} steps · {msg} · {elapsed} elapsed, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(at as u64);
    bar
}
