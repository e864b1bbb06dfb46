//! `switchyard convert GGUF OUT_DIR`.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The GGUF file to read.
    gguf: PathBuf,
    /// The Hugging Face folder to write.
    out_dir: PathBuf,
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let bar = progress_bar(0, "dequantising tensors");
    switchyard::weights::convert::gguf_to_hf(&a.gguf, &a.out_dir, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    println!("wrote {}", a.out_dir.display());
    Ok(())
}
