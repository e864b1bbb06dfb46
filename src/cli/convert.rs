//! `switchyard convert GGUF OUT_DIR`.

use std::path::PathBuf;

use clap::Args;

use super::progress::Counter;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The GGUF file to read.
    gguf: PathBuf,
    /// The Hugging Face folder to write.
    out_dir: PathBuf,
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let mut count = Counter::new("dequantising", "tensors");
    crate::load::convert::gguf_to_hf(&a.gguf, &a.out_dir, |i, n| count.update(i, n))?;
    count.finish();
    println!("wrote {}", a.out_dir.display());
    Ok(())
}
