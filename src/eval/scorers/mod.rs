//! Scorers: each turns (output, reference) into a score in [0, 1] and, when it fails, says why.
//!
//! A suite lists them as `[[scorers]]` with a `type`, a `weight` and the keys that type takes.
//! The types are one tagged enum ([`ScorerKind`]), so a key a type does not take is an error that
//! names it, and a typo does not silently change a score. One module per family: [`text`]
//! (exact, normalized, contains, regex), [`numeric`], [`choice`], [`json`] (json, json_schema,
//! json_match) and [`judge`] (another target grades).

pub mod choice;
pub mod json;
pub mod judge;
pub mod numeric;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::BoxFuture;
use crate::tokenize::Message;

/// One scorer as written in a suite: its weight and its type with that type's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerSpec {
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(flatten)]
    pub kind: ScorerKind,
}

fn one() -> f64 {
    1.0
}
fn d_tolerance() -> f64 {
    1e-6
}
fn d_letters() -> String {
    "ABCD".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerKind {
    /// The output, trimmed, equals the reference, trimmed.
    Exact {
        #[serde(default)]
        ignore_case: bool,
    },
    /// Equal after lower-casing, dropping punctuation and collapsing whitespace.
    Normalized {},
    /// The reference appears in the output.
    Contains {
        #[serde(default)]
        ignore_case: bool,
    },
    /// How much the output says what the reference says: the F1 of their words (after
    /// normalising), a score between 0 and 1 (the suite's `pass_threshold` decides a pass).
    Similarity {},
    /// A pattern's match (its first group, or the whole match) equals the reference; with no
    /// reference, the pattern matches.
    Regex {
        pattern: String,
        #[serde(default)]
        ignore_case: bool,
    },
    /// The number in the output (the last one, or the pattern's) is within `tolerance` of the
    /// reference (`relative`: a fraction of it).
    Numeric {
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default = "d_tolerance")]
        tolerance: f64,
        #[serde(default)]
        relative: bool,
    },
    /// The multiple-choice letter the output picks equals the reference letter.
    Choice {
        #[serde(default = "d_letters")]
        letters: String,
    },
    /// The output is valid JSON (a fenced block or the first object/array in it counts).
    Json {},
    /// The output is JSON that matches a JSON Schema, given inline or as `schema_file`
    /// (relative to the suite).
    JsonSchema {
        #[serde(default)]
        schema: Option<Value>,
        #[serde(default)]
        schema_file: Option<PathBuf>,
    },
    /// The output's JSON contains every key of the reference JSON with an equal value.
    JsonMatch {},
    /// Another target grades the output against a rubric (PASS/FAIL).
    Judge { target: String, rubric: String },
}

impl ScorerKind {
    pub fn name(&self) -> &'static str {
        match self {
            ScorerKind::Exact { .. } => "exact",
            ScorerKind::Normalized {} => "normalized",
            ScorerKind::Contains { .. } => "contains",
            ScorerKind::Similarity {} => "similarity",
            ScorerKind::Regex { .. } => "regex",
            ScorerKind::Numeric { .. } => "numeric",
            ScorerKind::Choice { .. } => "choice",
            ScorerKind::Json {} => "json",
            ScorerKind::JsonSchema { .. } => "json_schema",
            ScorerKind::JsonMatch {} => "json_match",
            ScorerKind::Judge { .. } => "judge",
        }
    }

    /// Whether this scorer compares against the case's reference.
    pub fn needs_reference(&self) -> bool {
        !matches!(
            self,
            ScorerKind::Json {}
                | ScorerKind::JsonSchema { .. }
                | ScorerKind::Regex { .. }
                | ScorerKind::Judge { .. }
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

/// A check's result: `Ok(what was extracted)` on a pass, `Err((what was extracted, why not))`.
pub type Checked = Result<Option<String>, (Option<String>, String)>;

pub(crate) fn pass_if(ok: bool, extracted: Option<String>, why: String) -> Checked {
    if ok {
        Ok(extracted)
    } else {
        Err((extracted, why))
    }
}

pub fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

/// A scorer that could not be built; names it by its place in the suite.
#[derive(Debug, thiserror::Error)]
#[error("[[scorers]] #{} ({kind}): {detail}", index + 1)]
pub struct ScorerError {
    pub index: usize,
    pub kind: &'static str,
    pub detail: String,
}

/// A judge that could not grade (its target failed or is not defined).
#[derive(Debug, Clone, thiserror::Error)]
#[error("judge `{target}`: {detail}")]
pub struct JudgeError {
    pub target: String,
    pub detail: String,
}

/// The targets judge scorers send grading requests to (the runner provides them; scorers know
/// no provider).
pub trait Judges: Sync {
    /// The named judge target's reply to `messages`.
    fn ask<'a>(
        &'a self,
        target: &'a str,
        messages: Vec<Message>,
    ) -> BoxFuture<'a, Result<String, JudgeError>>;
}

/// A scorer's check, compiled: patterns built, schema loaded.
#[derive(Debug, Clone)]
enum Check {
    Exact { ignore_case: bool },
    Normalized,
    Contains { ignore_case: bool },
    Similarity,
    Regex { re: Regex, ignore_case: bool },
    Numeric(numeric::Numeric),
    Choice { letters: String },
    Json,
    JsonSchema(Arc<jsonschema::Validator>),
    JsonMatch,
    Judge { target: String, rubric: String },
}

/// A scorer checked and ready.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub weight: f64,
    pub kind: ScorerKind,
    check: Check,
}

impl Scorer {
    /// Check a scorer's values; `index` (its place in the suite) and `suite` (for
    /// `schema_file`) name it in errors.
    pub fn new(spec: ScorerSpec, suite: &Path, index: usize) -> Result<Self, ScorerError> {
        let at = |detail: String| ScorerError {
            index,
            kind: spec.kind.name(),
            detail,
        };
        if !(spec.weight.is_finite() && spec.weight >= 0.0) {
            return Err(at(format!("`weight` must be ≥ 0, got {}", spec.weight)));
        }
        let check = match &spec.kind {
            ScorerKind::Exact { ignore_case } => Check::Exact {
                ignore_case: *ignore_case,
            },
            ScorerKind::Normalized {} => Check::Normalized,
            ScorerKind::Contains { ignore_case } => Check::Contains {
                ignore_case: *ignore_case,
            },
            ScorerKind::Similarity {} => Check::Similarity,
            ScorerKind::Regex {
                pattern,
                ignore_case,
            } => Check::Regex {
                re: text::compile(pattern, *ignore_case)
                    .map_err(|e| at(format!("`pattern`: {e}")))?,
                ignore_case: *ignore_case,
            },
            ScorerKind::Numeric {
                pattern,
                tolerance,
                relative,
            } => Check::Numeric(numeric::Numeric {
                pattern: match pattern {
                    Some(p) => {
                        Some(text::compile(p, false).map_err(|e| at(format!("`pattern`: {e}")))?)
                    }
                    None => None,
                },
                tolerance: *tolerance,
                relative: *relative,
            }),
            ScorerKind::Choice { letters } => {
                if letters.len() < 2 || !letters.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(at(format!(
                        "`letters` must be upper-case letters, got {letters:?}"
                    )));
                }
                Check::Choice {
                    letters: letters.clone(),
                }
            }
            ScorerKind::Json {} => Check::Json,
            ScorerKind::JsonSchema {
                schema,
                schema_file,
            } => {
                let v = match (schema, schema_file) {
                    (Some(s), None) => s.clone(),
                    (None, Some(f)) => {
                        let path = suite.parent().unwrap_or(Path::new(".")).join(f);
                        crate::util::read_json(&path)
                            .map_err(|e| at(format!("`schema_file` {e}")))?
                    }
                    _ => return Err(at("set exactly one of `schema` or `schema_file`".into())),
                };
                Check::JsonSchema(json::compile_schema(&v).map_err(at)?)
            }
            ScorerKind::JsonMatch {} => Check::JsonMatch,
            ScorerKind::Judge { target, rubric } => Check::Judge {
                target: target.clone(),
                rubric: rubric.clone(),
            },
        };
        Ok(Self {
            weight: spec.weight,
            kind: spec.kind,
            check,
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The target a judge scorer grades with.
    pub fn judge_target(&self) -> Option<&str> {
        match &self.check {
            Check::Judge { target, .. } => Some(target),
            _ => None,
        }
    }

    /// Score an output: `question` is what was asked (a judge reads it), `judges` answer a judge
    /// scorer's grading request. Err only when a judge could not grade.
    pub async fn score(
        &self,
        output: &str,
        question: &str,
        reference: Option<&str>,
        judges: &dyn Judges,
    ) -> Result<Verdict, JudgeError> {
        match &self.check {
            Check::Judge { target, rubric } => {
                let messages = judge::messages(rubric, question, output, reference);
                let reply = judges.ask(target, messages).await?;
                Ok(judge::verdict(&reply))
            }
            _ => Ok(self.score_text(output, reference)),
        }
    }

    /// Score an output with a check that needs no other target (a judge says it cannot).
    pub fn score_text(&self, output: &str, reference: Option<&str>) -> Verdict {
        let reference = reference.map(str::trim);
        if let (Check::Similarity, Some(r)) = (&self.check, reference) {
            let f1 = text::word_f1(output, r);
            return Verdict {
                scorer: self.name().into(),
                score: f1,
                extracted: Some(format!("{f1:.3}")),
                reason: (f1 < 1.0).then(|| format!("word F1 {f1:.3} against the reference")),
            };
        }
        let result = match (&self.check, reference) {
            (Check::Judge { .. }, _) => Err((None, "graded by the judge".to_string())),
            (_, None) if self.kind.needs_reference() => {
                Err((None, "the case has no reference answer".to_string()))
            }
            (check, r) => Self::check(check, output, r.unwrap_or("")),
        };
        let (score, extracted, reason) = match result {
            Ok(extracted) => (1.0, extracted, None),
            Err((extracted, why)) => (0.0, extracted, Some(why)),
        };
        Verdict {
            scorer: self.name().into(),
            score,
            extracted,
            reason,
        }
    }

    fn check(check: &Check, output: &str, reference: &str) -> Checked {
        match check {
            Check::Exact { ignore_case } => text::exact(output, reference, *ignore_case),
            Check::Normalized => text::normalized(output, reference),
            Check::Contains { ignore_case } => text::contains(output, reference, *ignore_case),
            Check::Similarity => unreachable!("scored in `score_text`"),
            Check::Regex { re, ignore_case } => text::regex(re, output, reference, *ignore_case),
            Check::Numeric(n) => n.check(output, reference),
            Check::Choice { letters } => choice::check(output, reference, letters),
            Check::Json => json::json(output),
            Check::JsonSchema(v) => json::json_schema(v, output),
            Check::JsonMatch => json::json_match(output, reference),
            Check::Judge { .. } => unreachable!("graded through `score`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scorer(toml_text: &str) -> Result<Scorer, String> {
        let spec: ScorerSpec = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Scorer::new(spec, Path::new("suite.toml"), 0).map_err(|e| e.to_string())
    }

    fn s(toml_text: &str, out: &str, reference: &str) -> f64 {
        scorer(toml_text)
            .unwrap()
            .score_text(out, Some(reference))
            .score
    }

    #[test]
    fn string_scorers() {
        assert_eq!(s("type='exact'", " a, b \n", "a, b"), 1.0);
        let v = scorer("type='exact'")
            .unwrap()
            .score_text("a b", Some("a, b"));
        assert_eq!(v.score, 0.0);
        assert!(v.reason.unwrap().contains("expected exactly"));
        assert_eq!(s("type='exact'\nignore_case=true", "PARIS", "paris"), 1.0);
        assert_eq!(s("type='normalized'", "A,  B!", "a b"), 1.0);
        assert_eq!(s("type='contains'", "It is Paris.", "Paris"), 1.0);
        assert_eq!(s("type='contains'", "It is Lyon.", "Paris"), 0.0);
        // Word F1: 2 of 3 output words, 2 of 2 reference words: 2·(2/3)·1 / (2/3 + 1) = 0.8.
        assert!(
            (s("type='similarity'", "Paris, France indeed", "paris france") - 0.8).abs() < 1e-9
        );
        assert_eq!(s("type='similarity'", "Rome", "Paris"), 0.0);
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
            .score_text("no idea", Some("4"));
        assert!(v.reason.unwrap().contains("no number"));
        for (out, want) in [
            ("B", 'B'),
            ("The answer is (C).", 'C'),
            ("Answer: D", 'D'),
            ("A. Paris", 'A'),
            ("b) Paris", 'B'),
        ] {
            assert_eq!(choice::choice_letter(out, "ABCD"), Some(want), "{out}");
        }
        assert_eq!(choice::choice_letter("None of these", "ABCD"), None);
        assert_eq!(
            choice::choice_letter("The answer is a tricky one", "ABCD"),
            None
        );
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
        let v = scorer(schema)
            .unwrap()
            .score_text("{\"count\": \"3\"}", None);
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
            .score_text("{\"count\": 4}", Some("{\"count\": 3, \"first\": \"x\"}"));
        assert!(v.reason.unwrap().contains("/count"));
    }

    #[test]
    fn bad_scorers_are_named() {
        // A key the type does not take is named, with the keys it does take and the line of
        // the scorer's table.
        let e = scorer("type='numeric'\nletters='AB'").unwrap_err();
        assert!(
            e.contains("`letters`") && e.contains("`tolerance`") && e.contains("line 1"),
            "{e}"
        );
        let e = scorer("type='regex'").unwrap_err();
        assert!(e.contains("`pattern`"), "{e}");
        let e = scorer("type='regex'\npattern='('").unwrap_err();
        assert!(e.contains("pattern") && e.contains("#1"), "{e}");
        let e = scorer("type='judge'\ntarget='x'").unwrap_err();
        assert!(e.contains("rubric"), "{e}");
        let e = scorer("type='json_schema'\nschema={type=3}").unwrap_err();
        assert!(e.contains("invalid schema"), "{e}");
        let e = scorer("type='choice'\nletters='ab'").unwrap_err();
        assert!(e.contains("upper-case"), "{e}");
        assert!(scorer("type='nope'").is_err());
        assert_eq!(scorer("type='exact'\nweight=2").unwrap().weight, 2.0);
    }

    #[test]
    fn judge_replies() {
        assert_eq!(judge::verdict("Good answer.\nVERDICT: PASS").score, 1.0);
        assert_eq!(
            judge::verdict("verdict: pass... no wait. VERDICT: FAIL").score,
            0.0
        );
        let v = judge::verdict("I like it");
        assert!(v.reason.unwrap().contains("no verdict"));
    }
}
