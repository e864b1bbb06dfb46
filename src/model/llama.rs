//! The network in burn: Llama (RMSNorm, RoPE incl. llama3 scaling, SwiGLU, GQA, tied
//! embeddings), Mistral (sliding-window attention), Qwen2 (QKV bias), Ministral 3 (YaRN and
//! Llama-4 query scaling), Mixtral (experts, `moe`), DeepSeek-V3 and Mistral Large 3 (latent
//! attention, `mla`). One network, read top to bottom, from the pieces in `blocks`; the
//! differences are flags of [`ResolvedConfig`].
//!
//! Weights are addressed by their Hugging Face names. Linear weights are stored `[in, out]`
//! (burn's layout), so Hugging Face `[out, in]` tensors are transposed on load.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, FloatDType};

use super::blocks::{Mlp, RmsNorm, Shared, packed_products, project, project_many};
use super::cache::{KvCache, LayerCache};
use super::config::{Projection, ResolvedConfig};
use super::lora::Proj;
use super::mla::MlaAttention;
use super::moe::{Moe, Routing};
use super::quant::PackedMatrix;
use super::rope::Rope;
use super::vars::{Vars, WeightError};

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    /// Attention with its own keys and values per KV head, or `None` where MLA replaces it.
    pub self_attn: Option<Attention>,
    pub latent_attn: Option<MlaAttention>,
    pub post_attention_layernorm: RmsNorm,
    /// The dense MLP, or `None` where a mixture of experts replaces it.
    pub mlp: Option<Mlp>,
    pub moe: Option<Moe>,
}

#[derive(Module, Debug)]
pub struct CausalLm {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<Proj>,
    pub rope: Rope,
    sliding_window: usize,
    /// The tied embedding in the quantised blocks it was loaded from, for decode-sized logits.
    #[module(skip)]
    packed_embed: Option<Arc<PackedMatrix>>,
    /// The module paths of each layer's projections (the config's table), in the order of
    /// [`DecoderLayer::projections`].
    #[module(skip)]
    layer_modules: Vec<Vec<String>>,
}

/// What the caller wants out of a forward pass.
pub struct Batch {
    /// `[batch, seq]` token ids.
    pub tokens: Tensor<2, Int>,
    /// `[batch, seq]` absolute positions (after left padding, the first real token is 0).
    pub positions: Tensor<2, Int>,
    /// Additive attention bias `[batch, 1, seq, past + seq]`: 0 where allowed, -inf where masked.
    pub mask: Tensor<4>,
}

impl Attention {
    fn forward(&self, x: Tensor<3>, at: &Shared<'_>, cache: &mut LayerCache) -> Tensor<3> {
        let (cos, sin, mask) = (at.cos, at.sin, at.mask);
        let [b, s, _] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let split = |t: Tensor<3>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        let [q, k, v]: [Tensor<3>; 3] =
            project_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x)
                .try_into()
                .expect("three projections");
        // Llama-4 scaling multiplies each position's query; RoPE is linear, so before it is the
        // same as after.
        let q = match at.query_scale {
            Some(scale) => q * scale.clone(),
            None => q,
        };
        #[cfg(feature = "cpu")]
        if super::fused::applies(&q)
            && (q.is_autodiff()
                || s > super::kernels::MAX_ROWS
                || !super::kernels::applies(&q.device()))
        {
            // Prompts and training on the CPU: RoPE on the projections' own `[b, s, n, d]`
            // layout, then one fused pass of attention that writes `[b, s, h, d]`, which the
            // output projection reads as is (no transposing copies either way).
            let [cb, _, cs, cd] = cos.dims();
            let (cos3, sin3) = (
                cos.clone().reshape([cb, cs, cd]),
                sin.clone().reshape([cb, cs, cd]),
            );
            let rot = |t: Tensor<3>, n: usize| {
                super::fused::rope(t.reshape([b, s, n, d]), cos3.clone(), sin3.clone())
                    .swap_dims(1, 2)
            };
            let q = rot(q, h);
            let k = rot(k, kv);
            let v = v.reshape([b, s, kv, d]).swap_dims(1, 2);
            let (k, v) = cache.append(k, v);
            let out = super::fused::attention(q, k, v, mask.clone(), 1.0 / (d as f64).sqrt());
            return project(&self.o_proj, out.reshape([b, s, h * d]));
        }
        let q = Rope::apply(split(q, h), cos, sin);
        let k = Rope::apply(split(k, kv), cos, sin);
        let v = split(v, kv);
        let (k, v) = cache.append(k, v);
        let t = k.dims()[2];
        // Grouped-query attention without copying K/V: fold each group's query heads into the
        // sequence axis, so one KV head serves `group` query heads in a single matmul.
        let group = h / kv;
        let q = q.reshape([b, kv, group * s, d]);
        #[cfg(feature = "cpu")]
        if s <= super::kernels::MAX_ROWS && super::kernels::applies(&q.device()) {
            // Decode: one fused pass over the history per query row, reading the cache in place.
            let q = q * (1.0 / (d as f64).sqrt());
            let out = super::kernels::decode_attention(q, k, v, mask.clone())
                .reshape([b, h, s, d])
                .swap_dims(1, 2)
                .reshape([b, s, h * d]);
            return project(&self.o_proj, out);
        }
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
        let scores = scores.reshape([b, kv, group, s, t]) + mask.clone().unsqueeze_dim::<5>(2);
        let probs = softmax(scores.reshape([b, kv, group * s, t]), 3);
        let out = probs
            .matmul(v)
            .reshape([b, h, s, d])
            .swap_dims(1, 2)
            .reshape([b, s, h * d]);
        project(&self.o_proj, out)
    }
}

impl DecoderLayer {
    /// The projections, in the order of the config's table (`layer_modules`): attention's, then
    /// the MLP's (gate, up, down) or each expert's and the shared expert's.
    fn projections<'a>(&'a self) -> Vec<&'a Proj> {
        let mut out = match (&self.self_attn, &self.latent_attn) {
            (Some(a), _) => vec![&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj],
            (None, Some(m)) => m.projections(),
            (None, None) => unreachable!("a layer has attention"),
        };
        let order = |m: &'a Mlp, mixtral: bool| match mixtral {
            true => [&m.gate_proj, &m.down_proj, &m.up_proj],
            false => [&m.gate_proj, &m.up_proj, &m.down_proj],
        };
        if let Some(m) = &self.mlp {
            out.extend(order(m, false));
        }
        if let Some(moe) = &self.moe {
            for m in &moe.experts {
                out.extend(order(m, moe.routing.mixtral_order));
            }
            if let Some(m) = &moe.shared_experts {
                out.extend(order(m, false));
            }
        }
        out
    }

    /// [`Self::projections`], mutable.
    fn projections_mut(&mut self) -> Vec<&mut Proj> {
        let mut out = match (&mut self.self_attn, &mut self.latent_attn) {
            (Some(a), _) => vec![&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj],
            (None, Some(m)) => m.projections_mut(),
            (None, None) => unreachable!("a layer has attention"),
        };
        fn order(m: &mut Mlp, mixtral: bool) -> [&mut Proj; 3] {
            match mixtral {
                true => [&mut m.gate_proj, &mut m.down_proj, &mut m.up_proj],
                false => [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj],
            }
        }
        if let Some(m) = &mut self.mlp {
            out.extend(order(m, false));
        }
        if let Some(moe) = &mut self.moe {
            let mixtral = moe.routing.mixtral_order;
            for m in &mut moe.experts {
                out.extend(order(m, mixtral));
            }
            if let Some(m) = &mut moe.shared_experts {
                out.extend(order(m, false));
            }
        }
        out
    }

    fn forward(&self, x: Tensor<3>, at: &Shared<'_>, cache: &mut LayerCache) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attn = match (&self.self_attn, &self.latent_attn) {
            (Some(a), _) => a.forward(normed, at, cache),
            (None, Some(m)) => m.forward(normed, at, cache),
            (None, None) => unreachable!("a layer has attention"),
        };
        let h = x + attn;
        let normed = self.post_attention_layernorm.forward(h.clone());
        let mlp = match (&self.mlp, &self.moe) {
            (Some(mlp), _) => mlp.forward(normed),
            (None, Some(moe)) => moe.forward(normed),
            (None, None) => unreachable!("a layer has a dense MLP or experts"),
        };
        h + mlp
    }
}

impl CausalLm {
    /// Hidden states after the final norm, `[batch, seq, hidden]`; the cache grows by `seq`.
    pub fn forward_hidden(&self, batch: Batch, cache: &mut KvCache) -> Tensor<3> {
        let [b, s] = batch.tokens.dims();
        let hidden = self.embed_tokens.dims()[1];
        let x = self
            .embed_tokens
            .val()
            .select(0, batch.tokens.reshape([b * s]))
            .cast(FloatDType::F32)
            .reshape([b, s, hidden]);
        let query_scale = self
            .rope
            .query_scale(&batch.positions)
            .map(|t| t.reshape([b, s, 1]));
        let (cos, sin) = self.rope.tables(batch.positions);
        let shared = Shared {
            cos: &cos,
            sin: &sin,
            query_scale: query_scale.as_ref(),
            mask: &batch.mask,
        };
        let mut x = x;
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &shared, lc);
        }
        self.norm.forward(x)
    }

    /// Logits `[batch, seq, vocab]` for hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => project(head, hidden),
            // Tied: E·hᵀ reads the [vocab, hidden] embedding in its stored order; multiplying by
            // a transposed view instead makes the backend copy 113 MB per call on SmolLM2.
            None => {
                let [b, s, h] = hidden.dims();
                let vocab = self.embed_tokens.dims()[0];
                let flat = hidden.reshape([b * s, h]);
                if let Some(e) = &self.packed_embed
                    && b * s <= super::quant::MAX_ROWS
                    && super::cpu_kernels_apply(&flat.device())
                {
                    return packed_products(&[e], flat).remove(0).reshape([b, s, vocab]);
                }
                let embed = self.embed_tokens.val();
                #[cfg(feature = "cpu")]
                if b * s <= super::kernels::MAX_ROWS
                    && super::kernels::applies(&flat.device())
                    && embed.dtype() == DType::F32
                {
                    let w = embed.transpose();
                    return super::kernels::small_matmul(flat, w).reshape([b, s, vocab]);
                }
                if let Some(logits) = tied_bf16(&flat, &embed) {
                    return logits.reshape([b, s, vocab]);
                }
                let dtype = embed.dtype();
                embed
                    .matmul(flat.transpose().cast(dtype))
                    .cast(FloatDType::F32)
                    .transpose()
                    .reshape([b, s, vocab])
            }
        }
    }

    /// The summed negative log-likelihood of `labels`, each predicted from the flat position
    /// (`row * seq + t`) in `predict_at`. Only those positions go through the output layer, so
    /// prompt tokens the loss ignores cost no vocabulary-sized logits.
    pub fn nll_sum(
        &self,
        batch: Batch,
        predict_at: Tensor<1, Int>,
        labels: Tensor<1, Int>,
    ) -> Tensor<1> {
        let [b, s] = batch.tokens.dims();
        let mut cache = KvCache::new(self.num_layers(), vec![0; b]);
        let hidden = self.forward_hidden(batch, &mut cache);
        let h = hidden.dims()[2];
        let n = predict_at.dims()[0];
        let picked = hidden.reshape([b * s, h]).select(0, predict_at);
        // Logits laid out [n, vocab] contiguously, so the softmax reads rows in order (the
        // inference path's E·hᵀ leaves them transposed, which costs a copy per use here).
        let logits = match &self.lm_head {
            Some(head) => {
                let vocab = head.dims()[1];
                project(head, picked.reshape([1, n, h])).reshape([n, vocab])
            }
            None => {
                let embed = self.embed_tokens.val();
                match tied_bf16(&picked, &embed) {
                    Some(logits) => logits,
                    None => super::matmul_weight(picked, embed.transpose()),
                }
            }
        };
        #[cfg(feature = "cpu")]
        if super::fused::applies(&logits) {
            return super::fused::nll(logits, labels).sum();
        }
        // NLL = logsumexp(z) - z[label], without materialising the whole log-softmax.
        let max = logits.clone().max_dim(1).detach();
        let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let picked_logit = logits.gather(1, labels.reshape([n, 1]));
        (lse - picked_logit).sum()
    }

    /// Logits `[n, vocab]` of the last `last_n` positions of one sequence, from an empty cache.
    /// What the parity tests compare with transformers.
    pub fn sequence_logits(&self, tokens: &[u32], last_n: usize, device: &Device) -> Vec<Vec<f32>> {
        let seq = tokens.len();
        let mut cache = KvCache::new(self.num_layers(), vec![0]);
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let input = Batch {
            tokens: Tensor::from_data(TensorData::new(ids, [1, seq]), device),
            positions: cache.positions(seq, device),
            mask: cache.mask(seq, self.sliding_window(), device),
        };
        let hidden = self.forward_hidden(input, &mut cache);
        let n = last_n.min(seq);
        let logits = self.logits(hidden.narrow(1, seq - n, n));
        let vocab = logits.dims()[2];
        let flat = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
        flat.chunks(vocab).map(<[f32]>::to_vec).collect()
    }

    /// The sliding window (Mistral), if any; masks must honour it.
    pub fn sliding_window(&self) -> Option<usize> {
        (self.sliding_window > 0).then_some(self.sliding_window)
    }

    /// How many products (projections and the tied output layer) decode from quantised blocks.
    pub fn quantized_products(&self) -> usize {
        self.projections()
            .iter()
            .filter(|(_, p)| p.packed.is_some())
            .count()
            + usize::from(self.packed_embed.is_some())
    }

    /// Routed experts per layer, for a mixture-of-experts model.
    pub fn experts(&self) -> Option<usize> {
        self.layers
            .iter()
            .find_map(|l| l.moe.as_ref().map(|m| m.experts.len()))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Every projection by its Hugging Face module name (`model.layers.0.self_attn.q_proj`), in
    /// checkpoint order. LoRA targets are chosen and adapters named through this list.
    pub fn projections(&self) -> Vec<(String, &Proj)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (m, p) in self.layer_modules[i].iter().zip(l.projections()) {
                out.push((format!("model.layers.{i}.{m}"), p));
            }
        }
        if let Some(h) = &self.lm_head {
            out.push(("lm_head".to_string(), h));
        }
        out
    }

    /// Stores the frozen base weights (every projection's and the embedding) in `precision`;
    /// adapters, norms and routers keep theirs. Products then run in it (see
    /// [`super::Precision`]).
    pub fn set_precision(&mut self, precision: super::Precision) {
        let dtype = precision.dtype();
        self.embed_tokens = self.embed_tokens.clone().map(|t| t.cast(dtype));
        for (_, p) in self.projections_mut() {
            // Cast as the checkpoint's `[out, in]` rows and viewed transposed again, as the f32
            // weight is: a cast writes its output contiguous, and the CPU's bf16 kernel reads
            // columns contiguous in `in` in place for decode (any layout is correct).
            p.linear.weight = p
                .linear
                .weight
                .clone()
                .map(|t| t.transpose().cast(dtype).transpose());
        }
    }

    /// [`Self::projections`], mutable.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let modules = &self.layer_modules;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (m, p) in modules[i].iter().zip(l.projections_mut()) {
                out.push((format!("model.layers.{i}.{m}"), p));
            }
        }
        if let Some(h) = &mut self.lm_head {
            out.push(("lm_head".to_string(), h));
        }
        out
    }

    /// Build the network from Hugging Face-named tensors, checking every shape. With
    /// `vars.with_blocks(true)`, quantised weights are also kept as blocks for the CPU decode
    /// kernel; only the CPU device without autodiff, the one the kernel serves, keeps them.
    pub fn load(cfg: &ResolvedConfig, vars: &Vars<'_>) -> Result<Self, WeightError> {
        let norm = |v: &Vars<'_>| -> Result<RmsNorm, WeightError> {
            Ok(RmsNorm::new(v.vector("weight", cfg.hidden)?, cfg.eps))
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        let mut layer_modules = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let lv = vars.pp("model.layers").pp(i);
            let table = cfg.layer_projections(i);
            let projs: Vec<Proj> = table
                .iter()
                .map(|p| projection(&lv.pp(&p.module), p))
                .collect::<Result<_, _>>()?;
            layer_modules.push(table.into_iter().map(|p| p.module).collect());
            let mut projs = projs.into_iter();
            let mut next = || projs.next().expect("the config's table");
            let (self_attn, latent_attn) = match cfg.mla {
                None => {
                    let attn = Attention {
                        q_proj: next(),
                        k_proj: next(),
                        v_proj: next(),
                        o_proj: next(),
                        heads: cfg.heads,
                        kv_heads: cfg.kv_heads,
                        head_dim: cfg.head_dim,
                    };
                    (Some(attn), None)
                }
                Some(m) => {
                    // The latent norms keep transformers' own eps (1e-6), not rms_norm_eps.
                    let small = |name: &str, len: usize| -> Result<RmsNorm, WeightError> {
                        Ok(RmsNorm::new(lv.pp(name).vector("weight", len)?, 1e-6))
                    };
                    let (q_a_proj, q_a_layernorm, q_b_proj, q_proj) = match m.q_lora_rank {
                        Some(r) => (
                            Some(next()),
                            Some(small("self_attn.q_a_layernorm", r)?),
                            Some(next()),
                            None,
                        ),
                        None => (None, None, None, Some(next())),
                    };
                    let attn = MlaAttention {
                        q_a_proj,
                        q_a_layernorm,
                        q_b_proj,
                        q_proj,
                        kv_a_proj_with_mqa: next(),
                        kv_a_layernorm: small("self_attn.kv_a_layernorm", m.kv_lora_rank)?,
                        kv_b_proj: next(),
                        o_proj: next(),
                        heads: cfg.heads,
                        dims: m,
                    };
                    (None, Some(attn))
                }
            };
            let mlp_of = |next: &mut dyn FnMut() -> Proj, mixtral: bool| {
                let (gate_proj, second, third) = (next(), next(), next());
                let (up_proj, down_proj) = match mixtral {
                    true => (third, second),
                    false => (second, third),
                };
                Mlp {
                    gate_proj,
                    up_proj,
                    down_proj,
                }
            };
            let (mlp, moe) = match (cfg.experts, cfg.router(i)) {
                (Some(e), Some(router)) => {
                    let mixtral = cfg.arch == crate::model::Architecture::Mixtral;
                    let experts = (0..e.count).map(|_| mlp_of(&mut next, mixtral)).collect();
                    let shared_experts =
                        (e.shared_intermediate > 0).then(|| mlp_of(&mut next, false));
                    let rv = lv.pp(router);
                    let gate = rv.matrix("weight", [e.count, cfg.hidden])?;
                    let choice_bias = match e.choice_bias {
                        true => Some(Param::from_tensor(
                            rv.vector("e_score_correction_bias", e.count)?,
                        )),
                        false => None,
                    };
                    let moe = Moe {
                        gate: Linear {
                            weight: Param::from_tensor(gate.transpose()),
                            bias: None,
                        },
                        choice_bias,
                        experts,
                        shared_experts,
                        routing: Routing {
                            per_token: e.per_token,
                            sigmoid: e.sigmoid,
                            groups: e.groups,
                            topk_groups: e.topk_groups,
                            normalize: e.normalize,
                            routed_scale: e.routed_scale,
                            mixtral_order: mixtral,
                        },
                    };
                    (None, Some(moe))
                }
                _ => (Some(mlp_of(&mut next, false)), None),
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(&lv.pp("input_layernorm"))?,
                self_attn,
                latent_attn,
                post_attention_layernorm: norm(&lv.pp("post_attention_layernorm"))?,
                mlp,
                moe,
            });
        }
        let embed_shape = [cfg.vocab, cfg.hidden];
        let embed = vars.matrix("model.embed_tokens.weight", embed_shape)?;
        let lm_head = match cfg.projections().pop() {
            Some((name, p)) if name == "lm_head" => Some(projection(&vars.pp("lm_head"), &p)?),
            _ => None,
        };
        // Positions beyond what the model was trained for are refused by the generator, not here.
        let positions = cfg.max_positions.min(super::MAX_ROPE_POSITIONS);
        Ok(Self {
            embed_tokens: Param::from_tensor(embed),
            layers,
            norm: norm(&vars.pp("model.norm"))?,
            lm_head,
            rope: Rope::new(cfg, positions, vars.device()),
            sliding_window: cfg.sliding_window.unwrap_or(0),
            packed_embed: if cfg.tied_embeddings {
                vars.blocks("model.embed_tokens.weight", embed_shape)?
            } else {
                None
            },
            layer_modules,
        })
    }
}

/// One projection from `{module}.weight` (`[out, in]`) and `{module}.bias`. burn computes x·W
/// with W `[in, out]`; a transposed view of the `[out, in]` data keeps the checkpoint's rows
/// contiguous, which the decode kernel reads directly.
fn projection(v: &Vars<'_>, p: &Projection) -> Result<Proj, WeightError> {
    let w = v.matrix("weight", [p.d_out, p.d_in])?;
    let bias = match p.bias {
        true => Some(Param::from_tensor(v.vector("bias", p.d_out)?)),
        false => None,
    };
    let mut proj = Proj::new(Linear {
        weight: Param::from_tensor(w.transpose()),
        bias,
    });
    proj.packed = v.blocks("weight", [p.d_out, p.d_in])?;
    Ok(proj)
}

/// `x · Eᵀ` for a tied bf16 embedding `E` `[vocab, h]` through the CPU's bf16 kernel (read in
/// place), where that kernel runs; `None` elsewhere, for burn's product.
fn tied_bf16(x: &Tensor<2>, embed: &Tensor<2>) -> Option<Tensor<2>> {
    #[cfg(feature = "cpu")]
    if embed.dtype() == DType::BF16
        && super::fused::applies(x)
        && super::fused::weight_applies(DType::BF16)
    {
        return Some(super::fused::linear(x.clone(), embed.clone().transpose()));
    }
    let _ = (x, embed);
    None
}
