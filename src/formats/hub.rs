//! The Hugging Face Hub through `hf-hub`: `org/name[@revision]` resolved through the standard
//! cache (`HF_HOME`), with `HF_TOKEN` and `HF_HUB_OFFLINE` honoured.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::FormatError;

/// The files a model folder may have; the first group is required.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// `org/name` or `org/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (ok(org) && ok(name) && !revision.is_empty()).then(|| Self {
            repo: repo.to_string(),
            revision,
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }
}

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Where files of a repo come from: the network (with the cache) or the cache alone.
enum Fetcher {
    Online(hf_hub::api::sync::ApiRepo),
    Offline(hf_hub::CacheRepo, Option<PathBuf>),
}

impl Fetcher {
    fn get(&self, file: &str) -> Result<Option<PathBuf>, String> {
        match self {
            // hf-hub looks revisions up in `refs/`; a commit hash names its snapshot folder directly.
            Fetcher::Offline(c, by_commit) => Ok(c.get(file).or_else(|| {
                by_commit
                    .as_ref()
                    .map(|d| d.join(file))
                    .filter(|p| p.exists())
            })),
            Fetcher::Online(api) => match api.get(file) {
                Ok(p) => Ok(Some(p)),
                Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

fn is_not_found(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Status(404, _))
}

/// Resolve a Hub model to a local snapshot folder holding its config, tokenizer and safetensors.
/// `cache_dir` overrides `HF_HOME`'s hub folder (tests use it).
pub fn resolve(id: &HubId, cache_dir: Option<&Path>) -> Result<PathBuf, FormatError> {
    let cache = match cache_dir {
        Some(d) => Cache::new(d.to_path_buf()),
        None => Cache::from_env(),
    };
    let fetcher = if offline() {
        let is_commit =
            id.revision.len() == 40 && id.revision.chars().all(|c| c.is_ascii_hexdigit());
        let snapshot = is_commit.then(|| {
            cache
                .path()
                .join(id.repo().folder_name())
                .join("snapshots")
                .join(&id.revision)
        });
        Fetcher::Offline(cache.repo(id.repo()), snapshot)
    } else {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_token(token)
            .with_progress(true)
            .build()
            .map_err(|e| FormatError::Hub {
                repo: id.repo.clone(),
                revision: id.revision.clone(),
                file: "(any)".into(),
                place: "the Hugging Face Hub".into(),
                detail: format!("hf-hub: {e}"),
            })?;
        Fetcher::Online(api.repo(id.repo()))
    };
    let where_ = || match &fetcher {
        Fetcher::Offline(..) => format!(
            "the Hub cache at {} (HF_HUB_OFFLINE is set)",
            cache.path().display()
        ),
        Fetcher::Online(_) => "the Hugging Face Hub".to_string(),
    };
    let fail = |file: &str, why: String| FormatError::Hub {
        repo: id.repo.clone(),
        revision: id.revision.clone(),
        file: file.to_string(),
        place: where_(),
        detail: why,
    };
    let mut snapshot = None;
    for file in REQUIRED {
        let p = fetcher
            .get(file)
            .map_err(|e| fail(file, e))?
            .ok_or_else(|| fail(file, "not found".into()))?;
        snapshot = p.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL {
        fetcher.get(file).map_err(|e| fail(file, e))?;
    }
    // Weights: a sharded index names its shards; otherwise one file.
    match fetcher
        .get("model.safetensors.index.json")
        .map_err(|e| fail("model.safetensors.index.json", e))?
    {
        Some(index) => {
            let v: serde_json::Value = crate::util::read_json(&index)?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                fetcher
                    .get(&s)
                    .map_err(|e| fail(&s, e))?
                    .ok_or_else(|| fail(&s, "not found".into()))?;
            }
        }
        None => {
            fetcher
                .get("model.safetensors")
                .map_err(|e| fail("model.safetensors", e))?
                .ok_or_else(|| {
                    fail(
                        "model.safetensors",
                        "not found (switchyard reads safetensors weights)".into(),
                    )
                })?;
        }
    }
    snapshot.ok_or_else(|| fail("config.json", "no snapshot folder".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_revisions() {
        assert_eq!(
            HubId::parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0"),
            Some(HubId {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: "v1.0".into()
            })
        );
        assert_eq!(HubId::parse("a/b").unwrap().revision, "main");
        assert_eq!(HubId::parse("./models/x"), None);
        assert_eq!(HubId::parse("no-slash"), None);
    }
}
