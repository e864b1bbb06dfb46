//! `switchyard route derive RUN... --out POLICY` and `switchyard route export POLICY --format ...`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use switchyard::route::derive::{self, DeriveOptions};
use switchyard::route::economics::EconomicsInput;
use switchyard::route::export::{self, LocalEndpoint};
use switchyard::route::{Constraints, Objective, Policy};
use switchyard::weights::write_atomic;

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Derive a routing policy from eval runs (runs/eval/...).
    Derive(DeriveArgs),
    /// Export a policy for another router (a LiteLLM proxy config, provider-native strings).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct DeriveArgs {
    /// Eval run folders (each with results.jsonl and run.json).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The policy file to write (JSON); a Markdown rendering goes beside it (.md).
    #[arg(long, default_value = "runs/policy.json")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Objective::Cheapest)]
    objective: Objective,
    /// A cheaper (or faster) target wins only if its paired difference to the best has a 95%
    /// interval above −margin (score units: 0.02 = 2 points).
    #[arg(long, default_value_t = 0.02)]
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
    #[arg(long, default_value_t = 30)]
    min_cases: usize,
    /// Fallbacks per route.
    #[arg(long, default_value_t = 2)]
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
    #[arg(long, default_value = "the eval's machine")]
    machine: String,
    /// Priced targets to compare self-hosting with even if they were not evaluated (default:
    /// evals/targets.toml when it exists).
    #[arg(long)]
    targets_file: Option<PathBuf>,
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
    #[arg(long, default_value = "http://127.0.0.1:8000/v1")]
    serve_url: String,
    /// The variable holding `switchyard serve`'s bearer token, if it uses one.
    #[arg(long)]
    serve_key_env: Option<String>,
}

pub fn run(a: RouteArgs) -> anyhow::Result<()> {
    match a.command {
        RouteCommand::Derive(d) => derive_cmd(d),
        RouteCommand::Export(e) => export_cmd(e),
    }
}

fn derive_cmd(a: DeriveArgs) -> anyhow::Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| derive::read_run(r))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = DeriveOptions {
        objective: a.objective,
        constraints: Constraints {
            min_score: a.min_score,
            max_p95_latency_s: a.max_p95_latency,
            max_cost_per_1k_requests_usd: a.max_cost_per_1k,
            max_error_rate: a.max_error_rate,
        },
        margin: a.margin,
        max_fallbacks: a.fallbacks,
        min_cases: a.min_cases,
        tasks: (!a.tasks.is_empty()).then(|| a.tasks.clone()),
        economics: match a.machine_price_per_hour {
            Some(p) => Some(EconomicsInput {
                price_per_hour: p,
                tokens_per_s: a.machine_tokens_per_s,
                machine: a.machine.clone(),
                price_list: price_list(a.targets_file.as_deref())?,
            }),
            None => None,
        },
    };
    let policy = derive::derive(&runs, &opts)?;
    write_atomic(&a.out, serde_json::to_string_pretty(&policy)?.as_bytes())?;
    let md = a.out.with_extension("md");
    write_atomic(&md, policy.markdown().as_bytes())?;
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
    println!("{} and {}", a.out.display(), md.display());
    Ok(())
}

fn price_list(file: Option<&std::path::Path>) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let default = std::path::Path::new("evals/targets.toml");
    let Some(f) = file.or(default.exists().then_some(default)) else {
        return Ok(Vec::new());
    };
    Ok(switchyard::providers::target::TargetsFile::load(f)?
        .into_iter()
        .filter_map(|t| Some((t.name, t.price_in?, t.price_out?)))
        .collect())
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
