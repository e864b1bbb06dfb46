//! Scorers: each turns (output, reference) into a score in [0, 1] and, when it fails, says why.
//!
//! A suite lists them as `[[scorers]]` with a `type`, a `weight` and the keys that type takes;
//! keys that the type does not take are errors, so a typo does not silently change a score.

use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One scorer as written in a suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerSpec {
    #[serde(rename = "type")]
    pub kind: ScorerKind,
    #[serde(default = "one")]
    pub weight: f64,
    /// `regex`: the pattern (its first group, or the whole match, is the answer). `numeric`: an
    /// optional pattern to find the number.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `numeric`: the largest difference that still passes.
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// `numeric`: `tolerance` is relative to the reference.
    #[serde(default)]
    pub relative: Option<bool>,
    /// `exact`, `contains`, `regex`: compare without case.
    #[serde(default)]
    pub ignore_case: Option<bool>,
    /// `choice`: the option letters (default "ABCD").
    #[serde(default)]
    pub letters: Option<String>,
    /// `json_schema`: the schema inline, or `schema_file` (relative to the suite).
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub schema_file: Option<std::path::PathBuf>,
    /// `judge`: the target that grades, and the rubric it grades by.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub rubric: Option<String>,
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
    /// A pattern's match (first group) equals the reference; with no reference, the pattern matches.
    Regex,
    /// The number in the output (the last one, or the pattern's) is within `tolerance` of the reference.
    Numeric,
    /// The multiple-choice letter the output picks equals the reference letter.
    Choice,
    /// The output is valid JSON (a fenced block or the first object/array in it counts).
    Json,
    /// The output is JSON that matches a JSON Schema.
    JsonSchema,
    /// The output's JSON contains every key of the reference JSON with an equal value.
    JsonMatch,
    /// Another target grades the output against a rubric (PASS/FAIL).
    Judge,
}

impl ScorerKind {
    pub fn name(self) -> &'static str {
        match self {
            ScorerKind::Exact => "exact",
            ScorerKind::Normalized => "normalized",
            ScorerKind::Contains => "contains",
            ScorerKind::Regex => "regex",
            ScorerKind::Numeric => "numeric",
            ScorerKind::Choice => "choice",
            ScorerKind::Json => "json",
            ScorerKind::JsonSchema => "json_schema",
            ScorerKind::JsonMatch => "json_match",
            ScorerKind::Judge => "judge",
        }
    }

    /// Whether this scorer compares against the case's reference.
    pub fn needs_reference(self) -> bool {
        !matches!(
            self,
            ScorerKind::Json | ScorerKind::JsonSchema | ScorerKind::Regex | ScorerKind::Judge
        )
    }
}

/// A scorer's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub scorer: String,
    pub score: f64,
    /// What the scorer read from the output (the letter, the number, the match), when it reads one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub extracted: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// A scorer checked and ready: patterns compiled, schema loaded.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub spec: ScorerSpec,
    regex: Option<Regex>,
    schema: Option<std::sync::Arc<jsonschema::Validator>>,
}

impl Scorer {
    /// Check a scorer's keys against its type; `index` and `suite` name it in errors.
    pub fn new(spec: ScorerSpec, suite: &Path, index: usize) -> Result<Self, String> {
        let at = |m: String| format!("[[scorers]] #{} ({}): {m}", index + 1, spec.kind.name());
        let k = spec.kind;
        let allowed: &[&str] = match k {
            ScorerKind::Exact | ScorerKind::Contains => &["ignore_case"],
            ScorerKind::Normalized | ScorerKind::Json | ScorerKind::JsonMatch => &[],
            ScorerKind::Regex => &["pattern", "ignore_case"],
            ScorerKind::Numeric => &["pattern", "tolerance", "relative"],
            ScorerKind::Choice => &["letters"],
            ScorerKind::JsonSchema => &["schema", "schema_file"],
            ScorerKind::Judge => &["target", "rubric"],
        };
        let set = [
            ("pattern", spec.pattern.is_some()),
            ("tolerance", spec.tolerance.is_some()),
            ("relative", spec.relative.is_some()),
            ("ignore_case", spec.ignore_case.is_some()),
            ("letters", spec.letters.is_some()),
            ("schema", spec.schema.is_some()),
            ("schema_file", spec.schema_file.is_some()),
            ("target", spec.target.is_some()),
            ("rubric", spec.rubric.is_some()),
        ];
        for (key, present) in set {
            if present && !allowed.contains(&key) {
                return Err(at(format!("`{key}` does not apply to this scorer")));
            }
        }
        if !(spec.weight.is_finite() && spec.weight >= 0.0) {
            return Err(at(format!("`weight` must be ≥ 0, got {}", spec.weight)));
        }
        let regex = match &spec.pattern {
            Some(p) => {
                let p = if spec.ignore_case == Some(true) {
                    format!("(?i){p}")
                } else {
                    p.clone()
                };
                Some(Regex::new(&p).map_err(|e| at(format!("`pattern`: {e}")))?)
            }
            None if k == ScorerKind::Regex => return Err(at("`pattern` is required".into())),
            None => None,
        };
        let schema = if k == ScorerKind::JsonSchema {
            let v = match (&spec.schema, &spec.schema_file) {
                (Some(s), None) => s.clone(),
                (None, Some(f)) => {
                    let path = suite.parent().unwrap_or(Path::new(".")).join(f);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| at(format!("`schema_file` {}: {e}", path.display())))?;
                    serde_json::from_str(&text)
                        .map_err(|e| at(format!("`schema_file` {}: {e}", path.display())))?
                }
                _ => return Err(at("set exactly one of `schema` or `schema_file`".into())),
            };
            Some(std::sync::Arc::new(
                jsonschema::validator_for(&v).map_err(|e| at(format!("invalid schema: {e}")))?,
            ))
        } else {
            None
        };
        if k == ScorerKind::Judge && (spec.target.is_none() || spec.rubric.is_none()) {
            return Err(at(
                "`target` (the grading target) and `rubric` are required".into(),
            ));
        }
        if let Some(l) = &spec.letters
            && (l.len() < 2 || !l.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(at(format!(
                "`letters` must be upper-case letters, got {l:?}"
            )));
        }
        Ok(Self {
            spec,
            regex,
            schema,
        })
    }

    /// Score an output. `judge` scorers are graded by the runner (they need a provider); here
    /// they only say so.
    pub fn score(&self, output: &str, reference: Option<&str>) -> Verdict {
        let k = self.spec.kind;
        let reference = reference.map(str::trim);
        let result = match (k, reference) {
            (ScorerKind::Judge, _) => Err((None, "graded by the judge".to_string())),
            (k, None) if k.needs_reference() => {
                Err((None, "the case has no reference answer".to_string()))
            }
            (_, r) => self.check(output, r.unwrap_or("")),
        };
        match result {
            Ok(extracted) => Verdict {
                scorer: k.name().into(),
                score: 1.0,
                extracted,
                reason: None,
            },
            Err((extracted, why)) => Verdict {
                scorer: k.name().into(),
                score: 0.0,
                extracted,
                reason: Some(why),
            },
        }
    }

    /// Ok(what was extracted) on a pass, Err((what was extracted, why not)) on a fail.
    fn check(
        &self,
        output: &str,
        reference: &str,
    ) -> Result<Option<String>, (Option<String>, String)> {
        let ic = self.spec.ignore_case == Some(true);
        let eq = |a: &str, b: &str| {
            if ic {
                a.to_lowercase() == b.to_lowercase()
            } else {
                a == b
            }
        };
        match self.spec.kind {
            ScorerKind::Exact => pass_if(
                eq(output.trim(), reference),
                None,
                format!(
                    "expected exactly {:?}, got {:?}",
                    clip(reference),
                    clip(output.trim())
                ),
            ),
            ScorerKind::Normalized => pass_if(
                normalize(output) == normalize(reference),
                None,
                format!(
                    "normalised output {:?} differs from {:?}",
                    clip(&normalize(output)),
                    clip(&normalize(reference))
                ),
            ),
            ScorerKind::Contains => {
                let found = if ic {
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
            ScorerKind::Regex => {
                let re = self.regex.as_ref().expect("compiled at load");
                let Some(m) = re.captures(output) else {
                    return Err((None, format!("no match for /{}/", re.as_str())));
                };
                let got = m
                    .get(1)
                    .or_else(|| m.get(0))
                    .map_or("", |g| g.as_str())
                    .trim();
                let ok = reference.is_empty() || eq(got, reference);
                pass_if(
                    ok,
                    Some(got.to_string()),
                    format!("matched {:?}, expected {:?}", clip(got), clip(reference)),
                )
            }
            ScorerKind::Numeric => self.numeric(output, reference),
            ScorerKind::Choice => {
                let letters = self.spec.letters.as_deref().unwrap_or("ABCD");
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
            ScorerKind::Json => extract_json(output).map(|_| None).map_err(|e| (None, e)),
            ScorerKind::JsonSchema => {
                let v = extract_json(output).map_err(|e| (None, e))?;
                let validator = self.schema.as_ref().expect("compiled at load");
                let errors: Vec<String> = validator
                    .iter_errors(&v)
                    .take(3)
                    .map(|e| format!("{} at `{}`", e, e.instance_path()))
                    .collect();
                pass_if(
                    errors.is_empty(),
                    None,
                    format!("schema: {}", errors.join("; ")),
                )
            }
            ScorerKind::JsonMatch => {
                let want: Value = serde_json::from_str(reference).map_err(|e| {
                    (
                        None,
                        format!("the reference is not JSON ({e}): {}", clip(reference)),
                    )
                })?;
                let got = extract_json(output).map_err(|e| (None, e))?;
                match json_contains(&got, &want, "") {
                    None => Ok(None),
                    Some(why) => Err((None, why)),
                }
            }
            ScorerKind::Judge => unreachable!("judged by the runner"),
        }
    }

    fn numeric(
        &self,
        output: &str,
        reference: &str,
    ) -> Result<Option<String>, (Option<String>, String)> {
        let want = parse_number(reference).ok_or_else(|| {
            (
                None,
                format!("the reference {:?} is not a number", clip(reference)),
            )
        })?;
        let text = match &self.regex {
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
        let tol = self.spec.tolerance.unwrap_or(1e-6);
        let limit = if self.spec.relative == Some(true) {
            tol * want.abs()
        } else {
            tol
        };
        pass_if(
            (got - want).abs() <= limit,
            Some(raw.clone()),
            format!("read {raw}, expected {reference} (±{limit})"),
        )
    }
}

fn pass_if(
    ok: bool,
    extracted: Option<String>,
    why: String,
) -> Result<Option<String>, (Option<String>, String)> {
    if ok {
        Ok(extracted)
    } else {
        Err((extracted, why))
    }
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

pub fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
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

/// JSON from an output: the whole text, a ```json fenced block, or the first balanced object or
/// array in it.
pub fn extract_json(output: &str) -> Result<Value, String> {
    let t = output.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Ok(v);
    }
    if let Some(start) = t.find("```") {
        let body = &t[start + 3..];
        let body = body.strip_prefix("json").unwrap_or(body);
        if let Some(end) = body.find("```")
            && let Ok(v) = serde_json::from_str(body[..end].trim())
        {
            return Ok(v);
        }
    }
    for (i, c) in t.char_indices() {
        if c == '{' || c == '[' {
            let mut de = serde_json::Deserializer::from_str(&t[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = de.next() {
                return Ok(v);
            }
        }
    }
    Err(format!("no JSON in {:?}", clip(t)))
}

/// None when `got` holds everything in `want` (objects: every key, recursively; numbers: equal
/// within 1e-9; the rest: equal); else where they differ.
fn json_contains(got: &Value, want: &Value, at: &str) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().find_map(|(k, wv)| {
            let path = format!("{at}/{k}");
            match g.get(k) {
                None => Some(format!("missing `{path}`")),
                Some(gv) => json_contains(gv, wv, &path),
            }
        }),
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64()?, b.as_f64()?);
            ((a - b).abs() > 1e-9).then(|| format!("`{at}` is {a}, expected {b}"))
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (gv, wv))| json_contains(gv, wv, &format!("{at}/{i}"))),
        (g, w) => (g != w).then(|| {
            format!(
                "`{}` is {}, expected {}",
                if at.is_empty() { "/" } else { at },
                clip(&g.to_string()),
                clip(&w.to_string())
            )
        }),
    }
}

/// The grading request a judge target receives.
pub fn judge_messages(
    rubric: &str,
    prompt: &str,
    output: &str,
    reference: Option<&str>,
) -> Vec<crate::tokenize::Message> {
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
        crate::tokenize::Message::new("system", "You are a strict, fair grader."),
        crate::tokenize::Message::new("user", &user),
    ]
}

/// A judge's reply as a verdict: the last `VERDICT: PASS|FAIL` decides.
pub fn judge_verdict(reply: &str) -> Verdict {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?i)verdict\s*[:=]?\s*\**\s*(pass|fail)").expect("valid")
    });
    let found = RE
        .captures_iter(reply)
        .last()
        .map(|c| c[1].to_ascii_uppercase());
    let why = clip(reply.trim());
    match found.as_deref() {
        Some("PASS") => Verdict {
            scorer: "judge".into(),
            score: 1.0,
            extracted: Some("PASS".into()),
            reason: None,
        },
        Some(_) => Verdict {
            scorer: "judge".into(),
            score: 0.0,
            extracted: Some("FAIL".into()),
            reason: Some(format!("judge: {why}")),
        },
        None => Verdict {
            scorer: "judge".into(),
            score: 0.0,
            extracted: None,
            reason: Some(format!("the judge gave no verdict: {why}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scorer(toml_text: &str) -> Result<Scorer, String> {
        let spec: ScorerSpec = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Scorer::new(spec, Path::new("suite.toml"), 0)
    }

    fn s(toml_text: &str, out: &str, reference: &str) -> f64 {
        scorer(toml_text).unwrap().score(out, Some(reference)).score
    }

    #[test]
    fn string_scorers() {
        assert_eq!(s("type='exact'", " a, b \n", "a, b"), 1.0);
        let v = scorer("type='exact'").unwrap().score("a b", Some("a, b"));
        assert_eq!(v.score, 0.0);
        assert!(v.reason.unwrap().contains("expected exactly"));
        assert_eq!(s("type='exact'\nignore_case=true", "PARIS", "paris"), 1.0);
        assert_eq!(s("type='normalized'", "A,  B!", "a b"), 1.0);
        assert_eq!(s("type='contains'", "It is Paris.", "Paris"), 1.0);
        assert_eq!(s("type='contains'", "It is Lyon.", "Paris"), 0.0);
        assert_eq!(
            s(
                "type='regex'\npattern='capital is (\\w+)'",
                "The capital is Paris.",
                "Paris"
            ),
            1.0
        );
        assert_eq!(
            s(
                "type='regex'\npattern='capital is (\\w+)'",
                "The capital is Lyon.",
                "Paris"
            ),
            0.0
        );
    }

    #[test]
    fn numbers_and_letters() {
        assert_eq!(s("type='numeric'", "So the answer is 1,234.", "1234"), 1.0);
        assert_eq!(s("type='numeric'", "x = -3.5", "-3.5"), 1.0);
        assert_eq!(s("type='numeric'", "3/4", "0.75"), 1.0);
        assert_eq!(
            s(
                "type='numeric'\ntolerance=0.01\nrelative=true",
                "102",
                "100"
            ),
            0.0
        );
        assert_eq!(
            s(
                "type='numeric'\ntolerance=0.02\nrelative=true",
                "101",
                "100"
            ),
            1.0
        );
        let v = scorer("type='numeric'")
            .unwrap()
            .score("no idea", Some("4"));
        assert!(v.reason.unwrap().contains("no number"));
        for (out, want) in [
            ("B", 'B'),
            ("The answer is (C).", 'C'),
            ("Answer: D", 'D'),
            ("A. Paris", 'A'),
            ("b) Paris", 'B'),
        ] {
            assert_eq!(choice_letter(out, "ABCD"), Some(want), "{out}");
        }
        assert_eq!(choice_letter("None of these", "ABCD"), None);
        assert_eq!(choice_letter("The answer is a tricky one", "ABCD"), None);
        assert_eq!(s("type='choice'", "The answer is C", "C"), 1.0);
        assert_eq!(s("type='choice'", "The answer is C", "A"), 0.0);
    }

    #[test]
    fn json_scorers() {
        assert_eq!(s("type='json'", "```json\n{\"a\": 1}\n```", ""), 1.0);
        assert_eq!(s("type='json'", "Here: {\"a\": [1, 2]} done", ""), 1.0);
        assert_eq!(s("type='json'", "{\"a\": 1", ""), 0.0);
        let schema = "type='json_schema'\nschema={type='object', required=['count','first'], properties={count={type='integer'}, first={type='string'}}}";
        assert_eq!(s(schema, "{\"count\": 3, \"first\": \"x\"}", ""), 1.0);
        let v = scorer(schema).unwrap().score("{\"count\": \"3\"}", None);
        assert_eq!(v.score, 0.0);
        assert!(v.reason.unwrap().contains("schema"));
        let m = "type='json_match'";
        assert_eq!(
            s(
                m,
                "{\"count\": 3.0, \"first\": \"x\", \"extra\": 1}",
                "{\"count\": 3, \"first\": \"x\"}"
            ),
            1.0
        );
        let v = scorer(m)
            .unwrap()
            .score("{\"count\": 4}", Some("{\"count\": 3, \"first\": \"x\"}"));
        assert!(v.reason.unwrap().contains("/count"));
    }

    #[test]
    fn bad_scorers_are_named() {
        let e = scorer("type='numeric'\nletters='AB'").unwrap_err();
        assert!(
            e.contains("`letters` does not apply") && e.contains("#1"),
            "{e}"
        );
        assert!(
            scorer("type='regex'")
                .unwrap_err()
                .contains("`pattern` is required")
        );
        assert!(
            scorer("type='regex'\npattern='('")
                .unwrap_err()
                .contains("pattern")
        );
        assert!(
            scorer("type='judge'\ntarget='x'")
                .unwrap_err()
                .contains("rubric")
        );
        assert!(
            scorer("type='json_schema'\nschema={type=3}")
                .unwrap_err()
                .contains("invalid schema")
        );
        assert!(scorer("type='nope'").is_err());
    }

    #[test]
    fn judge_replies() {
        assert_eq!(judge_verdict("Good answer.\nVERDICT: PASS").score, 1.0);
        assert_eq!(
            judge_verdict("verdict: pass... no wait. VERDICT: FAIL").score,
            0.0
        );
        let v = judge_verdict("I like it");
        assert!(v.reason.unwrap().contains("no verdict"));
    }
}
