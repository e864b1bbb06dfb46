//! `switchyard train RECIPE`: validate, plan, train (or resume), write the adapter.

use std::path::PathBuf;

use crate::train::{self, LoadedRecipe, Prepared, TrainOptions};
use crate::util::Interrupt;
use clap::Args;

use super::progress::TrainProgress;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML), e.g. recipes/demo.toml.
    recipe: PathBuf,
    /// Check the recipe and data, print the plan and a time estimate, train nothing.
    #[arg(long)]
    dry_run: bool,
    /// Continue from the newest checkpoint in the output folder.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over, deleting an earlier run's checkpoints and adapter.
    #[arg(long)]
    overwrite: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the run here instead of the recipe's `output_dir`.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

/// The plan in a few lines: data, adapters, steps.
pub fn print_plan(prepared: &Prepared) {
    let plan = &prepared.plan;
    let r = &prepared.recipe.recipe;
    eprintln!(
        "model {} · {} train samples ({} tokens, {} trained; {} dropped as longer than {}), {} validation",
        plan.model,
        plan.train.samples,
        plan.train.tokens,
        plan.train.trained_tokens,
        plan.train.dropped_too_long,
        r.sequence_len,
        plan.val_samples
    );
    eprintln!(
        "LoRA r={} alpha={} (scale {:.3}) on {} modules [{}]: {} trainable parameters ({:.3}% of {})",
        r.lora_r,
        r.lora_alpha,
        plan.scale,
        plan.adapted_modules,
        plan.targets.join(", "),
        plan.trainable_params,
        100.0 * plan.trainable_params as f64 / plan.base_params.max(1) as f64,
        plan.base_params
    );
    eprintln!(
        "{} sequences{} · {} micro-batches of {} per epoch · {} steps of {} micro-batches, warmup {}, {:?} schedule, lr {}",
        plan.sequences,
        if r.sample_packing { " (packed)" } else { "" },
        plan.micro_batches_per_epoch,
        r.micro_batch_size,
        plan.total_steps,
        r.gradient_accumulation_steps,
        plan.warmup_steps,
        r.lr_scheduler,
        r.learning_rate
    );
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    crate::load::set_threads(a.threads);
    let mut recipe = LoadedRecipe::load(&a.recipe)?;
    if let Some(d) = &a.output_dir {
        recipe.recipe.output_dir = d.clone();
    }
    let device = recipe.recipe.device.device()?;
    super::ensure_model(recipe.recipe.base_model.as_deref())?;
    let prepared = train::prepare(recipe)?;
    print_plan(&prepared);
    let (plan, r) = (&prepared.plan, &prepared.recipe.recipe);
    if a.dry_run {
        let secs = train::time_one_step(&prepared, &device)?;
        let total = secs * (plan.total_steps * r.gradient_accumulation_steps) as f64;
        eprintln!(
            "one micro-batch takes {secs:.2} s here: about {:.0} min for the run (validation excluded)",
            total / 60.0
        );
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    let interrupt = Interrupt::new();
    super::on_ctrl_c(&interrupt, "saving a checkpoint after this step");
    let opts = TrainOptions {
        resume: a.resume,
        overwrite: a.overwrite,
    };
    let outcome = train::train(
        &prepared,
        &device,
        &opts,
        &interrupt,
        &mut TrainProgress::new(),
    )?;
    let out = prepared.recipe.output_dir();
    if outcome.interrupted {
        eprintln!(
            "stopped at step {}/{}; checkpoint {}. Continue with: switchyard train {} --resume",
            outcome.steps,
            plan.total_steps,
            outcome
                .checkpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            a.recipe.display()
        );
        std::process::exit(130);
    }
    eprintln!(
        "done: {} steps{}, loss {:.4}{}, {:.0} tokens/s. Adapter: {}; metrics: {}",
        outcome.steps,
        if outcome.early_stopped {
            " (early stop)"
        } else {
            ""
        },
        outcome.final_loss.unwrap_or(f64::NAN),
        outcome
            .final_val_loss
            .map(|v| format!(", val loss {v:.4}"))
            .unwrap_or_default(),
        outcome.tokens_per_s,
        outcome
            .adapter_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        out.join("metrics.jsonl").display()
    );
    Ok(())
}
