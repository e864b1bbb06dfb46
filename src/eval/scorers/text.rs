//! The string family: `exact`, `normalized`, `contains` and `regex` compare the output's text
//! with the reference.

use regex::Regex;

use super::{Checked, clip, pass_if};

fn equal(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.to_lowercase() == b.to_lowercase()
    } else {
        a == b
    }
}

/// The output, trimmed, equals the reference, trimmed.
pub fn exact(output: &str, reference: &str, ignore_case: bool) -> Checked {
    pass_if(
        equal(output.trim(), reference, ignore_case),
        None,
        format!(
            "expected exactly {:?}, got {:?}",
            clip(reference),
            clip(output.trim())
        ),
    )
}

/// Equal after lower-casing, dropping punctuation and collapsing whitespace.
pub fn normalized(output: &str, reference: &str) -> Checked {
    pass_if(
        normalize(output) == normalize(reference),
        None,
        format!(
            "normalised output {:?} differs from {:?}",
            clip(&normalize(output)),
            clip(&normalize(reference))
        ),
    )
}

/// The reference appears in the output.
pub fn contains(output: &str, reference: &str, ignore_case: bool) -> Checked {
    let found = if ignore_case {
        output.to_lowercase().contains(&reference.to_lowercase())
    } else {
        output.contains(reference)
    };
    pass_if(
        found,
        None,
        format!("output does not contain {:?}", clip(reference)),
    )
}

/// A pattern's match (its first group, or the whole match) equals the reference; with no
/// reference, the pattern matching is enough.
pub fn regex(re: &Regex, output: &str, reference: &str, ignore_case: bool) -> Checked {
    let Some(m) = re.captures(output) else {
        return Err((None, format!("no match for /{}/", re.as_str())));
    };
    let got = m
        .get(1)
        .or_else(|| m.get(0))
        .map_or("", |g| g.as_str())
        .trim();
    let ok = reference.is_empty() || equal(got, reference, ignore_case);
    pass_if(
        ok,
        Some(got.to_string()),
        format!("matched {:?}, expected {:?}", clip(got), clip(reference)),
    )
}

/// A pattern compiled as a suite writes it (`ignore_case` makes it case-insensitive).
pub fn compile(pattern: &str, ignore_case: bool) -> Result<Regex, regex::Error> {
    let p = if ignore_case {
        format!("(?i){pattern}")
    } else {
        pattern.to_string()
    };
    Regex::new(&p)
}

/// The F1 of two texts' words (after [`normalize`]): how much of each the other covers, as a
/// multiset of words.
pub fn word_f1(output: &str, reference: &str) -> f64 {
    let (o, r) = (normalize(output), normalize(reference));
    let (o, r): (Vec<&str>, Vec<&str>) = (o.split(' ').collect(), r.split(' ').collect());
    if o.iter().all(|w| w.is_empty()) || r.iter().all(|w| w.is_empty()) {
        return f64::from(u8::from(o == r));
    }
    let mut counts: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for w in &r {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &o {
        if let Some(c) = counts.get_mut(w)
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (p, rc) = (
        common as f64 / o.len() as f64,
        common as f64 / r.len() as f64,
    );
    2.0 * p * rc / (p + rc)
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
