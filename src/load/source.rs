//! The seam between files and the network: a file-format source seen through the model's own
//! weight interface, GGUF blocks handed over as the decode kernel's matrices.

use crate::formats::TensorSource;
use crate::formats::gguf::blocks::BlockKind;
use crate::model::quant::{PackedMatrix, QuantKind};
use crate::model::{HostData, WeightError, WeightSource};

/// A [`TensorSource`] as the model reads it.
pub struct ModelWeights<'a>(pub &'a dyn TensorSource);

fn source_error(e: impl std::error::Error + Send + Sync + 'static) -> WeightError {
    WeightError::Source(Box::new(e))
}

impl WeightSource for ModelWeights<'_> {
    fn origin(&self) -> String {
        self.0.origin().display().to_string()
    }

    fn tensor(&self, name: &str) -> Result<Option<HostData>, WeightError> {
        let t = self.0.get(name).map_err(source_error)?;
        Ok(t.map(|t| HostData {
            shape: t.shape,
            data: t.data,
        }))
    }

    fn blocks(&self, name: &str) -> Result<Option<PackedMatrix>, WeightError> {
        let Some(b) = self.0.blocks(name).map_err(source_error)? else {
            return Ok(None);
        };
        let kind = match b.kind {
            BlockKind::Q4_0 => QuantKind::Q4_0,
            BlockKind::Q4_1 => QuantKind::Q4_1,
            BlockKind::Q8_0 => QuantKind::Q8_0,
        };
        PackedMatrix::from_parts(kind, [b.rows, b.cols], b.qs, b.d, b.m)
            .map(Some)
            .map_err(|detail| {
                source_error(crate::formats::FormatError::format(
                    self.0.origin(),
                    format!("tensor `{name}`: {detail}"),
                ))
            })
    }
}
