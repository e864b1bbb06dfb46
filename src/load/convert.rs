//! GGUF → Hugging Face folder: `config.json`, `model.safetensors` (f32), `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`. transformers loads
//! the result unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::LoadError;
use super::files::ModelFiles;
use crate::formats::TensorSource;
use crate::formats::gguf::hf::GgufModel;
use crate::formats::shards::write_safetensors;
use crate::model::{ModelConfig, ResolvedConfig};
use crate::tokenize::gguf_vocab;
use crate::util::{FileError, write_atomic, write_json};

fn io_err(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::File(FileError::io(path, e))
}

/// What a Hugging Face folder holds besides its weights.
struct Documents {
    config: Value,
    tokenizer: Value,
    tokenizer_config: Value,
    chat_template: Option<String>,
    generation_config: Value,
}

/// Write a folder: its documents, then the weights of `source` as f32 safetensors. Files are
/// written atomically, the weights last (an old weights file is removed first), so an
/// interrupted write never leaves a folder that looks complete.
fn write_hf(
    out: &Path,
    docs: &Documents,
    source: &dyn TensorSource,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), LoadError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let weights_path = out.join("model.safetensors");
    if weights_path.exists() {
        std::fs::remove_file(&weights_path).map_err(|e| io_err(&weights_path, e))?;
    }
    write_json(&out.join("config.json"), &docs.config)?;
    write_json(&out.join("tokenizer.json"), &docs.tokenizer)?;
    write_json(&out.join("tokenizer_config.json"), &docs.tokenizer_config)?;
    if let Some(t) = &docs.chat_template {
        write_atomic(&out.join("chat_template.jinja"), t.as_bytes())?;
    }
    write_json(&out.join("generation_config.json"), &docs.generation_config)?;
    let names = source.names();
    let mut tensors = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len());
        if let Some(t) = source.get(name)? {
            tensors.insert(name.clone(), t);
        }
    }
    progress(names.len(), names.len());
    Ok(write_safetensors(&weights_path, &tensors)?)
}

/// A model config as `config.json`: unset keys left out, the architecture's class named.
fn config_document(
    config: &ModelConfig,
    resolved: &ResolvedConfig,
    path: &Path,
) -> Result<Value, LoadError> {
    let mut cfg = serde_json::to_value(config).map_err(|e| FileError::parse(path, e))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
        obj.insert("architectures".into(), json!([resolved.arch.class_name()]));
        obj.entry("hidden_act").or_insert(json!("silu"));
        obj.insert("torch_dtype".into(), json!("float32"));
        obj.entry("transformers_version").or_insert(json!("4.46.0"));
    }
    Ok(cfg)
}

/// Convert `gguf` into a Hugging Face folder at `out` (transformers loads it unchanged).
pub fn gguf_to_hf(
    gguf: &Path,
    out: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<(), LoadError> {
    let model = GgufModel::open(gguf)?;
    // Read as a model config (checked before anything is written), and written as one.
    let config: ModelConfig = serde_json::from_value(model.config()?).map_err(|e| {
        FileError::parse(gguf, format!("metadata does not form a model config: {e}"))
    })?;
    let resolved = config.resolve().map_err(|source| LoadError::Config {
        path: gguf.to_path_buf(),
        source,
    })?;
    let mut cfg = config_document(&config, &resolved, &out.join("config.json"))?;
    cfg["initializer_range"] = json!(0.02);
    cfg["use_cache"] = json!(true);
    let vocab = model.vocab()?;
    let tokenizer = gguf_vocab::tokenizer_json(&vocab).map_err(|source| LoadError::Tokenizer {
        path: gguf.to_path_buf(),
        source,
    })?;
    let mut gen_cfg = json!({"_from_model_config": true, "transformers_version": "4.46.0"});
    for (key, id) in [
        ("bos_token_id", vocab.bos_id),
        ("eos_token_id", vocab.eos_id),
        ("pad_token_id", vocab.pad_id),
    ] {
        if let Some(id) = id {
            gen_cfg[key] = id.into();
        }
    }
    let docs = Documents {
        config: cfg,
        tokenizer,
        tokenizer_config: gguf_vocab::tokenizer_config_json(&vocab),
        chat_template: vocab.chat_template.clone(),
        generation_config: gen_cfg,
    };
    write_hf(out, &docs, &model, progress)
}

/// Write any opened model (a folder, a GGUF file, or a base with an adapter merged in) as a
/// Hugging Face folder: config, f32 safetensors, tokenizer files, chat template.
pub fn write_folder(
    files: &ModelFiles,
    out: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<(), LoadError> {
    let tok = &files.tokenizer;
    let mut gen_cfg = json!({"_from_model_config": true, "transformers_version": "4.46.0"});
    match tok.eos_ids.as_slice() {
        [] => {}
        [one] => gen_cfg["eos_token_id"] = (*one).into(),
        many => gen_cfg["eos_token_id"] = json!(many),
    }
    let docs = Documents {
        config: config_document(&files.config, &files.resolved, &out.join("config.json"))?,
        tokenizer: tok.json.clone(),
        tokenizer_config: tok.config.clone(),
        chat_template: tok.template.as_ref().map(|t| t.source.clone()),
        generation_config: gen_cfg,
    };
    write_hf(out, &docs, files.source.as_ref(), progress)
}
