//! How the network reads its weights: by Hugging Face name from a source whose file format it
//! does not know, through prefixes, the way candle's `VarBuilder` does
//! (`vars.pp("model.layers.3").pp("mlp").matrix("up_proj.weight", [out, in])`). Every shape is
//! checked as it is read; errors name the source and the whole tensor name.

use std::sync::Arc;

use burn::prelude::*;

use super::quant::PackedMatrix;

/// A host tensor as the model receives it: f32, row-major, PyTorch shape order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What the network loads from: named tensors, and optionally their quantised blocks.
pub trait WeightSource {
    /// Where the tensors come from, for error messages.
    fn origin(&self) -> String;
    /// The tensor, or `None` when the source does not have it.
    fn tensor(&self, name: &str) -> Result<Option<HostData>, WeightError>;
    /// A 2-D tensor in quantised blocks the CPU decode kernel reads, when the source has them.
    fn blocks(&self, _name: &str) -> Result<Option<PackedMatrix>, WeightError> {
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{origin}: tensor `{name}` not found")]
    Missing { origin: String, name: String },
    #[error("{origin}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        origin: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// The source could not read the tensor (a file error, named by the source).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
}

/// A prefixed view of a [`WeightSource`] on a device.
#[derive(Clone)]
pub struct Vars<'a> {
    src: &'a dyn WeightSource,
    prefix: String,
    device: Device,
    /// Keep quantised blocks beside the f32 weights (the CPU decode kernel's operand).
    blocks: bool,
}

impl<'a> Vars<'a> {
    pub fn new(src: &'a dyn WeightSource, device: &Device) -> Self {
        Self {
            src,
            prefix: String::new(),
            device: device.clone(),
            blocks: false,
        }
    }

    /// Also read quantised blocks where the source has them.
    pub fn with_blocks(mut self, on: bool) -> Self {
        self.blocks = on;
        self
    }

    /// The same source under `prefix.` (`pp` as in candle: "push prefix").
    pub fn pp(&self, part: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The whole name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn host(&self, name: &str, shape: &[usize]) -> Result<HostData, WeightError> {
        let full = self.path(name);
        let t = self
            .src
            .tensor(&full)?
            .ok_or_else(|| WeightError::Missing {
                origin: self.src.origin(),
                name: full.clone(),
            })?;
        if t.shape != shape {
            return Err(WeightError::Shape {
                origin: self.src.origin(),
                name: full,
                found: t.shape,
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// A vector of `len` values.
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor<1>, WeightError> {
        let t = self.host(name, &[len])?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [len]),
            &self.device,
        ))
    }

    /// A `[rows, cols]` matrix, as stored.
    pub fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightError> {
        let t = self.host(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, shape),
            &self.device,
        ))
    }

    /// The quantised blocks of a `[rows, cols]` matrix, when asked for, the source has them and
    /// the device is the one the decode kernel serves (the CPU without autodiff).
    pub fn blocks(
        &self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<Arc<PackedMatrix>>, WeightError> {
        if !self.blocks || !super::cpu_kernels_apply(&self.device) {
            return Ok(None);
        }
        let full = self.path(name);
        match self.src.blocks(&full)? {
            Some(p) if [p.rows, p.cols] == shape => Ok(Some(Arc::new(p))),
            Some(p) => Err(WeightError::Shape {
                origin: self.src.origin(),
                name: full,
                found: vec![p.rows, p.cols],
                expected: shape.to_vec(),
            }),
            None => Ok(None),
        }
    }
}
