//! The run record: `record/` holds the exact files a run used (pipeline, recipe, suites), and
//! `record/record.json` the versions, seeds, the model's hash, the git commit and the stages'
//! fingerprints.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::Pipeline;
use super::stages::Stages;
use crate::load::LoadError;
use crate::train::LoadedRecipe;
use crate::util::{FileError, sha256_file, write_atomic, write_json};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Model(#[from] LoadError),
}

/// The output of `git ARGS` in the working directory, when git answers.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub fn write(
    out: &Path,
    pipeline: &Path,
    recipe: &Path,
    suites: &[PathBuf],
    p: &Pipeline,
    loaded: &LoadedRecipe,
    started: f64,
) -> Result<(), RecordError> {
    let dir = out.join("record");
    // A recipe and a suite may share a file name: each kind gets its own folder.
    let mut copied = Vec::new();
    for (sub, f) in std::iter::once(("", pipeline))
        .chain(std::iter::once(("recipe", recipe)))
        .chain(suites.iter().map(|x| ("suites", x.as_path())))
    {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let rel = Path::new(sub).join(&name);
        let bytes = std::fs::read(f).map_err(|e| FileError::io(f, e))?;
        write_atomic(&dir.join(&rel), &bytes)?;
        copied.push(rel.display().to_string());
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let files = crate::load::open(loaded.recipe.base_model.as_deref())?;
    let mut model_hash = serde_json::Map::new();
    let entries = std::fs::read_dir(&files.path).map_err(|e| FileError::io(&files.path, e))?;
    for entry in entries {
        let e = entry.map_err(|e| FileError::io(&files.path, e))?.path();
        if e.extension().is_some_and(|x| x == "safetensors") {
            let name = e.file_name().unwrap_or_default().to_string_lossy();
            model_hash.insert(name.to_string(), json!(sha256_file(&e)?));
        }
    }
    let v = json!({
        "pipeline": p.name,
        "started_at": started,
        "switchyard": env!("CARGO_PKG_VERSION"),
        "burn": "0.22.1",
        "machine": crate::machine::this(),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": dirty,
        "model": {"spec": loaded.recipe.base_model, "folder": files.path, "sha256": model_hash},
        "seeds": {"recipe": loaded.recipe.seed},
        "limit": p.limit,
        "stages": Stages::new(out, false).records(&["train", "eval", "route"]),
        "files": copied,
    });
    Ok(write_json(&dir.join("record.json"), &v)?)
}
