//! The run's plots as SVG strings (plotters): training loss, quality against cost per suite with
//! the frontier, latency distributions, self-hosting economics.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::ReportError;
use crate::eval::results::{ResultRow, SummaryRow};
use crate::route::Policy;

pub const COLORS: [RGBColor; 6] = [
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

pub fn loss_plot(m: &[(f64, Option<f64>, Option<f64>)]) -> Result<String, ReportError> {
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
pub fn quality_cost_plot(
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
pub fn latency_plot(
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
pub fn economics_plot(p: &Policy) -> Result<Option<String>, ReportError> {
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
