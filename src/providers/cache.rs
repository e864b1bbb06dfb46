//! The response cache: one JSON file per answered request, named by the SHA-256 of everything
//! that determines the answer (the provider's identity: endpoint, model, settings; the request:
//! messages and generation settings; the repeat index). A re-run or a resumed run finds its
//! answers here and sends no request twice. Files are written to a temporary name and renamed, so
//! a killed run leaves no half-written entry; several runs may share the cache.
//!
//! API keys are never part of a key or an entry: identities name the variable, not its value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ChatRequest, ChatResponse};

#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    response: ChatResponse,
}

impl ResponseCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default location: `$SWITCHYARD_HOME/cache/responses`.
    pub fn default_dir() -> PathBuf {
        crate::util::home_dir().join("cache").join("responses")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(identity: &serde_json::Value, req: &ChatRequest, repeat: u32) -> String {
        let material =
            serde_json::json!({ "v": 1, "target": identity, "request": req, "repeat": repeat });
        crate::util::sha256_hex(crate::util::canonical_json(&material).as_bytes())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The cached answer, if any. A corrupt entry counts as absent (and is overwritten later).
    pub fn get(&self, key: &str) -> Option<ChatResponse> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let e: Entry = serde_json::from_slice(&bytes).ok()?;
        (e.key == key).then_some(e.response)
    }

    pub fn put(&self, key: &str, response: &ChatResponse) -> std::io::Result<()> {
        let path = self.path(key);
        let bytes = serde_json::to_vec(&Entry {
            key: key.to_string(),
            response: response.clone(),
        })?;
        // Rename makes an entry all-or-nothing when a run is killed; no fsync per entry (a lost
        // entry after a power cut costs one request again, an fsync costs every request time).
        let dir = path.parent().expect("entry has a folder");
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, &bytes)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Message;

    #[test]
    fn keys_separate_what_changes_the_answer() {
        let id = serde_json::json!({"model": "a"});
        let mut req = ChatRequest {
            messages: vec![Message::new("user", "hi")],
            max_tokens: 8,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: vec![],
            raw: false,
            ..Default::default()
        };
        let k = ResponseCache::key(&id, &req, 0);
        assert_eq!(k, ResponseCache::key(&id, &req, 0));
        assert_ne!(k, ResponseCache::key(&id, &req, 1));
        assert_ne!(
            k,
            ResponseCache::key(&serde_json::json!({"model": "b"}), &req, 0)
        );
        req.max_tokens = 9;
        assert_ne!(k, ResponseCache::key(&id, &req, 0));

        let dir = tempfile::tempdir().unwrap();
        let c = ResponseCache::new(dir.path());
        assert!(c.get(&k).is_none());
        let r = ChatResponse {
            text: "hello".into(),
            prompt_tokens: Some(3),
            completion_tokens: Some(1),
            finish_reason: Some("stop".into()),
            ttft_s: Some(0.1),
            latency_s: 0.2,
            compute_s: None,
            model: None,
            ..Default::default()
        };
        c.put(&k, &r).unwrap();
        assert_eq!(c.get(&k), Some(r));
        std::fs::write(c.path(&k), b"{truncated").unwrap();
        assert!(c.get(&k).is_none());
    }
}
