//! `switchyard merge ADAPTER OUT_DIR`: fold a LoRA adapter into its base and write a Hugging Face
//! folder that transformers (or switchyard) loads like any model.

use std::path::PathBuf;

use clap::Args;
use switchyard::weights::adapter::{AdapterConfig, CONFIG_FILE};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The adapter folder (adapter_config.json + adapter_model.safetensors).
    adapter: PathBuf,
    /// The folder to write.
    out_dir: PathBuf,
    /// The base model (default: the adapter's `base_model_name_or_path`, else SmolLM2).
    #[arg(long, short)]
    model: Option<String>,
}

pub fn run(a: MergeArgs) -> anyhow::Result<()> {
    let base = match &a.model {
        Some(m) => Some(m.clone()),
        None => {
            let cfg: AdapterConfig =
                switchyard::weights::hf_folder::read_json(&a.adapter.join(CONFIG_FILE))?;
            cfg.base_model_name_or_path
        }
    };
    let files = switchyard::weights::resolve::open(base.as_deref())?.with_adapter(&a.adapter)?;
    let bar = super::convert::progress_bar(0, "merging tensors");
    switchyard::weights::convert::write_folder(&files, &a.out_dir, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    println!("wrote {} ({})", a.out_dir.display(), files.origin);
    Ok(())
}
