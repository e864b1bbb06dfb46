//! The edge between files and tensors: choose a device, load a model onto it.

use std::time::Instant;

use burn::prelude::*;

use crate::generate::Engine;
use crate::model::CausalLm;
use crate::weights::WeightsError;
use crate::weights::resolve::{self, ModelFiles};

/// Where the model runs. `cpu` is burn's `flex` backend.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Wgpu,
}

impl DeviceKind {
    /// The burn device, or an error saying which cargo feature the binary lacks.
    pub fn device(self) -> Result<Device, String> {
        match self {
            #[cfg(feature = "cpu")]
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "this switchyard was built without the `{}` feature; rebuild with `--features {}`",
                other.feature(),
                other.feature()
            )),
        }
    }

    fn feature(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        }
    }
}

/// Set the CPU thread count once, before any tensor work (`None`: rayon's default, or `RAYON_NUM_THREADS`).
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Fails only when the pool already exists; then the first setting stands.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// Put loaded model files on a device.
pub fn engine_from_files(files: ModelFiles, device: &Device) -> Result<Engine, WeightsError> {
    let started = Instant::now();
    let model = CausalLm::load_with(
        &files.resolved,
        files.source.as_ref(),
        device,
        files.quantized_decode,
    )?;
    tracing::debug!("loaded {} in {:.2?}", files.origin, started.elapsed());
    Ok(Engine {
        model,
        tokenizer: files.tokenizer,
        device: device.clone(),
    })
}

/// Resolve and load a model (None: the default model).
pub fn load_engine(spec: Option<&str>, device: &Device) -> Result<Engine, WeightsError> {
    engine_from_files(resolve::open(spec)?, device)
}
