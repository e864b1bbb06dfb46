//! OpenAI's wire format, as the server reads and writes it: the request body, error bodies,
//! completions and their server-sent-event chunks, and the stream that passes a target's text
//! through as it arrives.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::providers::{ChatRequest, ChatResponse, Message, Outcome, ProviderError};

/// An OpenAI-style error response.
pub fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": param, "code": Value::Null}});
    (status, axum::Json(body)).into_response()
}

fn now() -> u64 {
    crate::util::now_s() as u64
}

#[derive(Deserialize)]
pub struct Stop(#[serde(deserialize_with = "one_or_many")] Vec<String>);

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
pub struct CompletionBody {
    pub model: String,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub prompt: Option<String>,
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
    pub stream: bool,
    #[serde(default)]
    stream_options: Option<Value>,
}

impl CompletionBody {
    /// The request for these messages (`raw`: a text completion's prompt, no chat template).
    pub fn request(&self, messages: Vec<Message>, raw: bool) -> ChatRequest {
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
            raw,
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// A request body as axum hands it over (an error when it exceeds the size limit).
pub type RawBody = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub fn parse(body: RawBody) -> Result<CompletionBody, Box<Response>> {
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

/// A target's failure as the client sees it: a prompt too long is the client's 400; an upstream
/// status passes through; a timeout is 504; anything else 502.
pub fn provider_error(e: &ProviderError) -> Response {
    match e {
        ProviderError::ContextLength { detail } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            detail.clone(),
            Some("messages"),
        ),
        ProviderError::Timeout(_) => {
            error(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string(), None)
        }
        ProviderError::RateLimited { body, .. }
        | ProviderError::Auth { body, .. }
        | ProviderError::Server { body, .. }
        | ProviderError::Client { body, .. } => error(
            e.status()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            "upstream_error",
            body.clone(),
            None,
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

/// Who answered: the target, the route, and how many targets were tried.
pub fn with_headers(
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

/// A completion (or its stream, all at once) in OpenAI's shape.
pub fn completion_response(
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
        events.push(usage_event(&id, model, r));
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

fn usage_event(id: &str, model: &str, r: &ChatResponse) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
               "choices": [], "usage": usage(r)})
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

/// An SSE response that passes a target's text through as it arrives (`first` already came),
/// then its finish reason, usage when asked, and `[DONE]`; an error after the first token ends
/// the stream with an error event.
pub fn forward(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    handle: tokio::task::JoinHandle<Outcome>,
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
            format!(
                "data: {}\n\n",
                json!({"error": {"message": message, "type": kind}})
            )
        };
        match handle.await.map(|o| o.result) {
            Ok(Ok(r)) => {
                let finish = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
                send(chunk(&id, &model, json!({}), Some(&finish))).await;
                if include_usage {
                    send(usage_event(&id, &model, &r)).await;
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
