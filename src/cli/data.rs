//! `switchyard data preview RECIPE`: samples rendered as the trainer sees them, each token marked
//! trained or masked.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::data::{self, format};
use crate::train::LoadedRecipe;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Print a few rendered samples; trained tokens in green (or inside ⟦ ⟧ without colour).
    Preview {
        recipe: PathBuf,
        /// How many samples per dataset.
        #[arg(short, default_value_t = 3)]
        n: usize,
        /// Also list every token with its id and whether it is trained.
        #[arg(long)]
        tokens: bool,
    },
}

pub fn run(a: DataArgs) -> anyhow::Result<()> {
    let DataCommand::Preview { recipe, n, tokens } = a.command;
    let recipe = LoadedRecipe::load(&recipe)?;
    let r = &recipe.recipe;
    super::ensure_model(r.base_model.as_deref())?;
    let files = crate::load::open(r.base_model.as_deref())?;
    let tok = &files.tokenizer;
    let color = std::io::stdout().is_terminal();
    for spec in &r.datasets {
        let path = recipe.resolve(&spec.path);
        let rows = data::load::read_rows(&path)?;
        let opts = format::RenderOptions {
            format: spec.format,
            columns: spec.columns.clone(),
            chat_template: spec.chat_template,
            train_on_inputs: r.train_on_inputs,
        };
        println!(
            "== {} ({} rows, type {:?})",
            path.display(),
            rows.len(),
            spec.format
        );
        for row in rows.iter().take(n) {
            let segs = format::render(row, &opts, tok)?;
            let sample = format::tokenize(&segs, tok)?;
            println!(
                "-- line {}: {} tokens, {} trained",
                row.line,
                sample.ids.len(),
                sample.trained_tokens()
            );
            let mut text = String::new();
            let mut open = false;
            for (i, (&id, &trained)) in sample.ids.iter().zip(&sample.trained).enumerate() {
                let piece = tok.decode(&[id], false)?;
                if trained != open {
                    text.push_str(match (trained, color) {
                        (true, true) => "\x1b[32m",
                        (false, true) => "\x1b[0m",
                        (true, false) => "⟦",
                        (false, false) => "⟧",
                    });
                    open = trained;
                }
                text.push_str(&piece);
                if tokens {
                    println!("{i:5} {id:7} {} {piece:?}", if trained { "T" } else { "." });
                }
            }
            if open {
                text.push_str(if color { "\x1b[0m" } else { "⟧" });
            }
            println!("{text}");
        }
    }
    Ok(())
}
