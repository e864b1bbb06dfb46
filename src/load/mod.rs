//! From what a user typed (`--model`) to a network on a device: resolve the spec to files
//! ([`files`]), read config, tensors and tokenizer, and build the model through the model's own
//! weight interface ([`source`]). Choosing the device ([`device`]), converting GGUF to a Hugging
//! Face folder ([`convert`]) and fetching the default model ([`fetch`]) live here too; nothing
//! here fetches unless asked to.

pub mod convert;
pub mod device;
pub mod fetch;
pub mod files;
pub mod source;

use std::path::PathBuf;

pub use device::{DeviceError, DeviceKind, set_threads};
pub use files::{ModelFiles, open};

use crate::formats::FormatError;
use crate::model::WeightError;
use crate::model::config::ConfigError;
use crate::tokenize::TokenizeError;
use crate::util::FileError;

/// The default model: SmolLM2-135M-Instruct.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct";
pub const DEFAULT_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Where switchyard keeps its models: `$SWITCHYARD_HOME/models`, default `~/.cache/switchyard/models`.
pub fn models_dir() -> PathBuf {
    crate::util::home_dir().join("models")
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizeError,
    },
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("model `{spec}` not found: {hint}")]
    NotFound { spec: String, hint: String },
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}
