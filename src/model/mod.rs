//! The network in burn: configuration from `config.json`, attention (GQA, RoPE, KV cache), MLP,
//! norms. Generic over the device: nothing here assumes the CPU. The CPU gets extra kernels for
//! decode-sized products (`kernels`: f32; `quant`: GGUF blocks; `spin`: their thread pool), taken
//! only when a tensor is on burn's CPU backend without autodiff; every other device runs burn's ops.

pub mod cache;
pub mod config;
#[cfg(feature = "cpu")]
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod quant;
pub mod rope;
pub mod spin;

pub use cache::KvCache;
pub use config::{Architecture, ModelConfig, ResolvedConfig};
pub use llama::{Batch, CausalLm};
pub use lora::{LoraAdapter, Proj};
