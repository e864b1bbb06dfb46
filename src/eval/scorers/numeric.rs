//! `numeric`: the number in the output (the last one, or the pattern's) is within a tolerance of
//! the reference.

use regex::Regex;

use super::{Checked, clip, pass_if};

/// A numeric check, ready to run.
#[derive(Debug, Clone)]
pub struct Numeric {
    pub pattern: Option<Regex>,
    pub tolerance: f64,
    /// `tolerance` is relative to the reference.
    pub relative: bool,
}

impl Numeric {
    pub fn check(&self, output: &str, reference: &str) -> Checked {
        let want = parse_number(reference).ok_or_else(|| {
            (
                None,
                format!("the reference {:?} is not a number", clip(reference)),
            )
        })?;
        let text = match &self.pattern {
            Some(re) => match re.captures(output) {
                Some(c) => c
                    .get(1)
                    .or_else(|| c.get(0))
                    .map_or("", |g| g.as_str())
                    .to_string(),
                None => return Err((None, format!("no match for /{}/", re.as_str()))),
            },
            None => output.to_string(),
        };
        let Some((raw, got)) = last_number(&text) else {
            return Err((None, format!("no number in {:?}", clip(output.trim()))));
        };
        let limit = if self.relative {
            self.tolerance * want.abs()
        } else {
            self.tolerance
        };
        pass_if(
            (got - want).abs() <= limit,
            Some(raw.clone()),
            format!("read {raw}, expected {reference} (±{limit})"),
        )
    }
}

fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim().trim_start_matches('$').replace(',', "");
    if let Some((a, b)) = t.split_once('/') {
        let (a, b) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    t.trim_end_matches('%').parse().ok()
}

/// The last number in a text: integers, decimals, thousands separators, signs, fractions `a/b`.
fn last_number(s: &str) -> Option<(String, f64)> {
    static NUM: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
            .expect("valid")
    });
    NUM.find_iter(s)
        .filter_map(|m| parse_number(m.as_str()).map(|v| (m.as_str().to_string(), v)))
        .last()
}
