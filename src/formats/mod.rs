//! File formats, and nothing of the model: GGUF (metadata, tensor directory, quantised blocks),
//! safetensors (single or sharded), Hugging Face folders and the Hub cache through `hf-hub`, and
//! PEFT adapters.
//!
//! Everything here hands out host tensors named as in Hugging Face checkpoints
//! (`model.layers.0.self_attn.q_proj.weight`), in f32, row-major, PyTorch shape order; quantised
//! GGUF weights are also available as their decoded blocks ([`gguf::blocks`]).

pub mod adapter;
pub mod adapter_config;
pub mod adapter_experts;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod native;
pub mod shards;
pub mod store;

use std::path::{Path, PathBuf};

pub use store::{HostTensor, TensorSource};

use crate::util::FileError;

/// Errors from reading or writing model files. Each names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    File(#[from] FileError),
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
    /// A file of a Hub repository that could not be had.
    #[error("{repo}@{revision}: cannot get `{file}` from {place}: {detail}")]
    Hub {
        repo: String,
        revision: String,
        file: String,
        place: String,
        detail: String,
    },
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::File(FileError::io(path, source))
    }

    pub fn format(path: &Path, detail: impl std::fmt::Display) -> Self {
        FormatError::Format {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }
}
