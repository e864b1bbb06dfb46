//! The one interface every weights file offers: named host tensors, fetched lazily.

use std::path::Path;

use super::FormatError;
use super::gguf::blocks::Blocks;

/// A dense f32 tensor on the host, row-major, in PyTorch shape order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// Anything that can hand out Hugging Face-named tensors.
pub trait TensorSource: Send + Sync {
    /// The file or folder the tensors come from, for error messages.
    fn origin(&self) -> &Path;
    /// All tensor names, in Hugging Face naming.
    fn names(&self) -> Vec<String>;
    /// The tensor, or `None` when the source does not have it.
    fn get(&self, name: &str) -> Result<Option<HostTensor>, FormatError>;
    /// The source's storage dtype of a tensor, for `models inspect`.
    fn dtype_of(&self, name: &str) -> Option<String>;
    /// A 2-D tensor in its quantised storage (GGUF Q4_0/Q4_1/Q8_0 blocks); `None` when the
    /// source stores it otherwise (then only [`Self::get`] serves it).
    fn blocks(&self, _name: &str) -> Result<Option<Blocks>, FormatError> {
        Ok(None)
    }
}

/// A source with no tensors (a placeholder while another is moved out).
pub struct Empty;

impl TensorSource for Empty {
    fn origin(&self) -> &Path {
        Path::new("")
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn get(&self, _: &str) -> Result<Option<HostTensor>, FormatError> {
        Ok(None)
    }
    fn dtype_of(&self, _: &str) -> Option<String> {
        None
    }
}
