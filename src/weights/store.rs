//! The one interface the model loader reads: named host tensors, fetched lazily.

use std::path::Path;

use super::WeightsError;

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
pub trait WeightSource {
    /// The file or folder the tensors come from, for error messages.
    fn origin(&self) -> &Path;
    /// All tensor names, in Hugging Face naming.
    fn names(&self) -> Vec<String>;
    /// The tensor, or `None` when the source does not have it.
    fn get(&self, name: &str) -> Result<Option<HostTensor>, WeightsError>;
    /// The source's storage dtype of a tensor, for `models inspect`.
    fn dtype_of(&self, name: &str) -> Option<String>;
    /// A 2-D tensor in its quantised storage (GGUF Q4_0/Q4_1/Q8_0 blocks), for the CPU decode
    /// kernel; `None` when the source stores it otherwise (then only [`Self::get`] serves it).
    fn get_packed(
        &self,
        _name: &str,
    ) -> Result<Option<crate::model::quant::PackedMatrix>, WeightsError> {
        Ok(None)
    }

    /// The tensor, which must exist and have `shape`.
    fn require(&self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        let t = self.get(name)?.ok_or_else(|| WeightsError::MissingTensor {
            path: self.origin().to_path_buf(),
            name: name.to_string(),
        })?;
        if t.shape != shape {
            return Err(WeightsError::Shape {
                path: self.origin().to_path_buf(),
                tensor: name.to_string(),
                found: t.shape,
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }
}

/// A source with no tensors (a placeholder while another is moved out).
pub struct Empty;

impl WeightSource for Empty {
    fn origin(&self) -> &Path {
        Path::new("")
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
    fn get(&self, _: &str) -> Result<Option<HostTensor>, WeightsError> {
        Ok(None)
    }
    fn dtype_of(&self, _: &str) -> Option<String> {
        None
    }
}
