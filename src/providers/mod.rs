//! Providers: anything that answers a chat request. One trait, two kinds behind it: the burn
//! model in-process ([`local`]) and OpenAI-compatible HTTP endpoints ([`http`], with a table of
//! [`presets`]). Around them: retries with backoff that honour `Retry-After` ([`retry`]), rate
//! limits ([`limits`]) and a response cache ([`cache`]).
//!
//! A **target** ([`TargetSpec`], built into a [`Target`]) is a provider + model + settings: one
//! column of a comparison. [`Target::ask`] is the one door to it: a slot of its concurrency, its
//! rate limits, its retries, and streaming when asked; the eval runner and the gateway both go
//! through it.

pub mod cache;
pub mod catalog;
#[cfg(feature = "test-support")]
pub mod fault_server;
pub mod http;
pub mod limits;
pub mod load;
pub mod local;
pub mod presets;
pub mod retry;
pub mod target;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::tokenize::Message;
pub use target::{Target, TargetSpec, TargetsFile};

/// What a suite asks of a provider for one case.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub stop: Vec<String>,
    /// The single message's content is the whole prompt, sent without a chat template (a text
    /// completion: `/v1/completions` over HTTP).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub raw: bool,
    /// Log-probabilities of the generated tokens, with this many alternatives each.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logprobs: Option<usize>,
    /// A raw prompt's own tokens scored and sent back (OpenAI completions' `echo`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub echo: bool,
    /// Score every token of a raw prompt: the model's BOS token goes first (lm-eval's prefix
    /// token for rolling log-likelihood). The local model only; endpoints score from the second
    /// token.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub bos: bool,
    /// The answer's format (OpenAI `response_format`): JSON, or JSON that follows a schema.
    /// The local model enforces it by constrained decoding; endpoints receive it as it is.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response_format: Option<ResponseFormat>,
}

/// OpenAI's `response_format`, in its wire shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "any_schema")]
    pub schema: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

fn any_schema() -> serde_json::Value {
    serde_json::json!({})
}

impl ResponseFormat {
    /// The grammar that enforces it (None for plain text), or what cannot be enforced, named by
    /// its place in the request (`response_format.json_schema.schema.properties.id.pattern`).
    pub fn grammar(&self) -> Result<Option<crate::generate::constrain::Grammar>, String> {
        use crate::generate::constrain::Grammar;
        match self {
            ResponseFormat::Text => Ok(None),
            ResponseFormat::JsonObject => Ok(Some(Grammar::json_object())),
            ResponseFormat::JsonSchema { json_schema } => {
                if json_schema.name.is_empty()
                    || !json_schema
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    || json_schema.name.len() > 64
                {
                    return Err(format!(
                        "`response_format.json_schema.name`: `{}` must be 1 to 64 letters, digits, `_` or `-`",
                        json_schema.name
                    ));
                }
                Grammar::from_schema(&json_schema.schema)
                    .map(Some)
                    .map_err(|e| e.replacen("`schema", "`response_format.json_schema.schema", 1))
            }
        }
    }
}

/// A provider's answer, with what it cost in tokens and time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatResponse {
    pub text: String,
    /// Input tokens, as the provider counted them (None: it did not say).
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    /// Seconds from sending the request to the first token of text (streamed responses only).
    pub ttft_s: Option<f64>,
    /// Seconds from sending the request to the last byte of the answer.
    pub latency_s: f64,
    /// Machine seconds this request used, for targets priced by the hour (the local model: its
    /// batch's wall time divided by the batch size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_s: Option<f64>,
    /// The model the provider says answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The generated tokens' log-probabilities, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<crate::generate::TokenLogprob>>,
    /// The prompt's tokens scored (`echo`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<crate::generate::ScoredToken>>,
}

impl ChatResponse {
    /// Output tokens per second after the first token (the decode rate a user sees).
    pub fn output_tok_s(&self) -> Option<f64> {
        let n = self.completion_tokens? as f64;
        let span = self.latency_s - self.ttft_s.unwrap_or(0.0);
        (n > 1.0 && span > 0.0).then(|| (n - 1.0) / span)
    }
}

/// Why a provider gave no answer.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
pub enum ProviderError {
    /// The prompt does not fit the model's context.
    #[error("context length: {detail}")]
    ContextLength { detail: String },
    /// HTTP 429.
    #[error("HTTP 429: {body}")]
    RateLimited {
        body: String,
        retry_after_s: Option<f64>,
    },
    /// HTTP 401 or 403: a missing or refused key.
    #[error("HTTP {status}: {body}")]
    Auth { status: u16, body: String },
    /// A server error (HTTP 5xx, or an error event in a stream).
    #[error("HTTP {status}: {body}")]
    Server {
        status: u16,
        body: String,
        retry_after_s: Option<f64>,
    },
    /// Any other HTTP status (the request itself was refused).
    #[error("HTTP {status}: {body}")]
    Client {
        status: u16,
        body: String,
        retry_after_s: Option<f64>,
    },
    #[error("timed out after {0:.1} s")]
    Timeout(f64),
    /// Could not connect, or the connection broke.
    #[error("network: {0}")]
    Network(String),
    /// The server answered something that is not a valid chat completion (malformed JSON, a
    /// stream cut before its end).
    #[error("bad response: {0}")]
    Protocol(String),
    /// The target is misconfigured (missing API key, bad URL): retrying will not help.
    #[error("{0}")]
    Config(String),
    /// The local model failed.
    #[error("local model: {0}")]
    Local(String),
    /// The request asks for what this target cannot do (a schema constrained decoding cannot
    /// guarantee); `param` is the request's field, as OpenAI's errors name it.
    #[error("unsupported request: {detail}")]
    Unsupported { param: String, detail: String },
}

impl ProviderError {
    /// The error an HTTP status stands for; `body` is what the server said (its OpenAI-style
    /// `error.code` of `context_length_exceeded` marks a prompt that does not fit).
    pub fn from_status(status: u16, body: String, retry_after_s: Option<f64>) -> Self {
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/code")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            });
        match status {
            400 | 413 if code.as_deref() == Some("context_length_exceeded") => {
                ProviderError::ContextLength { detail: body }
            }
            429 => ProviderError::RateLimited {
                body,
                retry_after_s,
            },
            401 | 403 => ProviderError::Auth { status, body },
            500.. => ProviderError::Server {
                status,
                body,
                retry_after_s,
            },
            _ => ProviderError::Client {
                status,
                body,
                retry_after_s,
            },
        }
    }

    /// Worth trying again: rate limits, server errors, timeouts, broken connections and garbled
    /// responses; not refused requests (400, 401, 403, 404, 422), prompts too long, or
    /// configuration.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::RateLimited { .. }
            | ProviderError::Server { .. }
            | ProviderError::Timeout(_)
            | ProviderError::Network(_)
            | ProviderError::Protocol(_) => true,
            ProviderError::Client { status, .. } => matches!(status, 408 | 409 | 425),
            ProviderError::ContextLength { .. }
            | ProviderError::Auth { .. }
            | ProviderError::Config(_)
            | ProviderError::Unsupported { .. }
            | ProviderError::Local(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited {
                retry_after_s: Some(s),
                ..
            }
            | ProviderError::Server {
                retry_after_s: Some(s),
                ..
            }
            | ProviderError::Client {
                retry_after_s: Some(s),
                ..
            } => Some(Duration::from_secs_f64(s.max(0.0))),
            _ => None,
        }
    }

    /// The HTTP status this error carries, if it came from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::RateLimited { .. } => Some(429),
            ProviderError::Auth { status, .. }
            | ProviderError::Server { status, .. }
            | ProviderError::Client { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where a streamed answer's text goes as it arrives. Remembers whether anything was sent: a
/// request whose text has started cannot be retried without the client seeing it twice.
#[derive(Debug, Clone)]
pub struct Deltas {
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    started: Arc<AtomicBool>,
}

impl Deltas {
    pub fn new(tx: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        Self {
            tx,
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Pass on a piece of text (empty pieces are dropped).
    pub fn send(&self, text: &str) {
        if !text.is_empty() {
            self.started.store(true, Ordering::SeqCst);
            let _ = self.tx.send(text.to_string());
        }
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }
}

/// What asking a target came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: Result<ChatResponse, ProviderError>,
    /// Requests sent (1 + retries; 0 when answered from a cache).
    pub attempts: u32,
    /// Seconds spent waiting: backoff and rate limits.
    pub waited_s: f64,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Anything that answers a chat request; with `deltas`, the text is passed on as it is
/// generated.
pub trait Provider: Send + Sync {
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<&'a Deltas>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;

    /// What identifies this provider's answers in the response cache: endpoint, model and every
    /// setting that changes the output. Never a secret.
    fn identity(&self) -> serde_json::Value;
}
