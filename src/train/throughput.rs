//! Training throughput on fixed batches, for `switchyard bench train`: the loop's optimiser step
//! on the same rows, timed after a warm-up step.

use std::time::Instant;

use burn::prelude::*;

use super::TrainError;
use super::fit::optimizer_step;
use super::lora::{self, AdapterInit};
use super::optim::{AdamW, Moments};
use crate::data::{HostBatch, Sample, Sequence};
use crate::load::ModelFiles;

/// LoRA of rank `r` on `targets`, all tokens trained, fp32 AdamW, global-norm clipping at 1.
/// Returns tokens/s over `steps` timed steps after one warm-up.
pub fn throughput(
    files: &ModelFiles,
    targets: &[String],
    r: usize,
    rows: &[Vec<u32>],
    steps: usize,
    device: &Device,
) -> Result<f64, TrainError> {
    let ad = device.clone().autodiff();
    let mut model = files.model_on(&ad)?.no_grad();
    let init = AdapterInit {
        targets,
        rank: r,
        scale: 2.0,
        dropout: 0.0,
        seed: 0,
    };
    lora::attach(&mut model, &init, &ad);
    let mut moments: Vec<Moments> = lora::params(&model)
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
