//! `switchyard report RUN_DIR`: `report.md` (with `report/*.svg`) and a self-contained
//! `report.html` for a run folder.

use std::path::PathBuf;

use clap::Args;
use switchyard::report::{self, RunOutputs};
use switchyard::weights::write_atomic;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run folder from `switchyard run` (train/, eval/, policy.json, record/).
    run: PathBuf,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let outputs = RunOutputs::read(&a.run)?;
    let r = report::build(&outputs)?;
    for (file, svg) in &r.plots {
        write_atomic(&a.run.join("report").join(file), svg.as_bytes())?;
    }
    write_atomic(&a.run.join("report.md"), r.markdown.as_bytes())?;
    write_atomic(&a.run.join("report.html"), r.html.as_bytes())?;
    println!(
        "{} and {}",
        a.run.join("report.html").display(),
        a.run.join("report.md").display()
    );
    Ok(())
}
