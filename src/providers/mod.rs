//! Providers: anything that answers a chat request. One trait, two kinds behind it: the burn
//! model in-process ([`local`]) and OpenAI-compatible HTTP endpoints ([`http`], with a table of
//! [`presets`]). Around them: retries with backoff that honour `Retry-After` ([`retry`]), rate
//! limits ([`limits`]) and a response cache ([`cache`]).
//!
//! A **target** ([`TargetSpec`]) is a provider + model + settings: one column of a comparison.

pub mod cache;
pub mod fault_server;
pub mod http;
pub mod limits;
pub mod local;
pub mod presets;
pub mod retry;
pub mod target;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::tokenize::Message;
pub use target::{Target, TargetSpec};

/// What a suite asks of a provider for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub stop: Vec<String>,
}

/// A provider's answer, with what it cost in tokens and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl ChatResponse {
    /// Output tokens per second after the first token (the decode rate a user sees).
    pub fn output_tok_s(&self) -> Option<f64> {
        let n = self.completion_tokens? as f64;
        let span = self.latency_s - self.ttft_s.unwrap_or(0.0);
        (n > 1.0 && span > 0.0).then(|| (n - 1.0) / span)
    }
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
pub enum ProviderError {
    /// A non-success HTTP status.
    #[error("HTTP {status}: {body}")]
    Status {
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
}

impl ProviderError {
    /// Worth trying again: rate limits, server errors, timeouts, broken connections and garbled
    /// responses; not client errors (400, 401, 403, 404, 422) or configuration.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || *status >= 500
            }
            ProviderError::Timeout(_) | ProviderError::Network(_) | ProviderError::Protocol(_) => {
                true
            }
            ProviderError::Config(_) | ProviderError::Local(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status {
                retry_after_s: Some(s),
                ..
            } => Some(Duration::from_secs_f64(s.max(0.0))),
            _ => None,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Anything that answers a chat request.
pub trait Provider: Send + Sync {
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;

    /// What identifies this provider's answers in the response cache: endpoint, model and every
    /// setting that changes the output. Never a secret.
    fn identity(&self) -> serde_json::Value;
}
