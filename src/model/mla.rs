//! Multi-head latent attention (DeepSeek-V3, Mistral Large 3), as transformers'
//! `DeepseekV3Attention` computes it:
//!
//! - queries: `q_b_proj(norm(q_a_proj(x)))` (or one `q_proj`), per head `[nope | rope]`;
//! - keys and values come from a compressed latent: `kv_a_proj_with_mqa(x)` is
//!   `[latent (kv_lora_rank) | k_rope]`, the latent normed; `kv_b_proj(latent)` is per head
//!   `[k_nope | v]`, and `k_rope` (one head) is shared by every head;
//! - RoPE turns only the `rope` parts (interleaved pairs in DeepSeek's layout);
//! - `softmax(q·k · scale + mask)·v`, the scale with YaRN's `mscale²`.
//!
//! The cache holds the normed latent and the rotated `k_rope` (`kv_lora_rank + qk_rope` values per
//! token, not `2 · heads · head_dim`), and expands keys and values from it at each step.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::blocks::{RmsNorm, Shared, project};
use super::cache::LayerCache;
use super::config::Mla;
use super::lora::Proj;
use super::rope::Rope;

#[derive(Module, Debug)]
pub struct MlaAttention {
    pub q_a_proj: Option<Proj>,
    pub q_a_layernorm: Option<RmsNorm>,
    pub q_b_proj: Option<Proj>,
    /// The query's single projection, when `q_lora_rank` is null.
    pub q_proj: Option<Proj>,
    pub kv_a_proj_with_mqa: Proj,
    pub kv_a_layernorm: RmsNorm,
    pub kv_b_proj: Proj,
    pub o_proj: Proj,
    pub heads: usize,
    #[module(skip)]
    pub dims: Mla,
}

impl MlaAttention {
    /// The projections in the config's order.
    pub fn projections(&self) -> Vec<&Proj> {
        let mut out: Vec<&Proj> = [&self.q_a_proj, &self.q_b_proj, &self.q_proj]
            .into_iter()
            .flatten()
            .collect();
        out.extend([&self.kv_a_proj_with_mqa, &self.kv_b_proj, &self.o_proj]);
        out
    }

    pub fn projections_mut(&mut self) -> Vec<&mut Proj> {
        let mut out: Vec<&mut Proj> = [&mut self.q_a_proj, &mut self.q_b_proj, &mut self.q_proj]
            .into_iter()
            .flatten()
            .collect();
        out.extend([
            &mut self.kv_a_proj_with_mqa,
            &mut self.kv_b_proj,
            &mut self.o_proj,
        ]);
        out
    }

    /// RoPE on `x` `[b, h, s, r]`. DeepSeek's interleaved pairs `(x[2i], x[2i+1])` are first
    /// gathered into halves `[evens | odds]`, where the half-split rotation is the same turn
    /// (transformers' `apply_rotary_pos_emb_interleave` writes them out the same way).
    fn rope(&self, x: Tensor<4>, at: &Shared<'_>) -> Tensor<4> {
        let x = match self.dims.interleaved {
            true => {
                let r = self.dims.qk_rope as i64;
                let order: Vec<i64> = (0..r).step_by(2).chain((1..r).step_by(2)).collect();
                let order =
                    Tensor::<1, Int>::from_data(TensorData::new(order, [r as usize]), &x.device());
                x.select(3, order)
            }
            false => x,
        };
        Rope::apply(x, at.cos, at.sin)
    }

    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        at: &Shared<'_>,
        cache: &mut LayerCache,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let Mla {
            kv_lora_rank: c,
            qk_nope: n,
            qk_rope: r,
            v: dv,
            softmax_scale,
            ..
        } = self.dims;
        let h = self.heads;
        let q = match (
            &self.q_a_proj,
            &self.q_a_layernorm,
            &self.q_b_proj,
            &self.q_proj,
        ) {
            (Some(a), Some(norm), Some(bp), _) => project(bp, norm.forward(project(a, x.clone()))),
            (_, _, _, Some(q)) => project(q, x.clone()),
            _ => unreachable!("MLA has q_a/q_b or q_proj"),
        };
        // Llama-4 scaling (Mistral Large 3) multiplies the whole query; RoPE is linear, so
        // before it is the same as after.
        let q = match at.query_scale {
            Some(scale) => q * scale.clone(),
            None => q,
        };
        let q = q.reshape([b, s, h, n + r]).swap_dims(1, 2);
        let q_nope = q.clone().narrow(3, 0, n);
        let q_rot = self.rope(q.narrow(3, n, r), at);

        let ckv = project(&self.kv_a_proj_with_mqa, x);
        let latent = self.kv_a_layernorm.forward(ckv.clone().narrow(2, 0, c));
        let k_rot = self.rope(ckv.narrow(2, c, r).reshape([b, 1, s, r]), at);
        let (latent, k_rot) = cache.append(latent.reshape([b, 1, s, c]), k_rot);
        let t = latent.dims()[2];

        let kv = project(&self.kv_b_proj, latent.reshape([b, t, c]))
            .reshape([b, t, h, n + dv])
            .swap_dims(1, 2);
        let k_nope = kv.clone().narrow(3, 0, n);
        let v = kv.narrow(3, n, dv);
        let scores = q_nope.matmul(k_nope.swap_dims(2, 3))
            + q_rot.matmul(k_rot.swap_dims(2, 3).repeat_dim(1, h));
        let probs = softmax(scores * softmax_scale + at.mask.clone(), 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, s, h * dv]);
        project(&self.o_proj, out)
    }
}
