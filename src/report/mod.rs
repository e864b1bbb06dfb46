//! The report of a run folder (`switchyard run`'s output): Markdown, and one self-contained HTML
//! file (inline SVG plots, CSS and script, no network) with a targets × tasks score heat map, the
//! training curves, quality against cost per target with the frontier, latency distributions,
//! the routing table, every output side by side ([`matrix`]), the policy's evidence as tables
//! ([`evidence`]) and the self-hosting cost comparison.

mod evidence;
mod heatmap;
mod matrix;
mod plots;
mod table;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::style::RGBColor;
use serde_json::Value;

use plots::COLORS;
use table::{Cell, Table, esc, pct};

use crate::eval::results::{self, ResultRow, SummaryRow};
use crate::route::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error(transparent)]
    Write(#[from] crate::util::FileError),
    #[error("plot: {0}")]
    Plot(String),
}

/// What a run folder holds, as far as the report needs it.
pub struct RunOutputs {
    pub dir: PathBuf,
    /// (step, loss, validation loss) from `train/metrics.jsonl`.
    pub metrics: Vec<(f64, Option<f64>, Option<f64>)>,
    pub summary: Vec<SummaryRow>,
    pub rows: Vec<ResultRow>,
    pub policy: Option<Policy>,
    pub record: Option<Value>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| ReportError::File {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
        Err(_) => Ok(None),
    }
}

impl RunOutputs {
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let err = |p: &Path, d: String| ReportError::File {
            path: p.to_path_buf(),
            detail: d,
        };
        let mut metrics = Vec::new();
        let mpath = dir.join("train/metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&mpath) {
            for (i, line) in text.lines().enumerate() {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| err(&mpath, format!("line {}: {e}", i + 1)))?;
                metrics.push((
                    v["step"].as_f64().unwrap_or(0.0),
                    v["loss"].as_f64(),
                    v["val_loss"].as_f64(),
                ));
            }
        }
        let spath = dir.join("eval/summary.json");
        let summary: Vec<SummaryRow> =
            match read_json(&spath)? {
                Some(v) => serde_json::from_value(v).map_err(|e| err(&spath, e.to_string()))?,
                None => return Err(err(
                    &spath,
                    "not found: run `switchyard run` (or `switchyard eval --out DIR/eval`) first"
                        .into(),
                )),
            };
        let (rows, _) = results::read_rows(&dir.join("eval/results.jsonl"))
            .map_err(|e| err(&dir.join("eval/results.jsonl"), e.to_string()))?;
        let ppath = dir.join("policy.json");
        let policy = if ppath.exists() {
            Some(Policy::load(&ppath).map_err(|e| err(&ppath, e.to_string()))?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            metrics,
            summary,
            rows,
            policy,
            record: read_json(&dir.join("record/record.json"))?,
        })
    }
}

/// A report: Markdown and HTML, and the SVG plots by file name (the Markdown links them).
pub struct Report {
    pub markdown: String,
    pub html: String,
    pub plots: Vec<(String, String)>,
}

/// Read a run folder and write its report: `report.md` (with `report/*.svg`) and a
/// self-contained `report.html`. Returns the two files.
pub fn write(dir: &Path) -> Result<(PathBuf, PathBuf), ReportError> {
    let r = build(&RunOutputs::read(dir)?)?;
    for (file, svg) in &r.plots {
        crate::util::write_atomic(&dir.join("report").join(file), svg.as_bytes())?;
    }
    let (html, md) = (dir.join("report.html"), dir.join("report.md"));
    crate::util::write_atomic(&md, r.markdown.as_bytes())?;
    crate::util::write_atomic(&html, r.html.as_bytes())?;
    Ok((html, md))
}

/// Every target, in name order: those summarised and any other that answered.
fn targets(o: &RunOutputs) -> Vec<String> {
    let mut t: Vec<String> = o
        .summary
        .iter()
        .map(|s| s.target.clone())
        .chain(o.rows.iter().map(|r| r.target.clone()))
        .collect();
    t.sort();
    t.dedup();
    t
}

/// The plots as (file, title, svg).
fn plots(
    o: &RunOutputs,
    colors: &BTreeMap<String, RGBColor>,
) -> Result<Vec<(String, String, String)>, ReportError> {
    let mut out = Vec::new();
    if !o.metrics.is_empty() {
        out.push((
            "loss.svg".into(),
            "Training".into(),
            plots::loss_plot(&o.metrics)?,
        ));
    }
    let mut suites: BTreeMap<&str, Vec<&SummaryRow>> = BTreeMap::new();
    for s in o.summary.iter().filter(|s| s.tag == "all") {
        suites.entry(s.suite.as_str()).or_default().push(s);
    }
    for (suite, rows) in &suites {
        out.push((
            format!("quality-cost-{suite}.svg"),
            format!("Quality vs cost: {suite}"),
            plots::quality_cost_plot(suite, rows, colors)?,
        ));
    }
    out.push((
        "latency.svg".into(),
        "Latency".into(),
        plots::latency_plot(&o.rows, colors)?,
    ));
    if let Some(svg) = o
        .policy
        .as_ref()
        .map(plots::economics_plot)
        .transpose()?
        .flatten()
    {
        out.push(("economics.svg".into(), "Self-hosting economics".into(), svg));
    }
    Ok(out)
}

fn scores_table(summary: &[SummaryRow]) -> Table {
    let mut t = Table::new(
        "Scores per suite and target (95% CI)",
        &[
            "suite",
            "target",
            "cases",
            "score %",
            "95% CI",
            "p50 latency s",
            "$ / 1k requests",
            "errors",
        ],
    );
    for s in summary.iter().filter(|s| s.tag == "all") {
        t.row(vec![
            s.suite.as_str().into(),
            s.target.as_str().into(),
            Cell::num(s.cases.to_string()),
            Cell::num(pct(s.mean_score)),
            Cell::score(s.mean_score, s.ci_low, s.ci_high),
            Cell::num(s.latency_p50_s.map_or("–".into(), |v| format!("{v:.2}"))),
            Cell::num(table::money(s.cost_per_1k_requests_usd)),
            Cell::num(s.errors.to_string()),
        ]);
    }
    t
}

/// The record line: version, commit, model, seed, and the machine local latencies came from.
fn record_line(r: &Value) -> String {
    let mut line = format!(
        "switchyard {} · git {} · model {} · recipe seed {}",
        r["switchyard"].as_str().unwrap_or("?"),
        r["git_commit"].as_str().unwrap_or("unknown"),
        r["model"]["spec"].as_str().unwrap_or("default"),
        r["seeds"]["recipe"]
    );
    if let Ok(m) = serde_json::from_value::<crate::machine::Machine>(r["machine"].clone()) {
        line.push_str(&format!(" · on {}", m.summary()));
    }
    line
}

pub fn build(o: &RunOutputs) -> Result<Report, ReportError> {
    let targets = targets(o);
    let colors: BTreeMap<String, RGBColor> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), COLORS[i % COLORS.len()]))
        .collect();
    let plots = plots(o, &colors)?;
    let mut tables = vec![scores_table(&o.summary)];
    tables.extend(o.policy.as_ref().map(evidence::routing_table));

    let title = format!("switchyard run: {}", o.dir.display());
    let mut md = format!("# {title}\n\n");
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{}</style></head>\
         <body><h1>{}</h1>",
        esc(&title),
        include_str!("report.css"),
        esc(&title)
    );
    if let Some(r) = &o.record {
        let line = record_line(r);
        let _ = writeln!(
            md,
            "{line}  \nEverything below comes from this run folder; `record/` holds the exact files it used.\n"
        );
        let _ = write!(
            html,
            "<p>{}<br>Everything below comes from this run folder; <code>record/</code> holds the exact files it used.</p>",
            esc(&line)
        );
    }
    html.push_str(
        "<nav><a href=\"#heatmap\">scores by task</a> · <a href=\"#tables\">tables</a> · \
         <a href=\"#plots\">plots</a> · <a href=\"#matrix\">outputs side by side</a>",
    );
    if o.policy.is_some() {
        html.push_str(" · <a href=\"#evidence\">policy evidence</a>");
    }
    html.push_str("</nav>");
    md.push_str(&heatmap::markdown(&o.summary, &targets));
    md.push_str("\n`report.html` shows every output side by side, filterable.\n\n");
    html.push_str(&heatmap::html(&o.summary, &targets));
    html.push_str("<section id=\"tables\">");
    for t in &tables {
        md.push_str(&t.markdown("##"));
        md.push('\n');
        html.push_str(&t.html("h2", "styled"));
    }
    md.push_str("## Plots\n\n");
    html.push_str("</section><section id=\"plots\"><h2>Plots</h2>");
    for (file, title, svg) in &plots {
        let _ = writeln!(md, "![{title}](report/{file})\n");
        let _ = write!(
            html,
            "<figure class=\"plot\" data-plot=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
            esc(file),
            esc(title)
        );
    }
    html.push_str("</section>");
    html.push_str(&matrix::html(&o.rows, &targets));
    if let Some(p) = &o.policy {
        let _ = writeln!(md, "\n---\n\n{}", p.markdown());
        html.push_str(&evidence::html(p));
    }
    // Rendered, each plot has a size and drawn marks; the page records how many (a headless
    // browser's test reads it back).
    html.push_str(
        "<script>addEventListener('load',()=>{const ok=[...document.querySelectorAll('figure.plot svg')]\
         .filter(e=>{const r=e.getBoundingClientRect();return r.width>50&&r.height>50&&\
         e.querySelectorAll('path,line,circle,rect,polyline,text').length>5});\
         document.body.dataset.plotsRendered=ok.length;});</script></body></html>\n",
    );
    Ok(Report {
        markdown: md,
        html,
        plots: plots.into_iter().map(|(f, _, s)| (f, s)).collect(),
    })
}
