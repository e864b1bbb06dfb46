//! Rotary position embeddings in the Hugging Face half-split layout ("rotate_half"), with
//! `linear`, `llama3` and `yarn` frequency scaling, and the Llama-4 query scaling of Mistral 3.
//!
//! burn's built-in `RotaryEncoding` rotates adjacent pairs; Hugging Face checkpoints expect halves.
//! The tables are computed on the host in f64, then uploaded once.

use burn::prelude::*;

use super::config::{ResolvedConfig, RopeScaling};

/// Inverse frequencies `theta^(-2i/d)`, scaled as the config says.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let Some(s) = scaling else { return base };
    match s.rope_type.as_str() {
        "linear" => base.iter().map(|f| f / s.factor.unwrap_or(1.0)).collect(),
        "llama3" => {
            let factor = s.factor.unwrap_or(8.0);
            let low = s.low_freq_factor.unwrap_or(1.0);
            let high = s.high_freq_factor.unwrap_or(4.0);
            let old_ctx = s.original_max_position_embeddings.unwrap_or(8192) as f64;
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        "yarn" => yarn(head_dim, theta, s).0,
        _ => base,
    }
}

/// YaRN's `0.1·m·ln(factor) + 1` (1 for no stretch).
fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

/// YaRN (transformers' `_compute_yarn_parameters`): frequencies blended between the original
/// (fast dimensions) and the interpolated `f / factor` (slow ones) over a linear ramp between the
/// dimensions that turn `beta_fast` and `beta_slow` times over the original context; and the
/// factor the cos/sin tables are multiplied by.
fn yarn(head_dim: usize, theta: f64, s: &RopeScaling) -> (Vec<f64>, f64) {
    let d = head_dim as f64;
    let original = s.original_max_position_embeddings.unwrap_or(4096) as f64;
    let factor = s.factor.unwrap_or(1.0);
    let attention = s
        .attention_factor
        .unwrap_or_else(|| match (s.mscale, s.mscale_all_dim) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                yarn_mscale(factor, m) / yarn_mscale(factor, all)
            }
            _ => yarn_mscale(factor, 1.0),
        });
    let (fast, slow) = (s.beta_fast.unwrap_or(32.0), s.beta_slow.unwrap_or(1.0));
    let dim_of = |rotations: f64| {
        d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (dim_of(fast), dim_of(slow));
    if s.truncate.unwrap_or(true) {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001;
    }
    let freqs = (0..head_dim / 2)
        .map(|i| {
            // transformers computes these in f32; so do we, so long positions agree.
            let pos = (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let (extra, inter) = (1.0 / pos, 1.0 / (factor as f32 * pos));
            let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            (inter * (1.0 - keep) + extra * keep) as f64
        })
        .collect();
    (freqs, attention)
}

/// Precomputed cos/sin tables, `[max_positions, head_dim]` each (halves repeated).
#[derive(Module, Debug)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    head_dim: usize,
    /// `(β, original context)` of the Llama-4 query scaling, when the model has it.
    #[module(skip)]
    query_scaling: Option<(f64, usize)>,
}

impl Rope {
    pub fn new(cfg: &ResolvedConfig, max_positions: usize, device: &Device) -> Self {
        let d = cfg.head_dim;
        let freqs = inv_freq(d, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let scaling = cfg.rope_scaling.as_ref();
        // YaRN scales the tables (and so both q and k) by its attention factor.
        let attention = match scaling {
            Some(s) if s.rope_type == "yarn" => yarn(d, cfg.rope_theta, s).1 as f32,
            _ => 1.0,
        };
        let mut cos = Vec::with_capacity(max_positions * d);
        let mut sin = Vec::with_capacity(max_positions * d);
        for p in 0..max_positions {
            for half in 0..2 {
                let _ = half;
                for f in &freqs {
                    // transformers computes the angle in f32; match it so long positions agree.
                    let angle = (p as f32 * *f as f32) as f64;
                    cos.push(angle.cos() as f32 * attention);
                    sin.push(angle.sin() as f32 * attention);
                }
            }
        }
        let shape = [max_positions, d];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            head_dim: d,
            query_scaling: scaling
                .and_then(|s| Some((s.llama_4_scaling_beta?, s.original_max_position_embeddings?))),
        }
    }

    /// The Llama-4 query scale `1 + β·ln(1 + ⌊pos / original⌋)` for a `[batch, seq]` grid of
    /// positions, as `[batch, seq]`; `None` when the model does not scale its queries.
    pub fn query_scale(&self, positions: &Tensor<2, Int>) -> Option<Tensor<2>> {
        let (beta, original) = self.query_scaling?;
        let [b, s] = positions.dims();
        let pos = positions.to_data().convert::<i64>();
        let scale: Vec<f32> = pos
            .as_slice::<i64>()
            .expect("i64 positions")
            .iter()
            .map(|&p| {
                let block = (p.max(0) as usize / original) as f64;
                (1.0 + beta * (1.0 + block).ln()) as f32
            })
            .collect();
        Some(Tensor::from_data(
            TensorData::new(scale, [b, s]),
            &positions.device(),
        ))
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// cos/sin for a `[batch, seq]` grid of positions, shaped `[batch, 1, seq, head_dim]`.
    pub fn tables(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [b, s] = positions.dims();
        let flat = positions.reshape([b * s]);
        let cos = self
            .cos
            .clone()
            .select(0, flat.clone())
            .reshape([b, 1, s, self.head_dim]);
        let sin = self
            .sin
            .clone()
            .select(0, flat)
            .reshape([b, 1, s, self.head_dim]);
        (cos, sin)
    }

    /// Rotate `x` (`[batch, heads, seq, head_dim]`) by the given tables.
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        debug_assert_eq!(rotated.dims(), [b, h, s, d]);
        x * cos.clone() + rotated * sin.clone()
    }
}
