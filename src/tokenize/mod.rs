//! Tokenizers and chat templates, as the model ships them.

pub mod chat_template;
pub mod gguf_vocab;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use chat_template::{ChatTemplate, Message};

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// A model's tokenizer, special tokens and chat template.
pub struct ModelTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub template: Option<ChatTemplate>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Every id that ends generation (EOS from the tokenizer config and `generation_config.json`).
    pub eos_ids: Vec<u32>,
    /// The `tokenizer.json` document, kept so that conversion can write it unchanged.
    pub json: Value,
    /// The `tokenizer_config.json` document (special tokens, chat template).
    pub config: Value,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

/// `"<s>"` or `{"content": "<s>", ...}`, as tokenizer configs write special tokens.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` may be a string or a list of named templates; take "default" or the first.
fn template_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let pick = items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| items.first())?;
            pick.get("template")
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

impl ModelTokenizer {
    /// Build from the `tokenizer.json` and `tokenizer_config.json` documents; `origin` names them in errors.
    pub fn from_documents(
        json: Value,
        config: Value,
        template_override: Option<String>,
        extra_eos: &[u32],
        origin: &Path,
    ) -> Result<Self, TokenizeError> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(|e| {
                TokenizeError::File {
                    path: origin.to_path_buf(),
                    detail: format!("bad tokenizer: {e}"),
                }
            })?;
        let bos_token = token_text(config.get("bos_token"));
        let eos_token = token_text(config.get("eos_token"));
        let mut eos_ids: Vec<u32> = extra_eos.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let source = template_override.or_else(|| template_text(config.get("chat_template")));
        let template = source
            .map(|s| {
                ChatTemplate::new(
                    &s,
                    bos_token.as_deref().unwrap_or(""),
                    eos_token.as_deref().unwrap_or(""),
                )
            })
            .transpose()?;
        Ok(Self {
            inner,
            template,
            bos_token,
            eos_token,
            eos_ids,
            json,
            config,
        })
    }

    /// Load from a Hugging Face folder: `tokenizer.json`, `tokenizer_config.json`, optional
    /// `chat_template.jinja` and `generation_config.json`.
    pub fn from_folder(dir: &Path, config_eos: &[u32]) -> Result<Self, TokenizeError> {
        let read = |name: &str, required: bool| -> Result<Option<Value>, TokenizeError> {
            let path = dir.join(name);
            if !path.exists() {
                return if required {
                    Err(TokenizeError::File {
                        path,
                        detail: "missing: a model folder needs its tokenizer".into(),
                    })
                } else {
                    Ok(None)
                };
            }
            let text = std::fs::read_to_string(&path).map_err(|e| TokenizeError::File {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| TokenizeError::File {
                    path,
                    detail: e.to_string(),
                })
        };
        let json = read("tokenizer.json", true)?.expect("required");
        let config =
            read("tokenizer_config.json", false)?.unwrap_or(Value::Object(Default::default()));
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|e| TokenizeError::File {
                    path: jinja,
                    detail: e.to_string(),
                })?,
            )
        } else {
            None
        };
        let mut eos = config_eos.to_vec();
        if let Some(gen_cfg) = read("generation_config.json", false)? {
            eos.extend(crate::formats::hf::token_ids(gen_cfg.get("eos_token_id")));
        }
        Self::from_documents(json, config, template, &eos, &dir.join("tokenizer.json"))
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizeError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids and the byte offset in `text` where each token starts.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>), TokenizeError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        let starts = enc.get_offsets().iter().map(|(start, _)| *start).collect();
        Ok((enc.get_ids().to_vec(), starts))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizeError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))
    }

    /// The token that starts a text: BOS when the tokenizer has one, else the first EOS (what
    /// lm-evaluation-harness puts before a text it scores whole).
    pub fn bos_id(&self) -> u32 {
        self.bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
            .or_else(|| self.eos_ids.first().copied())
            .unwrap_or(0)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// What each token id writes, as bytes (None: a special token, which writes no text). Read
    /// from the vocabulary: byte-level BPE maps bytes to printable characters (GPT-2's table,
    /// inverted here); SentencePiece-style vocabularies write `▁` for a space and `<0xNN>` for
    /// a byte. This is what constrained decoding matches, so a token standing for part of a
    /// UTF-8 character keeps its raw byte (decoding it alone would give U+FFFD).
    pub fn token_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let byte_level = self
            .json
            .get("decoder")
            .is_some_and(|d| d.to_string().contains("\"ByteLevel\""));
        let mut unicode_to_byte = std::collections::HashMap::new();
        if byte_level {
            let mut n = 0u32;
            for b in 0..=255u8 {
                let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
                let c = if printable {
                    char::from(b)
                } else {
                    n += 1;
                    char::from_u32(255 + n).expect("a valid char")
                };
                unicode_to_byte.insert(c, b);
            }
        }
        // Added tokens: special ones write nothing, the others their text as it is.
        let added: std::collections::HashMap<u32, Option<Vec<u8>>> = self
            .json
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let id = t.get("id").and_then(Value::as_u64)? as u32;
                let special = t.get("special").and_then(Value::as_bool) == Some(true);
                let text = t.get("content").and_then(Value::as_str).map(str::as_bytes);
                Some((id, text.filter(|_| !special).map(<[u8]>::to_vec)))
            })
            .collect();
        let size = self.inner.get_vocab_size(true) as u32;
        (0..size)
            .map(|id| {
                if let Some(a) = added.get(&id) {
                    return a.clone();
                }
                let tok = self.inner.id_to_token(id)?;
                if byte_level {
                    return tok
                        .chars()
                        .map(|c| unicode_to_byte.get(&c).copied())
                        .collect();
                }
                if let Some(hex) = tok.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
                    && let Ok(b) = u8::from_str_radix(hex, 16)
                {
                    return Some(vec![b]);
                }
                Some(tok.replace('\u{2581}', " ").into_bytes())
            })
            .collect()
    }

    /// Render the chat template, or say plainly that the model has none.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizeError> {
        let t = self.template.as_ref().ok_or_else(|| {
            TokenizeError::Template(
                "this model ships no chat template; use --raw to send plain text".into(),
            )
        })?;
        t.render(messages, add_generation_prompt)
    }
}
