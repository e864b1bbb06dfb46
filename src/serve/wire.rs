//! OpenAI's wire format, as the server reads and writes it: the request body, error bodies,
//! completions and their server-sent-event chunks, and the stream that passes a target's text
//! through as it arrives.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::providers::{
    ChatRequest, ChatResponse, Message, Outcome, ProviderError, ResponseFormat,
};

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

/// A message's content: a string, or (as the `openai` client and LiteLLM may send it) an array
/// of parts, of which switchyard reads text parts.
#[derive(Deserialize, Default)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
    #[default]
    Null,
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
pub struct WireMessage {
    role: String,
    #[serde(default)]
    content: Content,
}

/// `prompt`: one string, or a list of them (answered as one choice each, in order).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `logprobs`: a chat request's `true`, or a text completion's number of alternatives.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(usize),
}

/// The fields of a chat or text completion request switchyard uses (others are ignored, as
/// OpenAI-compatible servers do).
#[derive(Deserialize)]
pub struct CompletionBody {
    pub model: String,
    #[serde(default)]
    messages: Option<Vec<WireMessage>>,
    #[serde(default)]
    prompt: Option<Prompt>,
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
    /// Choices per prompt.
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
    #[serde(default)]
    top_logprobs: Option<usize>,
    /// Text completions: the prompt comes back before the completion (scored with `logprobs`).
    #[serde(default)]
    pub echo: bool,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`, checked in [`Self::requests`].
    #[serde(default)]
    response_format: Option<Value>,
}

/// The roles a chat request may use (`developer` is OpenAI's newer name for `system`).
const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

fn invalid(param: &str, message: String) -> Box<Response> {
    Box::new(error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        Some(param),
    ))
}

impl WireMessage {
    /// The message as the model reads it: text parts joined; a role the server does not know,
    /// or a part that is not text, is refused naming the field.
    fn message(&self, i: usize) -> Result<Message, Box<Response>> {
        if !ROLES.contains(&self.role.as_str()) {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("unknown role `{}` (one of {})", self.role, ROLES.join(", ")),
            ));
        }
        let content = match &self.content {
            Content::Text(t) => t.clone(),
            Content::Null => String::new(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(invalid(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content parts of type `{kind}` are not supported (only `text`)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        let role = if self.role == "developer" {
            "system"
        } else {
            &self.role
        };
        Ok(Message::new(role, &content))
    }
}

impl CompletionBody {
    pub fn choices(&self) -> usize {
        self.n.unwrap_or(1)
    }

    /// Top-N alternatives per token, when log-probabilities are asked for.
    pub fn logprobs(&self) -> Option<usize> {
        match self.logprobs? {
            Logprobs::Flag(false) => None,
            Logprobs::Flag(true) => Some(self.top_logprobs.unwrap_or(0)),
            Logprobs::Count(n) => Some(n),
        }
    }

    /// Every request the body asks for, checked: one per prompt and choice (choice `i` samples
    /// with `seed + i`). A chat body needs messages; a text completion a prompt.
    pub fn requests(&self, chat: bool) -> Result<Vec<ChatRequest>, Box<Response>> {
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(invalid("temperature", format!("{t} is not in [0, 2]")));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(invalid("top_p", format!("{p} is not in (0, 1]")));
        }
        let n = self.choices();
        if !(1..=16).contains(&n) {
            return Err(invalid("n", format!("{n} is not in 1..=16")));
        }
        if n > 1 && self.stream {
            return Err(invalid(
                "n",
                "more than one choice is served without streaming".into(),
            ));
        }
        if let Some(k) = self.top_logprobs {
            if k > 20 {
                return Err(invalid("top_logprobs", format!("{k} is more than 20")));
            }
            if !matches!(self.logprobs, Some(Logprobs::Flag(true))) {
                return Err(invalid("top_logprobs", "needs `logprobs: true`".into()));
            }
        }
        if matches!(self.logprobs, Some(Logprobs::Count(k)) if k > 20) {
            return Err(invalid("logprobs", "at most 20 alternatives".into()));
        }
        let response_format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<ResponseFormat>(v.clone()) {
                Ok(ResponseFormat::Text) => None,
                Ok(f) => Some(f),
                Err(e) => {
                    return Err(invalid(
                        "response_format",
                        format!(
                            "`response_format`: {e} (expected {{\"type\": \"text\" | \"json_object\" | \"json_schema\", \"json_schema\": {{\"name\", \"schema\", \"strict\"}}}})"
                        ),
                    ));
                }
            },
        };
        let prompts: Vec<Vec<Message>> = if chat {
            let msgs = match &self.messages {
                Some(m) if !m.is_empty() => m,
                _ => {
                    return Err(invalid(
                        "messages",
                        "`messages` must be a non-empty list".into(),
                    ));
                }
            };
            let msgs = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| m.message(i))
                .collect::<Result<Vec<_>, _>>()?;
            vec![msgs]
        } else {
            if self.stream {
                return Err(invalid(
                    "stream",
                    "streaming is served for chat completions only".into(),
                ));
            }
            match &self.prompt {
                Some(Prompt::One(p)) => vec![vec![Message::new("user", p)]],
                Some(Prompt::Many(ps)) if !ps.is_empty() => {
                    ps.iter().map(|p| vec![Message::new("user", p)]).collect()
                }
                _ => return Err(invalid("prompt", "`prompt` is required".into())),
            }
        };
        let mut out = Vec::with_capacity(prompts.len() * n);
        for messages in prompts {
            for i in 0..n {
                out.push(ChatRequest {
                    messages: messages.clone(),
                    max_tokens: self
                        .max_completion_tokens
                        .or(self.max_tokens)
                        .unwrap_or(256),
                    temperature: self.temperature.unwrap_or(1.0),
                    top_p: self.top_p.unwrap_or(1.0),
                    seed: match (self.seed, i) {
                        (s, 0) => s,
                        (s, i) => Some(s.unwrap_or(0).wrapping_add(i as u64)),
                    },
                    stop: self.stop.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
                    raw: !chat,
                    logprobs: self.logprobs(),
                    echo: !chat && self.echo,
                    bos: false,
                    response_format: response_format.clone(),
                });
            }
        }
        Ok(out)
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
        ProviderError::Unsupported { param, detail } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            detail.clone(),
            Some(param.as_str()),
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
    usage_of(std::slice::from_ref(r))
}

fn usage_of(rs: &[ChatResponse]) -> Value {
    let p: u64 = rs.iter().map(|r| r.prompt_tokens.unwrap_or(0)).sum();
    let c: u64 = rs.iter().map(|r| r.completion_tokens.unwrap_or(0)).sum();
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// A chat choice's `logprobs`: `{"content": [...]}` in OpenAI's shape.
fn chat_logprobs(r: &ChatResponse) -> Value {
    match &r.logprobs {
        Some(lp) => json!({ "content": lp }),
        None => Value::Null,
    }
}

/// A text completion's `logprobs` (the legacy shape: `tokens`, `token_logprobs`,
/// `top_logprobs` as maps, `text_offset`), the echoed prompt's tokens first.
fn text_logprobs(r: &ChatResponse, prompt: &str) -> Value {
    if r.logprobs.is_none() && r.prompt_logprobs.is_none() {
        return Value::Null;
    }
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let top_map = |top: &[crate::generate::TopLogprob]| -> Value {
        top.iter()
            .map(|t| (t.token.clone(), json!(t.logprob)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut at = 0;
    if let Some(p) = &r.prompt_logprobs {
        for t in p {
            tokens.push(json!(t.token));
            lps.push(json!(t.logprob));
            tops.push(match t.logprob {
                None => Value::Null,
                Some(_) => top_map(&t.top_logprobs),
            });
            offsets.push(json!(t.offset));
        }
        at = prompt.len();
    }
    for t in r.logprobs.iter().flatten() {
        tokens.push(json!(t.token));
        lps.push(json!(t.logprob));
        tops.push(top_map(&t.top_logprobs));
        offsets.push(json!(at));
        at += t.token.len();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
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

/// Completions in OpenAI's shape: a choice per answer (with its index), usage summed. A text
/// completion with `echo` starts with its prompt; `logprobs` are there when they were asked for.
pub fn completions_response(
    answers: &[(ChatRequest, ChatResponse)],
    model: &str,
    chat: bool,
) -> Response {
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let choices: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, (req, r))| {
            let finish = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
            if chat {
                json!({"index": i, "message": {"role": "assistant", "content": r.text},
                       "finish_reason": finish, "logprobs": chat_logprobs(r)})
            } else {
                let prompt = req.messages.first().map_or("", |m| m.content.as_str());
                let text = if req.echo {
                    format!("{prompt}{}", r.text)
                } else {
                    r.text.clone()
                };
                json!({"index": i, "text": text, "finish_reason": finish,
                       "logprobs": text_logprobs(r, prompt)})
            }
        })
        .collect();
    let responses: Vec<ChatResponse> = answers.iter().map(|(_, r)| r.clone()).collect();
    axum::Json(json!({
        "id": id, "object": if chat { "chat.completion" } else { "text_completion" }, "created": now(),
        "model": model, "choices": choices, "usage": usage_of(&responses),
    }))
    .into_response()
}

/// One chat answer as a stream, all at once (an answer that came whole).
pub fn whole_stream(r: &ChatResponse, model: &str, include_usage: bool) -> Response {
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let finish = r.finish_reason.clone().unwrap_or_else(|| "stop".into());
    let mut events = vec![chunk(
        &id,
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.push(chunk(&id, model, json!({"content": r.text}), None));
    events.push(finish_chunk(&id, model, r, &finish));
    if include_usage {
        events.push(usage_event(&id, model, r));
    }
    events.push("data: [DONE]\n\n".into());
    sse(Body::from(events.concat()))
}

/// The last chunk of a choice: its finish reason, and its log-probabilities when asked for.
fn finish_chunk(id: &str, model: &str, r: &ChatResponse, finish: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
               "choices": [{"index": 0, "delta": {}, "finish_reason": finish,
                            "logprobs": chat_logprobs(r)}]})
    )
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
                send(finish_chunk(&id, &model, &r, &finish)).await;
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
