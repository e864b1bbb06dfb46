//! The model's configuration, deserialised straight from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

/// The architectures switchyard runs. Chosen from `model_type` in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    /// The text part of Ministral 3: Mistral with YaRN RoPE and Llama-4 query scaling.
    Ministral3,
    /// Mistral with a sparse mixture of experts in place of each MLP.
    Mixtral,
    /// DeepSeek-V3: multi-head latent attention (MLA), sigmoid-routed experts with a shared
    /// expert, the first layers dense.
    DeepseekV3,
    /// Mistral Large 3's design (transformers' `mistral4`): DeepSeek-V3's with a softmax router
    /// and Llama-4 query scaling.
    Mistral4,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama (LlamaForCausalLM), mistral (MistralForCausalLM), \
         qwen2 (Qwen2ForCausalLM), ministral3 (Ministral3ForCausalLM, and the text part of a mistral3 \
         checkpoint), mixtral (MixtralForCausalLM), deepseek_v3 (DeepseekV3ForCausalLM), mistral4 \
         (Mistral4ForCausalLM: Mistral Large 3)";

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "ministral3" => Some(Self::Ministral3),
            "mixtral" => Some(Self::Mixtral),
            "deepseek_v3" => Some(Self::DeepseekV3),
            "mistral4" => Some(Self::Mistral4),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Ministral3 => "ministral3",
            Self::Mixtral => "mixtral",
            Self::DeepseekV3 => "deepseek_v3",
            Self::Mistral4 => "mistral4",
        }
    }

    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Ministral3 => "Ministral3ForCausalLM",
            Self::Mixtral => "MixtralForCausalLM",
            Self::DeepseekV3 => "DeepseekV3ForCausalLM",
            Self::Mistral4 => "Mistral4ForCausalLM",
        }
    }

    pub const ALL: [Architecture; 7] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Ministral3,
        Self::Mixtral,
        Self::DeepseekV3,
        Self::Mistral4,
    ];

    /// The projections a decoder layer may have, by module path (`{e}` stands for an expert's
    /// index); which of them a given layer has is [`ResolvedConfig::layer_projections`]'s call.
    pub fn layer_modules(self) -> &'static [&'static str] {
        match self {
            Self::Llama | Self::Mistral | Self::Qwen2 | Self::Ministral3 => &LLAMA_LAYER,
            Self::Mixtral => &MIXTRAL_LAYER,
            Self::DeepseekV3 | Self::Mistral4 => &MLA_LAYER,
        }
    }

    /// Multi-head latent attention and DeepSeek-style experts.
    pub fn is_mla(self) -> bool {
        matches!(self, Self::DeepseekV3 | Self::Mistral4)
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

/// A Mixtral decoder layer: attention, then each expert's SwiGLU MLP (`w1` gate, `w2` down, `w3`
/// up). The router (`block_sparse_moe.gate`) is not a LoRA target: it stays frozen, as in PEFT's
/// default, so fine-tuning cannot shift the load between experts.
const MIXTRAL_LAYER: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "block_sparse_moe.experts.{e}.w1",
    "block_sparse_moe.experts.{e}.w2",
    "block_sparse_moe.experts.{e}.w3",
];

/// A DeepSeek-V3 / Mistral Large 3 layer: MLA's projections (`q_a_proj` and `q_b_proj` around a
/// norm, or one `q_proj` when `q_lora_rank` is null; `kv_a_proj_with_mqa` to the latent and the
/// shared rotary key, `kv_b_proj` from the latent to each head's key and value), then a dense
/// MLP (the first layers) or routed experts beside a shared expert. The router is frozen.
const MLA_LAYER: [&str; 15] = [
    "self_attn.q_a_proj",
    "self_attn.q_b_proj",
    "self_attn.q_proj",
    "self_attn.kv_a_proj_with_mqa",
    "self_attn.kv_b_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "mlp.experts.{e}.gate_proj",
    "mlp.experts.{e}.up_proj",
    "mlp.experts.{e}.down_proj",
    "mlp.shared_experts.gate_proj",
    "mlp.shared_experts.up_proj",
    "mlp.shared_experts.down_proj",
];

/// `self_attn.q_proj` → `q_proj`: the name LoRA recipes and PEFT's `target_modules` use.
pub fn short_name(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// One linear projection: its module path within the layer and `[in, out]`, and whether it has
/// a bias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub module: String,
    pub d_in: usize,
    pub d_out: usize,
    pub bias: bool,
}

impl Projection {
    pub fn short(&self) -> &str {
        short_name(&self.module)
    }
}

/// RoPE frequency scaling (`rope_scaling` in older configs, part of `rope_parameters` in
/// transformers 5), with YaRN's settings and the Llama-4 query scaling Mistral 3 adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub rope_type: String,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub attention_factor: Option<f64>,
    pub truncate: Option<bool>,
    /// Queries scaled by `1 + β·ln(1 + ⌊pos / original_max_position_embeddings⌋)` (Llama 4,
    /// Ministral 3, Mistral Large 3).
    pub llama_4_scaling_beta: Option<f64>,
}

impl RopeScaling {
    /// From a `rope_scaling` / `rope_parameters` object: `type` or `rope_type`, unknown keys
    /// ignored, each known key checked for its type.
    fn from_json(v: &serde_json::Value, key: &'static str) -> Result<Self, ConfigError> {
        let bad = |field: &str, want: &str| ConfigError::Invalid {
            key,
            detail: format!("`{field}` must be {want}"),
        };
        let num = |field: &str| -> Result<Option<f64>, ConfigError> {
            match v.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| bad(field, "a number")),
            }
        };
        let rope_type = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("rope_type", "a string"))?
            .to_string();
        let original = match num("original_max_position_embeddings")? {
            Some(x) if x >= 1.0 && x.fract() == 0.0 => Some(x as usize),
            Some(_) => {
                return Err(bad(
                    "original_max_position_embeddings",
                    "a positive integer",
                ));
            }
            None => None,
        };
        let truncate = match v.get("truncate") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(
                x.as_bool()
                    .ok_or_else(|| bad("truncate", "true or false"))?,
            ),
        };
        Ok(Self {
            rope_type,
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: original,
            beta_fast: num("beta_fast")?,
            beta_slow: num("beta_slow")?,
            mscale: num("mscale")?,
            mscale_all_dim: num("mscale_all_dim")?,
            attention_factor: num("attention_factor")?,
            truncate,
            llama_4_scaling_beta: num("llama_4_scaling_beta")?,
        })
    }
}

/// A sparse mixture of experts in place of the MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Experts {
    /// Routed experts per layer.
    pub count: usize,
    /// Experts each token is sent to.
    pub per_token: usize,
    /// Each expert's FFN width.
    pub intermediate: usize,
    /// The always-on shared expert's FFN width (0: none).
    pub shared_intermediate: usize,
    /// Layers before this one keep a dense MLP (`first_k_dense_replace`).
    pub first_sparse_layer: usize,
    /// Router scores: sigmoid (DeepSeek-V3) or softmax over every expert.
    pub sigmoid: bool,
    /// A per-expert bias added to the scores for choosing only (DeepSeek-V3's
    /// `e_score_correction_bias`).
    pub choice_bias: bool,
    /// Expert groups, and how many of them a token may choose from.
    pub groups: usize,
    pub topk_groups: usize,
    /// Chosen weights divided by their sum.
    pub normalize: bool,
    /// Chosen weights multiplied by this (`routed_scaling_factor`).
    pub routed_scale: f64,
}

/// Multi-head latent attention's widths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mla {
    /// The query's low-rank bottleneck (`None`: one `q_proj`).
    pub q_lora_rank: Option<usize>,
    /// The compressed key-value latent the cache holds.
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v: usize,
    /// RoPE on interleaved pairs (DeepSeek's layout) rather than halves.
    pub interleaved: bool,
    /// `q·k` is multiplied by this: `qk_head_dim^-½`, times YaRN's `mscale²`.
    pub softmax_scale: f64,
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
    pub rope_scaling: Option<serde_json::Value>,
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
    /// Mixtral: routed experts per layer, and how many each token uses.
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// DeepSeek-V3 / Mistral Large 3: MLA widths and the experts' layout.
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    #[serde(default)]
    pub kv_lora_rank: Option<usize>,
    #[serde(default)]
    pub qk_nope_head_dim: Option<usize>,
    #[serde(default)]
    pub qk_rope_head_dim: Option<usize>,
    #[serde(default)]
    pub v_head_dim: Option<usize>,
    #[serde(default)]
    pub rope_interleave: Option<bool>,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub first_k_dense_replace: Option<usize>,
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    #[serde(default)]
    pub routed_scaling_factor: Option<f64>,
    #[serde(default)]
    pub scoring_func: Option<String>,
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
    /// The mixture of experts replacing the MLP (Mixtral: every layer; DeepSeek-style: from
    /// `first_sparse_layer` on).
    pub experts: Option<Experts>,
    /// Multi-head latent attention (then `head_dim` is the rotary part, `qk_rope`).
    pub mla: Option<Mla>,
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
        let mut rope_scaling = match &self.rope_scaling {
            Some(v) if !v.is_null() => Some(RopeScaling::from_json(v, "rope_scaling")?),
            _ => None,
        };
        if rope_scaling.is_none()
            && let Some(p) = params
            && (p
                .get("rope_type")
                .or_else(|| p.get("type"))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default")
                || p.get("llama_4_scaling_beta").is_some())
        {
            rope_scaling = Some(RopeScaling::from_json(p, "rope_parameters")?);
        }
        if let Some(s) = &rope_scaling {
            if !matches!(
                s.rope_type.as_str(),
                "default" | "llama3" | "linear" | "yarn"
            ) {
                return Err(invalid(
                    "rope_scaling.rope_type",
                    format!(
                        "`{}` is not supported (supported: default, linear, llama3, yarn)",
                        s.rope_type
                    ),
                ));
            }
            if (s.rope_type == "yarn" || s.llama_4_scaling_beta.is_some())
                && s.original_max_position_embeddings.is_none()
            {
                return Err(invalid(
                    "rope_parameters.original_max_position_embeddings",
                    format!("`{}` RoPE needs it", s.rope_type),
                ));
            }
        }
        let experts = match arch {
            Architecture::Mixtral => {
                let count = self.num_local_experts.ok_or_else(|| {
                    invalid("num_local_experts", "a mixtral config needs it".into())
                })?;
                let per_token = self.num_experts_per_tok.unwrap_or(2);
                if count == 0 || per_token == 0 || per_token > count {
                    return Err(invalid(
                        "num_experts_per_tok",
                        format!("{per_token} must be between 1 and num_local_experts = {count}"),
                    ));
                }
                Some(Experts {
                    count,
                    per_token,
                    intermediate: self.intermediate_size,
                    shared_intermediate: 0,
                    first_sparse_layer: 0,
                    sigmoid: false,
                    choice_bias: false,
                    groups: 1,
                    topk_groups: 1,
                    normalize: true,
                    routed_scale: 1.0,
                })
            }
            a if a.is_mla() => self.deepseek_experts(a)?,
            _ => None,
        };
        let mla = match arch.is_mla() {
            true => Some(self.mla(rope_scaling.as_ref())?),
            false => None,
        };
        let head_dim = mla.map_or(head_dim, |m| m.qk_rope);
        let sliding_window = match arch {
            Architecture::Mistral | Architecture::Ministral3 | Architecture::Mixtral => {
                self.sliding_window
            }
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
            experts,
            mla,
        })
    }

    /// DeepSeek-V3's experts (Mistral Large 3's: softmax router, no choice bias).
    fn deepseek_experts(&self, arch: Architecture) -> Result<Option<Experts>, ConfigError> {
        let invalid = |key, detail: String| ConfigError::Invalid { key, detail };
        let Some(count) = self.n_routed_experts.or(self.num_local_experts) else {
            return Ok(None);
        };
        let per_token = self.num_experts_per_tok.unwrap_or(8);
        if count == 0 || per_token == 0 || per_token > count {
            return Err(invalid(
                "num_experts_per_tok",
                format!("{per_token} must be between 1 and n_routed_experts = {count}"),
            ));
        }
        let intermediate = self
            .moe_intermediate_size
            .ok_or_else(|| invalid("moe_intermediate_size", "an MoE config needs it".into()))?;
        let (groups, topk_groups) = (self.n_group.unwrap_or(1), self.topk_group.unwrap_or(1));
        if groups == 0 || !count.is_multiple_of(groups) || topk_groups == 0 || topk_groups > groups
        {
            return Err(invalid(
                "n_group",
                format!(
                    "{groups} groups (topk_group {topk_groups}) must split {count} experts evenly"
                ),
            ));
        }
        if groups > 1 && count / groups < 2 {
            return Err(invalid(
                "n_group",
                "each group needs at least two experts".into(),
            ));
        }
        let sigmoid = match (arch, self.scoring_func.as_deref()) {
            (_, Some("sigmoid")) => true,
            (_, Some("softmax")) => false,
            (_, Some(other)) => {
                return Err(invalid(
                    "scoring_func",
                    format!("`{other}` is not supported (sigmoid, softmax)"),
                ));
            }
            (Architecture::DeepseekV3, None) => true,
            _ => false,
        };
        Ok(Some(Experts {
            count,
            per_token,
            intermediate,
            shared_intermediate: intermediate * self.n_shared_experts.unwrap_or(0),
            first_sparse_layer: self.first_k_dense_replace.unwrap_or(0),
            sigmoid,
            choice_bias: arch == Architecture::DeepseekV3,
            groups,
            topk_groups,
            normalize: self.norm_topk_prob.unwrap_or(true),
            routed_scale: self.routed_scaling_factor.unwrap_or(1.0),
        }))
    }

    /// MLA's widths, and its softmax scale (with YaRN, `mscale²` as transformers'
    /// `yarn_apply_mscale`: `0.1·mscale_all_dim·ln(factor) + 1`).
    fn mla(&self, rope: Option<&RopeScaling>) -> Result<Mla, ConfigError> {
        let need = |key: &'static str, v: Option<usize>| {
            v.filter(|&v| v > 0).ok_or_else(|| ConfigError::Invalid {
                key,
                detail: "multi-head latent attention needs it (a positive width)".into(),
            })
        };
        let (nope, rot) = (
            need("qk_nope_head_dim", self.qk_nope_head_dim)?,
            need("qk_rope_head_dim", self.qk_rope_head_dim)?,
        );
        if !rot.is_multiple_of(2) {
            return Err(ConfigError::Invalid {
                key: "qk_rope_head_dim",
                detail: format!("{rot} must be even"),
            });
        }
        let mut softmax_scale = 1.0 / ((nope + rot) as f64).sqrt();
        if let Some(s) = rope
            && s.rope_type != "default"
            && let Some(all) = s.mscale_all_dim.filter(|&m| m != 0.0)
        {
            let factor = s.factor.unwrap_or(1.0);
            let m = if factor <= 1.0 {
                1.0
            } else {
                0.1 * all * factor.ln() + 1.0
            };
            softmax_scale *= m * m;
        }
        Ok(Mla {
            q_lora_rank: self.q_lora_rank.filter(|&r| r > 0),
            kv_lora_rank: need("kv_lora_rank", self.kv_lora_rank)?,
            qk_nope: nope,
            qk_rope: rot,
            v: need("v_head_dim", self.v_head_dim)?,
            interleaved: self.rope_interleave.unwrap_or(true),
            softmax_scale,
        })
    }
}

impl ResolvedConfig {
    /// The projections of one decoder layer with their shapes: the one table the network, its
    /// loader, training and recipe checks read.
    pub fn layer_projections(&self, layer: usize) -> Vec<Projection> {
        let (h, q, kv, f) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        let p = |module: String, d_in: usize, d_out: usize, bias: bool| Projection {
            module,
            d_in,
            d_out,
            bias,
        };
        let mut out = Vec::new();
        match self.mla {
            Some(m) => {
                let heads = self.heads;
                let qk = heads * (m.qk_nope + m.qk_rope);
                match m.q_lora_rank {
                    Some(r) => {
                        out.push(p("self_attn.q_a_proj".into(), h, r, self.qkv_bias));
                        out.push(p("self_attn.q_b_proj".into(), r, qk, false));
                    }
                    None => out.push(p("self_attn.q_proj".into(), h, qk, false)),
                }
                let kv_a = m.kv_lora_rank + m.qk_rope;
                out.push(p(
                    "self_attn.kv_a_proj_with_mqa".into(),
                    h,
                    kv_a,
                    self.qkv_bias,
                ));
                let kv_b = heads * (m.qk_nope + m.v);
                out.push(p("self_attn.kv_b_proj".into(), m.kv_lora_rank, kv_b, false));
                out.push(p("self_attn.o_proj".into(), heads * m.v, h, self.qkv_bias));
            }
            None => {
                out.push(p("self_attn.q_proj".into(), h, q, self.qkv_bias));
                out.push(p("self_attn.k_proj".into(), h, kv, self.qkv_bias));
                out.push(p("self_attn.v_proj".into(), h, kv, self.qkv_bias));
                out.push(p("self_attn.o_proj".into(), q, h, false));
            }
        }
        let swiglu = |out: &mut Vec<Projection>, prefix: &str, names: [&str; 3], f: usize| {
            // In checkpoint order: Mixtral's w1 (gate), w2 (down), w3 (up); the others' gate,
            // up, down.
            for n in names {
                let down = n == "down_proj" || n == "w2";
                let (d_in, d_out) = if down { (f, h) } else { (h, f) };
                out.push(p(format!("{prefix}{n}"), d_in, d_out, self.mlp_bias));
            }
        };
        const GUD: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
        match self.experts {
            Some(e) if layer >= e.first_sparse_layer => {
                for i in 0..e.count {
                    match self.arch {
                        Architecture::Mixtral => swiglu(
                            &mut out,
                            &format!("block_sparse_moe.experts.{i}."),
                            ["w1", "w2", "w3"],
                            e.intermediate,
                        ),
                        _ => swiglu(&mut out, &format!("mlp.experts.{i}."), GUD, e.intermediate),
                    }
                }
                if e.shared_intermediate > 0 {
                    swiglu(&mut out, "mlp.shared_experts.", GUD, e.shared_intermediate);
                }
            }
            _ => swiglu(&mut out, "mlp.", GUD, f),
        }
        out
    }

    /// The router of layer `layer`'s experts (`None` for a dense layer): its module path.
    pub fn router(&self, layer: usize) -> Option<&'static str> {
        let e = self.experts?;
        (layer >= e.first_sparse_layer).then_some(match self.arch {
            Architecture::Mixtral => "block_sparse_moe.gate",
            _ => "mlp.gate",
        })
    }

    /// Parameters each token passes through: all of them for a dense model; for a mixture of
    /// experts, the `per_token` experts it is routed to (and the router), not every expert.
    pub fn active_parameters(&self) -> usize {
        let Some(e) = self.experts else {
            return self.num_parameters();
        };
        let expert = 3 * self.hidden * e.intermediate;
        let sparse = (0..self.layers)
            .filter(|&l| self.router(l).is_some())
            .count();
        self.num_parameters() - sparse * (e.count - e.per_token) * expert
    }

    /// Every projection by its full module name (`model.layers.0.self_attn.q_proj`, and
    /// `lm_head` when the output layer is not tied to the embedding), in checkpoint order.
    pub fn projections(&self) -> Vec<(String, Projection)> {
        let mut out: Vec<(String, Projection)> = (0..self.layers)
            .flat_map(|i| {
                self.layer_projections(i)
                    .into_iter()
                    .map(move |p| (format!("model.layers.{i}.{}", p.module), p))
            })
            .collect();
        if !self.tied_embeddings {
            let head = Projection {
                module: "lm_head".into(),
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
        let sparse = (0..self.layers)
            .filter(|&l| self.router(l).is_some())
            .count();
        let routers = self.experts.map_or(0, |e| {
            sparse * e.count * (self.hidden + usize::from(e.choice_bias))
        });
        let latent_norms = self.mla.map_or(0, |m| {
            self.layers * (m.kv_lora_rank + m.q_lora_rank.unwrap_or(0))
        });
        projections + norms + routers + latent_norms + self.vocab * self.hidden
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
        let table = r.layer_projections(0);
        let names: Vec<&str> = table.iter().map(|p| p.short()).collect();
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
    fn mixtral_lists_each_experts_projections_and_counts_active_parameters() {
        let mut c = base();
        c["model_type"] = "mixtral".into();
        c["num_local_experts"] = 4.into();
        c["num_experts_per_tok"] = 2.into();
        let r: ModelConfig = serde_json::from_value(c.clone()).unwrap();
        let r = r.resolve().unwrap();
        let table = r.layer_projections(1);
        assert_eq!(table.len(), 4 + 4 * 3);
        assert_eq!(table[4].module, "block_sparse_moe.experts.0.w1");
        assert_eq!(
            [table[5].d_in, table[5].d_out],
            [128, 64],
            "w2 is the down projection"
        );
        assert_eq!(table[15].module, "block_sparse_moe.experts.3.w3");
        // Two of four experts run per token: the other two experts' weights are inactive.
        let expert = 3 * 64 * 128;
        assert_eq!(r.num_parameters() - r.active_parameters(), 2 * 2 * expert);
        c["num_experts_per_tok"] = 5.into();
        let r: ModelConfig = serde_json::from_value(c.clone()).unwrap();
        assert!(
            r.resolve()
                .unwrap_err()
                .to_string()
                .contains("num_experts_per_tok")
        );
        c.as_object_mut().unwrap().remove("num_local_experts");
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        assert!(
            r.resolve()
                .unwrap_err()
                .to_string()
                .contains("num_local_experts")
        );
    }

    #[test]
    fn yarn_with_query_scaling_reads_either_spelling_of_its_type() {
        let mut c = base();
        c["model_type"] = "ministral3".into();
        c["rope_parameters"] = serde_json::json!({"type": "yarn", "rope_type": "yarn",
            "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.1});
        let r: ModelConfig = serde_json::from_value(c.clone()).unwrap();
        let s = r.resolve().unwrap().rope_scaling.unwrap();
        assert_eq!(
            (s.rope_type.as_str(), s.llama_4_scaling_beta),
            ("yarn", Some(0.1))
        );
        c["rope_parameters"]["factor"] = "sixteen".into();
        let r: ModelConfig = serde_json::from_value(c.clone()).unwrap();
        let e = r.resolve().unwrap_err().to_string();
        assert!(e.contains("rope_parameters") && e.contains("factor"), "{e}");
        c["rope_parameters"]["factor"] = 16.0.into();
        c["rope_parameters"]
            .as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
        let r: ModelConfig = serde_json::from_value(c).unwrap();
        let e = r.resolve().unwrap_err().to_string();
        assert!(e.contains("original_max_position_embeddings"), "{e}");
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
