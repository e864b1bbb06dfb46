//! Statistics for pass rates: the Wilson score interval, which stays inside [0, 1] and behaves at
//! 0% and 100%, unlike the normal approximation.

/// The 95% Wilson interval of `k` successes in `n` trials.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054;
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wilson_matches_known_values() {
        // statsmodels proportion_confint(5, 10, method="wilson") = (0.2366, 0.7634)
        let (lo, hi) = super::wilson(5.0, 10.0);
        assert!(
            (lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = super::wilson(0.0, 100.0);
        assert!(lo.abs() < 1e-12, "{lo}");
        assert!((hi - 0.0370).abs() < 1e-3, "{hi}");
    }
}
