//! The model's configuration, deserialised straight from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

/// The architectures switchyard runs. Chosen from `model_type` in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub const SUPPORTED: &'static str =
        "llama (LlamaForCausalLM), mistral (MistralForCausalLM), qwen2 (Qwen2ForCausalLM)";

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }

    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub const ALL: [Architecture; 3] = [Self::Llama, Self::Mistral, Self::Qwen2];

    /// The projections of one decoder layer, by module path, in checkpoint order.
    pub fn layer_modules(self) -> &'static [&'static str] {
        match self {
            Self::Llama | Self::Mistral | Self::Qwen2 => &LLAMA_LAYER,
        }
    }

    /// The short names (`q_proj`) LoRA can target in any architecture, for checking a recipe
    /// before its model is opened.
    pub fn any_linear_module() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for a in Self::ALL {
            for m in a.layer_modules() {
                let short = short_name(m);
                if !names.contains(&short) {
                    names.push(short);
                }
            }
        }
        names
    }
}

/// A Llama-family decoder layer's projections: attention, then the SwiGLU MLP.
const LLAMA_LAYER: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// `self_attn.q_proj` → `q_proj`: the name LoRA recipes and PEFT's `target_modules` use.
pub fn short_name(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// One linear projection: its module path and `[in, out]`, and whether it has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub module: &'static str,
    pub d_in: usize,
    pub d_out: usize,
    pub bias: bool,
}

impl Projection {
    pub fn short(&self) -> &'static str {
        short_name(self.module)
    }
}

/// RoPE frequency scaling (`rope_scaling` in older configs, part of `rope_parameters` in transformers 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// The parts of `config.json` the network needs. Unknown keys are allowed: configs carry many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` instead of `rope_theta`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_max_positions() -> usize {
    2048
}

/// Everything resolved: defaults applied, architecture chosen, RoPE settings unified.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    pub arch: Architecture,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub vocab: usize,
    pub max_positions: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tied_embeddings: bool,
    pub sliding_window: Option<usize>,
    pub qkv_bias: bool,
    pub mlp_bias: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported architecture `{0}`; switchyard supports {supported}", supported = Architecture::SUPPORTED)]
    UnsupportedArchitecture(String),
    #[error("key `{key}`: {detail}")]
    Invalid { key: &'static str, detail: String },
}

impl ModelConfig {
    pub fn resolve(&self) -> Result<ResolvedConfig, ConfigError> {
        let arch = Architecture::from_model_type(&self.model_type)
            .ok_or_else(|| ConfigError::UnsupportedArchitecture(self.model_type.clone()))?;
        let invalid = |key, detail: String| ConfigError::Invalid { key, detail };
        if self.num_attention_heads == 0 {
            return Err(invalid("num_attention_heads", "must be positive".into()));
        }
        let kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if kv_heads == 0 || !self.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "{kv_heads} does not divide num_attention_heads = {}",
                    self.num_attention_heads
                ),
            ));
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }
        let params = self.rope_parameters.as_ref();
        let rope_theta = self
            .rope_theta
            .or_else(|| {
                params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let mut rope_scaling = self.rope_scaling.clone();
        if rope_scaling.is_none()
            && let Some(p) = params
            && p.get("rope_type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default")
        {
            rope_scaling = Some(
                serde_json::from_value(p.clone())
                    .map_err(|e| invalid("rope_parameters", e.to_string()))?,
            );
        }
        if let Some(s) = &rope_scaling
            && !matches!(s.rope_type.as_str(), "default" | "llama3" | "linear")
        {
            return Err(invalid(
                "rope_scaling.rope_type",
                format!(
                    "`{}` is not supported (supported: default, linear, llama3)",
                    s.rope_type
                ),
            ));
        }
        let sliding_window = match arch {
            Architecture::Mistral => self.sliding_window,
            Architecture::Qwen2 if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        };
        Ok(ResolvedConfig {
            arch,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads,
            head_dim,
            eps: self.rms_norm_eps,
            vocab: self.vocab_size,
            max_positions: self.max_position_embeddings,
            rope_theta,
            rope_scaling,
            tied_embeddings: self.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            qkv_bias: arch == Architecture::Qwen2 || self.attention_bias == Some(true),
            mlp_bias: self.mlp_bias == Some(true),
        })
    }
}

impl ResolvedConfig {
    /// The projections of one decoder layer with their shapes: the one table the network, its
    /// loader, training and recipe checks read.
    pub fn layer_projections(&self) -> Vec<Projection> {
        let (h, q, kv, f) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        self.arch
            .layer_modules()
            .iter()
            .map(|&module| {
                let (d_in, d_out, bias) = match short_name(module) {
                    "q_proj" => (h, q, self.qkv_bias),
                    "k_proj" | "v_proj" => (h, kv, self.qkv_bias),
                    "o_proj" => (q, h, false),
                    "gate_proj" | "up_proj" => (h, f, self.mlp_bias),
                    "down_proj" => (f, h, self.mlp_bias),
                    other => unreachable!("no shape for `{other}`"),
                };
                Projection {
                    module,
                    d_in,
                    d_out,
                    bias,
                }
            })
            .collect()
    }

    /// Every projection by its full module name (`model.layers.0.self_attn.q_proj`, and
    /// `lm_head` when the output layer is not tied to the embedding), in checkpoint order.
    pub fn projections(&self) -> Vec<(String, Projection)> {
        let layer = self.layer_projections();
        let mut out: Vec<(String, Projection)> = (0..self.layers)
            .flat_map(|i| {
                layer
                    .iter()
                    .map(move |p| (format!("model.layers.{i}.{}", p.module), *p))
            })
            .collect();
        if !self.tied_embeddings {
            let head = Projection {
                module: "lm_head",
                d_in: self.hidden,
                d_out: self.vocab,
                bias: false,
            };
            out.push(("lm_head".into(), head));
        }
        out
    }

    /// Parameters of the model, from the config alone (reading the weights would dequantise a
    /// whole GGUF just to count them).
    pub fn num_parameters(&self) -> usize {
        let projections: usize = self
            .projections()
            .iter()
            .map(|(_, p)| p.d_in * p.d_out + if p.bias { p.d_out } else { 0 })
            .sum();
        let norms = (2 * self.layers + 1) * self.hidden;
        projections + norms + self.vocab * self.hidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "vocab_size": 256
        })
    }

    #[test]
    fn rope_theta_from_top_level_or_rope_parameters() {
        let mut c = base();
        c["rope_theta"] = 100000.0.into();
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        assert_eq!(r.resolve().unwrap().rope_theta, 100000.0);
        let mut c = base();
        c["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"});
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        let r = r.resolve().unwrap();
        assert_eq!((r.rope_theta, r.rope_scaling), (500000.0, None));
    }

    #[test]
    fn llama3_scaling_inside_rope_parameters() {
        let mut c = base();
        c["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        assert_eq!(r.resolve().unwrap().rope_scaling.unwrap().factor, Some(8.0));
    }

    #[test]
    fn one_table_of_projections_and_one_parameter_count() {
        let mut c = base();
        c["mlp_bias"] = true.into();
        c["attention_bias"] = true.into();
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        let r = r.resolve().unwrap();
        let names: Vec<&str> = r.layer_projections().iter().map(|p| p.short()).collect();
        assert_eq!(
            names,
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj"
            ]
        );
        // 2 layers: q 64·64, k/v 64·32 each (+ biases), o 64·64, gate/up 64·128, down 128·64
        // (+ biases); 2 norms per layer, the final norm, and the untied embedding and head.
        let layer =
            64 * 64 + 64 + 2 * (64 * 32 + 32) + 64 * 64 + 2 * (64 * 128 + 128) + 128 * 64 + 64;
        let want = 2 * (layer + 2 * 64) + 64 + 2 * 256 * 64;
        assert_eq!(r.num_parameters(), want);
        assert_eq!(r.projections().len(), 2 * 7 + 1);
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let mut c = base();
        c["model_type"] = "gpt_neox".into();
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        let e = r.resolve().unwrap_err().to_string();
        assert!(e.contains("gpt_neox") && e.contains("qwen2"), "{e}");
    }
}
