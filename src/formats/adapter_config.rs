//! The parts of a PEFT LoRA adapter both its file layouts share: the config (`adapter_config.json`)
//! and one projection's factors. `adapter` reads and writes the folder; `adapter_experts` turns
//! expert pairs into PEFT's fused form and back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::HostTensor;

/// `target_modules`: a list of module names, or PEFT's `"all-linear"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

/// The fields of PEFT's `LoraConfig` that switchyard reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    /// Parameters (not modules) PEFT adapts: the fused experts of transformers 5 MoE models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<Vec<String>>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "none_bias")]
    pub bias: String,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub revision: Option<String>,
}

fn none_bias() -> String {
    "none".into()
}

impl AdapterConfig {
    /// A config for rank `r`, as PEFT would write it for these module names.
    pub fn new(r: usize, alpha: f64, dropout: f64, rslora: bool, targets: Vec<String>) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r,
            lora_alpha: alpha,
            lora_dropout: dropout,
            target_modules: TargetModules::List(targets),
            target_parameters: None,
            use_rslora: rslora,
            use_dora: false,
            fan_in_fan_out: false,
            bias: "none".into(),
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            inference_mode: true,
            init_lora_weights: serde_json::Value::Bool(true),
            revision: None,
        }
    }

    /// PEFT's scaling: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        lora_scale(self.lora_alpha, self.r, self.use_rslora)
    }
}

pub fn lora_scale(alpha: f64, r: usize, rslora: bool) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// One projection's factors in PEFT's shapes.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: HostTensor,
    /// `[out, r]`
    pub b: HostTensor,
}
