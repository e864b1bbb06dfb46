//! The burn model in-process as a provider. One worker thread owns the model; requests queue to
//! it and are answered in batches (requests with the same generation settings that are waiting
//! together go through the model together), rendered with the model's own chat template, as a
//! hosted deployment of the same model would render them.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::{BoxFuture, ChatRequest, ChatResponse, Deltas, Provider, ProviderError};
use crate::generate::sampling::SamplingParams;
use crate::generate::{Engine, FinishReason, GenerateError, GenerateOptions};

struct Job {
    req: ChatRequest,
    /// Text as it is settled, for streaming responses.
    stream: Option<Deltas>,
    sent: Instant,
    reply: oneshot::Sender<Result<ChatResponse, ProviderError>>,
}

pub struct LocalProvider {
    tx: mpsc::Sender<Job>,
    identity: Value,
}

impl LocalProvider {
    /// Start the worker: `load` runs on it (the model lives and dies there) and returns the model
    /// with its cache identity. Returns once the model is loaded, or with the loading error.
    pub fn spawn(
        load: impl FnOnce() -> Result<(Engine, Value), ProviderError> + Send + 'static,
        batch: usize,
    ) -> Result<Self, ProviderError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("switchyard-local".into())
            .spawn(move || match load() {
                Ok((engine, identity)) => {
                    let _ = ready_tx.send(Ok(identity));
                    worker(engine, rx, batch.max(1));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| ProviderError::Local(e.to_string()))?;
        let identity = ready_rx
            .recv()
            .map_err(|_| ProviderError::Local("the model's worker died while loading".into()))??;
        Ok(Self { tx, identity })
    }
}

/// Requests that can share a batch: same limits, sampling, stops, log-probabilities and
/// response format.
fn compatible(a: &ChatRequest, b: &ChatRequest) -> bool {
    a.max_tokens == b.max_tokens
        && a.temperature == b.temperature
        && a.top_p == b.top_p
        && a.seed == b.seed
        && a.stop == b.stop
        && a.logprobs == b.logprobs
        && a.response_format == b.response_format
}

fn worker(engine: Engine, rx: mpsc::Receiver<Job>, batch: usize) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(j) => queue.push_back(j),
                Err(_) => return,
            }
        }
        // Let requests sent at the same moment arrive, then take what is there.
        let until = Instant::now() + Duration::from_millis(3);
        while queue.len() < batch {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => queue.push_back(j),
                Err(_) => break,
            }
        }
        while let Ok(j) = rx.try_recv() {
            queue.push_back(j);
        }
        let first = queue.pop_front().expect("non-empty");
        let mut jobs = vec![first];
        let mut i = 0;
        while jobs.len() < batch && i < queue.len() {
            if compatible(&queue[i].req, &jobs[0].req) {
                jobs.push(queue.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        run_batch(&engine, jobs);
    }
}

fn run_batch(engine: &Engine, jobs: Vec<Job>) {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut offsets = Vec::with_capacity(jobs.len());
    let mut ok_jobs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let encoded = if job.req.raw {
            let text = job.req.messages.first().map_or("", |m| m.content.as_str());
            engine.tokenizer.encode_with_offsets(text)
        } else {
            engine
                .tokenizer
                .apply_chat_template(&job.req.messages, true)
                .and_then(|text| engine.tokenizer.encode_with_offsets(&text))
        };
        match encoded {
            Ok((mut t, mut o)) => {
                if job.req.bos {
                    t.insert(0, engine.tokenizer.bos_id());
                    o.insert(0, 0);
                }
                ids.push(t);
                offsets.push(o);
                ok_jobs.push(job);
            }
            Err(e) => {
                let _ = job.reply.send(Err(ProviderError::Local(e.to_string())));
            }
        }
    }
    if ok_jobs.is_empty() {
        return;
    }
    let r = &ok_jobs[0].req;
    let constraint = match r.response_format.as_ref().map(|f| f.grammar()).transpose() {
        Ok(g) => g.flatten().map(std::sync::Arc::new),
        Err(detail) => {
            for job in ok_jobs {
                let _ = job.reply.send(Err(ProviderError::Unsupported {
                    param: "response_format".into(),
                    detail: detail.clone(),
                }));
            }
            return;
        }
    };
    let opts = GenerateOptions {
        max_new_tokens: r.max_tokens,
        sampling: SamplingParams {
            temperature: r.temperature,
            top_p: r.top_p,
            seed: r.seed.unwrap_or(0),
            ..Default::default()
        },
        stop: r.stop.clone(),
        logprobs: r.logprobs,
        constraint,
    };
    let started = Instant::now();
    let mut first_text: Vec<Option<Instant>> = vec![None; ok_jobs.len()];
    let streams: Vec<_> = ok_jobs.iter().map(|j| j.stream.clone()).collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.generate_batch(&ids, &opts, |row, text| {
            if !text.is_empty() && first_text[row].is_none() {
                first_text[row] = Some(Instant::now());
            }
            if let Some(d) = &streams[row] {
                d.send(text);
            }
        })
    }));
    let finished = Instant::now();
    let compute = (finished - started).as_secs_f64() / ok_jobs.len() as f64;
    match result {
        Ok(Ok((gens, _))) => {
            // Prompts scored as well (`echo`): one more pass, over all of them at once.
            let echo: Vec<usize> = (0..ok_jobs.len())
                .filter(|&i| ok_jobs[i].req.echo)
                .collect();
            let rows: Vec<(&[u32], &[usize])> = echo
                .iter()
                .map(|&i| (ids[i].as_slice(), offsets[i].as_slice()))
                .collect();
            let top = ok_jobs[0].req.logprobs.unwrap_or(0);
            let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.score_batch(&rows, top)
            }));
            let mut scored = scored.unwrap_or_default().into_iter();
            for (i, ((job, g), first)) in ok_jobs.into_iter().zip(gens).zip(first_text).enumerate()
            {
                let since = |t: Instant| t.saturating_duration_since(job.sent).as_secs_f64();
                let prompt_logprobs = echo.contains(&i).then(|| scored.next().unwrap_or_default());
                let _ = job.reply.send(Ok(ChatResponse {
                    text: g.text,
                    prompt_tokens: Some(g.prompt_tokens as u64),
                    completion_tokens: Some(g.token_ids.len() as u64),
                    finish_reason: Some(
                        match g.finish_reason {
                            FinishReason::Stop => "stop",
                            FinishReason::Length => "length",
                        }
                        .into(),
                    ),
                    ttft_s: first.map(since),
                    latency_s: since(finished),
                    compute_s: Some(compute),
                    model: None,
                    logprobs: g.logprobs,
                    prompt_logprobs,
                }));
            }
        }
        Ok(Err(e)) => {
            let err = match e {
                GenerateError::ContextLength { .. } => ProviderError::ContextLength {
                    detail: e.to_string(),
                },
                e => ProviderError::Local(e.to_string()),
            };
            for job in ok_jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
        Err(_) => {
            for job in ok_jobs {
                let _ = job
                    .reply
                    .send(Err(ProviderError::Local("generation panicked".into())));
            }
        }
    }
}

impl LocalProvider {
    /// Generate for a request (`req.raw` skips the chat template: the first message is the
    /// prompt); `stream` receives the text as it settles.
    pub async fn generate(
        &self,
        req: &ChatRequest,
        stream: Option<Deltas>,
    ) -> Result<ChatResponse, ProviderError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || ProviderError::Local("the model's worker has stopped".into());
        self.tx
            .send(Job {
                req: req.clone(),
                stream,
                sent: Instant::now(),
                reply,
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl Provider for LocalProvider {
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<&'a Deltas>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.generate(req, deltas.cloned()))
    }

    fn identity(&self) -> Value {
        self.identity.clone()
    }
}
