//! Adapters on the frozen base: attached fresh (PEFT's initialisation), read back from a
//! checkpoint, listed as the trainable tensors, and converted to PEFT's layout.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use rand::{Rng, SeedableRng};

use super::TrainError;
use super::recipe::LoadedRecipe;
use crate::formats::HostTensor;
use crate::formats::adapter::{AdapterConfig, LoraPair, PeftAdapter};
use crate::model::config::short_name;
use crate::model::{CausalLm, LoraAdapter};

/// Whether LoRA adapts `module` (`model.layers.0.self_attn.q_proj`) given the recipe's targets
/// (short names like `q_proj`, or whole module names).
pub fn is_target(module: &str, targets: &[String]) -> bool {
    let last = short_name(module);
    targets.iter().any(|t| t == last || t == module)
}

/// What fresh adapters look like.
pub struct AdapterInit<'a> {
    pub targets: &'a [String],
    pub rank: usize,
    pub scale: f64,
    pub dropout: f64,
    pub seed: u64,
}

/// Attach fresh adapters (PEFT's init: A uniform in ±1/√in, B zero) to the targeted projections.
pub fn attach(model: &mut CausalLm, init: &AdapterInit<'_>, device: &Device) {
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

/// A 2-D tensor on the host.
pub fn host(t: Tensor<2>) -> HostTensor {
    let [a, b] = t.dims();
    HostTensor::new(
        vec![a, b],
        t.into_data().convert::<f32>().try_to_vec().expect("f32"),
    )
}

/// A host matrix on `device`.
pub fn upload(t: &HostTensor, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]),
        device,
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
    PeftAdapter {
        config,
        pairs,
        experts: model.experts(),
    }
}

/// Put a checkpoint's adapter weights into the model's adapters.
pub fn load_weights(
    model: &mut CausalLm,
    adapter: &PeftAdapter,
    device: &Device,
    dir: &std::path::Path,
) -> Result<(), TrainError> {
    for (name, proj) in model.projections_mut() {
        let Some(l) = proj.lora.as_mut() else {
            continue;
        };
        let other = crate::formats::adapter_experts::other_style(&name);
        let pair = adapter
            .pairs
            .get(&name)
            .or_else(|| adapter.pairs.get(other.as_deref()?))
            .ok_or_else(|| TrainError::Checkpoint {
                dir: dir.to_path_buf(),
                what: format!("no adapter for `{name}`"),
            })?;
        l.a = Param::from_tensor(upload(&pair.a, device).transpose());
        l.b = Param::from_tensor(upload(&pair.b, device).transpose());
    }
    Ok(())
}

/// The trainable tensors' names, in [`params`]'s order (`<module>.lora_A` / `.lora_B`).
pub fn param_names(model: &CausalLm) -> Vec<String> {
    model
        .projections()
        .into_iter()
        .filter(|(_, p)| p.lora.is_some())
        .flat_map(|(n, _)| [format!("{n}.lora_A"), format!("{n}.lora_B")])
        .collect()
}

/// The trainable tensors, in a fixed order.
pub fn params(model: &CausalLm) -> Vec<Tensor<2>> {
    model
        .projections()
        .into_iter()
        .filter_map(|(_, p)| p.lora.as_ref().map(|l| [l.a.val(), l.b.val()]))
        .flatten()
        .collect()
}

/// Replace the trainable tensors (in [`params`]'s order) with new values that track gradients.
pub fn set_params(model: &mut CausalLm, values: Vec<Tensor<2>>) {
    let mut it = values.into_iter();
    for (_, proj) in model.projections_mut() {
        if let Some(l) = proj.lora.as_mut() {
            l.a = Param::from_tensor(it.next().expect("a").autodiff());
            l.b = Param::from_tensor(it.next().expect("b").autodiff());
        }
    }
}
