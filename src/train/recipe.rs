//! Recipes: a training run in one TOML file, with keys Axolotl users know. Unknown keys, wrong
//! types and impossible values are errors that name the key and its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetSpec;
use crate::formats::adapter::TargetModules;
use crate::load::DeviceKind;
use crate::model::Architecture;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}:{line}: `{key}`: {detail}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        detail: String,
    },
}

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A .gguf file, a Hugging Face folder, a Hub id or a models-directory name (default: SmolLM2).
    #[serde(default)]
    pub base_model: Option<String>,
    pub datasets: Vec<DatasetSpec>,
    /// Held out for validation: a fraction (< 1) or a number of samples.
    #[serde(default)]
    pub val_set_size: f64,
    /// Train on prompts and user turns too (default: completions and assistant turns only).
    #[serde(default)]
    pub train_on_inputs: bool,
    #[serde(default = "d_seq")]
    pub sequence_len: usize,
    /// Pack several samples into each sequence (they never attend to each other).
    #[serde(default)]
    pub sample_packing: bool,

    #[serde(default = "d_adapter")]
    pub adapter: String,
    #[serde(default = "d_r")]
    pub lora_r: usize,
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (`q_proj`, `v_proj`, ...) or `"all-linear"`.
    #[serde(default = "d_targets", alias = "target_modules")]
    pub lora_target_modules: TargetModules,
    /// Axolotl's shorthand for every linear projection.
    #[serde(default)]
    pub lora_target_linear: bool,
    /// rsLoRA: scale by alpha/√r instead of alpha/r.
    #[serde(default, alias = "use_rslora")]
    pub peft_use_rslora: bool,

    #[serde(default = "d_one")]
    pub micro_batch_size: usize,
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: usize,
    #[serde(default = "d_epochs")]
    pub num_epochs: f64,
    /// Stop after this many optimiser steps (overrides `num_epochs`).
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    #[serde(default = "d_sched")]
    pub lr_scheduler: Schedule,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "d_b1")]
    pub adam_beta1: f64,
    #[serde(default = "d_b2")]
    pub adam_beta2: f64,
    #[serde(default = "d_eps")]
    pub adam_epsilon: f64,
    #[serde(default = "d_seed")]
    pub seed: u64,

    #[serde(default = "d_one")]
    pub logging_steps: usize,
    /// Validation loss every N steps (default: at the end only, when there is a validation set).
    #[serde(default)]
    pub eval_steps: Option<usize>,
    /// A checkpoint every N steps (default: at the end only).
    #[serde(default)]
    pub save_steps: Option<usize>,
    /// Keep at most this many checkpoints (oldest removed first).
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// Stop when validation loss has not improved for this many evaluations.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,

    pub output_dir: PathBuf,
    #[serde(default)]
    pub device: DeviceKind,
    /// Frozen base weights in bf16, adapters and AdamW in f32 (Axolotl's key): `true`, `false`
    /// (default) or `"auto"` (bf16 where it is faster: CUDA, and CPUs with AVX-512 BF16; f32
    /// elsewhere, where burn's CPU backend multiplies bf16 through f32 copies).
    #[serde(default)]
    pub bf16: Bf16,
}

/// A recipe's `bf16`: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16 {
    #[default]
    Off,
    On,
    Auto,
}

impl Bf16 {
    /// The base weights' precision on `device`.
    pub fn precision(self, device: DeviceKind) -> crate::model::Precision {
        use crate::model::Precision;
        match (self, device) {
            (Bf16::On, _) | (Bf16::Auto, DeviceKind::Cuda) => Precision::Bf16,
            (Bf16::Auto, DeviceKind::Cpu) if crate::model::native_bf16_cpu() => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

impl Serialize for Bf16 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bf16::Off => s.serialize_bool(false),
            Bf16::On => s.serialize_bool(true),
            Bf16::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Bf16 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("bf16 must be true, false or \"auto\""))?
        {
            Raw::Flag(true) => Ok(Bf16::On),
            Raw::Flag(false) => Ok(Bf16::Off),
            Raw::Word(w) if w == "auto" => Ok(Bf16::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "bf16 must be true, false or \"auto\", not \"{w}\""
            ))),
        }
    }
}

fn d_seq() -> usize {
    512
}
fn d_adapter() -> String {
    "lora".into()
}
fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_targets() -> TargetModules {
    TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
}
fn d_one() -> usize {
    1
}
fn d_epochs() -> f64 {
    1.0
}
fn d_lr() -> f64 {
    2e-4
}
fn d_sched() -> Schedule {
    Schedule::Cosine
}
fn d_clip() -> f64 {
    1.0
}
fn d_b1() -> f64 {
    0.9
}
fn d_b2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_seed() -> u64 {
    42
}

/// A recipe with the folder its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub path: PathBuf,
    pub text: String,
}

impl LoadedRecipe {
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<Self, RecipeError> {
        let recipe: Recipe = toml::from_str(&text).map_err(|e| RecipeError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })?;
        let loaded = Self {
            recipe,
            path: path.to_path_buf(),
            text,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// The folder relative paths are resolved from.
    pub fn base_dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// A path from the recipe, resolved against the recipe's folder, or the working directory
    /// when it exists there (recipes in `recipes/` name `datasets/...` from the repository root).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() || p.exists() {
            return p.to_path_buf();
        }
        let beside = self.base_dir().join(p);
        if beside.exists() {
            beside
        } else {
            p.to_path_buf()
        }
    }

    pub fn output_dir(&self) -> PathBuf {
        // Relative to the working directory, as in Axolotl (runs/ sits at the repository root).
        self.recipe.output_dir.clone()
    }

    /// The line a key is written on (1 when the key is absent and its default is at fault).
    pub fn line_of(&self, key: &str) -> usize {
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map_or(1, |i| i + 1)
    }

    fn invalid(&self, key: &str, detail: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            path: self.path.clone(),
            line: self.line_of(key),
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    /// The module names LoRA adapts (`all-linear`: every projection of the architectures'
    /// tables; those the model lacks match nothing).
    pub fn targets(&self) -> Vec<String> {
        let r = &self.recipe;
        let all = || {
            Architecture::any_linear_module()
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        match &r.lora_target_modules {
            _ if r.lora_target_linear => all(),
            TargetModules::One(s) if s == "all-linear" => all(),
            TargetModules::One(s) => vec![s.clone()],
            TargetModules::List(v) => v.clone(),
        }
    }

    fn validate(&self) -> Result<(), RecipeError> {
        let r = &self.recipe;
        if r.adapter != "lora" {
            return Err(self.invalid(
                "adapter",
                format!("`{}` is not supported; use \"lora\"", r.adapter),
            ));
        }
        if r.datasets.is_empty() {
            return Err(self.invalid("datasets", "at least one [[datasets]] entry is needed"));
        }
        for d in &r.datasets {
            if !(d.weight > 0.0 && d.weight.is_finite()) {
                return Err(
                    self.invalid("weight", format!("{} must be a positive number", d.weight))
                );
            }
        }
        let positive = [
            ("lora_r", r.lora_r),
            ("sequence_len", r.sequence_len),
            ("micro_batch_size", r.micro_batch_size),
            ("gradient_accumulation_steps", r.gradient_accumulation_steps),
            ("logging_steps", r.logging_steps),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            ("max_steps", r.max_steps),
            ("eval_steps", r.eval_steps),
            ("save_steps", r.save_steps),
            ("save_total_limit", r.save_total_limit),
            ("early_stopping_patience", r.early_stopping_patience),
        ] {
            if v == Some(0) {
                return Err(self.invalid(key, "must be at least 1 (leave it out to disable)"));
            }
        }
        if r.lora_alpha.is_nan() || r.lora_alpha <= 0.0 {
            return Err(self.invalid("lora_alpha", "must be > 0"));
        }
        if !(0.0..1.0).contains(&r.lora_dropout) {
            return Err(self.invalid("lora_dropout", "must be in [0, 1)"));
        }
        if !(r.learning_rate > 0.0 && r.learning_rate < 1.0) {
            return Err(self.invalid(
                "learning_rate",
                format!("{} must be in (0, 1)", r.learning_rate),
            ));
        }
        if (r.num_epochs.is_nan() || r.num_epochs <= 0.0) && r.max_steps.is_none() {
            return Err(self.invalid("num_epochs", "must be > 0 (or set max_steps)"));
        }
        if r.weight_decay < 0.0 {
            return Err(self.invalid("weight_decay", "must be >= 0"));
        }
        if r.max_grad_norm < 0.0 {
            return Err(self.invalid("max_grad_norm", "must be >= 0 (0 disables clipping)"));
        }
        for (key, v) in [("adam_beta1", r.adam_beta1), ("adam_beta2", r.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(self.invalid(key, "must be in [0, 1)"));
            }
        }
        if r.adam_epsilon.is_nan() || r.adam_epsilon <= 0.0 {
            return Err(self.invalid("adam_epsilon", "must be > 0"));
        }
        if r.val_set_size < 0.0 || (r.val_set_size >= 1.0 && r.val_set_size.fract() != 0.0) {
            return Err(self.invalid(
                "val_set_size",
                "a fraction in [0, 1) or a whole number of samples",
            ));
        }
        if let Some(w) = r.warmup_ratio
            && !(0.0..1.0).contains(&w)
        {
            return Err(self.invalid("warmup_ratio", "must be in [0, 1)"));
        }
        if r.warmup_steps.is_some() && r.warmup_ratio.is_some() {
            return Err(self.invalid("warmup_ratio", "set warmup_steps or warmup_ratio, not both"));
        }
        if r.early_stopping_patience.is_some() && r.val_set_size == 0.0 {
            return Err(self.invalid(
                "early_stopping_patience",
                "needs a validation set (val_set_size)",
            ));
        }
        let linear = Architecture::any_linear_module();
        if let TargetModules::One(s) = &r.lora_target_modules
            && s != "all-linear"
            && !linear.contains(&s.as_str())
        {
            return Err(self.invalid(
                "lora_target_modules",
                format!("`{s}`: give a list of module names or \"all-linear\""),
            ));
        }
        for t in self.targets() {
            // A short name (`q_proj`), or one whole module (`model.layers.3.mlp.experts.7.up_proj`).
            let short = crate::model::config::short_name(&t);
            if !linear.contains(&short) && short != "lm_head" {
                return Err(self.invalid(
                    "lora_target_modules",
                    format!("`{t}` is not a projection of this model family (choose from {}, lm_head, or \"all-linear\")", linear.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadedRecipe, RecipeError> {
        LoadedRecipe::parse(Path::new("r.toml"), text.to_string())
    }

    const OK: &str = "output_dir = \"out\"\n[[datasets]]\npath = \"d.jsonl\"\ntype = \"chat\"\n";

    #[test]
    fn defaults_fill_in() {
        let r = parse(OK).unwrap();
        assert_eq!(r.recipe.lora_r, 8);
        assert_eq!(r.targets(), vec!["q_proj", "v_proj"]);
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = parse(&format!("lora_rank = 4\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora_rank") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn impossible_values_name_key_and_line() {
        let e = parse(&format!("lora_dropout = 1.5\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:1: `lora_dropout`"), "{e}");
        let e = parse(&format!("lora_r = \"eight\"\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora_r") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn whole_module_names_are_targets_when_their_last_part_is_a_projection() {
        let ok = parse(&format!(
            "lora_target_modules = [\"q_proj\", \"model.layers.3.mlp.experts.7.up_proj\"]\n{OK}"
        ));
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
        let e = parse(&format!(
            "lora_target_modules = [\"model.layers.3.mlp.gate\"]\n{OK}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("model.layers.3.mlp.gate") && e.contains("lora_target_modules"),
            "{e}"
        );
    }

    #[test]
    fn all_linear_expands() {
        let r = parse(&format!("lora_target_modules = \"all-linear\"\n{OK}")).unwrap();
        // Every architecture's projections, each short name once: Llama's seven, Mixtral's
        // experts (w1, w2, w3) and MLA's four (q_a, q_b, kv_a, kv_b); not the routers.
        let t = r.targets();
        assert_eq!(t.len(), 14, "{t:?}");
        for name in [
            "q_proj",
            "down_proj",
            "w2",
            "kv_a_proj_with_mqa",
            "q_b_proj",
        ] {
            assert!(t.iter().any(|x| x == name), "{name} in {t:?}");
        }
        assert!(!t.iter().any(|x| x == "gate"), "routers stay frozen");
    }
}
