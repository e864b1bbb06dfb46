//! switchyard's integration tests: one binary (burn, polars and axum are linked once), one shared
//! context ([`common`]), a module per capability.
//!
//! Tests that need the real model fetch SmolLM2-135M-Instruct once, the way `models fetch` does;
//! tests where the real model is not the point use the tiny fixture models.

mod common;

mod bad_input;
mod catalog;
mod convert;
mod eval;
mod family;
mod gateway;
mod generate;
mod harness;
mod hub;
mod litellm;
mod lora;
mod models;
mod parity;
mod pipeline;
mod precision;
mod report;
mod route;
mod serve;
mod train;
#[cfg(feature = "wgpu")]
mod wgpu;
