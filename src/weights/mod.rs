//! Getting tensors in and out: Hugging Face folders (single or sharded safetensors), the Hub
//! cache through `hf-hub`, GGUF with dequantisation, and conversion between them.
//!
//! Everything here hands out host tensors named as in Hugging Face checkpoints
//! (`model.layers.0.self_attn.q_proj.weight`), in f32, row-major, PyTorch shape order.

pub mod adapter;
pub mod convert;
pub mod fetch;
pub mod gguf;
pub mod gguf_model;
pub mod hf_folder;
pub mod hub;
pub mod resolve;
pub mod store;

use std::path::{Path, PathBuf};

pub use store::{HostTensor, WeightSource};

/// Errors from reading or writing weights and model files. Each names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: key `{key}`: {detail}")]
    BadKey {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error("{path}: tensor `{name}` not found")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{tensor}` has type {dtype}, which switchyard cannot read (supported: {supported})"
    )]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        supported: &'static str,
    },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{0}")]
    Other(String),
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| WeightsError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| WeightsError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| WeightsError::io(path, e))?;
    // Temporary files are created 0600; a model folder is meant to be shared like any other file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| WeightsError::io(path, e.error))?;
    Ok(())
}
