//! Checkpoints whose tensors are not named the Hugging Face way, read through a renaming source:
//! Mistral's own layout (`params.json` + `consolidated*.safetensors`, `layers.L.attention.wq`),
//! and the text part of a multimodal `mistral3` checkpoint (`language_model.model.…` or
//! `model.language_model.…`, beside a vision tower switchyard does not run).
//!
//! Mistral's files rotate interleaved pairs `(x[2i], x[2i+1])` with RoPE where Hugging Face
//! rotates halves `(x[i], x[i + d/2])`; transformers' converters permute `wq`/`wk` rows per head
//! (native row `2i + j` is Hugging Face row `j·d/2 + i`). Reading undoes it the same way, so the
//! network sees the checkpoint transformers would have converted.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::{FormatError, HostTensor, TensorSource};

/// How a stored tensor becomes the Hugging Face one.
#[derive(Debug, Clone, Copy)]
enum Fix {
    Keep,
    /// Rows of `heads` heads of `head_dim`, interleaved pairs → halves.
    Rope {
        heads: usize,
        head_dim: usize,
    },
    /// Expert `e` of a fused `[E, out, in]` tensor; `half` picks rows of `gate_up_proj`
    /// (0: gate, 1: up; `None`: all rows).
    Expert {
        e: usize,
        half: Option<usize>,
    },
}

/// A source whose tensors are read under other names (and, for Mistral's `wq`/`wk`, permuted).
pub struct Renamed {
    inner: Box<dyn TensorSource>,
    /// Hugging Face name → (stored name, fix).
    map: BTreeMap<String, (String, Fix)>,
}

impl Renamed {
    /// The text part of a `mistral3` checkpoint: either transformers 5's names
    /// (`model.language_model.X`, `lm_head`) or the older ones (`language_model.model.X`,
    /// `language_model.lm_head`). The vision tower and projector are left out.
    pub fn text_of_multimodal(inner: Box<dyn TensorSource>) -> Self {
        let mut map = BTreeMap::new();
        for stored in inner.names() {
            let hf = if let Some(rest) = stored.strip_prefix("model.language_model.") {
                Some(format!("model.{rest}"))
            } else if let Some(rest) = stored.strip_prefix("language_model.model.") {
                Some(format!("model.{rest}"))
            } else if let Some(rest) = stored.strip_prefix("language_model.") {
                Some(rest.to_string())
            } else if stored == "lm_head.weight" {
                Some(stored.clone())
            } else {
                None
            };
            if let Some(hf) = hf {
                map.insert(hf, (stored, Fix::Keep));
            }
        }
        Self { inner, map }
    }

    /// Experts stored fused, as transformers 5 writes `mistral4` (`mlp.experts.gate_up_proj`
    /// `[E, 2I, H]`, `mlp.experts.down_proj` `[E, H, I]`), served one per expert
    /// (`mlp.experts.3.gate_proj.weight`); every other tensor as it is.
    pub fn unfused_experts(inner: Box<dyn TensorSource>, experts: usize) -> Self {
        let mut map = BTreeMap::new();
        for stored in inner.names() {
            let fused = [("gate_up_proj", true), ("down_proj", false)]
                .into_iter()
                .find_map(|(n, gate_up)| {
                    let prefix = stored.strip_suffix(&format!("mlp.experts.{n}"))?;
                    Some((prefix.to_string(), gate_up))
                });
            match fused {
                Some((prefix, true)) => {
                    for e in 0..experts {
                        for (half, n) in [(0, "gate_proj"), (1, "up_proj")] {
                            let fix = Fix::Expert {
                                e,
                                half: Some(half),
                            };
                            map.insert(
                                format!("{prefix}mlp.experts.{e}.{n}.weight"),
                                (stored.clone(), fix),
                            );
                        }
                    }
                }
                Some((prefix, false)) => {
                    for e in 0..experts {
                        let fix = Fix::Expert { e, half: None };
                        map.insert(
                            format!("{prefix}mlp.experts.{e}.down_proj.weight"),
                            (stored.clone(), fix),
                        );
                    }
                }
                None => {
                    map.insert(stored.clone(), (stored, Fix::Keep));
                }
            }
        }
        Self { inner, map }
    }

    /// Whether `inner` stores experts fused.
    pub fn has_fused_experts(inner: &dyn TensorSource) -> bool {
        inner.names().iter().any(|n| {
            n.ends_with("mlp.experts.gate_up_proj") || n.ends_with("mlp.experts.down_proj")
        })
    }

    /// Mistral's own names (`tok_embeddings`, `layers.L.attention.wq`, `feed_forward.experts.N.w1`,
    /// …) as Hugging Face's, for a model of `heads`/`kv_heads` heads of `head_dim`.
    /// `mla`: Mistral Large 3's latent attention (`wq_a`, `wkv_a_with_mqa`, …), whose rows are
    /// stored as they are used (no RoPE permutation).
    pub fn mistral_native(
        inner: Box<dyn TensorSource>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        mla: bool,
    ) -> Self {
        let mut map = BTreeMap::new();
        for stored in inner.names() {
            if let Some((hf, fix)) = native_name(&stored, heads, kv_heads, head_dim, mla) {
                map.insert(hf, (stored, fix));
            }
        }
        Self { inner, map }
    }
}

fn native_name(
    stored: &str,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    mla: bool,
) -> Option<(String, Fix)> {
    let keep = |s: String| Some((s, Fix::Keep));
    match stored {
        "tok_embeddings.weight" => return keep("model.embed_tokens.weight".into()),
        "norm.weight" => return keep("model.norm.weight".into()),
        "output.weight" => return keep("lm_head.weight".into()),
        _ => {}
    }
    let rest = stored.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    // FP8 scales follow their weight (`qscale_weight`: the dequantisation multiplier);
    // activation scales are for FP8 matmuls, which switchyard does not run.
    let (module, suffix) = match rest.rsplit_once('.')? {
        (m, "weight") => (m, "weight"),
        (m, "qscale_weight") => (m, "weight_scale"),
        _ => return None,
    };
    let l = format!("model.layers.{layer}");
    let rope = |n| Fix::Rope { heads: n, head_dim };
    let swiglu = |w: &str| match w {
        "w1" => Some("gate_proj"),
        "w2" => Some("down_proj"),
        "w3" => Some("up_proj"),
        _ => None,
    };
    let (hf, fix) = match module {
        "attention.wq" if mla => (format!("{l}.self_attn.q_proj"), Fix::Keep),
        "attention.wq" => (format!("{l}.self_attn.q_proj"), rope(heads)),
        "attention.wk" => (format!("{l}.self_attn.k_proj"), rope(kv_heads)),
        "attention.wv" => (format!("{l}.self_attn.v_proj"), Fix::Keep),
        "attention.wo" => (format!("{l}.self_attn.o_proj"), Fix::Keep),
        "attention.wq_a" => (format!("{l}.self_attn.q_a_proj"), Fix::Keep),
        "attention.q_a_norm" => (format!("{l}.self_attn.q_a_layernorm"), Fix::Keep),
        "attention.wq_b" => (format!("{l}.self_attn.q_b_proj"), Fix::Keep),
        "attention.wkv_a_with_mqa" => (format!("{l}.self_attn.kv_a_proj_with_mqa"), Fix::Keep),
        "attention.kv_a_norm" => (format!("{l}.self_attn.kv_a_layernorm"), Fix::Keep),
        "attention.wkv_b" => (format!("{l}.self_attn.kv_b_proj"), Fix::Keep),
        "attention_norm" => (format!("{l}.input_layernorm"), Fix::Keep),
        "ffn_norm" => (format!("{l}.post_attention_layernorm"), Fix::Keep),
        "feed_forward.gate" => (format!("{l}.block_sparse_moe.gate"), Fix::Keep),
        "gate" => (format!("{l}.mlp.gate"), Fix::Keep),
        other => {
            if let Some(w) = other.strip_prefix("feed_forward.") {
                match w.strip_prefix("experts.") {
                    // Mixtral: the experts keep their names.
                    Some(expert) => (format!("{l}.block_sparse_moe.experts.{expert}"), Fix::Keep),
                    None => (format!("{l}.mlp.{}", swiglu(w)?), Fix::Keep),
                }
            } else if let Some(w) = other.strip_prefix("shared_experts.") {
                (format!("{l}.mlp.shared_experts.{}", swiglu(w)?), Fix::Keep)
            } else if let Some(ew) = other.strip_prefix("experts.") {
                let (e, w) = ew.split_once('.')?;
                (format!("{l}.mlp.experts.{e}.{}", swiglu(w)?), Fix::Keep)
            } else {
                return None;
            }
        }
    };
    Some((format!("{hf}.{suffix}"), fix))
}

/// Interleaved pairs → halves, per head: Hugging Face row `j·d/2 + i` is stored row `2i + j`.
fn unpermute(t: &mut HostTensor, heads: usize, head_dim: usize) -> Result<(), String> {
    let cols = *t.shape.get(1).ok_or("not a matrix")?;
    if t.shape[0] != heads * head_dim {
        return Err(format!(
            "has {} rows, expected {heads} heads × {head_dim}",
            t.shape[0]
        ));
    }
    let mut out = vec![0f32; t.data.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&t.data[src..src + cols]);
            }
        }
    }
    t.data = out;
    Ok(())
}

impl TensorSource for Renamed {
    fn origin(&self) -> &Path {
        self.inner.origin()
    }

    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, FormatError> {
        let Some((stored, fix)) = self.map.get(name) else {
            return Ok(None);
        };
        let Some(mut t) = self.inner.get(stored)? else {
            return Ok(None);
        };
        let bad = |detail: String| {
            FormatError::format(self.inner.origin(), format!("tensor `{stored}` {detail}"))
        };
        match *fix {
            Fix::Keep => {}
            Fix::Rope { heads, head_dim } => unpermute(&mut t, heads, head_dim).map_err(bad)?,
            Fix::Expert { e, half } => {
                let [n, rows, cols] = t.shape[..] else {
                    return Err(bad(format!(
                        "has shape {:?}, expected [experts, out, in]",
                        t.shape
                    )));
                };
                if e >= n || (half.is_some() && !rows.is_multiple_of(2)) {
                    return Err(bad(format!("has shape {:?}: no expert {e} in it", t.shape)));
                }
                let (first, count) = match half {
                    Some(h) => (h * rows / 2, rows / 2),
                    None => (0, rows),
                };
                let start = (e * rows + first) * cols;
                t = HostTensor::new(
                    vec![count, cols],
                    t.data[start..start + count * cols].to_vec(),
                );
            }
        }
        Ok(Some(t))
    }

    fn dtype_of(&self, name: &str) -> Option<String> {
        self.inner.dtype_of(&self.map.get(name)?.0)
    }
}

/// `params.json` (Mistral's config) as the `config.json` transformers' converters write:
/// `mistral`, `mixtral` (with `moe`), `ministral3` (with `llama_4_scaling` or `yarn`) or, with
/// MLA's widths, `mistral4` (Mistral Large 3; its `moe` keys as vLLM reads them).
pub fn config_from_params(params: &Value, path: &Path) -> Result<Value, FormatError> {
    let need = |key: &str| -> Result<&Value, FormatError> {
        params.get(key).ok_or_else(|| FormatError::MissingKey {
            path: path.to_path_buf(),
            key: key.into(),
        })
    };
    let num = |key: &str| -> Result<u64, FormatError> {
        need(key)?.as_u64().ok_or_else(|| FormatError::BadKey {
            path: path.to_path_buf(),
            key: key.into(),
            detail: "must be a positive integer".into(),
        })
    };
    let dim = num("dim")?;
    let heads = num("n_heads")?;
    let mut c = json!({
        "model_type": "mistral",
        "hidden_size": dim,
        "num_hidden_layers": num("n_layers")?,
        "intermediate_size": num("hidden_dim")?,
        "num_attention_heads": heads,
        "num_key_value_heads": params.get("n_kv_heads").and_then(Value::as_u64).unwrap_or(heads),
        "head_dim": params.get("head_dim").and_then(Value::as_u64).unwrap_or(dim / heads.max(1)),
        "rms_norm_eps": need("norm_eps")?.as_f64().unwrap_or(1e-5),
        "vocab_size": num("vocab_size")?,
        "rope_theta": params.get("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0),
        "tie_word_embeddings": params.get("tied_embeddings").and_then(Value::as_bool).unwrap_or(false),
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    if let Some(n) = params
        .get("max_position_embeddings")
        .or_else(|| params.get("max_seq_len"))
        .and_then(Value::as_u64)
    {
        c["max_position_embeddings"] = n.into();
    }
    if let Some(w) = params.get("sliding_window").and_then(Value::as_u64) {
        c["sliding_window"] = w.into();
    }
    let mla = params.get("kv_lora_rank").is_some() || params.get("qk_nope_head_dim").is_some();
    if mla {
        // Mistral Large 3: DeepSeek-V3's design with a softmax router (transformers' mistral4).
        c["model_type"] = "mistral4".into();
        for key in [
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
        ] {
            c[key] = params.get(key).cloned().unwrap_or(Value::Null);
        }
        c["rope_interleave"] = true.into();
        c["norm_topk_prob"] = true.into();
        c["scoring_func"] = "softmax".into();
        c.as_object_mut().expect("object").remove("head_dim");
        if let Some(moe) = params.get("moe") {
            for (from, to) in [
                ("num_experts", "n_routed_experts"),
                ("num_experts_per_tok", "num_experts_per_tok"),
                ("expert_hidden_dim", "moe_intermediate_size"),
                ("num_shared_experts", "n_shared_experts"),
                ("first_k_dense_replace", "first_k_dense_replace"),
                ("routed_scale", "routed_scaling_factor"),
                ("num_expert_groups", "n_group"),
                ("num_expert_groups_per_tok", "topk_group"),
            ] {
                if let Some(v) = moe.get(from) {
                    c[to] = v.clone();
                }
            }
            if moe
                .get("route_every_n")
                .and_then(Value::as_u64)
                .is_some_and(|n| n != 1)
            {
                return Err(FormatError::BadKey {
                    path: path.to_path_buf(),
                    key: "moe.route_every_n".into(),
                    detail: "only 1 (experts in every layer after the dense ones) is supported"
                        .into(),
                });
            }
        }
    } else if let Some(moe) = params.get("moe") {
        c["model_type"] = "mixtral".into();
        c["num_local_experts"] = moe.get("num_experts").cloned().unwrap_or(Value::Null);
        c["num_experts_per_tok"] = moe.get("num_experts_per_tok").cloned().unwrap_or(2.into());
    }
    let yarn = params.get("yarn");
    let llama4 = params.get("llama_4_scaling");
    if yarn.is_some() || llama4.is_some() {
        if !mla {
            c["model_type"] = "ministral3".into();
        }
        let mut rope = json!({"rope_type": "default", "rope_theta": c["rope_theta"]});
        if let Some(y) = yarn {
            // As transformers' converter: beta → beta_fast, alpha → beta_slow, mscale 1 / 1.
            rope["rope_type"] = "yarn".into();
            rope["factor"] = y.get("factor").cloned().unwrap_or(Value::Null);
            rope["original_max_position_embeddings"] = y
                .get("original_max_position_embeddings")
                .cloned()
                .unwrap_or(Value::Null);
            rope["beta_fast"] = y.get("beta").cloned().unwrap_or(32.0.into());
            rope["beta_slow"] = y.get("alpha").cloned().unwrap_or(1.0.into());
            rope["mscale"] = 1.0.into();
            rope["mscale_all_dim"] = 1.0.into();
            // `apply_scale: false`: no magnitude correction of the cos/sin tables.
            if y.get("apply_scale").and_then(Value::as_bool) == Some(false) {
                rope["attention_factor"] = 1.0.into();
            }
        }
        if let Some(l) = llama4 {
            rope["llama_4_scaling_beta"] = l.get("beta").cloned().unwrap_or(Value::Null);
            if rope
                .get("original_max_position_embeddings")
                .is_none_or(Value::is_null)
            {
                rope["original_max_position_embeddings"] = l
                    .get("original_max_position_embeddings")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
        }
        c["rope_parameters"] = rope;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_rows_unpermute_to_hugging_face_order() {
        // One head of 4 (2 pairs), 1 column: native rows are HF rows 0, 2, 1, 3.
        let mut t = HostTensor::new(vec![4, 1], vec![0.0, 2.0, 1.0, 3.0]);
        unpermute(&mut t, 1, 4).unwrap();
        assert_eq!(t.data, [0.0, 1.0, 2.0, 3.0]);
        let mut bad = HostTensor::new(vec![6, 1], vec![0.0; 6]);
        assert!(unpermute(&mut bad, 1, 4).unwrap_err().contains("6 rows"));
    }

    #[test]
    fn large_3_names_and_fp8_scales_map_to_hugging_face_names() {
        let name = |s: &str| native_name(s, 4, 4, 8, true).map(|(n, _)| n);
        assert_eq!(
            name("layers.3.attention.wkv_a_with_mqa.weight").as_deref(),
            Some("model.layers.3.self_attn.kv_a_proj_with_mqa.weight")
        );
        assert_eq!(
            name("layers.3.experts.7.w2.qscale_weight").as_deref(),
            Some("model.layers.3.mlp.experts.7.down_proj.weight_scale")
        );
        assert_eq!(
            name("layers.0.shared_experts.w3.weight").as_deref(),
            Some("model.layers.0.mlp.shared_experts.up_proj.weight")
        );
        assert_eq!(name("layers.3.experts.7.w2.qscale_act"), None);
        // MLA's q rows are not permuted; a GQA model's are.
        assert!(matches!(
            native_name("layers.0.attention.wq.weight", 4, 4, 8, true),
            Some((_, Fix::Keep))
        ));
        assert!(matches!(
            native_name("layers.0.attention.wq.weight", 4, 4, 8, false),
            Some((_, Fix::Rope { .. }))
        ));
        let p = json!({"dim": 64, "n_layers": 2, "hidden_dim": 64, "n_heads": 4, "norm_eps": 1e-6,
            "vocab_size": 256, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8, "v_head_dim": 12,
            "moe": {"num_experts": 4, "num_experts_per_tok": 2, "expert_hidden_dim": 16,
                    "num_shared_experts": 1, "first_k_dense_replace": 1, "route_every_n": 2},
            "yarn": {"factor": 36.0, "original_max_position_embeddings": 4, "beta": 32.0, "alpha": 1.0,
                     "apply_scale": false}});
        let e = config_from_params(&p, Path::new("params.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("moe.route_every_n"), "{e}");
        let mut p = p;
        p["moe"]["route_every_n"] = 1.into();
        let c = config_from_params(&p, Path::new("params.json")).unwrap();
        assert_eq!(c["model_type"], "mistral4");
        assert_eq!(c["moe_intermediate_size"], 16);
        assert_eq!(c["rope_parameters"]["attention_factor"], 1.0);
    }

    #[test]
    fn params_name_the_architecture_and_missing_keys() {
        let p = json!({"dim": 64, "n_layers": 2, "hidden_dim": 20, "n_heads": 4, "n_kv_heads": 2,
            "head_dim": 16, "norm_eps": 1e-5, "vocab_size": 256,
            "moe": {"num_experts": 4, "num_experts_per_tok": 2}});
        let c = config_from_params(&p, Path::new("params.json")).unwrap();
        assert_eq!(
            (c["model_type"].as_str(), c["num_local_experts"].as_u64()),
            (Some("mixtral"), Some(4))
        );
        let mut p2 = p.clone();
        p2.as_object_mut().unwrap().remove("dim");
        let e = config_from_params(&p2, Path::new("params.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("params.json") && e.contains("dim"), "{e}");
        let mut p3 = p;
        p3["llama_4_scaling"] = json!({"beta": 0.1, "original_max_position_embeddings": 16384});
        p3["yarn"] = json!({"factor": 16.0, "original_max_position_embeddings": 16384, "beta": 32.0, "alpha": 1.0});
        let c = config_from_params(&p3, Path::new("params.json")).unwrap();
        assert_eq!(c["model_type"], "ministral3");
        assert_eq!(c["rope_parameters"]["llama_4_scaling_beta"], 0.1);
        assert_eq!(c["rope_parameters"]["beta_slow"], 1.0);
    }
}
