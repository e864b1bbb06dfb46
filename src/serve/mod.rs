//! `switchyard serve`: an OpenAI-compatible HTTP server (axum) for the local model, base or with
//! an adapter ([`local`]), or, given a policy, a gateway that routes each request by task to the
//! policy's targets and falls back on errors and timeouts ([`gateway`]). Both ask their targets
//! through [`crate::providers::Target::ask`], so a target's concurrency, rate limits and retries
//! hold here as in an eval. [`wire`] holds OpenAI's request and response shapes.
//!
//! `POST /v1/chat/completions` (streamed or not), `POST /v1/completions` (the local model, no
//! chat template), `GET /v1/models`, `GET /health`. Bad requests get OpenAI-style error bodies;
//! an optional bearer token; a request-size limit; a concurrency limit answered with 429.

pub mod gateway;
pub mod local;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::providers::Target;
use crate::route::Policy;
use wire::{CompletionBody, RawBody, error};

/// What the server answers with.
pub enum Backend {
    /// One model, under one name.
    Local { name: String, target: Arc<Target> },
    /// A policy's routes over its targets.
    Gateway {
        policy: Box<Policy>,
        targets: BTreeMap<String, Arc<Target>>,
    },
}

pub struct ServeOptions {
    /// The bearer token clients must send (None: no authentication).
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
}

struct AppState {
    backend: Backend,
    api_key: Option<String>,
    slots: Semaphore,
    max_concurrency: usize,
}

/// The refusal, when the request lacks the server's bearer token.
fn check_auth(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let key = state.api_key.as_ref()?;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(key.as_str())).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong API key (send `Authorization: Bearer <key>`)",
            None,
        )
    })
}

async fn completions(
    state: &AppState,
    headers: &HeaderMap,
    body: CompletionBody,
    chat: bool,
) -> Response {
    let reqs = match body.requests(chat) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Ok(_slot) = state.slots.try_acquire() else {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is busy ({} requests in flight); retry shortly",
                state.max_concurrency
            ),
            None,
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return r;
    };
    match &state.backend {
        Backend::Local { name, target } => local::answer(name, target, &body, reqs).await,
        Backend::Gateway { policy, targets } => {
            if !chat {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "the gateway routes chat completions only",
                    None,
                );
            }
            if reqs.len() != 1 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "the gateway answers one choice per request",
                    Some("n"),
                );
            }
            gateway::answer(policy, targets, headers, &body, &reqs[0]).await
        }
    }
}

async fn chat_handler(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    checked_completions(&s, &headers, body, true).await
}

async fn text_handler(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    checked_completions(&s, &headers, body, false).await
}

/// Authorisation and body parsing, then [`completions`] (`chat`: messages, else a prompt).
async fn checked_completions(
    s: &AppState,
    headers: &HeaderMap,
    body: RawBody,
    chat: bool,
) -> Response {
    if let Some(r) = check_auth(s, headers) {
        return r;
    }
    match wire::parse(body) {
        Ok(b) => completions(s, headers, b, chat).await,
        Err(r) => *r,
    }
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = check_auth(&s, &headers) {
        return r;
    }
    let ids: Vec<String> = match &s.backend {
        Backend::Local { name, .. } => vec![name.clone()],
        Backend::Gateway { policy, targets } => policy
            .routes
            .iter()
            .map(|r| format!("route/{}", r.task))
            .chain(targets.keys().cloned())
            .collect(),
    };
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown endpoint",
        None,
    )
}

/// The router, ready to serve.
pub fn app(backend: Backend, o: ServeOptions) -> Router {
    let state = Arc::new(AppState {
        backend,
        api_key: o.api_key,
        slots: Semaphore::new(o.max_concurrency.max(1)),
        max_concurrency: o.max_concurrency.max(1),
    });
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_handler))
        .route("/v1/completions", post(text_handler))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(o.max_body_bytes))
        .with_state(state)
}
