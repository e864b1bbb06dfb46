//! `switchyard bench serve TARGET...`: load curves of OpenAI-compatible servers (switchyard
//! serve, llama.cpp's server, vLLM, a hosted endpoint), measured one after another in the same
//! run on the same prompts: throughput against time to first token and latency percentiles at
//! each concurrency. Writes `serve.json` (what `route derive --capacity` reads), `serve.md` and
//! `serve.svg`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::eval::Suite;
use crate::eval::targets::Catalog;
use crate::providers::load::{self, Level, LoadCurve, LoadOptions, LoadReport};
use crate::providers::{Target, TargetSpec};
use clap::Args;
use plotters::prelude::*;

#[derive(Args, Debug)]
pub struct ServeBench {
    /// Targets to load: names in the targets file, or `PRESET:MODEL` (e.g. `llamacpp:smollm2`,
    /// `openai-compatible:SmolLM2-135M-Instruct` with --base-url).
    #[arg(required = true)]
    targets: Vec<String>,
    /// The targets file (default: evals/targets.toml when it exists).
    #[arg(long)]
    targets_file: Option<PathBuf>,
    /// The server's URL (`http://HOST:PORT/v1`), for a single target.
    #[arg(long)]
    base_url: Option<String>,
    /// Requests in flight at once, one level each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    concurrency: Vec<usize>,
    /// Requests per level (default: four per slot, at least 8).
    #[arg(long, default_value_t = 0)]
    requests: usize,
    /// Tokens each answer may have.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Send the cases of this suite (default: 16 varied short requests).
    #[arg(long)]
    suite: Option<PathBuf>,
    /// Mark this p95 time to first token (seconds) and name the best level within it.
    #[arg(long)]
    slo_p95_ttft: Option<f64>,
    /// Where to write serve.json, serve.md and serve.svg.
    #[arg(long, default_value = "bench/serve")]
    out: PathBuf,
}

fn prompts(suite: Option<&Path>) -> anyhow::Result<Vec<Vec<crate::tokenize::Message>>> {
    let Some(path) = suite else {
        return Ok(load::default_prompts());
    };
    let s = Suite::load(path)?;
    anyhow::ensure!(
        !s.cases.is_empty(),
        "{}: the suite has no cases",
        path.display()
    );
    Ok(s.cases.into_iter().map(|c| c.messages).collect())
}

fn specs(b: &ServeBench) -> anyhow::Result<Vec<TargetSpec>> {
    anyhow::ensure!(
        b.base_url.is_none() || b.targets.len() == 1,
        "--base-url names one server: give one target with it"
    );
    anyhow::ensure!(
        !b.concurrency.is_empty() && b.concurrency.iter().all(|&c| c > 0),
        "--concurrency: levels must be positive"
    );
    let file = b.targets_file.clone().or_else(|| {
        let d = PathBuf::from(crate::route::derive::DEFAULT_TARGETS_FILE);
        d.exists().then_some(d)
    });
    let catalog = Catalog::new(file, TargetSpec::local("local", None, None))?;
    let max_c = *b.concurrency.iter().max().unwrap_or(&1);
    b.targets
        .iter()
        .map(|n| {
            let mut spec = catalog.find(n)?;
            anyhow::ensure!(
                spec.provider != "local",
                "{n}: bench serve measures a server; start `switchyard serve` and load it as \
                 `openai-compatible:MODEL --base-url http://127.0.0.1:8000/v1`"
            );
            if let Some(u) = &b.base_url {
                spec.base_url = Some(u.clone());
            }
            // Every level's requests in flight, streamed (time to first token), none retried.
            spec.concurrency = Some(max_c);
            spec.stream = true;
            spec.max_retries = 0;
            spec.rpm = None;
            spec.tpm = None;
            Ok(spec)
        })
        .collect()
}

fn secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.3}"))
}

fn markdown(r: &LoadReport, slo: Option<f64>) -> String {
    let mut md = format!(
        "# Load curves\n\nMachine (client): {}. Date: {}.\n\n",
        r.machine, r.date
    );
    for c in &r.curves {
        md.push_str(&format!(
            "## {} ({}{})\n\n{} prompts, max_tokens {}.\n\n\
             | concurrency | requests | errors | req/s | output tok/s | total tok/s | TTFT p50 s | TTFT p95 s | TTFT p99 s | latency p50 s | latency p95 s | TPOT mean s |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            c.target,
            c.provider,
            c.base_url
                .as_deref()
                .map_or(String::new(), |u| format!(", {u}")),
            c.prompts,
            c.max_tokens
        ));
        for l in &c.levels {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
                l.concurrency,
                l.requests,
                l.errors,
                l.requests_per_s,
                l.output_tokens_per_s,
                l.total_tokens_per_s,
                secs(l.ttft_s.p50),
                secs(l.ttft_s.p95),
                secs(l.ttft_s.p99),
                secs(l.latency_s.p50),
                secs(l.latency_s.p95),
                secs(l.tpot_s.mean),
            ));
        }
        match c.best_within(slo) {
            Some(b) => md.push_str(&format!(
                "\nBest{}: concurrency {}, {:.1} output tok/s ({:.1} total), TTFT p95 {} s.\n\n",
                slo.map_or(String::new(), |s| format!(" within p95 TTFT ≤ {s} s")),
                b.concurrency,
                b.output_tokens_per_s,
                b.total_tokens_per_s,
                secs(b.ttft_s.p95)
            )),
            None => md.push_str("\nNo level meets the SLO without errors.\n\n"),
        }
    }
    md
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Output tokens/s (x) against p95 time to first token (y), a line per target, each point its
/// concurrency; the SLO as a dashed line.
fn plot(r: &LoadReport, slo: Option<f64>) -> anyhow::Result<String> {
    let pe = |e: &dyn std::fmt::Debug| anyhow::anyhow!("plot: {e:?}");
    let pts = |c: &LoadCurve| -> Vec<(f64, f64, usize)> {
        c.levels
            .iter()
            .filter_map(|l| Some((l.output_tokens_per_s, l.ttft_s.p95?, l.concurrency)))
            .collect()
    };
    let all: Vec<(f64, f64, usize)> = r.curves.iter().flat_map(pts).collect();
    let max_x = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.15;
    let max_y = all.iter().map(|p| p.1).chain(slo).fold(0.01, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| pe(&e))?;
        let mut ch = ChartBuilder::on(&root)
            .caption(
                "Throughput against time to first token (labels: concurrency)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)
            .map_err(|e| pe(&e))?;
        ch.configure_mesh()
            .x_desc("output tokens/s")
            .y_desc("TTFT p95 (s)")
            .draw()
            .map_err(|e| pe(&e))?;
        for (i, c) in r.curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let p = pts(c);
            ch.draw_series(LineSeries::new(p.iter().map(|x| (x.0, x.1)), color))
                .map_err(|e| pe(&e))?
                .label(c.target.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
            ch.draw_series(p.iter().map(|x| {
                EmptyElement::at((x.0, x.1))
                    + Circle::new((0, 0), 4, color.filled())
                    + Text::new(format!("{}", x.2), (6, -14), ("sans-serif", 12))
            }))
            .map_err(|e| pe(&e))?;
        }
        if let Some(s) = slo {
            ch.draw_series(DashedLineSeries::new(
                [(0.0, s), (max_x, s)],
                6,
                4,
                BLACK.into(),
            ))
            .map_err(|e| pe(&e))?
            .label(format!("SLO: p95 TTFT {s} s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK));
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| pe(&e))?;
        root.present().map_err(|e| pe(&e))?;
    }
    Ok(svg)
}

fn print_level(target: &str, l: &Level) {
    println!(
        "{target} · concurrency {:>3}: {:>3} requests ({} errors) · {:.2} req/s · {:.1} output tok/s · TTFT p50 {} s p95 {} s · latency p95 {} s",
        l.concurrency,
        l.requests,
        l.errors,
        l.requests_per_s,
        l.output_tokens_per_s,
        secs(l.ttft_s.p50),
        secs(l.ttft_s.p95),
        secs(l.latency_s.p95),
    );
    if let Some(e) = &l.first_error {
        println!("  first error: {e}");
    }
}

pub fn run(b: ServeBench) -> anyhow::Result<()> {
    let specs = specs(&b)?;
    let opts = LoadOptions {
        concurrency: b.concurrency.clone(),
        requests: b.requests,
        max_tokens: b.max_tokens,
        prompts: prompts(b.suite.as_deref())?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut curves = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        println!(
            "{name}: {} levels ({}), {} prompts, max_tokens {}",
            opts.concurrency.len(),
            opts.concurrency
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            opts.prompts.len(),
            opts.max_tokens
        );
        let target = Arc::new(Target::build(spec)?);
        let curve = rt.block_on(load::curve(target, &opts, |l| print_level(&name, l)));
        anyhow::ensure!(
            curve.levels.iter().any(|l| l.errors < l.requests),
            "{name}: no request was answered (first error: {})",
            curve
                .levels
                .iter()
                .find_map(|l| l.first_error.clone())
                .unwrap_or_default()
        );
        curves.push(curve);
    }
    let report = LoadReport {
        machine: crate::machine::this().summary(),
        date: crate::util::today(),
        curves,
    };
    std::fs::create_dir_all(&b.out)?;
    let json = b.out.join("serve.json");
    crate::util::write_json(&json, &report)?;
    let md = markdown(&report, b.slo_p95_ttft);
    crate::util::write_atomic(&b.out.join("serve.md"), md.as_bytes())?;
    crate::util::write_atomic(
        &b.out.join("serve.svg"),
        plot(&report, b.slo_p95_ttft)?.as_bytes(),
    )?;
    for c in &report.curves {
        if let Some(best) = c.best_within(b.slo_p95_ttft) {
            println!(
                "{}: best{} at concurrency {}: {:.1} output tok/s, {:.1} total tok/s",
                c.target,
                b.slo_p95_ttft
                    .map_or(String::new(), |s| format!(" within p95 TTFT ≤ {s} s")),
                best.concurrency,
                best.output_tokens_per_s,
                best.total_tokens_per_s
            );
        } else {
            println!("{}: no level meets the SLO without errors", c.target);
        }
    }
    println!("wrote {}, serve.md and serve.svg beside it", json.display());
    Ok(())
}
