//! The report of a run folder (`switchyard run`'s output): Markdown, and one self-contained HTML
//! file (inline SVG plots, inline CSS, no network) with the training curves, quality against cost
//! per target with the frontier, latency distributions, the routing table with its evidence, and
//! the self-hosting cost comparison.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

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

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn pe<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Plot(format!("{e:?}"))
}

fn loss_plot(m: &[(f64, Option<f64>, Option<f64>)]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let max_step = m.iter().map(|x| x.0).fold(1.0, f64::max);
        let max_loss = m
            .iter()
            .flat_map(|x| [x.1, x.2])
            .flatten()
            .fold(0.0, f64::max)
            .max(1e-3);
        let mut c = ChartBuilder::on(&root)
            .caption("Training and validation loss", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_step, 0.0..max_loss * 1.05)
            .map_err(pe)?;
        c.configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(pe)?;
        c.draw_series(LineSeries::new(
            m.iter().filter_map(|x| Some((x.0, x.1?))),
            COLORS[0],
        ))
        .map_err(pe)?
        .label("training loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], COLORS[0]));
        c.draw_series(
            m.iter()
                .filter_map(|x| Some((x.0, x.2?)))
                .map(|p| Circle::new(p, 4, COLORS[1].filled())),
        )
        .map_err(pe)?
        .label("validation loss")
        .legend(|(x, y)| Circle::new((x + 7, y), 4, COLORS[1].filled()));
        c.configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(pe)?;
        root.present().map_err(pe)?;
    }
    Ok(svg)
}

/// Mean score against cost per 1k requests, one point per target, the frontier joined.
fn quality_cost_plot(
    suite: &str,
    rows: &[&SummaryRow],
    colors: &BTreeMap<String, RGBColor>,
) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let pts: Vec<(&str, f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r.target.as_str(),
                    r.cost_per_1k_requests_usd.unwrap_or(0.0),
                    r.mean_score,
                )
            })
            .collect();
        let max_c = pts.iter().map(|p| p.1).fold(1e-6, f64::max) * 1.2;
        let mut c = ChartBuilder::on(&root)
            .caption(format!("{suite}: quality vs cost"), ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..max_c, 0.0..1.0)
            .map_err(pe)?;
        c.configure_mesh()
            .x_desc("USD per 1k requests")
            .y_desc("mean score")
            .draw()
            .map_err(pe)?;
        let mut frontier: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| {
                !pts.iter()
                    .any(|q| q.1 <= p.1 && q.2 >= p.2 && (q.1 < p.1 || q.2 > p.2))
            })
            .map(|p| (p.1, p.2))
            .collect();
        frontier.sort_by(|a, b| a.0.total_cmp(&b.0));
        c.draw_series(LineSeries::new(frontier, BLACK.mix(0.4)))
            .map_err(pe)?;
        for r in rows {
            let col = colors.get(&r.target).copied().unwrap_or(BLACK);
            let x = r.cost_per_1k_requests_usd.unwrap_or(0.0);
            c.draw_series([PathElement::new([(x, r.ci_low), (x, r.ci_high)], col)])
                .map_err(pe)?;
            c.draw_series([Circle::new((x, r.mean_score), 5, col.filled())])
                .map_err(pe)?
                .label(r.target.clone())
                .legend(move |(x, y)| Circle::new((x + 7, y), 4, col.filled()));
        }
        c.configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(pe)?;
        root.present().map_err(pe)?;
    }
    Ok(svg)
}

/// The distribution of latencies per target (empirical CDF).
fn latency_plot(
    rows: &[ResultRow],
    colors: &BTreeMap<String, RGBColor>,
) -> Result<String, ReportError> {
    let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.error.is_none()) {
        if let Some(l) = r.latency_s {
            by.entry(r.target.as_str()).or_default().push(l);
        }
    }
    let max_l = by.values().flatten().copied().fold(1e-3, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let mut c = ChartBuilder::on(&root)
            .caption("Latency per request (cumulative share)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..max_l * 1.02, 0.0..1.0)
            .map_err(pe)?;
        c.configure_mesh()
            .x_desc("seconds")
            .y_desc("share of requests")
            .draw()
            .map_err(pe)?;
        for (t, mut v) in by {
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            let col = colors.get(t).copied().unwrap_or(BLACK);
            c.draw_series(LineSeries::new(
                v.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / n)),
                col,
            ))
            .map_err(pe)?
            .label(t.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], col));
        }
        c.configure_series_labels()
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(pe)?;
        root.present().map_err(pe)?;
    }
    Ok(svg)
}

/// USD per million tokens: self-hosting against each priced provider.
fn economics_plot(p: &Policy) -> Result<Option<String>, ReportError> {
    let Some(e) = &p.economics else {
        return Ok(None);
    };
    let mut bars = vec![(
        format!("self-host ({})", e.input.machine),
        e.self_host_usd_per_1m_tokens,
    )];
    bars.extend(
        e.providers
            .iter()
            .map(|x| (x.target.clone(), x.usd_per_1m_tokens)),
    );
    let max = bars.iter().map(|b| b.1).fold(1e-6, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 60 + 40 * bars.len() as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        let mut c = ChartBuilder::on(&root)
            .caption("USD per million tokens on this traffic", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..max, 0.0..bars.len() as f64)
            .map_err(pe)?;
        c.configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("USD / 1M tokens")
            .draw()
            .map_err(pe)?;
        for (i, (name, v)) in bars.iter().enumerate() {
            let y = bars.len() as f64 - i as f64 - 0.5;
            c.draw_series([Rectangle::new(
                [(0.0, y - 0.35), (*v, y + 0.35)],
                COLORS[i % COLORS.len()].mix(0.7).filled(),
            )])
            .map_err(pe)?;
            c.draw_series([Text::new(
                format!("{name}: ${v:.4}"),
                (max * 0.01, y + 0.15),
                ("sans-serif", 13),
            )])
            .map_err(pe)?;
        }
        root.present().map_err(pe)?;
    }
    Ok(Some(svg))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
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

pub fn build(o: &RunOutputs) -> Result<Report, ReportError> {
    let mut targets: Vec<String> = o.summary.iter().map(|s| s.target.clone()).collect();
    targets.sort();
    targets.dedup();
    let colors: BTreeMap<String, RGBColor> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), COLORS[i % COLORS.len()]))
        .collect();
    let mut plots: Vec<(String, String, String)> = Vec::new(); // (file, title, svg)
    if !o.metrics.is_empty() {
        plots.push(("loss.svg".into(), "Training".into(), loss_plot(&o.metrics)?));
    }
    let mut suites: BTreeMap<&str, Vec<&SummaryRow>> = BTreeMap::new();
    for s in o.summary.iter().filter(|s| s.tag == "all") {
        suites.entry(s.suite.as_str()).or_default().push(s);
    }
    for (suite, rows) in &suites {
        plots.push((
            format!("quality-cost-{suite}.svg"),
            format!("Quality vs cost: {suite}"),
            quality_cost_plot(suite, rows, &colors)?,
        ));
    }
    plots.push((
        "latency.svg".into(),
        "Latency".into(),
        latency_plot(&o.rows, &colors)?,
    ));
    if let Some(svg) = o.policy.as_ref().map(economics_plot).transpose()?.flatten() {
        plots.push(("economics.svg".into(), "Self-hosting economics".into(), svg));
    }

    // Tables shared by both renderings, as (header, rows).
    let mut tables: Vec<(String, Vec<String>, Vec<Vec<String>>)> = Vec::new();
    tables.push((
        "Scores per suite and target (95% CI)".into(),
        [
            "suite",
            "target",
            "cases",
            "score %",
            "95% CI",
            "p50 latency s",
            "$ / 1k requests",
            "errors",
        ]
        .map(String::from)
        .to_vec(),
        o.summary
            .iter()
            .filter(|s| s.tag == "all")
            .map(|s| {
                vec![
                    s.suite.clone(),
                    s.target.clone(),
                    s.cases.to_string(),
                    pct(s.mean_score),
                    format!("{}–{}", pct(s.ci_low), pct(s.ci_high)),
                    s.latency_p50_s.map_or("–".into(), |v| format!("{v:.2}")),
                    s.cost_per_1k_requests_usd
                        .map_or("–".into(), |v| format!("{v:.4}")),
                    s.errors.to_string(),
                ]
            })
            .collect(),
    ));
    if let Some(p) = &o.policy {
        tables.push((
            "Routing table".into(),
            ["task", "primary", "score % (95% CI)", "fallbacks", "why"]
                .map(String::from)
                .to_vec(),
            p.routes
                .iter()
                .map(|r| {
                    let e = r.evidence.iter().find(|e| e.target == r.primary);
                    vec![
                        r.task.clone(),
                        r.primary.clone(),
                        e.map_or("–".into(), |e| {
                            format!(
                                "{} ({}–{})",
                                pct(e.mean_score),
                                pct(e.ci_low),
                                pct(e.ci_high)
                            )
                        }),
                        r.fallbacks.join(", "),
                        r.reason.clone(),
                    ]
                })
                .collect(),
        ));
    }

    let title = format!("switchyard run: {}", o.dir.display());
    let mut md = format!("# {title}\n\n");
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}\
         th{{background:#f3f3f3}}figure{{display:inline-block;margin:0.5em}}code{{background:#f3f3f3}}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    if let Some(r) = &o.record {
        let line = format!(
            "switchyard {} · git {} · model {} · recipe seed {}",
            r["switchyard"].as_str().unwrap_or("?"),
            r["git_commit"].as_str().unwrap_or("unknown"),
            r["model"]["spec"].as_str().unwrap_or("default"),
            r["seeds"]["recipe"]
        );
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
    for (caption, header, rows) in &tables {
        let _ = writeln!(
            md,
            "## {caption}\n\n| {} |\n|{}|",
            header.join(" | "),
            vec!["---"; header.len()].join("|")
        );
        let _ = write!(
            html,
            "<h2>{}</h2><table><tr>{}</tr>",
            esc(caption),
            header
                .iter()
                .map(|h| format!("<th>{}</th>", esc(h)))
                .collect::<String>()
        );
        for r in rows {
            let _ = writeln!(md, "| {} |", r.join(" | "));
            let _ = write!(
                html,
                "<tr>{}</tr>",
                r.iter()
                    .map(|c| format!("<td>{}</td>", esc(c)))
                    .collect::<String>()
            );
        }
        md.push('\n');
        html.push_str("</table>");
    }
    md.push_str("## Plots\n\n");
    html.push_str("<h2>Plots</h2>");
    for (file, title, svg) in &plots {
        let _ = writeln!(md, "![{title}](report/{file})\n");
        let _ = write!(
            html,
            "<figure class=\"plot\" data-plot=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
            esc(file),
            esc(title)
        );
    }
    if let Some(p) = &o.policy {
        let detail = p.markdown();
        let _ = writeln!(md, "\n---\n\n{detail}");
        let _ = write!(html, "<h2>Policy evidence</h2><pre>{}</pre>", esc(&detail));
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
