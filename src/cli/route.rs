//! `switchyard route derive RUN... --out POLICY` and `switchyard route export POLICY --format ...`.

use std::path::PathBuf;

use crate::route::derive::{self, DeriveOptions};
use crate::route::export::{self, LocalEndpoint};
use crate::route::{Objective, Policy};
use crate::util::write_atomic;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Derive a routing policy from eval runs (runs/eval/...).
    Derive(Box<DeriveArgs>),
    /// Export a policy for another router (a LiteLLM proxy config, provider-native strings).
    Export(ExportArgs),
}

/// The flags of `route derive`: [`DeriveOptions`], field for field (a pipeline's `[route]` table
/// is the same struct).
#[derive(Args, Debug)]
struct DeriveArgs {
    /// Eval run folders (each with results.jsonl and run.json).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The policy file to write (JSON); a Markdown rendering goes beside it (.md).
    #[arg(long, default_value = "runs/policy.json")]
    out: PathBuf,
    #[arg(long, default_value_t = Objective::Cheapest,
          value_parser = PossibleValuesParser::new(Objective::NAMES)
              .map(|s| s.parse::<Objective>().expect("a listed name")))]
    objective: Objective,
    /// A cheaper (or faster) target wins only if its paired difference to the best has a 95%
    /// interval above −margin (score units: 0.02 = 2 points).
    #[arg(long, default_value_t = derive::DEFAULT_MARGIN)]
    margin: f64,
    /// Minimum mean score (0–1).
    #[arg(long)]
    min_score: Option<f64>,
    /// Maximum p95 latency in seconds.
    #[arg(long)]
    max_p95_latency: Option<f64>,
    /// Maximum cost per 1,000 requests in USD.
    #[arg(long)]
    max_cost_per_1k: Option<f64>,
    /// Maximum share of failed requests (0–1).
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Tasks with fewer cases get no route of their own (they follow their suite's broader tag).
    #[arg(long, default_value_t = derive::DEFAULT_MIN_CASES)]
    min_cases: usize,
    /// Fallbacks per route.
    #[arg(long, default_value_t = derive::DEFAULT_FALLBACKS)]
    fallbacks: usize,
    /// Only these tasks (suite tags); repeat. Default: every tag.
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// Self-hosting economics: the machine's price per hour in USD (e.g. a GPU instance).
    #[arg(long)]
    machine_price_per_hour: Option<f64>,
    /// Its throughput in tokens/s (default: what the local targets measured in the eval).
    #[arg(long)]
    machine_tokens_per_s: Option<f64>,
    /// A name for the machine in the report.
    #[arg(long, default_value = derive::DEFAULT_MACHINE)]
    machine: String,
    /// Its throughput measured under load: a `switchyard bench serve` file (serve.json).
    /// Self-hosting is priced at the highest throughput that meets --slo-p95-ttft.
    #[arg(long, conflicts_with = "machine_tokens_per_s")]
    capacity: Option<PathBuf>,
    /// The curve of --capacity to use, when it has several (a target's name).
    #[arg(long)]
    capacity_target: Option<String>,
    /// The service-level objective on p95 time to first token, in seconds.
    #[arg(long)]
    slo_p95_ttft: Option<f64>,
    /// Priced targets to compare self-hosting with even if they were not evaluated (default:
    /// evals/targets.toml when it exists).
    #[arg(long)]
    targets_file: Option<PathBuf>,
    /// Validate out of sample: choose routes without this fraction of each task's cases and
    /// score the policy on them (e.g. 0.3).
    #[arg(long, conflicts_with = "folds")]
    holdout: Option<f64>,
    /// Or cross-fit over k folds: each fold scored by routes chosen on the others.
    #[arg(long)]
    folds: Option<usize>,
    /// The seed of the split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl DeriveArgs {
    /// Every field named, so that an option added to [`DeriveOptions`] cannot be forgotten here.
    fn options(&self) -> DeriveOptions {
        DeriveOptions {
            objective: self.objective,
            margin: self.margin,
            min_score: self.min_score,
            max_p95_latency: self.max_p95_latency,
            max_cost_per_1k: self.max_cost_per_1k,
            max_error_rate: self.max_error_rate,
            min_cases: self.min_cases,
            fallbacks: self.fallbacks,
            tasks: self.tasks.clone(),
            machine_price_per_hour: self.machine_price_per_hour,
            machine_tokens_per_s: self.machine_tokens_per_s,
            machine: self.machine.clone(),
            capacity: self.capacity.clone(),
            capacity_target: self.capacity_target.clone(),
            slo_p95_ttft: self.slo_p95_ttft,
            targets_file: self.targets_file.clone(),
            holdout: self.holdout,
            folds: self.folds,
            seed: self.seed,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// A LiteLLM proxy config.yaml.
    Litellm,
    /// Provider-native model strings per task (HF router `model:provider`, OpenRouter objects).
    Native,
    /// The policy itself (JSON), re-checked.
    Policy,
}

#[derive(Args, Debug)]
struct ExportArgs {
    policy: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    #[arg(long)]
    out: PathBuf,
    /// Where `switchyard serve` answers for the policy's local targets (LiteLLM export).
    #[arg(long, default_value = export::DEFAULT_SERVE_URL)]
    serve_url: String,
    /// The variable holding `switchyard serve`'s bearer token, if it uses one.
    #[arg(long)]
    serve_key_env: Option<String>,
}

pub fn run(a: RouteArgs) -> anyhow::Result<()> {
    match a.command {
        RouteCommand::Derive(d) => derive_cmd(*d),
        RouteCommand::Export(e) => export_cmd(e),
    }
}

fn derive_cmd(a: DeriveArgs) -> anyhow::Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| derive::read_run(r))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = a.options();
    let policy = derive::derive(&runs, &opts)?;
    let md = policy.save(&a.out)?;
    println!("{:<24} {:<26} {:<40} why", "task", "primary", "fallbacks");
    for r in &policy.routes {
        println!(
            "{:<24} {:<26} {:<40} {}",
            r.task,
            r.primary,
            r.fallbacks.join(", "),
            r.reason
        );
    }
    for p in &policy.predicted {
        println!(
            "{}: the policy scores {:.1}% on its {} cases{}",
            p.suite,
            100.0 * p.policy_mean_score,
            p.cases,
            p.policy_cost_per_1k_requests_usd
                .map(|c| format!(" at ${c:.4} per 1k requests"))
                .unwrap_or_default()
        );
    }
    if let Some(v) = &policy.validation {
        for h in &v.suites {
            println!(
                "{}: out of sample ({}), {:.1}% (95% CI {:.1}–{:.1}) on {} cases, against {:.1}% in sample",
                h.suite,
                v.method,
                100.0 * h.held_out_score,
                100.0 * h.ci_low,
                100.0 * h.ci_high,
                h.cases,
                100.0 * h.in_sample_score
            );
        }
    }
    println!("{} and {}", a.out.display(), md.display());
    Ok(())
}

fn export_cmd(a: ExportArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&a.policy)?;
    let text = match a.format {
        Format::Litellm => export::litellm_config(
            &policy,
            &LocalEndpoint {
                base_url: a.serve_url.clone(),
                api_key_env: a.serve_key_env.clone(),
            },
        )?,
        Format::Native => serde_json::to_string_pretty(&export::native(&policy))?,
        Format::Policy => serde_json::to_string_pretty(&policy)?,
    };
    write_atomic(&a.out, text.as_bytes())?;
    println!("{}", a.out.display());
    Ok(())
}
