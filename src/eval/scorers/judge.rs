//! `judge`: another target grades the output against a rubric and ends its reply with
//! `VERDICT: PASS` or `VERDICT: FAIL`.

use regex::Regex;

use super::{Verdict, clip};
use crate::tokenize::Message;

/// The grading request a judge target receives.
pub fn messages(rubric: &str, prompt: &str, output: &str, reference: Option<&str>) -> Vec<Message> {
    let mut user = format!(
        "You are grading an AI assistant's answer.\n\n[Question]\n{prompt}\n\n[Answer]\n{output}\n\n"
    );
    if let Some(r) = reference {
        user.push_str(&format!("[Reference answer]\n{r}\n\n"));
    }
    user.push_str(&format!(
        "[Rubric]\n{rubric}\n\nExplain briefly, then end with a line that is exactly `VERDICT: PASS` or `VERDICT: FAIL`."
    ));
    vec![
        Message::new("system", "You are a strict, fair grader."),
        Message::new("user", &user),
    ]
}

/// A judge's reply as a verdict: the last `VERDICT: PASS|FAIL` decides.
pub fn verdict(reply: &str) -> Verdict {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?i)verdict\s*[:=]?\s*\**\s*(pass|fail)").expect("valid")
    });
    let found = RE
        .captures_iter(reply)
        .last()
        .map(|c| c[1].to_ascii_uppercase());
    let why = clip(reply.trim());
    let (score, extracted, reason) = match found.as_deref() {
        Some("PASS") => (1.0, Some("PASS".into()), None),
        Some(_) => (0.0, Some("FAIL".into()), Some(format!("judge: {why}"))),
        None => (0.0, None, Some(format!("the judge gave no verdict: {why}"))),
    };
    Verdict {
        scorer: "judge".into(),
        score,
        extracted,
        reason,
    }
}
