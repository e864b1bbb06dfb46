//! `switchyard merge ADAPTER OUT_DIR`: fold a LoRA adapter into its base and write a Hugging Face
//! folder that transformers (or switchyard) loads like any model.

use std::path::PathBuf;

use crate::formats::adapter::{AdapterConfig, CONFIG_FILE};
use clap::Args;

use super::progress::Counter;

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
            let cfg: AdapterConfig = crate::util::read_json(&a.adapter.join(CONFIG_FILE))?;
            cfg.base_model_name_or_path
        }
    };
    super::ensure_model(base.as_deref())?;
    let files = crate::load::open(base.as_deref())?.with_adapter(&a.adapter)?;
    let mut count = Counter::new("merging", "tensors");
    crate::load::convert::write_folder(&files, &a.out_dir, |i, n| count.update(i, n))?;
    count.finish();
    println!("wrote {} ({})", a.out_dir.display(), files.origin);
    Ok(())
}
