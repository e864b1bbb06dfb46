//! Self-hosting economics: what a million tokens costs on a machine you rent by the hour, from
//! the throughput the eval measured (or one you give for a bigger machine), beside what each
//! provider charged for the same traffic; and the monthly volume at which a dedicated machine
//! breaks even.
//!
//! A machine rented for a month costs `price_per_hour × 730` whatever it serves and can serve at
//! most `tokens_per_s × 3600 × 730` tokens. A provider charges per token. Self-hosting wins when
//! its cost per token at full use is below the provider's and the volume reaches
//! `fixed monthly cost / provider price per token`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::results::ResultRow;
use crate::providers::TargetSpec;

pub const HOURS_PER_MONTH: f64 = 730.0;

/// What the user states about the machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EconomicsInput {
    /// USD per hour of the machine (e.g. a GPU instance's on-demand price).
    pub price_per_hour: f64,
    /// Tokens per second it serves (prompt + completion). Default: what the local targets
    /// measured in the eval.
    pub tokens_per_s: Option<f64>,
    /// A name for it in reports.
    pub machine: String,
    /// Priced targets that were not in the eval (name, USD per 1M input, per 1M output): their
    /// price is applied to the eval's own token mix.
    #[serde(default)]
    pub price_list: Vec<(String, f64, f64)>,
    /// The throughput read from a measured load curve (`bench serve`): the highest that met the
    /// time-to-first-token objective. Sets `tokens_per_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// The level of a load curve self-hosting is priced at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// The `bench serve` file it was read from.
    pub file: String,
    /// The server measured, and the machine and date of the measurement.
    pub target: String,
    pub measured_on: String,
    pub date: String,
    pub slo_p95_ttft_s: Option<f64>,
    pub concurrency: usize,
    pub ttft_p95_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    /// Every level, for the record: (concurrency, output tokens/s, TTFT p95 s).
    pub levels: Vec<(usize, f64, Option<f64>)>,
}

impl Capacity {
    /// Read a `bench serve` file and choose its level: the curve of `target` (or the only one),
    /// at the highest output throughput whose p95 TTFT meets `slo` without errors.
    pub fn choose(
        file: &std::path::Path,
        target: Option<&str>,
        slo: Option<f64>,
    ) -> Result<Self, String> {
        let report: crate::providers::load::LoadReport =
            crate::util::read_json(file).map_err(|e| e.to_string())?;
        let names = || {
            report
                .curves
                .iter()
                .map(|c| c.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let curve = match target {
            Some(t) => report
                .curves
                .iter()
                .find(|c| c.target == t)
                .ok_or_else(|| {
                    format!(
                        "{}: no curve for `{t}` (it has: {})",
                        file.display(),
                        names()
                    )
                })?,
            None if report.curves.len() == 1 => &report.curves[0],
            None => {
                return Err(format!(
                    "{}: {} curves ({}); name one with `capacity_target`",
                    file.display(),
                    report.curves.len(),
                    names()
                ));
            }
        };
        let best = curve.best_within(slo).ok_or_else(|| {
            format!(
                "{}: no level of `{}` meets p95 TTFT ≤ {} s without errors (p95 TTFT by concurrency: {})",
                file.display(),
                curve.target,
                slo.map_or("∞".into(), |s| s.to_string()),
                curve
                    .levels
                    .iter()
                    .map(|l| format!(
                        "{}: {}",
                        l.concurrency,
                        l.ttft_s.p95.map_or("–".into(), |v| format!("{v:.3} s"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(Self {
            file: file.display().to_string(),
            target: curve.target.clone(),
            measured_on: report.machine.clone(),
            date: report.date.clone(),
            slo_p95_ttft_s: slo,
            concurrency: best.concurrency,
            ttft_p95_s: best.ttft_s.p95,
            latency_p95_s: best.latency_s.p95,
            output_tokens_per_s: best.output_tokens_per_s,
            total_tokens_per_s: best.total_tokens_per_s,
            levels: curve
                .levels
                .iter()
                .map(|l| (l.concurrency, l.output_tokens_per_s, l.ttft_s.p95))
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderCost {
    pub target: String,
    /// Blended over the eval's own prompt/completion mix.
    pub usd_per_1m_tokens: f64,
    /// Monthly tokens at which the dedicated machine costs the same as this provider.
    pub break_even_tokens_per_month: f64,
    /// The machine can serve that volume (else self-hosting never breaks even on one machine).
    pub break_even_within_capacity: bool,
    /// Answered the eval (its cost is measured); else priced from the price list on the eval's mix.
    pub evaluated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Economics {
    pub input: EconomicsInput,
    /// Throughput the local targets showed in the eval (tokens / machine-second).
    pub measured_tokens_per_s: Option<f64>,
    pub tokens_per_s: f64,
    pub self_host_usd_per_1m_tokens: f64,
    pub fixed_usd_per_month: f64,
    pub capacity_tokens_per_month: f64,
    pub providers: Vec<ProviderCost>,
    /// With a measured load curve: USD per million output tokens at the chosen level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_host_usd_per_1m_output_tokens: Option<f64>,
}

pub fn compute(
    rows: &[ResultRow],
    targets: &BTreeMap<String, TargetSpec>,
    input: &EconomicsInput,
) -> Economics {
    let tokens =
        |r: &ResultRow| (r.prompt_tokens.unwrap_or(0) + r.completion_tokens.unwrap_or(0)) as f64;
    let (tok, secs) = rows
        .iter()
        .filter(|r| r.error.is_none())
        .filter_map(|r| r.compute_s.map(|c| (tokens(r), c)))
        .fold((0.0, 0.0), |(a, b), (t, c)| (a + t, b + c));
    let measured = (secs > 0.0).then(|| tok / secs);
    let tps = input
        .capacity
        .as_ref()
        .map(|c| c.total_tokens_per_s)
        .or(input.tokens_per_s)
        .or(measured)
        .unwrap_or(f64::NAN);
    let fixed = input.price_per_hour * HOURS_PER_MONTH;
    let capacity = tps * 3600.0 * HOURS_PER_MONTH;
    let self_cost = fixed / capacity * 1e6;
    let mut per_target: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.error.is_none() && r.compute_s.is_none())
    {
        let priced = targets
            .get(&r.target)
            .is_some_and(|t| t.price_in.is_some() || t.price_out.is_some());
        if let (true, Some(c)) = (priced, r.cost_usd) {
            let e = per_target.entry(r.target.as_str()).or_default();
            e.0 += c;
            e.1 += tokens(r);
        }
    }
    let cost_row = |target: &str, per_token: f64, evaluated: bool| {
        let be = fixed / per_token;
        ProviderCost {
            target: target.to_string(),
            usd_per_1m_tokens: per_token * 1e6,
            break_even_tokens_per_month: be,
            break_even_within_capacity: be <= capacity,
            evaluated,
        }
    };
    let mut providers: Vec<ProviderCost> = per_target
        .iter()
        .filter(|(_, (_, t))| *t > 0.0)
        .map(|(target, (usd, tok))| cost_row(target, usd / tok, true))
        .collect();
    // The eval's token mix: mean prompt and completion tokens per answered request.
    let answered: Vec<&ResultRow> = rows.iter().filter(|r| r.error.is_none()).collect();
    let n = answered.len().max(1) as f64;
    let p_in = answered.iter().filter_map(|r| r.prompt_tokens).sum::<u64>() as f64 / n;
    let p_out = answered
        .iter()
        .filter_map(|r| r.completion_tokens)
        .sum::<u64>() as f64
        / n;
    for (name, pin, pout) in &input.price_list {
        if p_in + p_out > 0.0 && !per_target.contains_key(name.as_str()) {
            let per_token = (pin * p_in + pout * p_out) / (p_in + p_out) / 1e6;
            providers.push(cost_row(name, per_token, false));
        }
    }
    Economics {
        input: input.clone(),
        measured_tokens_per_s: measured,
        tokens_per_s: tps,
        self_host_usd_per_1m_tokens: self_cost,
        fixed_usd_per_month: fixed,
        capacity_tokens_per_month: capacity,
        providers,
        self_host_usd_per_1m_output_tokens: input
            .capacity
            .as_ref()
            .map(|c| input.price_per_hour / (c.output_tokens_per_s * 3600.0) * 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_even_is_fixed_cost_over_provider_price() {
        let input = EconomicsInput {
            price_per_hour: 1.0,
            tokens_per_s: Some(1000.0),
            machine: "gpu".into(),
            price_list: vec![("cheap".into(), 0.05, 0.08)],
            capacity: None,
        };
        let e = compute(&[], &BTreeMap::new(), &input);
        // $730 a month for 2.628e9 tokens: $0.2778 per million.
        assert!((e.fixed_usd_per_month - 730.0).abs() < 1e-9);
        assert!((e.capacity_tokens_per_month - 2.628e9).abs() < 1.0);
        assert!((e.self_host_usd_per_1m_tokens - 730.0 / 2628.0).abs() < 1e-9);
        // No rows, so no token mix: a price list alone prices nothing.
        assert!(e.providers.is_empty());
    }
}
