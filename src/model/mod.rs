//! The network in burn: configuration from `config.json` (with each architecture's table of
//! projections), attention (GQA, RoPE, KV cache), MLP, norms; weights read by name through
//! [`vars`], from a source whose file format the model does not know. Generic over the device:
//! nothing here assumes the CPU. The CPU gets extra kernels for decode-sized products (`kernels`:
//! f32; `quant`: quantised blocks; `spin`: their thread pool), taken only when a tensor is on
//! burn's CPU backend without autodiff; every other device runs burn's ops.

#[cfg(feature = "cpu")]
pub mod bf16;
pub mod blocks;
pub mod cache;
pub mod config;
#[cfg(feature = "cpu")]
pub mod fused;
#[cfg(feature = "cpu")]
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod mla;
pub mod moe;
pub mod quant;
pub mod rope;
pub mod spin;
#[cfg(feature = "cpu")]
pub mod strided;
pub mod vars;

pub use cache::KvCache;

/// Positions the RoPE tables cover at most (longer contexts are cut to this).
pub const MAX_ROPE_POSITIONS: usize = 32_768;

/// Whether the CPU kernels (`kernels`, `quant`) serve tensors on `device`: burn's CPU backend
/// without autodiff. Always false in a build without the `cpu` feature.
pub fn cpu_kernels_apply(device: &burn::prelude::Device) -> bool {
    #[cfg(feature = "cpu")]
    return kernels::applies(device);
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}
/// Whether this CPU multiplies bf16 weights natively (AVX-512 BF16, see `bf16`): there bf16 is
/// faster than f32, elsewhere burn's CPU backend multiplies bf16 through f32 copies.
pub fn native_bf16_cpu() -> bool {
    #[cfg(feature = "cpu")]
    return bf16::available();
    #[cfg(not(feature = "cpu"))]
    false
}

/// What the frozen base weights are stored and multiplied in. With `Bf16`, every projection's
/// weight and the embedding are bf16 (half the memory; tensor-core products on a GPU); each
/// product casts its input to bf16 and its output back, so LoRA adapters, AdamW's state, norms,
/// the activations between products and the loss stay f32 (Axolotl's `bf16` with PEFT's f32
/// adapters). Routers and norms keep f32 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub const NAMES: [&'static str; 2] = ["f32", "bf16"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype `{other}` (choose f32 or bf16)")),
        }
    }
}

/// `x · w` for a weight stored in any float dtype: `x` is cast to the weight's dtype for the
/// product and the result back to `x`'s (f32 activations around bf16 weights).
pub fn matmul_weight(
    x: burn::prelude::Tensor<2>,
    w: burn::prelude::Tensor<2>,
) -> burn::prelude::Tensor<2> {
    let (xd, wd) = (x.dtype(), w.dtype());
    if xd == wd {
        return x.matmul(w);
    }
    x.cast(wd).matmul(w).cast(xd)
}

pub use config::{Architecture, ModelConfig, Projection, ResolvedConfig};
pub use llama::{Batch, CausalLm};
pub use lora::{LoraAdapter, Proj};
pub use vars::{HostData, Vars, WeightError, WeightSource};
