//! `switchyard serve`: an OpenAI-compatible HTTP server (axum) for the local model, base or with
//! an adapter, or, given a policy, a gateway that routes each request by task to the policy's
//! targets and falls back on errors and timeouts.
//!
//! `POST /v1/chat/completions` (streamed or not), `POST /v1/completions` (the local model, no
//! chat template), `GET /v1/models`, `GET /health`. Bad requests get OpenAI-style error bodies;
//! an optional bearer token; a request-size limit; a concurrency limit answered with 429.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::providers::{ChatRequest, ChatResponse, Message, ProviderError, Target};
use crate::route::Policy;

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

/// An OpenAI-style error response.
fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": param, "code": Value::Null}});
    (status, axum::Json(body)).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct Stop(#[serde(deserialize_with = "one_or_many")] Vec<String>);

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        One(String),
        Many(Vec<String>),
    }
    Ok(match S::deserialize(d)? {
        S::One(s) => vec![s],
        S::Many(v) => v,
    })
}

/// The fields of a chat or text completion request switchyard uses (others are ignored, as
/// OpenAI-compatible servers do).
#[derive(Deserialize)]
struct CompletionBody {
    model: String,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<Value>,
}

impl CompletionBody {
    fn request(&self, messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            messages,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(256),
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            stop: self.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        }
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
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

/// A request body as axum hands it over (an error when it exceeds the size limit).
type RawBody = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse(body: RawBody) -> Result<CompletionBody, Box<Response>> {
    let bytes = body.map_err(|e| {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body: {e}"),
            None,
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body is not a valid request: {e}"),
            None,
        ))
    })
}

fn provider_error(e: &ProviderError) -> Response {
    match e {
        ProviderError::Status { status, body, .. } => error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            "upstream_error",
            body.clone(),
            None,
        ),
        ProviderError::Timeout(_) => {
            error(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string(), None)
        }
        ProviderError::Local(m) if m.contains("context") => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            m.clone(),
            Some("messages"),
        ),
        _ => error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            e.to_string(),
            None,
        ),
    }
}

fn usage(r: &ChatResponse) -> Value {
    let (p, c) = (
        r.prompt_tokens.unwrap_or(0),
        r.completion_tokens.unwrap_or(0),
    );
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn with_headers(
    mut resp: Response,
    target: &str,
    route: Option<&str>,
    attempts: usize,
) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(target) {
        h.insert("x-switchyard-target", v);
    }
    if let Some(r) = route.and_then(|r| HeaderValue::from_str(r).ok()) {
        h.insert("x-switchyard-route", r);
    }
    h.insert("x-switchyard-attempts", HeaderValue::from(attempts));
    resp
}

/// A chat completion (or its stream) in OpenAI's shape.
fn completion_response(
    r: &ChatResponse,
    model: &str,
    chat: bool,
    stream: bool,
    include_usage: bool,
) -> Response {
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let finish = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
    if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": r.text, "finish_reason": finish})
        };
        return axum::Json(json!({
            "id": id, "object": if chat { "chat.completion" } else { "text_completion" }, "created": now(),
            "model": model, "choices": [choice], "usage": usage(r),
        }))
        .into_response();
    }
    let mut events = vec![chunk(
        &id,
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.push(chunk(&id, model, json!({"content": r.text}), None));
    events.push(chunk(&id, model, json!({}), Some(&finish)));
    if include_usage {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model, "choices": [], "usage": usage(r)})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse(Body::from(events.concat()))
}

fn chunk(id: &str, model: &str, delta: Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

fn sse(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

/// Token-by-token streaming from the local model.
fn stream_local(
    target: &Arc<Target>,
    req: &ChatRequest,
    model: String,
    include_usage: bool,
) -> Response {
    let (rx, handle) = start_streaming(target, req);
    forward(rx, handle, None, model, include_usage)
}

/// An SSE response that passes a target's text through as it arrives (`first` already came),
/// then its finish reason, usage when asked, and `[DONE]`; an error after the first token ends
/// the stream with an error event.
fn forward(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    handle: tokio::task::JoinHandle<Result<ChatResponse, ProviderError>>,
    first: Option<String>,
    model: String,
    include_usage: bool,
) -> Response {
    let (out_tx, out_rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    tokio::spawn(async move {
        let send = |s: String| {
            let out_tx = out_tx.clone();
            async move { out_tx.send(Ok(Bytes::from(s))).await.is_ok() }
        };
        let event = |v: Value| format!("data: {v}\n\n");
        send(chunk(
            &id,
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
        ))
        .await;
        if let Some(t) = first {
            send(chunk(&id, &model, json!({"content": t}), None)).await;
        }
        while let Some(t) = rx.recv().await {
            if !send(chunk(&id, &model, json!({"content": t}), None)).await {
                return;
            }
        }
        let failed = |message: String, kind: &str| {
            event(json!({"error": {"message": message, "type": kind}}))
        };
        match handle.await {
            Ok(Ok(r)) => {
                let finish = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
                send(chunk(&id, &model, json!({}), Some(&finish))).await;
                if include_usage {
                    send(event(
                        json!({"id": id, "object": "chat.completion.chunk", "created": now(),
                        "model": model, "choices": [], "usage": usage(&r)}),
                    ))
                    .await;
                }
            }
            Ok(Err(e @ ProviderError::Local(_))) => {
                send(failed(e.to_string(), "server_error")).await;
            }
            Ok(Err(e)) => {
                send(failed(e.to_string(), "upstream_error")).await;
            }
            Err(e) => {
                send(failed(e.to_string(), "server_error")).await;
            }
        };
        send("data: [DONE]\n\n".into()).await;
    });
    let stream =
        futures_util::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        );
    sse(Body::from_stream(stream))
}

/// Start one target's answer with its text streamed into a channel: the local model or an HTTP
/// endpoint stream token by token; any other provider delivers its whole answer at the end.
fn start_streaming(
    t: &Arc<Target>,
    req: &ChatRequest,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<Result<ChatResponse, ProviderError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (t, req) = (t.clone(), req.clone());
    let handle = tokio::spawn(async move {
        let _slot = t.slots.acquire().await.expect("open");
        if let Some(l) = &t.local {
            l.generate(&req, false, Some(tx)).await
        } else if let Some(h) = &t.http {
            h.send_streaming(&req, Some(&tx)).await
        } else {
            t.provider.chat(&req).await
        }
    });
    (rx, handle)
}

/// The gateway, streamed: a target is committed to once its first text arrives (a target that
/// fails before that hands over to the next); its text is then passed through as it comes.
async fn stream_gateway(
    chain: &[String],
    targets: &BTreeMap<String, Arc<Target>>,
    req: &ChatRequest,
    model: String,
    route: Option<String>,
    include_usage: bool,
) -> Response {
    let mut last = None;
    for (i, name) in chain.iter().enumerate() {
        let (mut rx, mut handle) = start_streaming(&targets[name], req);
        let first = tokio::select! {
            Some(text) = rx.recv() => Ok(Some(text)),
            r = &mut handle => match r {
                Ok(Ok(resp)) => Err(Ok(resp)),
                Ok(Err(e)) => Err(Err(e)),
                Err(e) => Err(Err(ProviderError::Local(format!("the target's task failed: {e}")))),
            },
        };
        let first = match first {
            Ok(t) => t,
            // Finished without streamed text (an empty answer, or a provider that does not stream).
            Err(Ok(resp)) => {
                let r = completion_response(&resp, &model, true, true, include_usage);
                return with_headers(r, name, route.as_deref(), i + 1);
            }
            Err(Err(e)) => {
                tracing::warn!("gateway: target `{name}` failed ({e}); trying the next");
                last = Some(e);
                continue;
            }
        };
        let resp = forward(rx, handle, first, model.clone(), include_usage);
        return with_headers(resp, name, route.as_deref(), i + 1);
    }
    let e = last.expect("a non-empty chain");
    with_headers(
        provider_error(&e),
        chain.last().map_or("", |s| s.as_str()),
        route.as_deref(),
        chain.len(),
    )
}

async fn completions(
    state: &AppState,
    headers: &HeaderMap,
    body: CompletionBody,
    chat: bool,
) -> Response {
    let messages = if chat {
        match &body.messages {
            Some(m) if !m.is_empty() => m.clone(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "`messages` must be a non-empty list",
                    Some("messages"),
                );
            }
        }
    } else {
        match &body.prompt {
            Some(p) => vec![Message::new("user", p)],
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "`prompt` is required",
                    Some("prompt"),
                );
            }
        }
    };
    if !chat && body.stream {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "streaming is served for chat completions only",
            Some("stream"),
        );
    }
    let req = body.request(messages);
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
        Backend::Local { name, target } => {
            if body.model != *name {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!(
                        "model `{}` is not served here; this server has `{name}`",
                        body.model
                    ),
                    Some("model"),
                );
            }
            if body.stream {
                return with_headers(
                    stream_local(target, &req, name.clone(), body.include_usage()),
                    name,
                    None,
                    1,
                );
            }
            let local = target.local.as_ref().expect("a local target");
            match local.generate(&req, !chat, None).await {
                Ok(r) => with_headers(
                    completion_response(&r, name, chat, false, false),
                    name,
                    None,
                    1,
                ),
                Err(e) => provider_error(&e),
            }
        }
        Backend::Gateway { policy, targets } => {
            if !chat {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "the gateway routes chat completions only",
                    None,
                );
            }
            let task = headers
                .get("x-switchyard-task")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| body.model.strip_prefix("route/").map(str::to_string));
            let (chain, route): (Vec<String>, Option<String>) = match task {
                Some(task) => match policy.route(&task) {
                    Some(r) => (
                        std::iter::once(r.primary.clone())
                            .chain(r.fallbacks.clone())
                            .collect(),
                        Some(r.task.clone()),
                    ),
                    None => {
                        return error(
                            StatusCode::NOT_FOUND,
                            "invalid_request_error",
                            format!("no route for task `{task}` and no default route"),
                            Some("model"),
                        );
                    }
                },
                None if targets.contains_key(&body.model) => (vec![body.model.clone()], None),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "invalid_request_error",
                        format!(
                            "model `{}`: use `route/TASK` (tasks: {}) or a target name",
                            body.model,
                            policy
                                .routes
                                .iter()
                                .map(|r| r.task.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Some("model"),
                    );
                }
            };
            if body.stream {
                let shown = format!("route/{}", route.as_deref().unwrap_or(&chain[0]));
                return stream_gateway(
                    &chain,
                    targets,
                    &req,
                    shown,
                    route.clone(),
                    body.include_usage(),
                )
                .await;
            }
            let mut last = None;
            for (i, name) in chain.iter().enumerate() {
                let t = &targets[name];
                let out = {
                    let _slot = t.slots.acquire().await.expect("open");
                    t.provider.chat(&req).await
                };
                match out {
                    Ok(r) => {
                        let shown = format!("route/{}", route.as_deref().unwrap_or(name));
                        let resp = completion_response(
                            &r,
                            &shown,
                            true,
                            body.stream,
                            body.include_usage(),
                        );
                        return with_headers(resp, name, route.as_deref(), i + 1);
                    }
                    Err(e) => {
                        tracing::warn!("gateway: target `{name}` failed ({e}); trying the next");
                        last = Some(e);
                    }
                }
            }
            let e = last.expect("a non-empty chain");
            with_headers(
                provider_error(&e),
                chain.last().map_or("", |s| s.as_str()),
                route.as_deref(),
                chain.len(),
            )
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
    match parse(body) {
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
