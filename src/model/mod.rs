//! The network in burn: configuration from `config.json` (with each architecture's table of
//! projections), attention (GQA, RoPE, KV cache), MLP, norms; weights read by name through
//! [`vars`], from a source whose file format the model does not know. Generic over the device:
//! nothing here assumes the CPU. The CPU gets extra kernels for decode-sized products (`kernels`:
//! f32; `quant`: quantised blocks; `spin`: their thread pool), taken only when a tensor is on
//! burn's CPU backend without autodiff; every other device runs burn's ops.

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
pub use config::{Architecture, ModelConfig, Projection, ResolvedConfig};
pub use llama::{Batch, CausalLm};
pub use lora::{LoraAdapter, Proj};
pub use vars::{HostData, Vars, WeightError, WeightSource};
