//! A model spec resolved to its files: a GGUF file, a Hugging Face folder, a Hub id
//! `org/name[@rev]` (through the Hub cache), or a model's name in the models directory. Opening
//! reads the config and tokenizer and maps the weights; nothing is fetched here.

use std::path::{Path, PathBuf};

use burn::prelude::Device;

use super::source::ModelWeights;
use super::{DEFAULT_MODEL, LoadError, models_dir};
use crate::formats::adapter::{MergedSource, PeftAdapter};
use crate::formats::gguf::hf::GgufModel;
use crate::formats::hub::{self, HubId};
use crate::formats::native::Renamed;
use crate::formats::shards::SafetensorsFolder;
use crate::formats::store::Empty;
use crate::formats::{TensorSource, hf};
use crate::model::{CausalLm, ModelConfig, ResolvedConfig, Vars};
use crate::tokenize::{ModelTokenizer, gguf_vocab};

/// Everything a model needs, read but not yet on a device.
pub struct ModelFiles {
    /// What the user named, for messages.
    pub origin: String,
    /// The folder or file it resolved to.
    pub path: PathBuf,
    pub config: ModelConfig,
    /// The config checked and resolved (architecture chosen, defaults applied).
    pub resolved: ResolvedConfig,
    pub source: Box<dyn TensorSource>,
    pub tokenizer: ModelTokenizer,
    /// Decode on the CPU from the quantised blocks of a GGUF (llama.cpp's way, activations
    /// quantised to 8 bits) rather than from their f32 dequantisation (transformers' numbers).
    /// Off unless asked for (`--quantized`).
    pub quantized_decode: bool,
    /// What the frozen base weights are stored and multiplied in (`--dtype`, a recipe's `bf16`).
    pub precision: crate::model::Precision,
}

fn resolve_config(config: &ModelConfig, file: &Path) -> Result<ResolvedConfig, LoadError> {
    config.resolve().map_err(|source| LoadError::Config {
        path: file.to_path_buf(),
        source,
    })
}

fn config_from(doc: serde_json::Value, file: &Path) -> Result<ModelConfig, LoadError> {
    serde_json::from_value(doc).map_err(|e| {
        crate::util::FileError::parse(file, format!("metadata does not form a model config: {e}"))
            .into()
    })
}

fn eos_ids(config: &ModelConfig) -> Vec<u32> {
    hf::token_ids(config.eos_token_id.as_ref())
}

/// Open a Hugging Face folder, or a folder in Mistral's own layout (`params.json` and
/// `consolidated*.safetensors`, no `config.json`).
pub fn open_folder(dir: &Path, origin: &str) -> Result<ModelFiles, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.exists() && dir.join("params.json").is_file() {
        return open_native(dir, origin);
    }
    let doc: serde_json::Value = crate::util::read_json(&config_path)?;
    let fp8 = fp8_blocks(&doc, &config_path)?;
    // A multimodal Mistral 3 checkpoint: its text part, under its own prefix.
    let multimodal = doc.get("model_type").and_then(|t| t.as_str()) == Some("mistral3");
    let text = match multimodal {
        true => doc.get("text_config").cloned().ok_or_else(|| {
            LoadError::from(crate::util::FileError::parse(
                &config_path,
                "a mistral3 config needs `text_config`",
            ))
        })?,
        false => doc,
    };
    let config = config_from(text, &config_path)?;
    let resolved = resolve_config(&config, &config_path)?;
    let folder = Box::new(SafetensorsFolder::open(dir)?.with_fp8_blocks(fp8));
    let source: Box<dyn TensorSource> = match multimodal {
        true => Box::new(Renamed::text_of_multimodal(folder)),
        false => folder,
    };
    let source: Box<dyn TensorSource> = match resolved.experts {
        Some(e) if Renamed::has_fused_experts(source.as_ref()) => {
            Box::new(Renamed::unfused_experts(source, e.count))
        }
        _ => source,
    };
    folder_files(dir, origin, config, resolved, source)
}

/// A folder's model files: its weights, resolved config, and the tokenizer beside them.
fn folder_files(
    dir: &Path,
    origin: &str,
    config: ModelConfig,
    resolved: ResolvedConfig,
    source: Box<dyn TensorSource>,
) -> Result<ModelFiles, LoadError> {
    let tokenizer = ModelTokenizer::from_folder(dir, &eos_ids(&config)).map_err(|source| {
        LoadError::Tokenizer {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    Ok(ModelFiles {
        quantized_decode: false,
        precision: crate::model::Precision::F32,
        origin: origin.into(),
        path: dir.to_path_buf(),
        config,
        resolved,
        source,
        tokenizer,
    })
}

/// The FP8 scale blocks `config.json` declares (`quantization_config.weight_block_size`); other
/// quantisation methods are refused by name.
fn fp8_blocks(doc: &serde_json::Value, path: &Path) -> Result<Option<[usize; 2]>, LoadError> {
    let Some(q) = doc.get("quantization_config") else {
        return Ok(None);
    };
    let bad = |detail: String| {
        LoadError::from(crate::util::FileError::parse(
            path,
            format!("quantization_config: {detail}"),
        ))
    };
    let method = q
        .get("quant_method")
        .and_then(|m| m.as_str())
        .unwrap_or("?");
    if !matches!(method, "fp8" | "compressed-tensors") {
        return Err(bad(format!(
            "quant_method `{method}` is not supported (supported: fp8, compressed-tensors FP8)"
        )));
    }
    let block = q
        .get("weight_block_size")
        .or_else(|| q.pointer("/config_groups/group_0/weights/block_structure"));
    match block {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(b) => match serde_json::from_value::<[usize; 2]>(b.clone()) {
            Ok([r, c]) if r > 0 && c > 0 => Ok(Some([r, c])),
            _ => Err(bad(format!(
                "weight_block_size {b} must be two positive integers"
            ))),
        },
    }
}

/// Open a folder in Mistral's own layout.
fn open_native(dir: &Path, origin: &str) -> Result<ModelFiles, LoadError> {
    let params_path = dir.join("params.json");
    let params: serde_json::Value = crate::util::read_json(&params_path)?;
    let doc = crate::formats::native::config_from_params(&params, &params_path)?;
    let config = config_from(doc, &params_path)?;
    let resolved = resolve_config(&config, &params_path)?;
    let files = Box::new(SafetensorsFolder::open_consolidated(dir)?);
    let source = Box::new(Renamed::mistral_native(
        files,
        resolved.heads,
        resolved.kv_heads,
        resolved.head_dim,
        resolved.mla.is_some(),
    ));
    folder_files(dir, origin, config, resolved, source)
}

/// Open a GGUF file.
pub fn open_gguf(path: &Path, origin: &str) -> Result<ModelFiles, LoadError> {
    let model = GgufModel::open(path)?;
    let config = config_from(model.config()?, path)?;
    let resolved = resolve_config(&config, path)?;
    let vocab = model.vocab()?;
    let tok_err = |source| LoadError::Tokenizer {
        path: path.to_path_buf(),
        source,
    };
    let json = gguf_vocab::tokenizer_json(&vocab).map_err(tok_err)?;
    let tcfg = gguf_vocab::tokenizer_config_json(&vocab);
    let tokenizer = ModelTokenizer::from_documents(json, tcfg, None, &eos_ids(&config), path)
        .map_err(tok_err)?;
    Ok(ModelFiles {
        quantized_decode: false,
        precision: crate::model::Precision::F32,
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
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self, LoadError> {
        let adapter = PeftAdapter::read(dir)?;
        let base = std::mem::replace(&mut self.source, Box::new(Empty));
        self.source = Box::new(MergedSource::new(base, adapter, dir)?);
        self.origin = format!("{} + {}", self.origin, dir.display());
        Ok(self)
    }

    /// The network on `device` (quantised blocks kept for decode when `quantized_decode`).
    pub fn model_on(&self, device: &Device) -> Result<CausalLm, LoadError> {
        let started = std::time::Instant::now();
        let weights = ModelWeights(self.source.as_ref());
        let vars = Vars::new(&weights, device).with_blocks(self.quantized_decode);
        let mut model = CausalLm::load(&self.resolved, &vars)?;
        if self.precision != crate::model::Precision::F32 {
            model.set_precision(self.precision);
        }
        tracing::debug!("loaded {} in {:.2?}", self.origin, started.elapsed());
        Ok(model)
    }
}

/// Resolve `spec` (None: the default model) to model files. The default model must have been
/// fetched (`switchyard models fetch`, or [`super::fetch::fetch_default`]).
pub fn open(spec: Option<&str>) -> Result<ModelFiles, LoadError> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let path = Path::new(spec);
    if path.is_file() {
        return open_gguf(path, spec);
    }
    if path.is_dir() {
        return open_folder(path, spec);
    }
    let named = models_dir().join(spec);
    // A half-fetched default model is not a model yet.
    if named.is_dir() && (spec != DEFAULT_MODEL || hf::is_complete(&named)) {
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
    Err(LoadError::NotFound {
        spec: spec.to_string(),
        hint,
    })
}
