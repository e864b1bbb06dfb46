//! A GGUF file seen as a Hugging Face model: `config.json` values from its metadata, tensors under
//! Hugging Face names (with llama.cpp's Q/K row permutation undone), and its vocabulary.

use std::path::Path;

use serde_json::json;

use super::blocks::Blocks;
use super::{GgufFile, Value, qk_source_row, unpermute_qk};
use crate::formats::{FormatError, HostTensor, TensorSource};

/// The GGUF architectures whose tensors this module can name as Hugging Face's.
pub const ARCHITECTURES: &str = "llama, mistral, qwen2";

pub struct GgufModel {
    pub file: GgufFile,
    arch: String,
    heads: usize,
    kv_heads: usize,
}

/// The vocabulary and tokenizer settings stored in GGUF metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i64>,
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = GgufFile::open(path)?;
        let arch = file.require_str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(FormatError::BadKey {
                path: path.to_path_buf(),
                key: "general.architecture".into(),
                detail: format!(
                    "`{arch}` is not supported; switchyard reads GGUF files of {ARCHITECTURES}"
                ),
            });
        }
        let heads = file.require_u64(&format!("{arch}.attention.head_count"))? as usize;
        let kv_heads = file
            .get(&format!("{arch}.attention.head_count_kv"))
            .and_then(Value::as_u64)
            .map_or(heads, |v| v as usize);
        Ok(Self {
            file,
            arch,
            heads,
            kv_heads,
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// The equivalent Hugging Face `config.json` document.
    pub fn config(&self) -> Result<serde_json::Value, FormatError> {
        let f = &self.file;
        let hidden = f.require_u64(&self.key("embedding_length"))?;
        let vocab = match f.get(&self.key("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v,
            None => f
                .require("tokenizer.ggml.tokens")?
                .as_array()
                .map_or(0, |a| a.len() as u64),
        };
        let tied = !f.tensors.iter().any(|t| t.name == "output.weight");
        let (model_type, class) = match self.arch.as_str() {
            "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
            "mistral" => ("mistral", "MistralForCausalLM"),
            _ => ("llama", "LlamaForCausalLM"),
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": f.require_u64(&self.key("feed_forward_length"))?,
            "num_hidden_layers": f.require_u64(&self.key("block_count"))?,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": f.get(&self.key("rope.dimension_count")).and_then(Value::as_u64)
                .unwrap_or(hidden / self.heads as u64),
            "rms_norm_eps": f.require_f64(&self.key("attention.layer_norm_rms_epsilon"))? as f32 as f64,
            "vocab_size": vocab,
            "max_position_embeddings": f.get(&self.key("context_length")).and_then(Value::as_u64).unwrap_or(2048),
            "rope_theta": f.get(&self.key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0),
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(id) = f.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64) {
            cfg["bos_token_id"] = id.into();
        }
        if let Some(id) = f.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
            cfg["eos_token_id"] = id.into();
        }
        if let Some(id) = f
            .get("tokenizer.ggml.padding_token_id")
            .and_then(Value::as_u64)
        {
            cfg["pad_token_id"] = id.into();
        }
        if model_type == "llama" {
            cfg["attention_bias"] = false.into();
            cfg["mlp_bias"] = false.into();
        }
        Ok(cfg)
    }

    pub fn vocab(&self) -> Result<GgufVocab, FormatError> {
        let f = &self.file;
        let strings = |key: &str| -> Result<Vec<String>, FormatError> {
            let arr = f
                .require(key)?
                .as_array()
                .ok_or_else(|| f.bad_key(key, "an array of strings"))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| f.bad_key(key, "an array of strings"))
                })
                .collect()
        };
        let id = |key: &str| f.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let token_types = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|v| v.as_f64().map_or(1, |x| x as i64))
                .collect(),
            None => Vec::new(),
        };
        let merges = if f.get("tokenizer.ggml.merges").is_some() {
            strings("tokenizer.ggml.merges")?
        } else {
            Vec::new()
        };
        Ok(GgufVocab {
            model: f.require_str("tokenizer.ggml.model")?.to_string(),
            pre: f
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types,
            merges,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            unk_id: id("tokenizer.ggml.unknown_token_id"),
            pad_id: id("tokenizer.ggml.padding_token_id"),
            add_bos: matches!(
                f.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
            chat_template: f
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Hugging Face name of a GGUF tensor, or `None` for tensors the model does not use.
    fn hf_name(gguf: &str) -> Option<String> {
        let fixed = match gguf {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.to_string());
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, tail) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (part, kind) = tail.rsplit_once('.')?;
        let hf = match part {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}.{kind}"))
    }

    fn gguf_name(&self, hf: &str) -> Option<String> {
        self.file
            .tensors
            .iter()
            .map(|t| &t.name)
            .find(|n| Self::hf_name(n).as_deref() == Some(hf))
            .cloned()
    }
}

impl TensorSource for GgufModel {
    fn origin(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.file
            .tensors
            .iter()
            .filter_map(|t| Self::hf_name(&t.name))
            .collect()
    }

    fn dtype_of(&self, name: &str) -> Option<String> {
        let g = self.gguf_name(name)?;
        self.file.tensor_info(&g).ok().map(|t| t.dtype.name())
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, FormatError> {
        let Some(g) = self.gguf_name(name) else {
            return Ok(None);
        };
        let info = self.file.tensor_info(&g)?;
        let shape = info.shape();
        let mut data = self.file.dequantize(info)?;
        // llama.cpp permutes Q/K rows for its adjacent-pair RoPE only for the llama architecture.
        if self.arch == "llama" {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if g.contains(".attn_q.") {
                data = unpermute_qk(&data, self.heads, cols);
            } else if g.contains(".attn_k.") {
                data = unpermute_qk(&data, self.kv_heads, cols);
            }
        }
        Ok(Some(HostTensor::new(shape, data)))
    }

    fn blocks(&self, name: &str) -> Result<Option<Blocks>, FormatError> {
        let Some(g) = self.gguf_name(name) else {
            return Ok(None);
        };
        let Some(packed) = self.file.blocks(self.file.tensor_info(&g)?)? else {
            return Ok(None);
        };
        // The same row permutation as in `get`, on whole rows of blocks.
        let heads = if self.arch != "llama" {
            None
        } else if g.contains(".attn_q.") {
            Some(self.heads)
        } else if g.contains(".attn_k.") {
            Some(self.kv_heads)
        } else {
            None
        };
        Ok(Some(match heads {
            None => packed,
            Some(n) => {
                let head_dim = packed.rows / n;
                packed.permute_rows(|dst| qk_source_row(dst, head_dim))
            }
        }))
    }
}
