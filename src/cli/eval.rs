//! `switchyard eval SUITE`: run a suite on a local model (optionally with a LoRA adapter), write
//! per-case results and a summary with a 95% confidence interval.

use std::path::PathBuf;

use clap::Args;
use switchyard::eval::{self, Suite};
use switchyard::weights::write_atomic;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The suite (TOML), e.g. evals/word-reversal.toml.
    suite: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Cases generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Use only the first N cases.
    #[arg(long)]
    limit: Option<usize>,
    /// Where results go (default: runs/eval/<suite>-<target>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A name for the target in results (default: the model and adapter).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let (mut suite, data) = Suite::load(&a.suite)?;
    if let Some(n) = a.limit {
        suite.limit = Some(n);
    }
    let engine = a.model.load()?;
    let target = a.name.clone().unwrap_or_else(|| {
        let m = a
            .model
            .model
            .clone()
            .unwrap_or_else(|| "SmolLM2-135M-Instruct".into());
        match &a.model.adapter {
            Some(ad) => format!("{m}+{}", ad.display()),
            None => m,
        }
    });
    let bar = super::convert::progress_bar(0, &format!("eval {}", suite.name));
    let (cases, summary) =
        eval::run_local(&suite, &data, &engine, &target, a.batch_size, |i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
        })?;
    bar.finish_and_clear();
    let slug: String = target
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs/eval").join(format!("{}-{slug}", suite.name)));
    let lines: String = cases
        .iter()
        .map(|c| serde_json::to_string(c).map(|s| s + "\n"))
        .collect::<Result<_, _>>()?;
    write_atomic(&out.join("cases.jsonl"), lines.as_bytes())?;
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let mut df = eval::cases_frame(&cases, &summary)?;
    let mut buf = Vec::new();
    polars::prelude::ParquetWriter::new(&mut buf).finish(&mut df)?;
    write_atomic(&out.join("cases.parquet"), &buf)?;
    println!(
        "{}: {} · {}/{} passed = {:.1}% (95% CI {:.1}–{:.1}%) · mean score {:.3} · {}",
        summary.suite,
        summary.target,
        summary.passed,
        summary.cases,
        100.0 * summary.pass_rate,
        100.0 * summary.ci95.0,
        100.0 * summary.ci95.1,
        summary.mean_score,
        out.display()
    );
    Ok(())
}
