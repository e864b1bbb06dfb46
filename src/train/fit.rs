//! The training loop: micro-batches through the model with gradient accumulation, global-norm
//! clipping and AdamW at the scheduled learning rate; validation, early stopping, checkpoints,
//! metrics, and the PEFT adapter at the end. It stops after a step when the interrupt is set.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use serde_json::json;

use super::checkpoint::{self, Checkpointer, TrainerState};
use super::lora::{self, AdapterInit};
use super::metrics::Metrics;
use super::observer::{StepReport, TrainObserver};
use super::optim::{self, AdamW, Moments};
use super::plan::Prepared;
use super::{Outcome, TrainError, adapter_dir};
use crate::data::{HostBatch, Sequence};
use crate::model::{Batch, CausalLm};
use crate::util::{FileError, Interrupt, write_atomic, write_json};

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest checkpoint in the output folder.
    pub resume: bool,
    /// Delete an earlier run's checkpoints and outputs first.
    pub overwrite: bool,
}

/// A host batch as tensors: the model's input, where to predict, and the labels.
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

/// The base model on the autodiff device, frozen, with the recipe's fresh adapters.
fn model_with_adapters(p: &Prepared, ad: &Device) -> Result<CausalLm, TrainError> {
    let mut model = p.files.model_on(ad)?.no_grad();
    let r = &p.recipe.recipe;
    let init = AdapterInit {
        targets: &p.plan.targets,
        rank: r.lora_r,
        scale: p.plan.scale,
        dropout: r.lora_dropout,
        seed: r.seed,
    };
    lora::attach(&mut model, &init, ad);
    Ok(model)
}

/// Mean loss over the validation sequences (no dropout, no graph).
fn validate(model: &CausalLm, p: &Prepared, window: Option<usize>) -> Option<f64> {
    if p.val.is_empty() {
        return None;
    }
    let m = model.valid();
    let device = m.embed_tokens.val().device();
    let (mut nll, mut n) = (0f64, 0usize);
    for chunk in p.val.chunks(p.recipe.recipe.micro_batch_size) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let hb = HostBatch::new(&refs, p.pad_id(), window);
        let (batch, at, labels) = tensors(&hb, &device);
        nll += m.nll_sum(batch, at, labels).into_scalar::<f32>() as f64;
        n += hb.trained_tokens();
    }
    Some(nll / n.max(1) as f64)
}

/// Write the tokenizer files and chat template used, beside the adapter.
fn write_tokenizer_files(dir: &Path, p: &Prepared) -> Result<(), FileError> {
    let t = &p.files.tokenizer;
    write_json(&dir.join("tokenizer.json"), &t.json)?;
    write_json(&dir.join("tokenizer_config.json"), &t.config)?;
    if let Some(tmpl) = &t.template {
        write_atomic(&dir.join("chat_template.jinja"), tmpl.source.as_bytes())?;
    }
    Ok(())
}

/// Time one micro-batch forward and backward, for the dry run's estimate.
pub fn time_one_step(p: &Prepared, device: &Device) -> Result<f64, TrainError> {
    let ad = device.clone().autodiff();
    let model = model_with_adapters(p, &ad)?;
    let hb = p.micro_batch(0, model.sliding_window());
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let started = Instant::now();
        let (batch, at, labels) = tensors(&hb, &ad);
        let loss = model.nll_sum(batch, at, labels);
        let grads = loss.backward();
        for t in lora::params(&model) {
            let _ = t.grad(&grads);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Refuse to mix runs: an earlier run's checkpoints need `resume` or `overwrite`.
fn prepare_output(out: &Path, opts: &TrainOptions) -> Result<(), TrainError> {
    let existing = checkpoint::list(out);
    if !existing.is_empty() && !opts.resume && !opts.overwrite {
        return Err(TrainError::EarlierRun {
            dir: out.to_path_buf(),
            step: existing.last().map_or(0, |c| c.0),
        });
    }
    if opts.overwrite && out.exists() {
        for sub in ["checkpoints", "adapter"] {
            let d = out.join(sub);
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(|e| FileError::io(&d, e))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| FileError::io(out, e))?;
    Ok(())
}

/// Run (or resume) training. Stops after the step during which `interrupt` is set, with a
/// checkpoint; `observer` hears of every step.
pub fn train(
    p: &Prepared,
    device: &Device,
    opts: &TrainOptions,
    interrupt: &Interrupt,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome, TrainError> {
    let r = &p.recipe.recipe;
    let out = p.recipe.output_dir();
    prepare_output(&out, opts)?;
    write_atomic(&out.join("recipe.toml"), p.recipe.text.as_bytes())?;

    let ad = device.clone().autodiff();
    let mut model = model_with_adapters(p, &ad)?;
    let fp = p.fingerprint();
    let mut moments: Vec<Moments> = lora::params(&model)
        .iter()
        .map(|t| Moments::zeros(&t.clone().inner()))
        .collect();
    let checkpointer = Checkpointer {
        out: out.clone(),
        names: lora::param_names(&model),
        keep: r.save_total_limit,
        recipe: &p.recipe,
        base: &p.plan.model,
    };
    let newest = checkpoint::list(&out).pop().filter(|_| opts.resume);
    let (mut state, resumed) = match &newest {
        Some((_, dir)) => {
            let state = checkpointer.restore(dir, &fp, &mut model, &mut moments, device)?;
            (state, Some(dir.as_path()))
        }
        None => (
            TrainerState {
                step: 0,
                total_steps: p.plan.total_steps,
                best_val_loss: None,
                evals_without_improvement: 0,
                tokens_seen: 0,
                elapsed_s: 0.0,
                fingerprint: fp.clone(),
            },
            None,
        ),
    };
    let mut metrics = Metrics::open(
        out.join("metrics.jsonl"),
        resumed.is_some().then_some(state.step),
    )?;
    observer.started(&p.plan, state.step, resumed);

    let window = model.sliding_window();
    let gas = r.gradient_accumulation_steps;
    let opt = AdamW {
        beta1: r.adam_beta1,
        beta2: r.adam_beta2,
        eps: r.adam_epsilon,
        weight_decay: r.weight_decay,
    };
    let total = p.plan.total_steps;
    let started = Instant::now();
    let (elapsed_before, tokens_before, step_before) =
        (state.elapsed_s, state.tokens_seen, state.step);
    let (mut last_loss, mut last_val) = (None, state.best_val_loss);
    let (mut early_stopped, mut interrupted) = (false, false);
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
            .map(|i| p.micro_batch(step * gas + i, window))
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
            return Err(TrainError::NotFinite {
                loss,
                step: state.step,
            });
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
        let mut val_loss = None;
        if eval_now && let Some(v) = validate(&model, p, window) {
            line["val_loss"] = json!(v);
            line["val_ppl"] = json!(v.exp());
            val_loss = Some(v);
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
        let run_s = started.elapsed().as_secs_f64();
        observer.step(&StepReport {
            step: state.step,
            total_steps: total,
            loss,
            val_loss,
            last_val_loss: last_val,
            lr,
            tokens_per_s: (state.tokens_seen - tokens_before) as f64 / run_s.max(1e-9),
            elapsed_s: run_s,
            steps_this_run: state.step - step_before,
        });
        interrupted = interrupt.is_set();
        let save_now = r.save_steps.is_some_and(|s| state.step.is_multiple_of(s));
        if save_now || interrupted || early_stopped || state.step == total {
            let dir = checkpointer.save(&model, &moments, &state)?;
            observer.checkpoint(&dir, state.step);
            last_ck = Some(dir);
        }
        if interrupted || early_stopped {
            break;
        }
    }
    let tokens_per_s =
        (state.tokens_seen - tokens_before) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let adapter_out = if interrupted {
        None
    } else {
        let dir = adapter_dir(&out);
        lora::to_peft(&model, &p.recipe, &p.plan.model).write(&dir)?;
        write_tokenizer_files(&dir, p)?;
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
    let summary = json!({"plan": p.plan, "outcome": outcome, "elapsed_s": state.elapsed_s,
                         "device": r.device.name(),
                         "machine": crate::machine::this()});
    write_json(&out.join("summary.json"), &summary)?;
    observer.finished(&outcome);
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
    let names = lora::param_names(model);
    for hb in micro {
        let (batch, at, labels) = tensors(hb, device);
        let loss_sum = model.nll_sum(batch, at, labels);
        let grads = (loss_sum.clone() / n_trained as f32).backward();
        nll += loss_sum.inner().into_scalar::<f32>() as f64;
        for ((slot, p), name) in acc.iter_mut().zip(lora::params(model)).zip(&names) {
            let g = p
                .grad(&grads)
                .ok_or_else(|| TrainError::NoGradient(name.clone()))?;
            *slot = Some(match slot.take() {
                Some(prev) => prev + g,
                None => g,
            });
        }
    }
    let mut grads: Vec<Tensor<2>> = acc.into_iter().map(|g| g.expect("accumulated")).collect();
    let grad_norm = optim::clip_global_norm(&mut grads, max_grad_norm);
    let updated: Vec<Tensor<2>> = lora::params(model)
        .into_iter()
        .zip(grads)
        .zip(moments.iter_mut())
        .map(|((p, g), m)| opt.update(p.inner(), g, m, lr, t))
        .collect();
    lora::set_params(model, updated);
    Ok((nll, grad_norm))
}
