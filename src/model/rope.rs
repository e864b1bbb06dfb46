//! Rotary position embeddings in the Hugging Face half-split layout ("rotate_half"), with
//! `linear` and `llama3` frequency scaling.
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
        _ => base,
    }
}

/// Precomputed cos/sin tables, `[max_positions, head_dim]` each (halves repeated).
#[derive(Module, Debug)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    head_dim: usize,
}

impl Rope {
    pub fn new(cfg: &ResolvedConfig, max_positions: usize, device: &Device) -> Self {
        let d = cfg.head_dim;
        let freqs = inv_freq(d, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let mut cos = Vec::with_capacity(max_positions * d);
        let mut sin = Vec::with_capacity(max_positions * d);
        for p in 0..max_positions {
            for half in 0..2 {
                let _ = half;
                for f in &freqs {
                    // transformers computes the angle in f32; match it so long positions agree.
                    let angle = (p as f32 * *f as f32) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [max_positions, d];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            head_dim: d,
        }
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
