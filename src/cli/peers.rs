//! Where the Python peers (PyTorch + PEFT, transformers) live and which device they run on, for
//! `bench generate` and `bench train`.

use std::path::{Path, PathBuf};

/// A peer's Python script: from `$SWITCHYARD_SCRIPTS`, else `scripts/` beside the executable (as
/// the GPU bundle lays it out), else this source tree's `scripts/`.
pub(super) fn script(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_SCRIPTS") {
        return PathBuf::from(dir).join(name);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("scripts").join(name)))
        .filter(|p| p.is_file());
    beside.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name)
    })
}

/// The device PyTorch peers run on: CUDA when switchyard runs on CUDA, the CPU otherwise.
pub(super) fn torch_device(kind: crate::load::DeviceKind) -> &'static str {
    match kind {
        crate::load::DeviceKind::Cuda => "cuda",
        _ => "cpu",
    }
}
