//! `switchyard report RUN_DIR`: `report.md` (with `report/*.svg`) and a self-contained
//! `report.html` for a run folder.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run folder from `switchyard run` (train/, eval/, policy.json, record/).
    run: PathBuf,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let (html, md) = crate::report::write(&a.run)?;
    println!("{} and {}", html.display(), md.display());
    Ok(())
}
