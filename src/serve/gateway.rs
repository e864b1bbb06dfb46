//! The gateway: a request's task (`route/TASK` as the model, or the `x-switchyard-task` header)
//! picks a route of the policy; its primary is asked, then its fallbacks in order, each through
//! its target's door (slot, rate limits, retries). A streamed answer commits to a target at its
//! first text (a target that fails before that hands over to the next) and is passed through as
//! it comes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::wire::{self, CompletionBody};
use crate::providers::{ChatRequest, ChatResponse, Deltas, Outcome, ProviderError, Target};
use crate::route::Policy;

/// The targets to try in order, and the route they come from (None: a target asked by name).
fn chain(
    policy: &Policy,
    targets: &BTreeMap<String, Arc<Target>>,
    headers: &HeaderMap,
    model: &str,
) -> Result<(Vec<String>, Option<String>), Box<Response>> {
    let task = headers
        .get("x-switchyard-task")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| model.strip_prefix("route/").map(str::to_string));
    match task {
        Some(task) => match policy.route(&task) {
            Some(r) => Ok((
                std::iter::once(r.primary.clone())
                    .chain(r.fallbacks.clone())
                    .collect(),
                Some(r.task.clone()),
            )),
            None => Err(Box::new(wire::error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no route for task `{task}` and no default route"),
                Some("model"),
            ))),
        },
        None if targets.contains_key(model) => Ok((vec![model.to_string()], None)),
        None => Err(Box::new(wire::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{model}`: use `route/TASK` (tasks: {}) or a target name",
                policy
                    .routes
                    .iter()
                    .map(|r| r.task.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("model"),
        ))),
    }
}

/// What the first target to answer gave.
enum Answer {
    /// A whole answer (not streamed, or finished before any text was streamed).
    Whole(ChatResponse),
    /// A stream that has started: its first text, the rest, and the task producing it.
    Streaming {
        first: String,
        rx: tokio::sync::mpsc::UnboundedReceiver<String>,
        handle: tokio::task::JoinHandle<Outcome>,
    },
}

/// The one fallback loop: ask each target of `chain` in turn until one answers (streamed: until
/// one sends its first text). Returns the answering target's index, or the last error.
async fn first_answer(
    chain: &[String],
    targets: &BTreeMap<String, Arc<Target>>,
    req: &ChatRequest,
    stream: bool,
) -> Result<(usize, Answer), ProviderError> {
    let mut last = None;
    for (i, name) in chain.iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (t, r) = (targets[name].clone(), req.clone());
        let mut handle = tokio::spawn(async move {
            match stream {
                true => t.ask_streaming(&r, &Deltas::new(tx)).await,
                false => t.ask(&r).await,
            }
        });
        let done = tokio::select! {
            Some(first) = rx.recv() => return Ok((i, Answer::Streaming { first, rx, handle })),
            done = &mut handle => done,
        };
        match done.map(|o| o.result) {
            Ok(Ok(resp)) => return Ok((i, Answer::Whole(resp))),
            Ok(Err(e)) => {
                tracing::warn!("gateway: target `{name}` failed ({e}); trying the next");
                last = Some(e);
            }
            Err(e) => {
                let e = ProviderError::Local(format!("the target's task failed: {e}"));
                tracing::warn!("gateway: target `{name}` failed ({e}); trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.expect("a non-empty chain"))
}

pub async fn answer(
    policy: &Policy,
    targets: &BTreeMap<String, Arc<Target>>,
    headers: &HeaderMap,
    body: &CompletionBody,
    req: &ChatRequest,
) -> Response {
    let (chain, route) = match chain(policy, targets, headers, &body.model) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let route = route.as_deref();
    match first_answer(&chain, targets, req, body.stream).await {
        Ok((i, answer)) => {
            let name = &chain[i];
            let shown = format!("route/{}", route.unwrap_or(name));
            let resp = match answer {
                Answer::Whole(r) if body.stream => {
                    wire::whole_stream(&r, &shown, body.include_usage())
                }
                Answer::Whole(r) => wire::completions_response(&[(req.clone(), r)], &shown, true),
                Answer::Streaming { first, rx, handle } => {
                    wire::forward(rx, handle, Some(first), shown, body.include_usage())
                }
            };
            wire::with_headers(resp, name, route, i + 1)
        }
        Err(e) => wire::with_headers(
            wire::provider_error(&e),
            chain.last().map_or("", |s| s.as_str()),
            route,
            chain.len(),
        ),
    }
}
