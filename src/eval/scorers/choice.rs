//! `choice`: the multiple-choice letter the output picks equals the reference letter.

use regex::Regex;

use super::{Checked, clip, pass_if};

pub fn check(output: &str, reference: &str, letters: &str) -> Checked {
    match choice_letter(output, letters) {
        None => Err((
            None,
            format!(
                "no answer letter ({letters}) found in {:?}",
                clip(output.trim())
            ),
        )),
        Some(c) => pass_if(
            reference.eq_ignore_ascii_case(&c.to_string()),
            Some(c.to_string()),
            format!("chose {c}, the answer is {reference}"),
        ),
    }
}

/// The letter an answer picks: "Answer: B", "the answer is (C)", "B.", "(D)", or a lone letter.
pub fn choice_letter(output: &str, letters: &str) -> Option<char> {
    let set = regex::escape(letters);
    // A lower-case letter counts only where it cannot be a word ("b) Paris", not "a dog").
    let both = format!("{set}{}", set.to_lowercase());
    let patterns = [
        format!(r"(?i:answer)\s*(?:is|:)?\s*[:\-]?\s*\(?\**([{set}])\b"),
        format!(r"^\s*\(?\**([{both}])\**\)?\s*(?:[.):]|$)"),
        format!(r"\(([{set}])\)"),
        format!(r"\b([{set}])\b"),
    ];
    let t = output.trim();
    patterns.iter().find_map(|p| {
        let re = Regex::new(p).ok()?;
        re.captures(t)
            .and_then(|c| c.get(1))
            .and_then(|g| g.as_str().chars().next())
            .map(|c| c.to_ascii_uppercase())
            .filter(|c| letters.contains(*c))
    })
}
