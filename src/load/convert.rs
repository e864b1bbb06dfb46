//! GGUF → Hugging Face folder: `config.json`, `model.safetensors` (f32), `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`. transformers loads
//! the result unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::LoadError;
use super::files::ModelFiles;
use crate::formats::TensorSource;
use crate::formats::gguf::hf::GgufModel;
use crate::formats::shards::write_safetensors;
use crate::model::ModelConfig;
use crate::tokenize::gguf_vocab;
use crate::util::{FileError, write_atomic, write_json};

fn io_err(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::File(FileError::io(path, e))
}

/// Convert `gguf` into a Hugging Face folder at `out`. Files are written atomically, the weights
/// last, so an interrupted conversion never leaves a folder that looks complete.
pub fn gguf_to_hf(
    gguf: &Path,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), LoadError> {
    let model = GgufModel::open(gguf)?;
    // Read as a model config (checked before anything is written), and written as one.
    let config: ModelConfig = serde_json::from_value(model.config()?).map_err(|e| {
        FileError::parse(gguf, format!("metadata does not form a model config: {e}"))
    })?;
    let mut cfg =
        serde_json::to_value(&config).map_err(|e| FileError::parse(&out.join("config.json"), e))?;
    let resolved = config.resolve().map_err(|source| LoadError::Config {
        path: gguf.to_path_buf(),
        source,
    })?;
    let vocab = model.vocab()?;
    let tok = gguf_vocab::tokenizer_json(&vocab).map_err(|source| LoadError::Tokenizer {
        path: gguf.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    // Drop an old weights file first: the folder is complete only when it is rewritten at the end.
    let weights_path = out.join("model.safetensors");
    if weights_path.exists() {
        std::fs::remove_file(&weights_path).map_err(|e| io_err(&weights_path, e))?;
    }
    if let Some(obj) = cfg.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
        obj.insert("architectures".into(), json!([resolved.arch.class_name()]));
        obj.insert("hidden_act".into(), json!("silu"));
        obj.insert("torch_dtype".into(), json!("float32"));
        obj.insert("transformers_version".into(), json!("4.46.0"));
        obj.insert("initializer_range".into(), json!(0.02));
        obj.insert("use_cache".into(), json!(true));
    }
    write_json(&out.join("config.json"), &cfg)?;
    write_json(&out.join("tokenizer.json"), &tok)?;
    write_json(
        &out.join("tokenizer_config.json"),
        &gguf_vocab::tokenizer_config_json(&vocab),
    )?;
    if let Some(t) = &vocab.chat_template {
        write_atomic(&out.join("chat_template.jinja"), t.as_bytes())?;
    }
    let mut gen_cfg = json!({"_from_model_config": true, "transformers_version": "4.46.0"});
    if let Some(b) = vocab.bos_id {
        gen_cfg["bos_token_id"] = b.into();
    }
    if let Some(e) = vocab.eos_id {
        gen_cfg["eos_token_id"] = e.into();
    }
    if let Some(p) = vocab.pad_id {
        gen_cfg["pad_token_id"] = p.into();
    }
    write_json(&out.join("generation_config.json"), &gen_cfg)?;

    let names = model.names();
    let mut tensors = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len());
        if let Some(t) = model.get(name)? {
            tensors.insert(name.clone(), t);
        }
    }
    progress(names.len(), names.len());
    Ok(write_safetensors(&weights_path, &tensors)?)
}

/// Write any opened model (a folder, a GGUF file, or a base with an adapter merged in) as a
/// Hugging Face folder: config, f32 safetensors, tokenizer files, chat template.
pub fn write_folder(
    files: &ModelFiles,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), LoadError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let weights_path = out.join("model.safetensors");
    if weights_path.exists() {
        std::fs::remove_file(&weights_path).map_err(|e| io_err(&weights_path, e))?;
    }
    let mut cfg = serde_json::to_value(&files.config)
        .map_err(|e| FileError::parse(&out.join("config.json"), e))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
        obj.insert(
            "architectures".into(),
            json!([files.resolved.arch.class_name()]),
        );
        obj.entry("hidden_act").or_insert(json!("silu"));
        obj.insert("torch_dtype".into(), json!("float32"));
        obj.entry("transformers_version").or_insert(json!("4.46.0"));
    }
    write_json(&out.join("config.json"), &cfg)?;
    let tok = &files.tokenizer;
    write_json(&out.join("tokenizer.json"), &tok.json)?;
    write_json(&out.join("tokenizer_config.json"), &tok.config)?;
    if let Some(t) = &tok.template {
        write_atomic(&out.join("chat_template.jinja"), t.source.as_bytes())?;
    }
    let mut gen_cfg = json!({"_from_model_config": true, "transformers_version": "4.46.0"});
    match tok.eos_ids.as_slice() {
        [] => {}
        [one] => gen_cfg["eos_token_id"] = (*one).into(),
        many => gen_cfg["eos_token_id"] = json!(many),
    }
    write_json(&out.join("generation_config.json"), &gen_cfg)?;
    let names = files.source.names();
    let mut tensors = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len());
        if let Some(t) = files.source.get(name)? {
            tensors.insert(name.clone(), t);
        }
    }
    progress(names.len(), names.len());
    Ok(write_safetensors(&weights_path, &tensors)?)
}
