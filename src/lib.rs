//! switchyard: should a workload run on an open-weight model you tune and host, or on a hosted
//! provider, and which one? Load → fine-tune → evaluate → route, measured.
//!
//! The crate is laid out by pipeline stage; see the README for the map.

pub mod data;
pub mod eval;
pub mod generate;
pub mod model;
pub mod providers;
pub mod report;
pub mod route;
pub mod runtime;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod weights;
