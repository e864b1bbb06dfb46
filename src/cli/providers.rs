//! `switchyard providers list | sync`: the presets, and provider catalogs read into a targets
//! file (prices, context, latency, throughput, with the date they were read).

use std::path::PathBuf;

use crate::providers::catalog::{self, Source};
use crate::providers::presets;
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ProvidersArgs {
    #[command(subcommand)]
    command: ProvidersCommand,
}

#[derive(Subcommand, Debug)]
enum ProvidersCommand {
    /// The provider presets: base URL, key variable, what each endpoint supports.
    List,
    /// Read the Hugging Face router's and OpenRouter's model lists and write their prices into
    /// the targets of those providers (and new targets for --add), with the date read.
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// The targets file to update (comments and layout are kept).
    #[arg(long, default_value = "evals/targets.toml")]
    targets_file: PathBuf,
    /// Which catalogs: hf, openrouter (repeat; default both).
    #[arg(long = "source", value_parser = ["hf", "openrouter"])]
    sources: Vec<String>,
    /// Add a target for a model: `hf:ORG/NAME` or `openrouter:ORG/NAME` (repeat).
    #[arg(long)]
    add: Vec<String>,
    /// The Hugging Face router (its `/models` is read).
    #[arg(long, default_value = "https://router.huggingface.co/v1")]
    hf_url: String,
    /// OpenRouter's API (its `/models` is read).
    #[arg(long, default_value = "https://openrouter.ai/api/v1")]
    openrouter_url: String,
    /// Print what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: ProvidersArgs) -> anyhow::Result<()> {
    match a.command {
        ProvidersCommand::List => {
            println!(
                "{:<18} {:<44} {:<20} notes",
                "preset", "base URL", "key variable"
            );
            for p in presets::PRESETS {
                let key = if p.key_required {
                    p.api_key_env
                } else {
                    "(optional)"
                };
                let scoring = if p.prompt_logprobs {
                    "; prompt log-probs"
                } else {
                    ""
                };
                println!(
                    "{:<18} {:<44} {:<20} {}{scoring}",
                    p.name, p.base_url, key, p.docs
                );
            }
            Ok(())
        }
        ProvidersCommand::Sync(s) => sync(s),
    }
}

fn sync(a: SyncArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.targets_file)
        .with_context(|| format!("{}", a.targets_file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: not TOML", a.targets_file.display()))?;
    let date = crate::util::today();
    let sources: Vec<Source> = match a.sources.as_slice() {
        [] => vec![Source::Hf, Source::OpenRouter],
        s => s
            .iter()
            .map(|x| {
                if x == "hf" {
                    Source::Hf
                } else {
                    Source::OpenRouter
                }
            })
            .collect(),
    };
    for source in sources {
        let (url, token) = match source {
            Source::Hf => (&a.hf_url, std::env::var("HF_TOKEN").ok()),
            Source::OpenRouter => (&a.openrouter_url, std::env::var("OPENROUTER_API_KEY").ok()),
        };
        let offers = catalog::fetch(source, url, token.as_deref().filter(|t| !t.is_empty()))?;
        let add: Vec<String> = a
            .add
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{}:", source.preset())))
            .map(str::to_string)
            .collect();
        let r = catalog::sync(&mut doc, source, &offers, &date, &add);
        println!("{} ({} offers read {date}):", source.preset(), offers.len());
        for (name, o) in &r.updated {
            println!(
                "  {name}: ${} in / ${} out per 1M tokens{}",
                o.price_in.map_or("?".into(), |p| p.to_string()),
                o.price_out.map_or("?".into(), |p| p.to_string()),
                o.provider
                    .as_deref()
                    .map(|p| format!(" via {p}"))
                    .unwrap_or_default()
            );
        }
        for name in &r.added {
            println!("  added {name}");
        }
        for name in &r.missing {
            println!("  {name}: not in the catalog (left as it was)");
        }
    }
    if a.dry_run {
        println!("(dry run: {} not written)", a.targets_file.display());
    } else {
        crate::util::write_atomic(&a.targets_file, doc.to_string().as_bytes())?;
        println!("{}", a.targets_file.display());
    }
    Ok(())
}
