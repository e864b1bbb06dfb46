//! OpenAI-compatible chat completions over HTTP (reqwest), streamed by default so that time to
//! first token and output tokens/s are measured, not guessed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::presets::{Preset, Routing};
use super::{
    BoxFuture, ChatRequest, ChatResponse, Deltas, Provider, ProviderError, ResponseFormat,
};
use crate::generate::{ScoredToken, TokenLogprob, TopLogprob};

/// A configured OpenAI-compatible endpoint.
pub struct HttpProvider {
    client: reqwest::Client,
    preset: &'static Preset,
    base_url: String,
    model: String,
    /// The key's value (never written anywhere) and the variable it came from.
    api_key: Option<String>,
    api_key_env: String,
    headers: BTreeMap<String, String>,
    body: serde_json::Map<String, Value>,
    stream: bool,
    timeout: Duration,
}

/// Debug output leaves the API key out.
impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("preset", &self.preset.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .finish_non_exhaustive()
    }
}

pub struct HttpSettings {
    pub base_url: String,
    pub model: String,
    pub api_key_env: String,
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Map<String, Value>,
    pub routing: Option<Value>,
    pub stream: bool,
    pub timeout: Duration,
}

impl HttpProvider {
    pub fn new(preset: &'static Preset, s: HttpSettings) -> Result<Self, ProviderError> {
        let cfg = |m: String| ProviderError::Config(m);
        if s.base_url.is_empty() {
            return Err(cfg(format!(
                "preset `{}` needs `base_url` (e.g. http://127.0.0.1:8080/v1)",
                preset.name
            )));
        }
        reqwest::Url::parse(&s.base_url)
            .map_err(|e| cfg(format!("base_url {:?}: {e}", s.base_url)))?;
        let api_key = std::env::var(&s.api_key_env).ok().filter(|k| !k.is_empty());
        if api_key.is_none() && preset.key_required {
            return Err(cfg(format!(
                "`{}` needs an API key: set the environment variable {}",
                preset.name, s.api_key_env
            )));
        }
        let mut model = s.model;
        let mut body = s.body;
        match (preset.routing, s.routing) {
            (_, None) => {}
            (Routing::ModelSuffix, Some(Value::String(r))) => model = format!("{model}:{r}"),
            (Routing::BodyField(field), Some(v @ Value::Object(_))) => {
                body.insert(field.to_string(), v);
            }
            (Routing::None, Some(_)) => {
                return Err(cfg(format!(
                    "preset `{}` has no routing options; remove `routing`",
                    preset.name
                )));
            }
            (Routing::ModelSuffix, Some(v)) => {
                return Err(cfg(format!(
                    "`routing` for `{}` is a string (a provider name, `fastest` or `cheapest`), not {v}",
                    preset.name
                )));
            }
            (Routing::BodyField(f), Some(v)) => {
                return Err(cfg(format!(
                    "`routing` for `{}` is an object (its `{f}` preferences), not {v}",
                    preset.name
                )));
            }
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| cfg(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            preset,
            base_url: s.base_url.trim_end_matches('/').to_string(),
            model,
            api_key,
            api_key_env: s.api_key_env,
            headers: s.headers,
            body,
            stream: s.stream,
            timeout: s.timeout,
        })
    }

    /// The request body: OpenAI's fields, spelled as the preset wants, then the target's extras.
    /// A raw request is a text completion (`prompt`, with `echo` and integer `logprobs`), sent
    /// whole; a chat request streams when the target does.
    pub fn body(&self, req: &ChatRequest) -> Value {
        let mut b = if req.raw {
            let prompt = req.messages.first().map_or("", |m| m.content.as_str());
            json!({"model": self.model, "prompt": prompt, "temperature": req.temperature})
        } else {
            json!({"model": self.model, "messages": req.messages, "temperature": req.temperature})
        };
        let o = b.as_object_mut().expect("object");
        o.insert(self.preset.max_tokens_field.into(), json!(req.max_tokens));
        if req.top_p < 1.0 {
            o.insert("top_p".into(), json!(req.top_p));
        }
        if let (Some(seed), Some(field)) = (req.seed, self.preset.seed_field) {
            o.insert(field.into(), json!(seed));
        }
        if !req.stop.is_empty() {
            o.insert("stop".into(), json!(req.stop));
        }
        if let Some(f) = req.response_format.as_ref().filter(|_| !req.raw) {
            let v = match f {
                ResponseFormat::JsonSchema { json_schema } if self.preset.schema_as_json_object => {
                    json!({"type": "json_object", "schema": json_schema.schema})
                }
                f => json!(f),
            };
            o.insert("response_format".into(), v);
        }
        match (req.raw, req.logprobs) {
            (true, n) => {
                if let Some(n) = n.or(req.echo.then_some(0)) {
                    o.insert("logprobs".into(), json!(n));
                }
                if req.echo {
                    o.insert("echo".into(), json!(true));
                }
            }
            (false, Some(n)) => {
                o.insert("logprobs".into(), json!(true));
                o.insert("top_logprobs".into(), json!(n));
            }
            (false, None) => {}
        }
        if self.stream && !req.raw {
            o.insert("stream".into(), json!(true));
            if self.preset.stream_usage {
                o.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        for (k, v) in &self.body {
            o.insert(k.clone(), v.clone());
        }
        b
    }

    /// Remove the API key from text that came back from the server (some echo headers).
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(k) if k.len() >= 4 => text.replace(k.as_str(), "[REDACTED]"),
            _ => text.to_string(),
        }
    }

    /// Send a request; with `deltas`, each piece of text is passed on as it arrives (the gateway
    /// streams a target's answer through).
    async fn send(
        &self,
        req: &ChatRequest,
        deltas: Option<&Deltas>,
    ) -> Result<ChatResponse, ProviderError> {
        let started = Instant::now();
        let endpoint = if req.raw {
            "completions"
        } else {
            "chat/completions"
        };
        let mut rb = self
            .client
            .post(format!("{}/{endpoint}", self.base_url))
            .timeout(self.timeout)
            .json(&self.body(req));
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        for (k, v) in &self.headers {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.map_err(|e| self.net_error(e))?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after_s = retry_after(resp.headers());
            let body = resp.text().await.unwrap_or_default();
            let body: String = self.redact(&body).chars().take(500).collect();
            return Err(ProviderError::from_status(
                status.as_u16(),
                body,
                retry_after_s,
            ));
        }
        let streamed = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streamed {
            self.read_stream(resp, started, deltas).await
        } else {
            let bytes = resp.bytes().await.map_err(|e| self.net_error(e))?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ProviderError::Protocol(format!(
                    "response is not JSON ({e}): {}",
                    self.redact(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))
                ))
            })?;
            let mut r = parse_completion(&v)?;
            r.latency_s = started.elapsed().as_secs_f64();
            Ok(r)
        }
    }

    async fn read_stream(
        &self,
        resp: reqwest::Response,
        started: Instant,
        deltas: Option<&Deltas>,
    ) -> Result<ChatResponse, ProviderError> {
        let mut out = ChatResponse {
            text: String::new(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            ttft_s: None,
            latency_s: 0.0,
            compute_s: None,
            model: None,
            ..Default::default()
        };
        let mut stream = resp.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.net_error(e))?;
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data).map_err(|e| {
                    ProviderError::Protocol(format!(
                        "stream event is not JSON ({e}): {}",
                        self.redact(&data.chars().take(200).collect::<String>())
                    ))
                })?;
                if let Some(err) = v.get("error") {
                    return Err(error_event(err, &self.redact(&err.to_string())));
                }
                let before = out.text.len();
                self.take_chunk(&v, &mut out, started);
                if let Some(d) = deltas {
                    d.send(&out.text[before..]);
                }
            }
        }
        // Mistral and some servers end without `[DONE]` but with a finish reason; a stream with
        // neither was cut off.
        if !done && out.finish_reason.is_none() {
            return Err(ProviderError::Protocol(format!(
                "the stream ended before its end ([DONE] or a finish_reason) after {} characters",
                out.text.len()
            )));
        }
        out.latency_s = started.elapsed().as_secs_f64();
        Ok(out)
    }

    fn take_chunk(&self, v: &Value, out: &mut ChatResponse, started: Instant) {
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            out.model.get_or_insert_with(|| m.to_string());
        }
        if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
            if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str)
                && !t.is_empty()
            {
                out.ttft_s
                    .get_or_insert_with(|| started.elapsed().as_secs_f64());
                out.text.push_str(t);
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                out.finish_reason = Some(f.to_string());
            }
            if let Some(lp) = chat_logprobs(c) {
                out.logprobs.get_or_insert_with(Vec::new).extend(lp);
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            out.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        }
    }

    fn net_error(&self, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(self.timeout.as_secs_f64())
        } else {
            // reqwest's message names the URL, never headers; redact anyway.
            ProviderError::Network(self.redact(&error_chain(&e)))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// `Retry-After` in seconds or as an HTTP date, or the `retry-after-ms` some providers send.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<f64> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(ms / 1000.0);
    }
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return Some(s);
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    )
}

/// A non-streamed chat completion.
pub fn parse_completion(v: &Value) -> Result<ChatResponse, ProviderError> {
    let bad = |m: &str| ProviderError::Protocol(format!("{m} in {}", clip(&v.to_string())));
    if let Some(err) = v.get("error") {
        return Err(error_event(err, &clip(&err.to_string())));
    }
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| bad("no `choices[0]`"))?;
    // A chat completion's message, or a text completion's text.
    let text = match choice
        .pointer("/message/content")
        .or_else(|| choice.get("text"))
    {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) => String::new(),
        _ => return Err(bad("no `choices[0].message.content`")),
    };
    let prompt_tokens = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
    let (prompt_logprobs, logprobs) = match completion_logprobs(choice) {
        // With `echo`, the first `prompt_tokens` entries are the prompt's.
        Some(mut all) if choice.get("text").is_some() => {
            let n = prompt_tokens.map_or(0, |n| (n as usize).min(all.len()));
            let generated = all.split_off(n);
            let as_generated = generated
                .into_iter()
                .map(|t| TokenLogprob {
                    bytes: t.token.as_bytes().to_vec(),
                    logprob: t.logprob.unwrap_or(f32::NAN),
                    top_logprobs: t.top_logprobs,
                    token: t.token,
                })
                .collect();
            ((n > 0).then_some(all), Some(as_generated))
        }
        _ => (None, chat_logprobs(choice)),
    };
    Ok(ChatResponse {
        logprobs,
        prompt_logprobs,
        text,
        prompt_tokens,
        completion_tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        ttft_s: None,
        latency_s: 0.0,
        compute_s: None,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
    })
}

/// An `{"error": {...}}` object in a response or a stream: its numeric `code` is an HTTP status
/// (500 when it has none).
fn error_event(err: &Value, body: &str) -> ProviderError {
    let status = err.get("code").and_then(Value::as_u64).unwrap_or(500) as u16;
    ProviderError::from_status(status, body.to_string(), None)
}

/// A chat choice's `logprobs.content`, in OpenAI's shape.
fn chat_logprobs(choice: &Value) -> Option<Vec<TokenLogprob>> {
    let content = choice.pointer("/logprobs/content")?;
    serde_json::from_value(content.clone()).ok()
}

/// A text completion's `logprobs` (`tokens`, `token_logprobs`, `top_logprobs` as maps,
/// `text_offset`), as scored tokens.
fn completion_logprobs(choice: &Value) -> Option<Vec<ScoredToken>> {
    let lp = choice.get("logprobs")?;
    let tokens = lp.get("tokens")?.as_array()?;
    let logprobs = lp.get("token_logprobs").and_then(Value::as_array);
    let tops = lp.get("top_logprobs").and_then(Value::as_array);
    let offsets = lp.get("text_offset").and_then(Value::as_array);
    Some(
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ScoredToken {
                token: t.as_str().unwrap_or_default().to_string(),
                logprob: logprobs
                    .and_then(|l| l.get(i))
                    .and_then(Value::as_f64)
                    .map(|x| x as f32),
                top_logprobs: tops
                    .and_then(|l| l.get(i))
                    .and_then(Value::as_object)
                    .map(|m| {
                        let mut top: Vec<TopLogprob> = m
                            .iter()
                            .map(|(k, v)| TopLogprob {
                                token: k.clone(),
                                logprob: v.as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                                bytes: k.as_bytes().to_vec(),
                            })
                            .collect();
                        top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                        top
                    })
                    .unwrap_or_default(),
                offset: offsets
                    .and_then(|l| l.get(i))
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as usize,
            })
            .collect(),
    )
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

impl Provider for HttpProvider {
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<&'a Deltas>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.send(req, deltas))
    }

    fn identity(&self) -> Value {
        json!({
            "kind": "http",
            "preset": self.preset.name,
            "base_url": self.base_url,
            "model": self.model,
            "key_env": self.api_key_env,
            "headers": self.headers.keys().collect::<Vec<_>>(),
            "body": self.body,
            "stream": self.stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(preset: &str, routing: Option<Value>) -> Result<HttpProvider, ProviderError> {
        let p = super::super::presets::find(preset).unwrap();
        HttpProvider::new(
            p,
            HttpSettings {
                base_url: "http://127.0.0.1:9/v1".into(),
                model: "m".into(),
                api_key_env: "SWITCHYARD_TEST_NO_SUCH_KEY".into(),
                headers: BTreeMap::new(),
                body: Default::default(),
                routing,
                stream: true,
                timeout: Duration::from_secs(1),
            },
        )
    }

    fn req() -> ChatRequest {
        ChatRequest {
            messages: vec![super::super::Message::new("user", "hi")],
            max_tokens: 5,
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(3),
            stop: vec![],
            raw: false,
            ..Default::default()
        }
    }

    #[test]
    fn presets_shape_the_body() {
        let b = provider("mistral", None).unwrap_err();
        assert!(
            b.to_string().contains(
                "needs an API key: set the environment variable SWITCHYARD_TEST_NO_SUCH_KEY"
            ),
            "{b}"
        );
        let v = provider("vllm", None).unwrap().body(&req());
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["seed"], 3);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(v.get("response_format").is_none());
        // `response_format` goes as OpenAI writes it.
        let fmt: crate::providers::ResponseFormat =
            serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}}))
            .unwrap();
        let v = provider("vllm", None).unwrap().body(&ChatRequest {
            response_format: Some(fmt),
            ..req()
        });
        assert_eq!(
            v["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}})
        );
        // llama.cpp's servers get the schema in their own spelling.
        let v = provider("llamacpp", None).unwrap().body(&ChatRequest {
            response_format: Some(
                serde_json::from_value(json!({"type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}}}))
                .unwrap(),
            ),
            ..req()
        });
        assert_eq!(
            v["response_format"],
            json!({"type": "json_object", "schema": {"type": "object"}})
        );
        let p = provider("openai-compatible", Some(json!("fastest")));
        assert!(p.is_err());
    }

    #[test]
    fn completions_parse_and_errors_say_why() {
        let r = parse_completion(&json!({"model": "x", "choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2}}))
        .unwrap();
        assert_eq!(
            (r.text.as_str(), r.prompt_tokens, r.completion_tokens),
            ("Paris", Some(7), Some(2))
        );
        let e = parse_completion(&json!({"choices": []})).unwrap_err();
        assert!(e.to_string().contains("choices[0]") && e.retryable());
        let e =
            parse_completion(&json!({"error": {"code": 401, "message": "bad key"}})).unwrap_err();
        assert!(!e.retryable());
    }
}
