//! Evaluation: a suite's cases, answered by a target, scored, summarised with confidence
//! intervals. This is the local-model half; hosted providers come with the eval-harness issue.

pub mod scorers;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::DataError;
use crate::data::load::{self, Row};
use crate::generate::sampling::SamplingParams;
use crate::generate::{Engine, GenerateOptions};
use crate::tokenize::Message;
use scorers::{ScorerSpec, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {detail}")]
    Suite { path: PathBuf, detail: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Other(String),
}

/// Generation settings of a suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    #[serde(default = "d_max")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub stop: Vec<String>,
}

fn d_max() -> usize {
    256
}

impl Default for GenerationSpec {
    fn default() -> Self {
        Self {
            max_tokens: d_max(),
            temperature: 0.0,
            stop: Vec::new(),
        }
    }
}

/// A suite file (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Task names routing uses.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The cases: a .jsonl, .json, .parquet or .csv file (relative to the suite's folder or the working directory).
    pub dataset: PathBuf,
    /// A column of chat messages: the prompt is every message before the last assistant turn.
    #[serde(default)]
    pub messages: Option<String>,
    /// Or a user message template over the row's columns (`{{ question }}`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    /// The column holding the reference answer.
    pub reference: String,
    /// Use at most this many cases (the first ones).
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub generation: GenerationSpec,
    pub scorers: Vec<ScorerSpec>,
}

impl Suite {
    pub fn load(path: &Path) -> Result<(Self, PathBuf), EvalError> {
        let err = |detail: String| EvalError::Suite {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let suite: Suite =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if suite.messages.is_some() == suite.user.is_some() {
            return Err(err(
                "set exactly one of `messages` (a column of chat messages) or `user` (a template)"
                    .into(),
            ));
        }
        if suite.scorers.is_empty() {
            return Err(err("at least one [[scorers]] entry is needed".into()));
        }
        let beside = path.parent().unwrap_or(Path::new(".")).join(&suite.dataset);
        let data = if suite.dataset.exists() {
            suite.dataset.clone()
        } else {
            beside
        };
        Ok((suite, data))
    }

    /// The chat request of one case.
    pub fn prompt(&self, row: &Row) -> Result<Vec<Message>, EvalError> {
        let mut msgs = Vec::new();
        if let Some(s) = &self.system {
            msgs.push(Message::new("system", s));
        }
        if let Some(col) = &self.messages {
            let list = row
                .fields
                .get(col)
                .and_then(|v| v.as_array())
                .ok_or_else(|| row.err(format!("`{col}` must be a list of messages")))?;
            let mut all = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let get = |k: &str| {
                    m.get(k)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| row.err(format!("`{col}[{i}].{k}` must be a string")))
                };
                all.push(Message::new(&get("role")?, &get("content")?));
            }
            while all.last().is_some_and(|m| m.role == "assistant") {
                all.pop();
            }
            if all.is_empty() {
                return Err(row
                    .err(format!("`{col}` has no prompt before the answer"))
                    .into());
            }
            msgs.extend(all);
        } else if let Some(t) = &self.user {
            let env = minijinja::Environment::new();
            let text = env
                .render_str(t, &row.fields)
                .map_err(|e| row.err(format!("user template: {e}")))?;
            msgs.push(Message::new("user", &text));
        }
        Ok(msgs)
    }
}

/// One scored case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub line: usize,
    pub prompt: Vec<Message>,
    pub output: String,
    pub reference: String,
    pub score: f64,
    pub pass: bool,
    pub verdicts: Vec<Verdict>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub latency_s: f64,
}

/// A suite's summary for one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub suite: String,
    pub target: String,
    pub cases: usize,
    pub passed: usize,
    pub pass_rate: f64,
    pub ci95: (f64, f64),
    pub mean_score: f64,
    pub mean_latency_s: f64,
    pub completion_tokens: usize,
}

/// Run a suite on a local engine, `batch` cases at a time.
pub fn run_local(
    suite: &Suite,
    data: &Path,
    engine: &Engine,
    target: &str,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<CaseResult>, Summary), EvalError> {
    let mut rows = load::read_rows(data)?;
    if let Some(n) = suite.limit {
        rows.truncate(n);
    }
    let opts = GenerateOptions {
        max_new_tokens: suite.generation.max_tokens,
        sampling: SamplingParams {
            temperature: suite.generation.temperature,
            ..Default::default()
        },
        stop: suite.generation.stop.clone(),
        logprobs: None,
    };
    let total_weight: f64 = suite.scorers.iter().map(|s| s.weight).sum();
    let mut results = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        progress(results.len(), rows.len());
        let mut prompts = Vec::new();
        let mut ids = Vec::new();
        for row in chunk {
            let p = suite.prompt(row)?;
            let text = engine
                .tokenizer
                .apply_chat_template(&p, true)
                .map_err(|e| EvalError::Other(e.to_string()))?;
            ids.push(
                engine
                    .tokenizer
                    .encode(&text, false)
                    .map_err(|e| EvalError::Other(e.to_string()))?,
            );
            prompts.push(p);
        }
        let started = Instant::now();
        let (gens, _) = engine
            .generate_batch(&ids, &opts, |_, _| {})
            .map_err(|e| EvalError::Other(e.to_string()))?;
        let latency = started.elapsed().as_secs_f64();
        for ((row, prompt), g) in chunk.iter().zip(prompts).zip(gens) {
            let reference = row.str(&suite.reference)?.to_string();
            let verdicts: Vec<Verdict> = suite
                .scorers
                .iter()
                .map(|s| scorers::score(s.kind, &g.text, &reference))
                .collect();
            let score = suite
                .scorers
                .iter()
                .zip(&verdicts)
                .map(|(s, v)| s.weight * v.score)
                .sum::<f64>()
                / total_weight;
            results.push(CaseResult {
                line: row.line,
                prompt,
                output: g.text,
                reference,
                score,
                pass: score >= 1.0 - 1e-9,
                verdicts,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.token_ids.len(),
                // The batch's wall time: what each of its cases waited.
                latency_s: latency,
            });
        }
    }
    progress(results.len(), rows.len());
    let n = results.len();
    let passed = results.iter().filter(|r| r.pass).count();
    let summary = Summary {
        suite: suite.name.clone(),
        target: target.to_string(),
        cases: n,
        passed,
        pass_rate: passed as f64 / n.max(1) as f64,
        ci95: stats::wilson(passed as f64, n as f64),
        mean_score: results.iter().map(|r| r.score).sum::<f64>() / n.max(1) as f64,
        mean_latency_s: results.iter().map(|r| r.latency_s).sum::<f64>() / n.max(1) as f64,
        completion_tokens: results.iter().map(|r| r.completion_tokens).sum(),
    };
    Ok((results, summary))
}

/// Per-case results as a DataFrame (one row per case), for Parquet and analysis.
pub fn cases_frame(
    cases: &[CaseResult],
    summary: &Summary,
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let n = cases.len();
    df!(
        "suite" => vec![summary.suite.as_str(); n],
        "target" => vec![summary.target.as_str(); n],
        "line" => cases.iter().map(|c| c.line as u64).collect::<Vec<_>>(),
        "prompt" => cases.iter().map(|c| c.prompt.last().map(|m| m.content.clone()).unwrap_or_default()).collect::<Vec<_>>(),
        "output" => cases.iter().map(|c| c.output.clone()).collect::<Vec<_>>(),
        "reference" => cases.iter().map(|c| c.reference.clone()).collect::<Vec<_>>(),
        "score" => cases.iter().map(|c| c.score).collect::<Vec<_>>(),
        "pass" => cases.iter().map(|c| c.pass).collect::<Vec<_>>(),
        "reason" => cases.iter().map(|c| c.verdicts.iter().filter_map(|v| v.reason.clone()).collect::<Vec<_>>().join("; ")).collect::<Vec<_>>(),
        "prompt_tokens" => cases.iter().map(|c| c.prompt_tokens as u64).collect::<Vec<_>>(),
        "completion_tokens" => cases.iter().map(|c| c.completion_tokens as u64).collect::<Vec<_>>(),
        "latency_s" => cases.iter().map(|c| c.latency_s).collect::<Vec<_>>(),
    )
}
