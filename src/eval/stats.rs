//! Statistics that hold up for small eval sets.
//!
//! - Pass rates (one 0/1 score per case): the Wilson score interval, which stays inside [0, 1]
//!   and behaves at 0% and 100%, unlike the normal approximation.
//! - Graded scores, or repeats of a case: a percentile bootstrap over **cases** (repeats of a case
//!   are averaged first: they are not independent evidence), seeded, so a report is reproducible.
//! - Two targets on the same cases: the paired difference with a bootstrap interval over cases,
//!   and for pass/fail the exact McNemar test on the discordant pairs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const Z95: f64 = 1.959_963_984_540_054;
const RESAMPLES: usize = 2000;

/// The 95% Wilson interval of `k` successes in `n` trials.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let z = Z95;
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

pub use crate::util::quantile;

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Percentile bootstrap 95% interval of the mean.
fn bootstrap(x: &[f64], seed: u64) -> (f64, f64) {
    if x.len() < 2 {
        return (0.0, 1.0);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let n = x.len();
    let means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..n).map(|_| x[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    (
        quantile(&means, 0.025).unwrap_or(0.0),
        quantile(&means, 0.975).unwrap_or(1.0),
    )
}

/// A mean score with its 95% interval and how it was computed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub method: String,
}

/// The mean of per-case scores (each the average of its repeats) with a 95% interval.
pub fn mean_ci(per_case: &[f64], repeats_averaged: bool) -> Estimate {
    let m = mean(per_case);
    let binary = per_case.iter().all(|&s| s == 0.0 || s == 1.0);
    if binary && !repeats_averaged {
        let k = per_case.iter().sum::<f64>();
        let (lo, hi) = wilson(k, per_case.len() as f64);
        Estimate {
            mean: m,
            ci_low: lo,
            ci_high: hi,
            method: "wilson".into(),
        }
    } else {
        let (lo, hi) = bootstrap(per_case, 0x5eed);
        Estimate {
            mean: m,
            ci_low: lo,
            ci_high: hi,
            method: "bootstrap-cases".into(),
        }
    }
}

/// Two targets on the same cases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Paired {
    pub n: usize,
    /// Mean of a − b.
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Cases where a scored higher, where b did, and ties.
    pub a_better: usize,
    pub b_better: usize,
    pub ties: usize,
    /// Exact McNemar p-value (two-sided) when every score is 0 or 1.
    pub mcnemar_p: Option<f64>,
}

pub fn paired(a: &[f64], b: &[f64]) -> Paired {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (lo, hi) = if d.len() >= 2 {
        bootstrap(&d, 0xd1ff)
    } else {
        (-1.0, 1.0)
    };
    let a_better = d.iter().filter(|&&x| x > 0.0).count();
    let b_better = d.iter().filter(|&&x| x < 0.0).count();
    let binary = a.iter().chain(b).all(|&s| s == 0.0 || s == 1.0);
    Paired {
        n: d.len(),
        diff: mean(&d),
        ci_low: lo,
        ci_high: hi,
        a_better,
        b_better,
        ties: d.len() - a_better - b_better,
        mcnemar_p: binary.then(|| mcnemar_exact(a_better, b_better)),
    }
}

/// Two-sided exact binomial test of b vs c discordant pairs at p = 1/2.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X <= k) for X ~ Bin(n, 1/2), in logs to stay finite for large n.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // statsmodels proportion_confint(5, 10, method="wilson") = (0.2366, 0.7634)
        let (lo, hi) = wilson(5.0, 10.0);
        assert!(
            (lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0.0, 100.0);
        assert!(lo.abs() < 1e-12, "{lo}");
        assert!((hi - 0.0370).abs() < 1e-3, "{hi}");
    }

    #[test]
    fn quantiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        // numpy.percentile([1,2,3,4,10], 95) = 8.8
        assert!((quantile(&v, 0.95).unwrap() - 8.8).abs() < 1e-12);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn mcnemar_matches_scipy() {
        // scipy.stats.binomtest(2, 12, 0.5).pvalue = 0.03857421875
        assert!((mcnemar_exact(2, 10) - 0.038_574_218_75).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!((mcnemar_exact(5, 5) - 1.0).abs() < 1e-12);
        assert!(mcnemar_exact(0, 2000) < 1e-100);
    }

    #[test]
    fn intervals_cover_and_pair() {
        let graded: Vec<f64> = (0..200).map(|i| (i % 5) as f64 / 4.0).collect();
        let e = mean_ci(&graded, false);
        assert_eq!(e.method, "bootstrap-cases");
        assert!(
            e.ci_low < 0.5 && 0.5 < e.ci_high && e.ci_high - e.ci_low < 0.15,
            "{e:?}"
        );
        let a: Vec<f64> = (0..100).map(|i| (i % 10 < 8) as u8 as f64).collect();
        let b: Vec<f64> = (0..100).map(|i| (i % 10 < 5) as u8 as f64).collect();
        let p = paired(&a, &b);
        assert!((p.diff - 0.3).abs() < 1e-12);
        assert_eq!((p.a_better, p.b_better, p.ties), (30, 0, 70));
        assert!(p.ci_low > 0.15 && p.ci_high < 0.45, "{p:?}");
        assert!(p.mcnemar_p.unwrap() < 1e-6);
    }
}
