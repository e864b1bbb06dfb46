//! A fault-injecting OpenAI-compatible server on 127.0.0.1, written for the tests and the harness
//! benchmark: it answers `POST /v1/chat/completions` (streamed or not) after a set latency, and
//! misbehaves on request, the way real providers do on a bad day.
//!
//! A case asks for a fault with `[fault:NAME]` in its last user message and for an answer with
//! `[answer:TEXT]` (default `ok`). Attempts are counted per prompt, so a fault can hit the first
//! attempt only and the retry succeeds:
//!
//! | fault | what the server does |
//! |---|---|
//! | `429` | attempt 1: 429 with `Retry-After: 1` |
//! | `500x2` | attempts 1-2: 500 |
//! | `slow` | attempt 1: waits 5 s before answering (longer than a test's timeout) |
//! | `truncate` | attempt 1: cuts the connection halfway through the body |
//! | `nodone` | attempt 1: a well-framed stream that stops before `finish_reason` and `[DONE]` |
//! | `malformed` | attempt 1: an event that is not JSON |
//! | `reset` | attempt 1: closes the connection without answering |
//! | `400` | always 400 (not worth retrying) |
//! | `500always` | always 500 |
//! | `echo-key` | always 401 with the request's `Authorization` header in the body |
//!
//! A grading request of the `judge` scorer gets `VERDICT: PASS` when its answer equals its
//! reference, else `VERDICT: FAIL`.
//!
//! Every request is logged ([`Hit`]) so a test can count exactly what was sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The last user message.
    pub prompt: String,
    pub fault: Option<String>,
    /// 1 for the first request with this prompt.
    pub attempt: u32,
    /// Seconds since the server started.
    pub at: f64,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Before the response headers (a provider's queue and prefill).
    pub latency: Duration,
    /// Between streamed chunks (decode).
    pub chunk_delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            chunk_delay: Duration::from_millis(5),
        }
    }
}

struct State {
    started: Instant,
    behaviour: Behaviour,
    hits: Mutex<Vec<Hit>>,
    attempts: Mutex<HashMap<String, u32>>,
    keep_log: bool,
    /// Set when the server is dropped: open keep-alive connections stop answering too.
    stopped: std::sync::atomic::AtomicBool,
}

pub struct FaultServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultServer {
    /// Start on 127.0.0.1 (port 0: any free one) on the current tokio runtime.
    pub async fn start(port: u16, behaviour: Behaviour, keep_log: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            started: Instant::now(),
            behaviour,
            hits: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            keep_log,
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(connection(sock, s.clone()));
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("log").clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u32 {
        self.state.attempts.lock().expect("counts").values().sum()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.state
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.abort();
    }
}

fn directive<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("[{name}:"))? + name.len() + 2;
    let end = text[start..].find(']')? + start;
    Some(&text[start..end])
}

/// Acting as a judge (a grading request from the `judge` scorer): PASS when the answer equals the
/// reference, as a strict grader would.
fn judge(prompt: &str) -> Option<String> {
    let section = |name: &str| {
        let start = prompt.find(&format!("[{name}]\n"))? + name.len() + 3;
        let end = prompt[start..]
            .find("\n\n[")
            .map_or(prompt.len(), |e| start + e);
        Some(prompt[start..end].trim().to_string())
    };
    section("Rubric")?;
    let pass = section("Answer")? == section("Reference answer")?;
    Some(format!(
        "Compared with the reference. VERDICT: {}",
        if pass { "PASS" } else { "FAIL" }
    ))
}

/// Serve one keep-alive connection.
async fn connection(mut sock: TcpStream, state: Arc<State>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let Some(head_end) = read_until_head(&mut sock, &mut buf).await else {
            return;
        };
        if state.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let mut length = 0usize;
        let mut authorization = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let body_start = head_end + 4;
        while buf.len() < body_start + length {
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[body_start..body_start + length]).unwrap_or(Value::Null);
        buf.drain(..body_start + length);
        let keep = if request_line.starts_with("GET") {
            write(
                &mut sock,
                200,
                "application/json",
                b"{\"status\":\"ok\"}",
                &[],
            )
            .await
        } else {
            respond(&mut sock, &state, body, authorization).await
        };
        if !keep {
            return;
        }
    }
}

async fn read_until_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i);
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn write(
    sock: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(body).await.is_ok()
}

/// Answer one chat request; false when the connection must close.
async fn respond(
    sock: &mut TcpStream,
    state: &State,
    body: Value,
    authorization: Option<String>,
) -> bool {
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let fault = directive(&prompt, "fault").map(str::to_string);
    let answer = match judge(&prompt) {
        Some(verdict) => verdict,
        None => directive(&prompt, "answer").unwrap_or("ok").to_string(),
    };
    let attempt = {
        let mut a = state.attempts.lock().expect("counts");
        let n = a.entry(prompt.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if state.keep_log {
        state.hits.lock().expect("log").push(Hit {
            prompt: prompt.clone(),
            fault: fault.clone(),
            attempt,
            at: state.started.elapsed().as_secs_f64(),
            authorization: authorization.clone(),
            body: body.clone(),
        });
    }
    let b = state.behaviour;
    let err = |code: u16, msg: &str| json!({"error": {"message": msg, "code": code}}).to_string();
    match (fault.as_deref(), attempt) {
        (Some("429"), 1) => {
            return write(
                sock,
                429,
                "application/json",
                err(429, "rate limited").as_bytes(),
                &[("retry-after", "1")],
            )
            .await;
        }
        (Some("500x2"), 1 | 2) | (Some("500always"), _) => {
            return write(
                sock,
                500,
                "application/json",
                err(500, "internal error").as_bytes(),
                &[],
            )
            .await;
        }
        (Some("400"), _) => {
            return write(
                sock,
                400,
                "application/json",
                err(400, "bad request").as_bytes(),
                &[],
            )
            .await;
        }
        (Some("echo-key"), _) => {
            let msg = format!("invalid key {}", authorization.unwrap_or_default());
            return write(
                sock,
                401,
                "application/json",
                err(401, &msg).as_bytes(),
                &[],
            )
            .await;
        }
        (Some("reset"), 1) => return false,
        (Some("slow"), 1) => tokio::time::sleep(Duration::from_secs(5)).await,
        _ => {}
    }
    tokio::time::sleep(b.latency).await;
    let model = body["model"].as_str().unwrap_or("stub").to_string();
    let prompt_tokens = prompt.split_whitespace().count() as u64 + 5;
    let pieces: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
    let completion_tokens = pieces.len() as u64;
    if body["stream"] != json!(true) {
        let v = json!({
            "id": "cmpl-stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        });
        let bytes = if fault.as_deref() == Some("malformed") && attempt == 1 {
            b"{\"choices\": [".to_vec()
        } else {
            v.to_string().into_bytes()
        };
        if fault.as_deref() == Some("truncate") && attempt == 1 {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                bytes.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&bytes[..bytes.len() / 2]).await;
            return false;
        }
        return write(sock, 200, "application/json", &bytes, &[]).await;
    }
    let event = |v: Value| format!("data: {v}\n\n");
    let mut events = Vec::new();
    for p in &pieces {
        events.push(event(
            json!({"id": "cmpl-stub", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}),
        ));
    }
    let cut_stream = fault.as_deref() == Some("nodone") && attempt == 1;
    if !cut_stream {
        events.push(event(
            json!({"id": "cmpl-stub", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ));
        if body["stream_options"]["include_usage"] == json!(true) {
            events.push(event(json!({"id": "cmpl-stub", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}})));
        }
        events.push("data: [DONE]\n\n".to_string());
    }
    if fault.as_deref() == Some("malformed") && attempt == 1 {
        events.insert(1, "data: {\"choices\": [{\"delta\": \n\n".to_string());
    }
    let total: usize = events.iter().map(String::len).sum();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {total}\r\n\r\n"
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let truncate = fault.as_deref() == Some("truncate") && attempt == 1;
    let mut sent = 0;
    for (i, e) in events.iter().enumerate() {
        if truncate && sent + e.len() > total / 2 {
            return false;
        }
        if i > 0 && !b.chunk_delay.is_zero() {
            tokio::time::sleep(b.chunk_delay).await;
        }
        if sock.write_all(e.as_bytes()).await.is_err() {
            return false;
        }
        sent += e.len();
    }
    true
}
