//! `switchyard eval SUITE... [--target NAME]...`: ask every case of the suites of every target
//! (the local model, hosted providers), score, and write results, summary and comparisons.

use std::path::PathBuf;

use crate::eval::targets::{self, Catalog};
use crate::eval::{RunOptions, Suite, runner};
use crate::providers::TargetSpec;
use crate::providers::cache::ResponseCache;
use crate::route::derive::DEFAULT_TARGETS_FILE;
use crate::util::Interrupt;
use anyhow::bail;
use clap::Args;

use super::ModelArgs;
use super::progress::{EvalProgress, describe};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Suites (TOML), e.g. evals/mmlu.toml.
    #[arg(required = true)]
    suites: Vec<PathBuf>,
    /// Targets to ask: names from the targets file, `local` (the model given by --model and
    /// --adapter), or PRESET:MODEL (e.g. llamacpp:smollm2). Repeat for several. Default: local.
    #[arg(long = "target", short = 't')]
    targets: Vec<String>,
    /// The targets file (`[[targets]]`). Default: evals/targets.toml when it exists.
    #[arg(long)]
    targets_file: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// `local`: cases generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Use only the first N cases of each suite.
    #[arg(long)]
    limit: Option<usize>,
    /// Ask each case N times (overrides the suites' `repeats`).
    #[arg(long)]
    repeats: Option<u32>,
    /// The run's folder (default: runs/eval/<suites>). A folder with results resumes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start over: forget the results already in the run's folder.
    #[arg(long)]
    fresh: bool,
    /// Send every request, and store no answers (the cache is otherwise always used).
    #[arg(long)]
    no_cache: bool,
    /// The response cache (default: $SWITCHYARD_HOME/cache/responses).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// A name for the `local` target in results (default: `local`).
    #[arg(long)]
    name: Option<String>,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the name `local` (or `--name`) stands for: the model of `--model`, `--adapter` and the
/// device flags.
fn local_spec(a: &EvalArgs) -> TargetSpec {
    let name = a.name.clone().unwrap_or_else(|| "local".into());
    let mut t = TargetSpec::local(&name, a.model.model.clone(), a.model.adapter.clone());
    t.batch_size = Some(a.batch_size);
    t.device = Some(a.model.device);
    t.threads = a.model.threads;
    t.quantized = a.model.quantized;
    t.dtype = a.model.dtype;
    t
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let mut suites = Vec::new();
    for p in &a.suites {
        let mut s = Suite::load(p)?;
        if let Some(n) = a.limit {
            s.cases.truncate(n);
        }
        if suites.iter().any(|x: &Suite| x.name() == s.name()) {
            bail!("two suites are named `{}`", s.name());
        }
        suites.push(s);
    }
    let file = a.targets_file.clone().or_else(|| {
        let d = PathBuf::from(DEFAULT_TARGETS_FILE);
        d.exists().then_some(d)
    });
    let catalog = Catalog::new(file, local_spec(&a))?;
    let (target_specs, judge_specs) = catalog.resolve(&a.targets, &suites)?;
    for spec in target_specs.iter().chain(&judge_specs) {
        if spec.provider == "local" {
            super::ensure_model(spec.model.as_deref())?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let (targets, judges) = targets::build(&target_specs, &judge_specs, |spec| {
        eprintln!("target {}: {}", spec.name, describe(spec))
    })?;
    let interrupt = Interrupt::new();
    super::on_ctrl_c(
        &interrupt,
        "finishing the requests in flight; run the same command again to resume",
    );
    let out = a.out.clone().unwrap_or_else(|| {
        let names: Vec<String> = suites.iter().map(|s| slug(s.name())).collect();
        PathBuf::from("runs/eval").join(names.join("+"))
    });
    let opts = RunOptions {
        out,
        cache: (!a.no_cache).then(|| {
            ResponseCache::new(
                a.cache_dir
                    .clone()
                    .unwrap_or_else(ResponseCache::default_dir),
            )
        }),
        fresh: a.fresh,
        repeats: a.repeats,
        interrupt,
    };
    let mut progress = EvalProgress::new();
    let report = rt.block_on(runner::run(
        &suites,
        &targets,
        &judges,
        &opts,
        &mut progress,
    ))?;
    print_report(&report);
    if report.interrupted {
        eprintln!("interrupted: run the same command again to resume");
        std::process::exit(130);
    }
    Ok(())
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| {
        if s < 1.0 {
            format!("{:.0} ms", s * 1000.0)
        } else {
            format!("{s:.2} s")
        }
    })
}

fn print_report(r: &crate::eval::RunReport) {
    println!(
        "{} rows ({} resumed) · {} requests sent · {} from cache · {} errors · {:.1} s · {}",
        r.jobs,
        r.resumed,
        r.requests,
        r.cache_hits,
        r.errors,
        r.wall_s,
        r.out.display()
    );
    println!(
        "{:<18} {:<14} {:<22} {:>5} {:>23} {:>9} {:>9} {:>10} {:>6}  log-likelihood",
        "suite",
        "tag",
        "target",
        "n",
        "score (95% CI)",
        "p50 lat",
        "p50 ttft",
        "$/1k req",
        "errors",
    );
    for s in r.summary.iter() {
        let likelihood = [
            s.acc_norm.map(|v| format!("acc_norm {:.1}%", 100.0 * v)),
            s.perplexity.map(|v| format!("perplexity {v:.3}")),
            s.bits_per_byte.map(|v| format!("bits/byte {v:.4}")),
            s.word_perplexity.map(|v| format!("word perplexity {v:.2}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        println!(
            "{:<18} {:<14} {:<22} {:>5} {:>23} {:>9} {:>9} {:>10} {:>6}  {likelihood}",
            clip(&s.suite, 18),
            clip(&s.tag, 14),
            clip(&s.target, 22),
            s.cases,
            format!(
                "{:.1}% ({:.1}–{:.1})",
                100.0 * s.mean_score,
                100.0 * s.ci_low,
                100.0 * s.ci_high
            ),
            secs(s.latency_p50_s),
            secs(s.ttft_p50_s),
            s.cost_per_1k_requests_usd
                .map_or("-".into(), |c| format!("{c:.4}")),
            s.errors
        );
    }
    for c in r.comparisons.iter().filter(|c| c.tag == "all") {
        println!(
            "{}: {} − {} = {:+.1} points (95% CI {:+.1} to {:+.1}) over {} cases{}",
            c.suite,
            c.a,
            c.b,
            100.0 * c.paired.diff,
            100.0 * c.paired.ci_low,
            100.0 * c.paired.ci_high,
            c.paired.n,
            c.paired
                .mcnemar_p
                .map(|p| format!(", McNemar p = {p:.3}"))
                .unwrap_or_default()
        );
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}
