//! `switchyard suite import LOG.jsonl`: a suite from logged traffic (the logged answer as the
//! reference), written as a suite file and its dataset beside it.

use std::path::PathBuf;

use crate::eval::import;
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct SuiteArgs {
    #[command(subcommand)]
    command: SuiteCommand,
}

#[derive(Subcommand, Debug)]
enum SuiteCommand {
    /// Logged chat requests with their responses (`{request, response}` JSONL, or LiteLLM's
    /// logged payloads) as a suite whose reference is the logged answer.
    Import(ImportArgs),
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The log (JSONL).
    log: PathBuf,
    /// The suite's name (and its task tag).
    #[arg(long)]
    name: String,
    /// The suite file to write; the cases go beside it as NAME.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Keep N cases, stratified by model.
    #[arg(long)]
    sample: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Grade with this judge target (from the targets file) instead of word similarity.
    #[arg(long)]
    judge: Option<String>,
    /// The judge's rubric.
    #[arg(
        long,
        default_value = "The answer says what the reference answer says: the same facts, decisions and format. Wording may differ."
    )]
    rubric: String,
    /// Similarity at which a case passes.
    #[arg(long, default_value_t = 0.5)]
    pass_threshold: f64,
    /// The suite's `max_tokens` for a target's answer.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
}

pub fn run(a: SuiteArgs) -> anyhow::Result<()> {
    let SuiteCommand::Import(a) = a.command;
    let logged = import::read_log(&a.log)?;
    let read = logged.len();
    let cases = import::sample(logged, a.sample, a.seed);
    anyhow::ensure!(!cases.is_empty(), "{}: no exchanges", a.log.display());
    let data_name = format!("{}.jsonl", a.name);
    let scorer = match &a.judge {
        Some(t) => format!(
            "[[scorers]]\ntype = \"judge\"\ntarget = {}\nrubric = {}\n",
            toml_string(t),
            toml_string(&a.rubric)
        ),
        None => format!(
            "pass_threshold = {}\n[[scorers]]\ntype = \"similarity\"\n",
            a.pass_threshold
        ),
    };
    let scorer = format!("{scorer}\n[generation]\nmax_tokens = {}\n", a.max_tokens);
    let (suite, rows) = import::suite_files(&a.name, &data_name, &cases, &scorer);
    let data = a
        .out
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(&data_name);
    anyhow::ensure!(
        std::path::absolute(&data)? != std::path::absolute(&a.log)?,
        "{}: the suite's cases would overwrite the log; choose another --name",
        data.display()
    );
    if let Some(dir) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    crate::util::write_atomic(&data, rows.as_bytes())?;
    crate::util::write_atomic(&a.out, suite.as_bytes())?;
    let check = crate::eval::Suite::load(&a.out)
        .with_context(|| format!("{}: the suite written does not load", a.out.display()))?;
    let mut by_model = std::collections::BTreeMap::<&str, usize>::new();
    for c in &cases {
        *by_model.entry(c.model.as_str()).or_default() += 1;
    }
    println!(
        "{} cases of {read} logged ({}) → {} and {}",
        check.cases.len(),
        by_model
            .iter()
            .map(|(m, n)| format!("{m}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        a.out.display(),
        data.display()
    );
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
