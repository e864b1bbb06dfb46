//! Scorers: each turns (output, reference) into a score in [0, 1] and, when it fails, says why.

use serde::{Deserialize, Serialize};

/// One scorer of a suite, with its weight in the case's score.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSpec {
    #[serde(rename = "type")]
    pub kind: ScorerKind,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerKind {
    /// The output, trimmed, equals the reference, trimmed.
    Exact,
    /// Equal after lower-casing, dropping punctuation and collapsing whitespace.
    Normalized,
    /// The reference appears in the output.
    Contains,
}

/// A scorer's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub scorer: ScorerKind,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn normalize(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

pub fn score(kind: ScorerKind, output: &str, reference: &str) -> Verdict {
    let (ok, why) = match kind {
        ScorerKind::Exact => (
            output.trim() == reference.trim(),
            format!(
                "expected exactly {:?}, got {:?}",
                clip(reference.trim()),
                clip(output.trim())
            ),
        ),
        ScorerKind::Normalized => (
            normalize(output) == normalize(reference),
            format!(
                "normalised output {:?} differs from {:?}",
                clip(&normalize(output)),
                clip(&normalize(reference))
            ),
        ),
        ScorerKind::Contains => (
            output.contains(reference.trim()),
            format!("output does not contain {:?}", clip(reference.trim())),
        ),
    };
    Verdict {
        scorer: kind,
        score: if ok { 1.0 } else { 0.0 },
        reason: (!ok).then_some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scorers_pass_and_explain_failures() {
        assert_eq!(score(ScorerKind::Exact, " a, b \n", "a, b").score, 1.0);
        let v = score(ScorerKind::Exact, "a b", "a, b");
        assert_eq!(v.score, 0.0);
        assert!(v.reason.unwrap().contains("expected exactly"));
        assert_eq!(score(ScorerKind::Normalized, "A,  B!", "a b").score, 1.0);
        assert_eq!(
            score(ScorerKind::Contains, "It is Paris.", "Paris").score,
            1.0
        );
        assert_eq!(
            score(ScorerKind::Contains, "It is Lyon.", "Paris").score,
            0.0
        );
    }
}
