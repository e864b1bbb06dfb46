//! Where the model runs: burn's `flex` CPU backend, CUDA or wgpu, and the CPU thread count.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

/// Where the model runs. `cpu` is burn's `flex` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Wgpu,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this switchyard was built without the `{0}` feature; rebuild with `--features {0}`")]
    MissingFeature(&'static str),
    #[error("unknown device `{0}` (choose cpu, cuda or wgpu)")]
    Unknown(String),
}

impl DeviceKind {
    pub const NAMES: [&'static str; 3] = ["cpu", "cuda", "wgpu"];

    /// The burn device, or an error saying which cargo feature the binary lacks.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            #[cfg(feature = "cpu")]
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            other => Err(DeviceError::MissingFeature(other.name())),
        }
    }

    /// The name on the command line, in files, and of the cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            "wgpu" => Ok(DeviceKind::Wgpu),
            other => Err(DeviceError::Unknown(other.to_string())),
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
