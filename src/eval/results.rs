//! Result rows (one per case × target × repeat), and what is made of them: the Parquet file, the
//! summary per suite × tag × target, and paired comparisons of targets on the same cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EvalError;
use super::stats::{self, Estimate, Paired};
use crate::util::{FileError, write_atomic, write_json};

/// One answered (or failed) case × target × repeat. The file format of `results.jsonl` and the
/// columns of `results.parquet`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResultRow {
    pub run_id: String,
    pub suite: String,
    pub case_id: String,
    pub line: u64,
    /// Comma-separated tags.
    pub tags: String,
    pub target: String,
    pub provider: String,
    pub model: Option<String>,
    pub repeat: u32,
    pub seed: Option<u64>,
    pub prompt_hash: String,
    /// The chat request's messages as JSON.
    pub prompt: String,
    pub output: Option<String>,
    pub reference: Option<String>,
    /// Weighted score in [0, 1]; null when the request failed.
    pub score: Option<f64>,
    pub pass: Option<bool>,
    /// Every scorer's verdict, as JSON.
    pub verdicts: String,
    /// Why the case failed, from the scorers (or the error).
    pub reason: Option<String>,
    pub latency_s: Option<f64>,
    pub ttft_s: Option<f64>,
    pub output_tok_s: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Machine seconds the answer used, where the provider reports it (the local model).
    #[serde(default)]
    pub compute_s: Option<f64>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    /// Requests sent for this row in this run (0 when the cache answered).
    pub attempts: u32,
    pub cached: bool,
    /// Unix time the row was written.
    pub finished_at: f64,
    /// Log-likelihood suites: each continuation's log-likelihood (a choice's, or the reference's,
    /// or the whole text's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loglikelihoods: Option<Vec<f64>>,
    /// `multiple_choice`: `acc_norm` (the choice after dividing by each choice's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    /// `loglikelihood_rolling`: the text's bytes and words (for bits per byte, word perplexity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_words: Option<u64>,
}

impl ResultRow {
    /// What identifies a row across runs: resuming skips rows with these keys.
    pub fn key(&self) -> String {
        job_key(&self.suite, &self.case_id, &self.target, self.repeat)
    }
}

pub fn job_key(suite: &str, case: &str, target: &str, repeat: u32) -> String {
    format!("{suite}\u{1f}{case}\u{1f}{target}\u{1f}{repeat}")
}

/// One line of `summary.json` / `summary.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub suite: String,
    /// `all`, or one of the cases' tags.
    pub tag: String,
    pub target: String,
    pub cases: usize,
    pub results: usize,
    pub mean_score: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub ci_method: String,
    pub pass_rate: f64,
    pub errors: usize,
    pub error_rate: f64,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub ttft_p50_s: Option<f64>,
    pub ttft_p95_s: Option<f64>,
    pub output_tok_s_p50: Option<f64>,
    pub prompt_tokens_mean: Option<f64>,
    pub completion_tokens_mean: Option<f64>,
    pub cost_per_1k_requests_usd: Option<f64>,
    pub cost_total_usd: Option<f64>,
    pub cached: usize,
    /// `multiple_choice`: mean `acc_norm` (`mean_score` is `acc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    /// `loglikelihood`: `exp(−mean log-likelihood)` of the references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// `loglikelihood_rolling`: −Σ log-likelihood / (bytes · ln 2), and `exp(−Σ ll / words)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_perplexity: Option<f64>,
}

/// A group's log-likelihood metrics: mean `acc_norm`, the references' perplexity, and bits per
/// byte and word perplexity of scored texts (each None where no row has what it needs).
fn likelihood_metrics(ok: &[&&ResultRow]) -> [Option<f64>; 4] {
    let acc_norm = opt_mean(ok.iter().filter_map(|r| r.acc_norm));
    let refs: Vec<f64> = ok
        .iter()
        .filter(|r| r.acc_norm.is_none() && r.scored_bytes.is_none())
        .filter_map(|r| r.loglikelihoods.as_ref()?.first().copied())
        .collect();
    let perplexity = opt_mean(refs.into_iter()).map(|m| (-m).exp());
    let texts: Vec<(f64, u64, u64)> = ok
        .iter()
        .filter_map(|r| {
            let ll = r.loglikelihoods.as_ref()?.first().copied()?;
            Some((ll, r.scored_bytes?, r.scored_words.unwrap_or(0)))
        })
        .collect();
    let (ll, bytes, words) = texts
        .iter()
        .fold((0.0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
    let bpb = (bytes > 0).then(|| -ll / (bytes as f64 * std::f64::consts::LN_2));
    let wppl = (words > 0).then(|| (-ll / words as f64).exp());
    [acc_norm, perplexity, bpb, wppl]
}

/// One line of `comparisons.json` / `.csv`: target a − target b on the cases both answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub suite: String,
    pub tag: String,
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub paired: Paired,
}

fn opt_mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Per-case scores of a group (repeats averaged; a failed request scores 0).
fn per_case(rows: &[&ResultRow]) -> (BTreeMap<String, f64>, bool) {
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for r in rows {
        let e = sums.entry(r.case_id.clone()).or_default();
        e.0 += r.score.unwrap_or(0.0);
        e.1 += 1;
    }
    let repeated = sums.values().any(|(_, n)| *n > 1);
    (
        sums.into_iter()
            .map(|(k, (s, n))| (k, s / n as f64))
            .collect(),
        repeated,
    )
}

fn groups(rows: &[ResultRow]) -> BTreeMap<(String, String, String), Vec<&ResultRow>> {
    let mut g: BTreeMap<(String, String, String), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        let tags = std::iter::once("all").chain(r.tags.split(',').filter(|t| !t.is_empty()));
        for t in tags.collect::<BTreeSet<_>>() {
            g.entry((r.suite.clone(), t.to_string(), r.target.clone()))
                .or_default()
                .push(r);
        }
    }
    g
}

pub fn summarize(rows: &[ResultRow]) -> Vec<SummaryRow> {
    groups(rows)
        .into_iter()
        .map(|((suite, tag, target), rs)| {
            let (cases, repeated) = per_case(&rs);
            let scores: Vec<f64> = cases.values().copied().collect();
            let Estimate {
                mean,
                ci_low,
                ci_high,
                method,
            } = stats::mean_ci(&scores, repeated);
            let ok: Vec<&&ResultRow> = rs.iter().filter(|r| r.error.is_none()).collect();
            let lat: Vec<f64> = ok.iter().filter_map(|r| r.latency_s).collect();
            let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).collect();
            let tps: Vec<f64> = ok.iter().filter_map(|r| r.output_tok_s).collect();
            let costs: Vec<f64> = ok.iter().filter_map(|r| r.cost_usd).collect();
            let errors = rs.len() - ok.len();
            let priced = !costs.is_empty() && costs.len() == ok.len();
            let [acc_norm, perplexity, bits_per_byte, word_perplexity] = likelihood_metrics(&ok);
            SummaryRow {
                suite,
                tag,
                target,
                cases: cases.len(),
                results: rs.len(),
                mean_score: mean,
                ci_low,
                ci_high,
                ci_method: method,
                pass_rate: rs.iter().filter(|r| r.pass == Some(true)).count() as f64
                    / rs.len().max(1) as f64,
                errors,
                error_rate: errors as f64 / rs.len().max(1) as f64,
                latency_p50_s: stats::quantile(&lat, 0.5),
                latency_p95_s: stats::quantile(&lat, 0.95),
                ttft_p50_s: stats::quantile(&ttft, 0.5),
                ttft_p95_s: stats::quantile(&ttft, 0.95),
                output_tok_s_p50: stats::quantile(&tps, 0.5),
                prompt_tokens_mean: opt_mean(
                    ok.iter().filter_map(|r| r.prompt_tokens.map(|t| t as f64)),
                ),
                completion_tokens_mean: opt_mean(
                    ok.iter()
                        .filter_map(|r| r.completion_tokens.map(|t| t as f64)),
                ),
                cost_per_1k_requests_usd: priced
                    .then(|| 1000.0 * costs.iter().sum::<f64>() / costs.len() as f64),
                cost_total_usd: priced.then(|| costs.iter().sum()),
                cached: rs.iter().filter(|r| r.cached).count(),
                acc_norm,
                perplexity,
                bits_per_byte,
                word_perplexity,
            }
        })
        .collect()
}

/// Every pair of targets (in the order given) on every suite × tag, over the cases both have.
pub fn compare(rows: &[ResultRow], targets: &[String]) -> Vec<Comparison> {
    let g = groups(rows);
    let mut out = Vec::new();
    let keys: BTreeSet<(String, String)> =
        g.keys().map(|(s, t, _)| (s.clone(), t.clone())).collect();
    for (suite, tag) in keys {
        for (i, a) in targets.iter().enumerate() {
            for b in &targets[i + 1..] {
                let (Some(ra), Some(rb)) = (
                    g.get(&(suite.clone(), tag.clone(), a.clone())),
                    g.get(&(suite.clone(), tag.clone(), b.clone())),
                ) else {
                    continue;
                };
                let (ca, _) = per_case(ra);
                let (cb, _) = per_case(rb);
                let (xa, xb): (Vec<f64>, Vec<f64>) = ca
                    .iter()
                    .filter_map(|(k, &sa)| cb.get(k).map(|&sb| (sa, sb)))
                    .unzip();
                if xa.is_empty() {
                    continue;
                }
                out.push(Comparison {
                    suite: suite.clone(),
                    tag: tag.clone(),
                    a: a.clone(),
                    b: b.clone(),
                    paired: stats::paired(&xa, &xb),
                });
            }
        }
    }
    out
}

/// Read `results.jsonl`: the rows, and how many bytes of it are whole lines (a killed run can
/// leave half a line at the end).
pub fn read_rows(path: &Path) -> Result<(Vec<ResultRow>, usize), EvalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(EvalError::io(path, e)),
    };
    let mut rows = Vec::new();
    let mut good = 0;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<ResultRow>(line) {
            Ok(r) => rows.push(r),
            Err(e) => {
                let line = rows.len() + 1;
                return Err(FileError::parse(path, format!("line {line}: {e}")).into());
            }
        }
        good += line.len();
    }
    Ok((rows, good))
}

/// Rows as JSON lines (plain structs with string keys: serialising them cannot fail).
pub fn jsonl<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut buf = Vec::new();
    for i in items {
        serde_json::to_writer(&mut buf, i).expect("rows serialise to JSON");
        buf.push(b'\n');
    }
    buf
}

/// A table through polars: from serde rows (via JSON lines, so nulls and types come out right);
/// `path` is the file it is for, in errors.
pub fn frame<T: Serialize>(
    items: &[T],
    path: &Path,
) -> Result<polars::prelude::DataFrame, EvalError> {
    use polars::prelude::*;
    JsonReader::new(std::io::Cursor::new(jsonl(items)))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None)
        .finish()
        .map_err(|e| table_error(path, e))
}

fn table_error(path: &Path, e: polars::prelude::PolarsError) -> EvalError {
    EvalError::Table {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    Ok(write_atomic(path, bytes)?)
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// `summary.md`: the summary and the comparisons as Markdown tables, for people.
pub fn markdown(summary: &[SummaryRow], comparisons: &[Comparison]) -> String {
    let mut s = String::from(
        "# Eval summary\n\nScore: mean over cases (a failed request scores 0), with its 95% interval.\n\n\
         | suite | tag | target | cases | score % | 95% CI | p50 latency s | p95 latency s | p50 TTFT s | output tok/s | $ / 1k requests | errors |\n\
         |---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in summary {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {}–{} ({}) | {} | {} | {} | {} | {} | {} |\n",
            r.suite,
            r.tag,
            r.target,
            r.cases,
            pct(r.mean_score),
            pct(r.ci_low),
            pct(r.ci_high),
            r.ci_method,
            opt(r.latency_p50_s, |v| format!("{v:.3}")),
            opt(r.latency_p95_s, |v| format!("{v:.3}")),
            opt(r.ttft_p50_s, |v| format!("{v:.3}")),
            opt(r.output_tok_s_p50, |v| format!("{v:.1}")),
            opt(r.cost_per_1k_requests_usd, |v| format!("{v:.4}")),
            r.errors
        ));
    }
    if !comparisons.is_empty() {
        s.push_str(
            "\n## Paired comparisons (a − b on the cases both answered)\n\n\
             | suite | tag | a | b | cases | difference, points | 95% CI | a better | b better | ties | McNemar p |\n\
             |---|---|---|---|---:|---:|---|---:|---:|---:|---:|\n",
        );
        for c in comparisons {
            let p = &c.paired;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:+.1} | {:+.1} to {:+.1} | {} | {} | {} | {} |\n",
                c.suite,
                c.tag,
                c.a,
                c.b,
                p.n,
                100.0 * p.diff,
                100.0 * p.ci_low,
                100.0 * p.ci_high,
                p.a_better,
                p.b_better,
                p.ties,
                opt(p.mcnemar_p, |v| if v < 1e-3 {
                    format!("{v:.1e}")
                } else {
                    format!("{v:.3}")
                })
            ));
        }
    }
    s
}

/// Write `results.parquet`, `summary.{json,csv,md}` and `comparisons.{json,csv}` into `out`.
pub fn write_outputs(
    out: &Path,
    rows: &[ResultRow],
    summary: &[SummaryRow],
    comparisons: &[Comparison],
) -> Result<(), EvalError> {
    use polars::prelude::*;
    if !rows.is_empty() {
        let path = out.join("results.parquet");
        let mut df = frame(rows, &path)?;
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf)
            .finish(&mut df)
            .map_err(|e| table_error(&path, e))?;
        write(&path, &buf)?;
    }
    write(
        &out.join("summary.md"),
        markdown(summary, comparisons).as_bytes(),
    )?;
    write_json(&out.join("summary.json"), &summary)?;
    write_json(&out.join("comparisons.json"), &comparisons)?;
    let (summary_csv, comparisons_csv) = (out.join("summary.csv"), out.join("comparisons.csv"));
    for (path, df) in [
        (
            &summary_csv,
            (!summary.is_empty())
                .then(|| frame(summary, &summary_csv))
                .transpose()?,
        ),
        (
            &comparisons_csv,
            (!comparisons.is_empty())
                .then(|| frame(comparisons, &comparisons_csv))
                .transpose()?,
        ),
    ] {
        let mut buf = Vec::new();
        if let Some(mut df) = df {
            CsvWriter::new(&mut buf)
                .finish(&mut df)
                .map_err(|e| table_error(path, e))?;
        }
        write(path, &buf)?;
    }
    Ok(())
}
