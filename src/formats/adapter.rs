//! LoRA adapters in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`). What we
//! write, PEFT loads; what PEFT writes (for the projections of the Llama family), we load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use super::adapter_config::{AdapterConfig, LoraPair, TargetModules, lora_scale};
use super::shards::{SafetensorsFolder, write_safetensors};
use super::{FormatError, HostTensor, TensorSource};
use crate::util::{read_json, write_json};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// An adapter: its config and a pair per adapted module (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: AdapterConfig,
    /// One pair per projection, experts' included (`…block_sparse_moe.experts.3.w1`); files
    /// hold PEFT's fused form for those (`adapter_experts`).
    pub pairs: BTreeMap<String, LoraPair>,
    /// Experts per layer of the model, when the adapter adapts experts (needed to write them).
    pub experts: Option<usize>,
}

impl PeftAdapter {
    /// Read `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn read(dir: &Path) -> Result<Self, FormatError> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !cfg_path.is_file() {
            return Err(FormatError::format(
                dir,
                format!("not a PEFT adapter folder (no {CONFIG_FILE})"),
            ));
        }
        let config: AdapterConfig = read_json(&cfg_path)?;
        let bad = |key: &str, detail: String| FormatError::BadKey {
            path: cfg_path.clone(),
            key: key.into(),
            detail,
        };
        if config.peft_type != "LORA" {
            return Err(bad(
                "peft_type",
                format!("`{}` is not supported (only LORA)", config.peft_type),
            ));
        }
        if config.use_dora {
            return Err(bad("use_dora", "DoRA adapters are not supported".into()));
        }
        if config.fan_in_fan_out {
            return Err(bad("fan_in_fan_out", "only false is supported".into()));
        }
        if config.bias != "none" {
            return Err(bad(
                "bias",
                format!("`{}`: only \"none\" is supported", config.bias),
            ));
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(
                "modules_to_save",
                "fully trained modules are not supported".into(),
            ));
        }
        let fused = config.target_parameters.as_deref().unwrap_or_default();
        if let Some(key) = config.alpha_pattern.keys().find(|k| {
            !fused
                .iter()
                .any(|p| p.rsplit('.').next() == Some(k.as_str()))
        }) {
            return Err(bad(
                "alpha_pattern",
                format!("`{key}`: per-module alpha is supported only for target_parameters"),
            ));
        }
        let weights = dir.join(WEIGHTS_FILE);
        let src = SafetensorsFolder::open_file(&weights)?;
        let mut a_of = BTreeMap::new();
        let mut b_of = BTreeMap::new();
        for name in src.names() {
            let (module, which) = parse_key(&name).ok_or_else(|| FormatError::Format {
                path: weights.clone(),
                detail: format!(
                    "tensor `{name}` is not a LoRA factor (expected `{PREFIX}<module>.lora_A.weight` or `.lora_B.weight`)"
                ),
            })?;
            let t = src.get(&name)?.ok_or_else(|| FormatError::MissingTensor {
                path: weights.clone(),
                name: name.clone(),
            })?;
            if t.shape.len() != 2 {
                return Err(FormatError::Format {
                    path: weights.clone(),
                    detail: format!(
                        "tensor `{name}` has shape {:?}, expected 2 dimensions",
                        t.shape
                    ),
                });
            }
            if which == 'A' {
                a_of.insert(module, t)
            } else {
                b_of.insert(module, t)
            };
        }
        let mut pairs = BTreeMap::new();
        for (module, a) in a_of {
            let b = b_of
                .remove(&module)
                .ok_or_else(|| FormatError::MissingTensor {
                    path: weights.clone(),
                    name: format!("{PREFIX}{module}.lora_B.weight"),
                })?;
            if a.shape[0] != b.shape[1] {
                return Err(FormatError::Format {
                    path: weights.clone(),
                    detail: format!(
                        "`{module}`: lora_A is {:?} and lora_B is {:?}; their ranks differ",
                        a.shape, b.shape
                    ),
                });
            }
            pairs.insert(module, LoraPair { a, b });
        }
        if let Some(module) = b_of.into_keys().next() {
            return Err(FormatError::MissingTensor {
                path: weights,
                name: format!("{PREFIX}{module}.lora_A.weight"),
            });
        }
        if pairs.is_empty() {
            return Err(FormatError::Format {
                path: weights,
                detail: "no LoRA tensors".into(),
            });
        }
        let pairs = match config.target_parameters {
            Some(_) => super::adapter_experts::split(pairs, &config).map_err(|detail| {
                FormatError::Format {
                    path: weights,
                    detail,
                }
            })?,
            None => pairs,
        };
        Ok(Self {
            config,
            pairs,
            experts: None,
        })
    }

    /// Write the adapter folder (config and weights, each atomically).
    pub fn write(&self, dir: &Path) -> Result<(), FormatError> {
        std::fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, e))?;
        let mut config = self.config.clone();
        let fused;
        let pairs = match self.experts {
            Some(n) if super::adapter_experts::has_experts(&self.pairs) => {
                fused = super::adapter_experts::fuse(&self.pairs, &mut config, n);
                &fused
            }
            _ => &self.pairs,
        };
        let mut tensors = BTreeMap::new();
        for (module, p) in pairs {
            tensors.insert(format!("{PREFIX}{module}.lora_A.weight"), p.a.clone());
            tensors.insert(format!("{PREFIX}{module}.lora_B.weight"), p.b.clone());
        }
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        Ok(write_json(&dir.join(CONFIG_FILE), &config)?)
    }

    /// The scale of one module (rank may differ per module through PEFT's `rank_pattern`).
    pub fn scale_of(&self, pair: &LoraPair) -> f64 {
        lora_scale(
            self.config.lora_alpha,
            pair.a.shape[0],
            self.config.use_rslora,
        )
    }
}

/// `base_model.model.X.lora_A.weight` (or PEFT's older `.lora_A.default.weight`) → (X, 'A').
fn parse_key(name: &str) -> Option<(String, char)> {
    let rest = name.strip_prefix(PREFIX)?;
    for which in ['A', 'B'] {
        for suffix in [
            format!(".lora_{which}.weight"),
            format!(".lora_{which}.default.weight"),
        ] {
            if let Some(module) = rest.strip_suffix(&suffix) {
                return Some((module.to_string(), which));
            }
        }
    }
    None
}

/// `W [out, in] += scale · B [out, r] · A [r, in]`.
pub fn merge_into(w: &mut HostTensor, pair: &LoraPair, scale: f64) {
    let (out, d_in, r) = (w.shape[0], w.shape[1], pair.a.shape[0]);
    let (a, b) = (&pair.a.data, &pair.b.data);
    w.data
        .par_chunks_mut(d_in)
        .enumerate()
        .for_each(|(o, row)| {
            debug_assert!(o < out);
            for k in 0..r {
                let coef = (scale * b[o * r + k] as f64) as f32;
                if coef != 0.0 {
                    for (x, &av) in row.iter_mut().zip(&a[k * d_in..(k + 1) * d_in]) {
                        *x += coef * av;
                    }
                }
            }
        });
}

/// A base model's tensors with an adapter merged into them as they are read.
pub struct MergedSource {
    base: Box<dyn TensorSource>,
    adapter: PeftAdapter,
    origin: PathBuf,
}

impl MergedSource {
    /// Check that every adapted module exists in `base`; shapes are checked as tensors are read
    /// (reading them here would read every adapted weight twice).
    pub fn new(
        base: Box<dyn TensorSource>,
        adapter: PeftAdapter,
        adapter_dir: &Path,
    ) -> Result<Self, FormatError> {
        let origin = adapter_dir.join(WEIGHTS_FILE);
        let names = base.names();
        let mut adapter = adapter;
        // Experts under the base's own names (read adapters name them the Mixtral way).
        adapter.pairs = std::mem::take(&mut adapter.pairs)
            .into_iter()
            .map(|(module, pair)| {
                let has = |m: &str| names.contains(&format!("{m}.weight"));
                match super::adapter_experts::other_style(&module) {
                    Some(other) if !has(&module) && has(&other) => (other, pair),
                    _ => (module, pair),
                }
            })
            .collect();
        for module in adapter.pairs.keys() {
            if !names.contains(&format!("{module}.weight")) {
                return Err(FormatError::Format {
                    path: origin.clone(),
                    detail: format!(
                        "adapts `{module}`, which the base model {} does not have",
                        base.origin().display()
                    ),
                });
            }
        }
        Ok(Self {
            base,
            adapter,
            origin,
        })
    }
}

impl TensorSource for MergedSource {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn names(&self) -> Vec<String> {
        self.base.names()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, FormatError> {
        let Some(mut t) = self.base.get(name)? else {
            return Ok(None);
        };
        if let Some(module) = name.strip_suffix(".weight")
            && let Some(pair) = self.adapter.pairs.get(module)
        {
            if t.shape.len() != 2 || pair.b.shape[0] != t.shape[0] || pair.a.shape[1] != t.shape[1]
            {
                return Err(FormatError::Format {
                    path: self.origin.clone(),
                    detail: format!(
                        "`{module}`: lora_A {:?} and lora_B {:?} do not fit the base weight {:?}",
                        pair.a.shape, pair.b.shape, t.shape
                    ),
                });
            }
            merge_into(&mut t, pair, self.adapter.scale_of(pair));
        }
        Ok(Some(t))
    }

    fn dtype_of(&self, name: &str) -> Option<String> {
        self.base.dtype_of(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_both_peft_spellings() {
        assert_eq!(
            parse_key("base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"),
            Some(("model.layers.3.mlp.up_proj".into(), 'B'))
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            Some(("model.layers.0.self_attn.q_proj".into(), 'A'))
        );
        assert_eq!(parse_key("model.layers.0.self_attn.q_proj.weight"), None);
    }

    #[test]
    fn merge_adds_the_scaled_product() {
        let mut w = HostTensor::new(vec![2, 3], vec![0.0; 6]);
        let pair = LoraPair {
            a: HostTensor::new(vec![1, 3], vec![1.0, 2.0, 3.0]),
            b: HostTensor::new(vec![2, 1], vec![1.0, -1.0]),
        };
        merge_into(&mut w, &pair, 2.0);
        assert_eq!(w.data, vec![2.0, 4.0, 6.0, -2.0, -4.0, -6.0]);
    }
}
