//! The pieces every decoder is built from, whatever its attention and MLP: RMSNorm, the SwiGLU
//! MLP, and the projections (`x · W (+ b)` with its LoRA adapter), with the CPU's kernels for
//! them (decode-sized products, quantised blocks, the fused training and prompt ops); and what
//! the layers of one forward pass share. `llama` (GQA attention, the network), `mla` and `moe`
//! build on them.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;

use super::lora::Proj;
use super::quant::PackedMatrix;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        #[cfg(feature = "cpu")]
        if super::fused::applies(&x) {
            return super::fused::rms_norm(x, self.weight.val(), self.eps);
        }
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        let x = x * (var + self.eps).sqrt().recip();
        x * self.weight.val().unsqueeze()
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Proj,
    pub up_proj: Proj,
    pub down_proj: Proj,
}

/// `x · W (+ b)` plus the LoRA adapter's update, if the projection has one.
pub(super) fn project(p: &Proj, x: Tensor<3>) -> Tensor<3> {
    project_many(&[p], x).pop().expect("one projection")
}

/// Several projections of the same input. Decode-sized inputs on the CPU take a kernel: the
/// quantised one when every projection kept its GGUF blocks (all of them in one parallel region),
/// else the f32 small-matmul kernel.
pub(super) fn project_many(ps: &[&Proj], x: Tensor<3>) -> Vec<Tensor<3>> {
    let Some(base) = quantized(ps, &x) else {
        return ps.iter().map(|p| project_one(p, x.clone())).collect();
    };
    base.into_iter()
        .zip(ps)
        .map(|(y, p)| match &p.lora {
            Some(lora) => y + lora.forward(x.clone()),
            None => y,
        })
        .collect()
}

/// One projection of `x` and its adapter. Training and prompts on the CPU take the fused
/// kernel: the adapter's product accumulates into the projection's output, and its backward
/// pass is a handful of products, without the element-wise scale and sum in between.
fn project_one(p: &Proj, x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "cpu")]
    if let Some(lora) = &p.lora
        && super::fused::applies(&x)
        && super::fused::weight_applies(p.linear.weight.dtype())
        && (lora.dropout == 0.0 || !x.is_autodiff())
    {
        let [b, s, k] = x.dims();
        if x.is_autodiff() || b * s > super::kernels::MAX_ROWS {
            let n = p.linear.weight.dims()[1];
            let y = super::fused::lora_linear(
                x.reshape([b * s, k]),
                p.linear.weight.val(),
                lora.a.val(),
                lora.b.val(),
                lora.scale,
            )
            .reshape([b, s, n]);
            return match &p.linear.bias {
                Some(bias) => y + bias.val().unsqueeze(),
                None => y,
            };
        }
    }
    let y = dense(&p.linear, x.clone());
    match &p.lora {
        Some(lora) => y + lora.forward(x),
        None => y,
    }
}

/// `x · W (+ b)` for each projection from its quantised blocks, when all of them have blocks and
/// `x` is a few rows on the CPU.
fn quantized(ps: &[&Proj], x: &Tensor<3>) -> Option<Vec<Tensor<3>>> {
    let [b, s, k] = x.dims();
    if b * s > super::quant::MAX_ROWS || !super::cpu_kernels_apply(&x.device()) {
        return None;
    }
    let mats: Vec<&PackedMatrix> = ps
        .iter()
        .map(|p| p.packed.as_deref())
        .collect::<Option<_>>()?;
    let ys = packed_products(&mats, x.clone().reshape([b * s, k]));
    Some(
        ys.into_iter()
            .zip(ps.iter().zip(&mats))
            .map(|(y, (p, w))| {
                let y = y.reshape([b, s, w.rows]);
                match &p.linear.bias {
                    Some(bias) => y + bias.val().unsqueeze(),
                    None => y,
                }
            })
            .collect(),
    )
}

/// `x [m, k] · W_jᵀ` for quantised matrices, on the host (`m` ≤ [`super::quant::MAX_ROWS`]).
pub(super) fn packed_products(mats: &[&PackedMatrix], x: Tensor<2>) -> Vec<Tensor<2>> {
    let m = x.dims()[0];
    let device = x.device();
    let host = x.to_data().try_into_vec::<f32>().expect("f32 activations");
    super::quant::matmul_many(mats, &host, m)
        .into_iter()
        .zip(mats)
        .map(|(y, w)| Tensor::from_data(TensorData::new(y, [m, w.rows]), &device))
        .collect()
}

/// `x · W (+ b)`: decode-sized inputs on the CPU take the small-matmul kernel.
pub(super) fn dense(l: &Linear, x: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "cpu")]
    {
        let [b, s, k] = x.dims();
        if super::kernels::applies(&x.device()) && l.weight.dtype() == DType::F32 {
            let w = l.weight.val();
            let n = w.dims()[1];
            let y = super::kernels::small_matmul(x.reshape([b * s, k]), w).reshape([b, s, n]);
            return match &l.bias {
                Some(bias) => y + bias.val().unsqueeze(),
                None => y,
            };
        }
    }
    // One `[b·s, k] · [k, n]` product rather than `b` broadcast ones: the weight is packed once
    // and gemm splits the rows over every thread (the batched form packs it per batch row).
    let [b, s, k] = x.dims();
    let n = l.weight.dims()[1];
    // Training on the CPU: the fused product reads the weight in place, forward and backward,
    // and keeps the input for the backward pass only when the weight itself is trained. bf16
    // weights take it always (the AVX-512 BF16 kernel; burn's would convert them to f32).
    #[cfg(feature = "cpu")]
    if super::fused::applies(&x)
        && super::fused::weight_applies(l.weight.dtype())
        && (x.is_autodiff() || l.weight.dtype() == DType::BF16)
    {
        let y = super::fused::linear(x.reshape([b * s, k]), l.weight.val()).reshape([b, s, n]);
        return match &l.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        };
    }
    let y = super::matmul_weight(x.reshape([b * s, k]), l.weight.val()).reshape([b, s, n]);
    match &l.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

impl Mlp {
    pub(super) fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [gate, up]: [Tensor<3>; 2] = project_many(&[&self.gate_proj, &self.up_proj], x)
            .try_into()
            .expect("two projections");
        #[cfg(feature = "cpu")]
        if super::fused::applies(&gate) {
            return project(&self.down_proj, super::fused::silu_mul(gate, up));
        }
        project(&self.down_proj, silu(gate) * up)
    }
}

/// What every layer of one forward pass shares: RoPE tables, the queries' scale (Llama 4's, per
/// position, `[batch, seq, 1]`) and the attention mask.
pub(super) struct Shared<'a> {
    pub cos: &'a Tensor<4>,
    pub sin: &'a Tensor<4>,
    pub query_scale: Option<&'a Tensor<3>>,
    pub mask: &'a Tensor<4>,
}
