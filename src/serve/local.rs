//! Serving one model under one name: chat and text completions, streamed token by token.

use axum::http::StatusCode;
use axum::response::Response;

use super::wire::{self, CompletionBody};
use crate::providers::{ChatRequest, Deltas, Target};

pub async fn answer(
    name: &str,
    target: &std::sync::Arc<Target>,
    body: &CompletionBody,
    req: &ChatRequest,
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
        let (t, req) = (target.clone(), req.clone());
        let handle = tokio::spawn(async move { t.ask_streaming(&req, &Deltas::new(tx)).await });
        let resp = wire::forward(rx, handle, None, name.to_string(), body.include_usage());
        return wire::with_headers(resp, name, None, 1);
    }
    match target.ask(req).await.result {
        Ok(r) => wire::with_headers(
            wire::completion_response(&r, name, !req.raw, false, false),
            name,
            None,
            1,
        ),
        Err(e) => wire::provider_error(&e),
    }
}
