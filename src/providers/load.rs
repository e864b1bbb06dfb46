//! Load curves of an OpenAI-compatible server, in the spirit of vLLM's `benchmark_serving` and
//! GuideLLM: at each concurrency level, exactly that many streamed requests are kept in flight
//! (a closed loop) until the level's requests are answered; the level reports what the server
//! sustained (requests/s, output tokens/s) against what a user waited (time to first token,
//! latency and time per output token, as percentiles).
//!
//! A [`LoadCurve`] is what `route derive --capacity` reads: [`LoadCurve::best_within`] is the
//! highest throughput whose p95 time to first token meets a service-level objective.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ChatRequest, Deltas, Message, Target};
use crate::util::quantile;

/// What one level sends.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests in flight at once, one level each.
    pub concurrency: Vec<usize>,
    /// Requests per level (0: four per slot, at least 8).
    pub requests: usize,
    pub max_tokens: usize,
    /// The prompts, sent in turn.
    pub prompts: Vec<Vec<Message>>,
}

impl LoadOptions {
    pub fn requests_at(&self, concurrency: usize) -> usize {
        if self.requests > 0 {
            self.requests
        } else {
            (4 * concurrency).max(8)
        }
    }
}

/// Percentiles of one measure over a level's answered requests (seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(v: &[f64]) -> Self {
        Self {
            mean: (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64),
            p50: quantile(v, 0.5),
            p90: quantile(v, 0.9),
            p95: quantile(v, 0.95),
            p99: quantile(v, 0.99),
        }
    }
}

/// One concurrency level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Level {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    /// The first error's message, if any.
    pub first_error: Option<String>,
    /// From the first request sent to the last answer.
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Prompt and output tokens per second (what self-hosting economics prices).
    pub total_tokens_per_s: f64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub ttft_s: Percentiles,
    pub latency_s: Percentiles,
    /// Time per output token after the first.
    pub tpot_s: Percentiles,
}

/// A target's levels, with what was measured and where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadCurve {
    pub target: String,
    pub provider: String,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub max_tokens: usize,
    pub prompts: usize,
    pub levels: Vec<Level>,
}

/// What `switchyard bench serve` writes: every target measured in one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// The machine the client ran on (the server's, when it ran there too).
    pub machine: String,
    pub date: String,
    pub curves: Vec<LoadCurve>,
}

impl LoadCurve {
    /// The level of highest output throughput whose p95 time to first token is within
    /// `slo_p95_ttft_s` and that answered every request.
    pub fn best_within(&self, slo_p95_ttft_s: Option<f64>) -> Option<&Level> {
        self.levels
            .iter()
            .filter(|l| l.errors == 0 && l.requests > 0)
            .filter(|l| match (slo_p95_ttft_s, l.ttft_s.p95) {
                (None, _) => true,
                (Some(slo), Some(p95)) => p95 <= slo,
                (Some(_), None) => false,
            })
            .max_by(|a, b| a.output_tokens_per_s.total_cmp(&b.output_tokens_per_s))
    }
}

/// One answered (or failed) request.
struct Sample {
    ttft_s: Option<f64>,
    latency_s: f64,
    prompt_tokens: u64,
    output_tokens: u64,
    error: Option<String>,
}

async fn one(target: &Target, req: &ChatRequest) -> Sample {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let deltas = Deltas::new(tx);
    let sent = Instant::now();
    // The first piece of text, timed as it arrives; the pieces counted.
    let watch = tokio::spawn(async move {
        let mut first = None;
        let mut pieces = 0u64;
        while rx.recv().await.is_some() {
            first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
            pieces += 1;
        }
        (first, pieces)
    });
    let outcome = target.ask_streaming(req, &deltas).await;
    drop(deltas);
    let latency_s = sent.elapsed().as_secs_f64();
    let (first, pieces) = watch.await.unwrap_or((None, 0));
    match outcome.result {
        Ok(r) => Sample {
            ttft_s: first.or(r.ttft_s),
            latency_s,
            prompt_tokens: r.prompt_tokens.unwrap_or(0),
            // The server's count; else each streamed piece as a token (as vLLM's and
            // llama.cpp's servers send them).
            output_tokens: r.completion_tokens.unwrap_or(pieces),
            error: None,
        },
        Err(e) => Sample {
            ttft_s: None,
            latency_s,
            prompt_tokens: 0,
            output_tokens: 0,
            error: Some(e.to_string()),
        },
    }
}

/// Run one level: `concurrency` workers take the next request until `n` are answered.
pub async fn level(target: Arc<Target>, opts: &LoadOptions, concurrency: usize) -> Level {
    let n = opts.requests_at(concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, next) = (target.clone(), next.clone());
        let prompts = opts.prompts.clone();
        let max_tokens = opts.max_tokens;
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return samples;
                }
                let req = ChatRequest {
                    messages: prompts[i % prompts.len()].clone(),
                    max_tokens,
                    temperature: 0.0,
                    top_p: 1.0,
                    ..Default::default()
                };
                samples.push(one(&target, &req).await);
            }
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.unwrap_or_default());
    }
    let duration_s = start.elapsed().as_secs_f64().max(1e-9);
    summarise(concurrency, &samples, duration_s)
}

fn summarise(concurrency: usize, samples: &[Sample], duration_s: f64) -> Level {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft_s).collect();
    let latency: Vec<f64> = ok.iter().map(|s| s.latency_s).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|s| s.output_tokens > 1)
        .filter_map(|s| Some((s.latency_s - s.ttft_s?) / (s.output_tokens - 1) as f64))
        .collect();
    let prompt_tokens: u64 = ok.iter().map(|s| s.prompt_tokens).sum();
    let output_tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
    Level {
        concurrency,
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        first_error: samples.iter().find_map(|s| s.error.clone()),
        duration_s,
        requests_per_s: ok.len() as f64 / duration_s,
        output_tokens_per_s: output_tokens as f64 / duration_s,
        total_tokens_per_s: (prompt_tokens + output_tokens) as f64 / duration_s,
        prompt_tokens,
        output_tokens,
        ttft_s: Percentiles::of(&ttft),
        latency_s: Percentiles::of(&latency),
        tpot_s: Percentiles::of(&tpot),
    }
}

/// Every level of one target, in order; `on_level` sees each as it ends.
pub async fn curve(
    target: Arc<Target>,
    opts: &LoadOptions,
    mut on_level: impl FnMut(&Level),
) -> LoadCurve {
    // One request first: a server's first answer pays for warming up, not for load.
    if let Some(p) = opts.prompts.first() {
        let req = ChatRequest {
            messages: p.clone(),
            max_tokens: opts.max_tokens.min(4),
            temperature: 0.0,
            top_p: 1.0,
            ..Default::default()
        };
        let _ = one(&target, &req).await;
    }
    let mut levels = Vec::new();
    for &c in &opts.concurrency {
        let l = level(target.clone(), opts, c).await;
        on_level(&l);
        levels.push(l);
    }
    let spec = &target.spec;
    LoadCurve {
        target: spec.name.clone(),
        provider: spec.provider.clone(),
        model: spec.model.clone(),
        base_url: spec.base_url.clone(),
        max_tokens: opts.max_tokens,
        prompts: opts.prompts.len(),
        levels,
    }
}

/// Prompts for a load test when no suite is given: varied requests for a few sentences each.
pub fn default_prompts() -> Vec<Vec<Message>> {
    [
        "Explain how a refrigerator keeps food cold.",
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "What are the main causes of inflation? Answer in a paragraph.",
        "Describe the water cycle to a ten-year-old.",
        "Give three tips for writing clear emails at work, with an example of each.",
        "Summarise the plot of Romeo and Juliet.",
        "Why do leaves change colour in autumn?",
        "Compare trains and planes for a 500 km trip.",
        "Write a product description for a reusable water bottle.",
        "How does a search engine decide which pages to show first?",
        "Plan a simple three-day vegetarian menu.",
        "What is the difference between weather and climate?",
        "Explain what a database index is and when it helps.",
        "Write a polite reply declining a meeting invitation.",
        "Describe how bees make honey.",
        "What should someone check before buying a used bicycle?",
    ]
    .iter()
    .map(|p| vec![Message::new("user", p)])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(c: usize, tok_s: f64, p95: f64, errors: usize) -> Level {
        Level {
            concurrency: c,
            requests: 8,
            errors,
            output_tokens_per_s: tok_s,
            ttft_s: Percentiles {
                p95: Some(p95),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_best_level_is_the_fastest_that_meets_the_slo_without_errors() {
        let curve = LoadCurve {
            target: "t".into(),
            provider: "vllm".into(),
            model: None,
            base_url: None,
            max_tokens: 64,
            prompts: 16,
            levels: vec![
                level(1, 30.0, 0.1, 0),
                level(2, 55.0, 0.3, 0),
                level(4, 90.0, 0.9, 0),
                level(8, 120.0, 0.4, 1),
            ],
        };
        assert_eq!(curve.best_within(Some(0.5)).unwrap().concurrency, 2);
        assert_eq!(curve.best_within(Some(1.0)).unwrap().concurrency, 4);
        assert_eq!(curve.best_within(None).unwrap().concurrency, 4);
        assert!(curve.best_within(Some(0.05)).is_none());
    }

    #[test]
    fn a_level_is_summarised_from_its_answers() {
        let s = |ttft: f64, lat: f64, out: u64| Sample {
            ttft_s: Some(ttft),
            latency_s: lat,
            prompt_tokens: 10,
            output_tokens: out,
            error: None,
        };
        let failed = Sample {
            ttft_s: None,
            latency_s: 0.5,
            prompt_tokens: 0,
            output_tokens: 0,
            error: Some("HTTP 503".into()),
        };
        let l = summarise(2, &[s(0.1, 1.1, 11), s(0.3, 2.3, 21), failed], 2.0);
        assert_eq!((l.requests, l.errors), (3, 1));
        assert_eq!(l.first_error.as_deref(), Some("HTTP 503"));
        assert_eq!(l.output_tokens, 32);
        assert!((l.output_tokens_per_s - 16.0).abs() < 1e-12);
        assert!((l.total_tokens_per_s - 26.0).abs() < 1e-12);
        assert!((l.requests_per_s - 1.0).abs() < 1e-12);
        assert!((l.ttft_s.p50.unwrap() - 0.2).abs() < 1e-12);
        assert!((l.tpot_s.mean.unwrap() - 0.1).abs() < 1e-12);
    }
}
