//! From what a user typed (`--model`) to config, tensors and tokenizer: a GGUF file, a Hugging
//! Face folder, a Hub id `org/name[@rev]`, or a model's name in the models directory.

use std::path::{Path, PathBuf};

use super::gguf_model::GgufModel;
use super::hf_folder::{SafetensorsFolder, read_config};
use super::hub::{self, HubId};
use super::{WeightSource, WeightsError};
use crate::model::{ModelConfig, ResolvedConfig};
use crate::tokenize::{ModelTokenizer, gguf_vocab};

/// The default model: SmolLM2-135M-Instruct.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct";
pub const DEFAULT_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Where switchyard keeps its models: `$SWITCHYARD_HOME/models`, default `~/.cache/switchyard/models`.
pub fn models_dir() -> PathBuf {
    home_dir().join("models")
}

pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("SWITCHYARD_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("switchyard")
}

/// Everything a model needs, loaded but not yet on a device.
pub struct ModelFiles {
    /// What the user named, for messages.
    pub origin: String,
    /// The folder or file it resolved to.
    pub path: PathBuf,
    pub config: ModelConfig,
    /// The config checked and resolved (architecture chosen, defaults applied).
    pub resolved: ResolvedConfig,
    pub source: Box<dyn WeightSource>,
    pub tokenizer: ModelTokenizer,
    /// Decode on the CPU from the quantised blocks of a GGUF (llama.cpp's way, activations
    /// quantised to 8 bits) rather than from their f32 dequantisation (transformers' numbers).
    /// Off unless asked for (`--quantized`).
    pub quantized_decode: bool,
}

fn resolve_config(config: &ModelConfig, file: &Path) -> Result<ResolvedConfig, WeightsError> {
    config.resolve().map_err(|e| WeightsError::Format {
        path: file.to_path_buf(),
        detail: e.to_string(),
    })
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Format {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Open a Hugging Face folder.
pub fn open_folder(dir: &Path, origin: &str) -> Result<ModelFiles, WeightsError> {
    let config = read_config(dir)?;
    let resolved = resolve_config(&config, &dir.join("config.json"))?;
    let tokenizer =
        ModelTokenizer::from_folder(dir, &config.eos_ids()).map_err(|e| tok_err(dir, e))?;
    let source = Box::new(SafetensorsFolder::open(dir)?);
    Ok(ModelFiles {
        quantized_decode: false,
        origin: origin.into(),
        path: dir.to_path_buf(),
        config,
        resolved,
        source,
        tokenizer,
    })
}

/// Open a GGUF file.
pub fn open_gguf(path: &Path, origin: &str) -> Result<ModelFiles, WeightsError> {
    let model = GgufModel::open(path)?;
    let config = model.config()?;
    let resolved = resolve_config(&config, path)?;
    let vocab = model.vocab()?;
    let json = gguf_vocab::tokenizer_json(&vocab).map_err(|e| tok_err(path, e))?;
    let tcfg = gguf_vocab::tokenizer_config_json(&vocab);
    let tokenizer = ModelTokenizer::from_documents(json, tcfg, None, &config.eos_ids(), path)
        .map_err(|e| tok_err(path, e))?;
    Ok(ModelFiles {
        quantized_decode: false,
        origin: origin.into(),
        path: path.to_path_buf(),
        config,
        resolved,
        source: Box::new(model),
        tokenizer,
    })
}

impl ModelFiles {
    /// The same model with a PEFT adapter merged into its weights as they load.
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self, WeightsError> {
        let adapter = super::adapter::PeftAdapter::read(dir)?;
        let base = std::mem::replace(&mut self.source, Box::new(super::store::Empty));
        self.source = Box::new(super::adapter::MergedSource::new(base, adapter, dir)?);
        self.origin = format!("{} + {}", self.origin, dir.display());
        Ok(self)
    }
}

/// Resolve `spec` (None: the default model) to model files.
pub fn open(spec: Option<&str>) -> Result<ModelFiles, WeightsError> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let path = Path::new(spec);
    if path.is_file() {
        return open_gguf(path, spec);
    }
    if path.is_dir() {
        return open_folder(path, spec);
    }
    let named = models_dir().join(spec);
    if spec == DEFAULT_MODEL && !super::fetch::is_complete(&named) {
        // The default model is fetched on first use, as `models fetch` would.
        eprintln!(
            "{DEFAULT_MODEL} is not in {} yet: fetching it (once)…",
            models_dir().display()
        );
        let bar = indicatif::ProgressBar::new(0).with_message("converting");
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} tensors, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        super::fetch::fetch_default(super::fetch::FetchFrom::Auto, false, |i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
        })?;
        bar.finish_and_clear();
    }
    if named.is_dir() {
        return open_folder(&named, spec);
    }
    if let Some(id) = HubId::parse(spec) {
        let dir = hub::resolve(&id, None)?;
        return open_folder(&dir, spec);
    }
    let hint = if spec == DEFAULT_MODEL {
        "run `switchyard models fetch` first".to_string()
    } else {
        format!(
            "give a .gguf file, a model folder, a Hub id (org/name[@rev]) or a name in {}",
            models_dir().display()
        )
    };
    Err(WeightsError::Other(format!(
        "model `{spec}` not found: {hint}"
    )))
}
