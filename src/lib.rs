//! switchyard: should a workload run on an open-weight model you tune and host, or on a hosted
//! provider, and which one? Load → fine-tune → evaluate → route, measured.
//!
//! The crate is laid out by pipeline stage, in layers; a module imports only from the layers
//! below it (see the README for the map):
//!
//! - [`util`]: atomic writes, JSON files, hashing, the clock, the home folder, interrupts.
//! - [`formats`]: GGUF, safetensors, Hugging Face folders and the Hub, PEFT adapters.
//! - [`model`]: the network in burn; reads weights through a trait of its own.
//! - [`tokenize`]: tokenizers and chat templates.
//! - [`load`]: a model spec resolved to files and built on a device; fetching when asked.
//! - [`generate`], [`data`]: generation; datasets for training.
//! - [`train`], [`providers`]: LoRA fine-tuning; anything that answers a chat request.
//! - [`eval`], [`route`], [`report`], [`serve`], [`pipeline`]: evals, routing policies, reports,
//!   the OpenAI-compatible server and gateway, and the main job in one process.
//! - [`cli`]: the `switchyard` command, on top of everything.

/// The `switchyard` command line; `src/main.rs` (and the offline CUDA build in `gpu/`) call its `main`.
pub mod cli;
pub mod data;
pub mod eval;
pub mod formats;
pub mod generate;
pub mod load;
pub mod machine;
pub mod model;
pub mod pipeline;
pub mod providers;
pub mod report;
pub mod route;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod util;
