//! The eval runner: every case × target × repeat, concurrently per target (through each
//! target's one door, [`Target::ask`]: its limit on requests in flight, rate limits and retries),
//! answers from the response cache when it has them, results streamed to `results.jsonl` one line
//! at a time so that memory stays flat and a killed run resumes where it stopped. At the end:
//! Parquet, summary, comparisons. It prints nothing: an [`EvalObserver`] hears of every row.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::EvalError;
use super::likelihood::{self, LikelihoodCase, OutputType};
use super::results::{self, Comparison, ResultRow, SummaryRow, job_key};
use super::scorers::{JudgeError, Judges, Verdict};
use super::suite::{Case, Suite};
use crate::providers::cache::ResponseCache;
use crate::providers::{BoxFuture, ChatRequest, ChatResponse, Message, Outcome, Target};
use crate::util::{Interrupt, now_s, write_atomic, write_json};

/// Watches an eval run. Every method has a default that does nothing.
pub trait EvalObserver {
    /// Before any request: a target's rows in this run, and how many an earlier run did.
    fn planned(&mut self, _target: &str, _rows: usize, _done: usize) {}
    /// A row was answered, scored and written.
    fn row(&mut self, _row: &ResultRow) {}
    /// Every row is in (or the run was interrupted).
    fn finished(&mut self) {}
}

/// An observer that watches nothing.
pub struct Quiet;

impl EvalObserver for Quiet {}

pub struct RunOptions {
    /// The run's folder: results.jsonl (streamed), results.parquet, summary.*, comparisons.*, run.json.
    pub out: PathBuf,
    /// None: `--no-cache` (every request is sent, and answers are not stored).
    pub cache: Option<ResponseCache>,
    /// Start over instead of resuming the rows already in `out`.
    pub fresh: bool,
    /// Override every suite's `repeats`.
    pub repeats: Option<u32>,
    /// Set: no new request starts; those in flight finish and are written.
    pub interrupt: Interrupt,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub out: PathBuf,
    /// Case × target × repeat rows the run covers.
    pub jobs: usize,
    /// Rows already done by an earlier run of the same folder.
    pub resumed: usize,
    /// Requests sent to providers (retries included; judges included).
    pub requests: usize,
    /// Answers taken from the response cache.
    pub cache_hits: usize,
    pub errors: usize,
    pub interrupted: bool,
    pub wall_s: f64,
    pub summary: Vec<SummaryRow>,
    pub comparisons: Vec<Comparison>,
}

struct Ctx {
    run_id: String,
    cache: Option<ResponseCache>,
    judges: BTreeMap<String, (Arc<Target>, Value)>,
    requests: AtomicUsize,
    hits: AtomicUsize,
    interrupt: Interrupt,
}

impl Ctx {
    /// An answer: from the cache, or from the provider (then cached).
    async fn ask(
        &self,
        t: &Target,
        identity: &Value,
        req: &ChatRequest,
        repeat: u32,
    ) -> (Outcome, bool) {
        let key = ResponseCache::key(identity, req, repeat);
        if let Some(r) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (
                Outcome {
                    result: Ok(r),
                    attempts: 0,
                    waited_s: 0.0,
                },
                true,
            );
        }
        let out = t.ask(req).await;
        self.requests
            .fetch_add(out.attempts as usize, Ordering::Relaxed);
        if let (Ok(r), Some(c)) = (&out.result, &self.cache)
            && let Err(e) = c.put(&key, r)
        {
            tracing::warn!("response cache {}: {e}", c.dir().display());
        }
        (out, false)
    }

    async fn job(
        &self,
        suite: &Suite,
        case: &Case,
        t: &Target,
        identity: &Value,
        repeat: u32,
    ) -> ResultRow {
        let req = suite.request(case, repeat);
        let mut row = self.row(suite, case, t, repeat, req.seed);
        if let Some(l) = &case.likelihood {
            self.likelihood(l, t, identity, repeat, &mut row).await;
            row.finished_at = now_s();
            return row;
        }
        let (out, cached) = self.ask(t, identity, &req, repeat).await;
        (row.attempts, row.cached) = (out.attempts, cached);
        match out.result {
            Err(e) => {
                row.error = Some(e.to_string());
                row.reason = Some(format!(
                    "request failed after {} attempt(s): {e}",
                    out.attempts
                ));
            }
            Ok(resp) => self.score(suite, case, t, resp, &mut row).await,
        }
        row.finished_at = now_s();
        row
    }

    /// A case of a log-likelihood suite: every continuation scored (together, so that the local
    /// model batches them), then `acc` (and `acc_norm`) or the log-likelihood.
    async fn likelihood(
        &self,
        l: &LikelihoodCase,
        t: &Target,
        identity: &Value,
        repeat: u32,
        row: &mut ResultRow,
    ) {
        let reqs = l.requests(usize::from(t.spec.provider != "local"));
        let outs =
            futures_util::future::join_all(reqs.iter().map(|r| self.ask(t, identity, r, repeat)))
                .await;
        row.attempts = outs.iter().map(|(o, _)| o.attempts).sum();
        row.cached = outs.iter().all(|(_, c)| *c);
        let from = l.context.len();
        let mut scored = Vec::with_capacity(outs.len());
        let (mut latency, mut cost, mut prompt_tokens) = (0.0, None::<f64>, 0u64);
        for (out, _) in outs {
            let resp = match out.result {
                Ok(r) => r,
                Err(e) => {
                    row.error = Some(e.to_string());
                    row.reason = Some(format!("a continuation could not be scored: {e}"));
                    return;
                }
            };
            latency += resp.latency_s;
            prompt_tokens += resp.prompt_tokens.unwrap_or(0);
            if let Some(c) = t.cost(&resp) {
                *cost.get_or_insert(0.0) += c;
            }
            let tokens = resp.prompt_logprobs.as_deref().unwrap_or_default();
            match likelihood::continuation(tokens, from) {
                Some(s) => scored.push(s),
                None => {
                    let e = format!(
                        "`{}` sent no log-probabilities for the prompt (its server must return `echo` with `logprobs`)",
                        t.name()
                    );
                    row.error = Some(e.clone());
                    row.reason = Some(e);
                    return;
                }
            }
        }
        row.latency_s = Some(latency);
        row.cost_usd = cost;
        row.prompt_tokens = Some(prompt_tokens);
        let lls: Vec<f64> = scored.iter().map(|s| s.0).collect();
        row.loglikelihoods = Some(lls.clone());
        match l.output_type {
            OutputType::MultipleChoice => {
                let pick = likelihood::argmax(&lls);
                let norm: Vec<f64> = lls
                    .iter()
                    .zip(&l.choices)
                    .map(|(ll, c)| ll / c.chars().count().max(1) as f64)
                    .collect();
                let gold = l.gold.unwrap_or(0);
                let acc = f64::from(u8::from(pick == gold));
                let acc_norm = f64::from(u8::from(likelihood::argmax(&norm) == gold));
                row.output = Some(l.choices[pick].clone());
                row.reference = Some(l.choices[gold].clone());
                row.score = Some(acc);
                row.acc_norm = Some(acc_norm);
                row.pass = Some(acc == 1.0);
                if acc == 0.0 {
                    row.reason = Some(format!(
                        "acc: chose `{}` (log-likelihood {:.3}), the answer is `{}` ({:.3})",
                        l.choices[pick], lls[pick], l.choices[gold], lls[gold]
                    ));
                }
            }
            OutputType::Loglikelihood => {
                let (ll, greedy, _) = scored[0];
                row.score = Some(f64::from(u8::from(greedy)));
                row.pass = Some(greedy);
                if !greedy {
                    row.reason =
                        Some("acc: the reference is not the model's greedy continuation".into());
                }
                row.output = Some(format!("{ll}"));
            }
            _ => {
                // Every token of the text: the summary turns these into bits per byte.
                let text = &l.continuations[0];
                row.scored_bytes = Some(text.len() as u64);
                row.scored_words = Some(text.split_whitespace().count() as u64);
            }
        }
        row.verdicts = serde_json::to_string(&serde_json::json!({
            "loglikelihoods": lls,
            "greedy": scored.iter().map(|s| s.1).collect::<Vec<_>>(),
            "tokens": scored.iter().map(|s| s.2).collect::<Vec<_>>(),
        }))
        .unwrap_or_default();
    }

    /// A row for a case and target, to be filled in.
    fn row(
        &self,
        suite: &Suite,
        case: &Case,
        t: &Target,
        repeat: u32,
        seed: Option<u64>,
    ) -> ResultRow {
        ResultRow {
            run_id: self.run_id.clone(),
            suite: suite.name().to_string(),
            case_id: case.id.clone(),
            line: case.line as u64,
            tags: case.tags.join(","),
            target: t.name().to_string(),
            provider: t.spec.provider.clone(),
            model: t.spec.model.clone(),
            repeat,
            seed,
            prompt_hash: case.prompt_hash.clone(),
            prompt: serde_json::to_string(&case.messages).unwrap_or_default(),
            output: None,
            reference: case.reference.clone(),
            score: None,
            pass: None,
            verdicts: "[]".into(),
            reason: None,
            latency_s: None,
            ttft_s: None,
            output_tok_s: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost_usd: None,
            compute_s: None,
            finish_reason: None,
            error: None,
            attempts: 0,
            cached: false,
            finished_at: 0.0,
            ..Default::default()
        }
    }

    async fn score(
        &self,
        suite: &Suite,
        case: &Case,
        t: &Target,
        resp: ChatResponse,
        row: &mut ResultRow,
    ) {
        let question = case
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let reference = case.reference.as_deref();
        let mut verdicts = Vec::with_capacity(suite.scorers.len());
        for s in &suite.scorers {
            let v = match s.score(&resp.text, question, reference, self).await {
                Ok(v) => v,
                Err(e) => {
                    // A judge that could not grade: the row is asked again on resume.
                    row.error = Some(e.to_string());
                    Verdict {
                        scorer: s.name().into(),
                        score: 0.0,
                        extracted: None,
                        reason: Some(e.to_string()),
                    }
                }
            };
            verdicts.push(v);
        }
        let total: f64 = suite.scorers.iter().map(|s| s.weight).sum();
        let score = suite
            .scorers
            .iter()
            .zip(&verdicts)
            .map(|(s, v)| s.weight * v.score)
            .sum::<f64>()
            / total.max(f64::MIN_POSITIVE);
        let reasons: Vec<String> = verdicts
            .iter()
            .filter_map(|v| v.reason.as_ref().map(|r| format!("{}: {r}", v.scorer)))
            .collect();
        row.score = Some(score);
        row.pass = Some(score >= suite.pass_threshold() - 1e-9);
        row.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        row.verdicts = serde_json::to_string(&verdicts).unwrap_or_default();
        row.cost_usd = t.cost(&resp);
        row.compute_s = resp.compute_s;
        row.latency_s = Some(resp.latency_s);
        row.ttft_s = resp.ttft_s;
        row.output_tok_s = resp.output_tok_s();
        row.prompt_tokens = resp.prompt_tokens;
        row.completion_tokens = resp.completion_tokens;
        row.finish_reason = resp.finish_reason;
        if resp.model.is_some() {
            row.model = resp.model;
        }
        row.output = Some(resp.text);
    }
}

/// Judge scorers grade through the run's judge targets, with the cache and the same door as
/// every other request.
impl Judges for Ctx {
    fn ask<'a>(
        &'a self,
        target: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<String, JudgeError>> {
        Box::pin(async move {
            let fail = |detail: String| JudgeError {
                target: target.to_string(),
                detail,
            };
            let (t, identity) = self
                .judges
                .get(target)
                .ok_or_else(|| fail("is not defined as a target".into()))?;
            let req = ChatRequest {
                messages,
                max_tokens: 512,
                temperature: 0.0,
                top_p: 1.0,
                seed: Some(0),
                stop: Vec::new(),
                raw: false,
                ..Default::default()
            };
            let (out, _) = Ctx::ask(self, t, identity, &req, 0).await;
            out.result.map(|r| r.text).map_err(|e| fail(e.to_string()))
        })
    }
}

/// Keep the finished rows of an earlier run of this folder that this run also covers; drop failed
/// rows (they are asked again) and a half-written last line. Returns the keys done.
fn resume(
    path: &Path,
    wanted: &HashSet<String>,
    fresh: bool,
) -> Result<HashSet<String>, EvalError> {
    if fresh {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(EvalError::io(path, e));
            }
            _ => return Ok(HashSet::new()),
        }
    }
    let (rows, good_bytes) = results::read_rows(path)?;
    let total = std::fs::metadata(path)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mut done = HashSet::new();
    let keep: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.error.is_none() && wanted.contains(&r.key()) && done.insert(r.key()))
        .collect();
    if keep.len() != rows.len() || good_bytes != total {
        write_atomic(path, &results::jsonl(&keep))?;
    }
    Ok(done)
}

/// Run suites on targets. `judges` are the targets judge scorers may use (by name); `observer`
/// hears of every row.
pub async fn run(
    suites: &[Suite],
    targets: &[Arc<Target>],
    judges: &BTreeMap<String, Arc<Target>>,
    opts: &RunOptions,
    observer: &mut dyn EvalObserver,
) -> Result<RunReport, EvalError> {
    let started = Instant::now();
    for s in suites
        .iter()
        .filter(|s| s.file.output_type != OutputType::GenerateUntil)
    {
        if let Some(t) = targets.iter().find(|t| !t.scores_prompts()) {
            return Err(EvalError::Suite {
                path: s.path.clone(),
                detail: format!(
                    "target `{}` ({}) answers chat completions only, and a log-likelihood suite needs the prompt's log-probabilities: ask the local model, or an OpenAI-compatible `/v1/completions` that returns them with `echo` (vLLM, llama.cpp's server, `switchyard serve`; provider `openai-compatible`)",
                    t.name(),
                    t.spec.provider
                ),
            });
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| EvalError::io(&opts.out, e))?;
    let results_path = opts.out.join("results.jsonl");
    let repeats = |s: &Suite| opts.repeats.unwrap_or_else(|| s.repeats());

    let mut wanted = HashSet::new();
    for s in suites {
        for c in &s.cases {
            for t in targets {
                for r in 0..repeats(s) {
                    wanted.insert(job_key(s.name(), &c.id, t.name(), r));
                }
            }
        }
    }
    let done = resume(&results_path, &wanted, opts.fresh)?;
    let run_id = format!("{:016x}", rand::random::<u64>());
    write_run_json(&opts.out, &run_id, suites, targets, &repeats)?;

    let ctx = Arc::new(Ctx {
        run_id,
        cache: opts.cache.clone(),
        judges: judges
            .iter()
            .map(|(k, t)| (k.clone(), (t.clone(), t.identity())))
            .collect(),
        requests: AtomicUsize::new(0),
        hits: AtomicUsize::new(0),
        interrupt: opts.interrupt.clone(),
    });

    let (tx, mut rx) = mpsc::channel::<ResultRow>(1024);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .map_err(|e| EvalError::io(&results_path, e))?;

    let mut work = Vec::new();
    for t in targets {
        let mut jobs = Vec::new();
        let mut total = 0;
        for (si, s) in suites.iter().enumerate() {
            for (ci, c) in s.cases.iter().enumerate() {
                for r in 0..repeats(s) {
                    total += 1;
                    if !done.contains(&job_key(s.name(), &c.id, t.name(), r)) {
                        jobs.push((si, ci, r));
                    }
                }
            }
        }
        observer.planned(t.name(), total, total - jobs.len());
        let (ctx, t, tx) = (ctx.clone(), t.clone(), tx.clone());
        let identity = t.identity();
        let width = t.concurrency();
        work.push(async move {
            futures_util::stream::iter(jobs)
                .map(|(si, ci, r)| {
                    let (ctx, t, identity) = (&ctx, &t, &identity);
                    async move {
                        if ctx.interrupt.is_set() {
                            return None;
                        }
                        Some(
                            ctx.job(&suites[si], &suites[si].cases[ci], t, identity, r)
                                .await,
                        )
                    }
                })
                .buffer_unordered(width)
                .for_each(|row| {
                    let tx = &tx;
                    async move {
                        if let Some(row) = row {
                            let _ = tx.send(row).await;
                        }
                    }
                })
                .await;
        });
    }
    drop(tx);
    // One writer, in this task: a line per row, flushed, so a killed run loses at most the rows
    // in flight; the observer hears of each row as it is written.
    let writer = async {
        let mut f = std::io::BufWriter::new(file);
        let mut errors = 0;
        while let Some(row) = rx.recv().await {
            errors += row.error.is_some() as usize;
            let mut line = serde_json::to_vec(&row).expect("rows serialise to JSON");
            line.push(b'\n');
            f.write_all(&line)
                .and_then(|_| f.flush())
                .map_err(|e| EvalError::io(&results_path, e))?;
            observer.row(&row);
        }
        Ok::<usize, EvalError>(errors)
    };
    let (_, errors) = tokio::join!(futures_util::future::join_all(work), writer);
    let errors = errors?;
    observer.finished();

    let (rows, _) = results::read_rows(&results_path)?;
    let summary = results::summarize(&rows);
    let names: Vec<String> = targets.iter().map(|t| t.name().to_string()).collect();
    let comparisons = results::compare(&rows, &names);
    results::write_outputs(&opts.out, &rows, &summary, &comparisons)?;
    Ok(RunReport {
        out: opts.out.clone(),
        jobs: wanted.len(),
        resumed: done.len(),
        requests: ctx.requests.load(Ordering::Relaxed),
        cache_hits: ctx.hits.load(Ordering::Relaxed),
        errors,
        interrupted: ctx.interrupt.is_set(),
        wall_s: started.elapsed().as_secs_f64(),
        summary,
        comparisons,
    })
}

/// `run.json`: what was run, with which targets (their settings, never secrets: API keys are
/// named by variable, header values are left out).
fn write_run_json(
    out: &Path,
    run_id: &str,
    suites: &[Suite],
    targets: &[Arc<Target>],
    repeats: &dyn Fn(&Suite) -> u32,
) -> Result<(), EvalError> {
    let refs_only = regex::Regex::new(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\})+$").expect("valid");
    let targets: Vec<Value> = targets
        .iter()
        .map(|t| {
            let mut spec = serde_json::to_value(&t.spec).unwrap_or(Value::Null);
            if let Some(h) = spec.get_mut("headers").and_then(Value::as_object_mut) {
                for v in h.values_mut() {
                    // `${VAR}` references are kept (a policy derived from this run can use them);
                    // literal values may be secrets and are left out.
                    let only_refs = v.as_str().is_some_and(|s| refs_only.is_match(s));
                    if !only_refs {
                        *v = json!("[not recorded]");
                    }
                }
            }
            json!({ "spec": spec, "identity": t.identity() })
        })
        .collect();
    let v = json!({
        "run_id": run_id,
        "started_at": now_s(),
        "switchyard": env!("CARGO_PKG_VERSION"),
        // Local targets' latencies depend on it.
        "machine": crate::machine::this(),
        "suites": suites.iter().map(|s| json!({
            "name": s.name(), "path": s.path, "cases": s.cases.len(), "repeats": repeats(s),
            "tags": s.file.tags, "generation": s.file.generation,
        })).collect::<Vec<_>>(),
        "targets": targets,
    });
    Ok(write_json(&out.join("run.json"), &v)?)
}
