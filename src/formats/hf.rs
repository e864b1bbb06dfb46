//! Hugging Face folder conventions that several readers share.

use std::path::Path;

use serde_json::Value;

/// A model folder is complete when its weights (written last) are there.
pub fn is_complete(dir: &Path) -> bool {
    dir.join("config.json").exists()
        && (dir.join("model.safetensors").exists()
            || dir.join("model.safetensors.index.json").exists())
}

/// Token ids as Hugging Face configs write them: `5`, `[5, 6]`, or absent.
pub fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}
