//! Serving one model under one name: chat and text completions, streamed token by token.

use axum::http::StatusCode;
use axum::response::Response;

use super::wire::{self, CompletionBody};
use crate::providers::{ChatRequest, Deltas, Target};

/// Answer a body's requests (one per prompt and choice), streamed when it asks and has one.
pub async fn answer(
    name: &str,
    target: &std::sync::Arc<Target>,
    body: &CompletionBody,
    reqs: Vec<ChatRequest>,
) -> Response {
    if body.model != name {
        return wire::error(
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
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (t, req) = (target.clone(), reqs[0].clone());
        let handle = tokio::spawn(async move { t.ask_streaming(&req, &Deltas::new(tx)).await });
        let resp = wire::forward(rx, handle, None, name.to_string(), body.include_usage());
        return wire::with_headers(resp, name, None, 1);
    }
    let chat = !reqs[0].raw;
    let outcomes = futures_util::future::join_all(reqs.iter().map(|r| target.ask(r))).await;
    let mut answers = Vec::with_capacity(reqs.len());
    for (req, o) in reqs.into_iter().zip(outcomes) {
        match o.result {
            Ok(r) => answers.push((req, r)),
            Err(e) => return wire::provider_error(&e),
        }
    }
    wire::with_headers(
        wire::completions_response(&answers, name, chat),
        name,
        None,
        1,
    )
}
