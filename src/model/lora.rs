//! LoRA on the model's projections, the way PEFT computes it: `y = x·W + s·(drop(x)·A)·B`, with `A`
//! `[in, r]` random, `B` `[r, out]` zero at the start, and `s = alpha / r` (or `alpha / √r` with
//! rsLoRA). The base weight is never materialised with the update during training: the low-rank
//! path costs `r·(in + out)` per token instead of a weight-sized gradient.

use std::sync::Arc;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::quant::PackedMatrix;

/// A linear projection, with a LoRA adapter when one is attached.
#[derive(Module, Debug)]
pub struct Proj {
    pub linear: Linear,
    pub lora: Option<LoraAdapter>,
    /// The base weight in the quantised blocks it was loaded from (GGUF), which the CPU decode
    /// kernel reads instead of `linear`'s f32 copy. Dropped whenever the base weight changes.
    #[module(skip)]
    pub packed: Option<Arc<PackedMatrix>>,
}

impl Proj {
    pub fn new(linear: Linear) -> Self {
        Self {
            linear,
            lora: None,
            packed: None,
        }
    }

    /// `[in, out]` of the base weight.
    pub fn dims(&self) -> [usize; 2] {
        self.linear.weight.dims()
    }
}

/// The trainable low-rank pair of one projection.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[in, r]` (PEFT's `lora_A.weight` transposed).
    pub a: Param<Tensor<2>>,
    /// `[r, out]` (PEFT's `lora_B.weight` transposed).
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    /// Dropout on the adapter's input, applied only while training (on an autodiff device).
    pub dropout: f64,
}

impl LoraAdapter {
    /// An adapter from host data: `a` `[in * r]` and `b` `[r * out]`, row-major in burn's layout.
    pub fn from_host(
        a: Vec<f32>,
        b: Vec<f32>,
        dims: [usize; 3],
        scale: f64,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let [d_in, r, d_out] = dims;
        let t = |data: Vec<f32>, shape: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
        };
        Self {
            a: t(a, [d_in, r]),
            b: t(b, [r, d_out]),
            scale,
            dropout,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [bsz, s, d_in] = x.dims();
        let mut x = x.reshape([bsz * s, d_in]);
        if self.dropout > 0.0 && x.is_autodiff() {
            let keep = Tensor::<2>::random(
                x.dims(),
                Distribution::Bernoulli(1.0 - self.dropout),
                &x.device(),
            );
            x = x * keep / (1.0 - self.dropout);
        }
        let y = x.matmul(self.a.val()).matmul(self.b.val()) * self.scale;
        let d_out = y.dims()[1];
        y.reshape([bsz, s, d_out])
    }
}
