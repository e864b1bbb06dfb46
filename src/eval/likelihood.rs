//! Log-likelihood scoring, as lm-evaluation-harness does it. A case is plain text (no chat
//! template): a context and one or more continuations, each scored by the sum of the model's
//! log-probabilities of its tokens given what precedes them.
//!
//! - `multiple_choice`: a continuation per choice (`target_delimiter` + choice); `acc` is the
//!   most likely choice being the right one, `acc_norm` the same after dividing each
//!   log-likelihood by its choice's length in characters (lm-eval's `len(choice)`).
//! - `loglikelihood`: one continuation (the reference); `acc` is it being the greedy
//!   continuation, and the summary's perplexity is `exp(−mean log-likelihood)`.
//! - `loglikelihood_rolling`: the whole text, every token scored (the local model puts its BOS
//!   first, as lm-eval's prefix token); the summary gives bits per byte and word perplexity.
//!
//! Prompt log-probabilities come from a text completion with `echo` (the local model, or an
//! OpenAI-compatible `/v1/completions` that returns them: vLLM, llama.cpp's server, `switchyard
//! serve`); a continuation's tokens are those that start at or after its offset in the text.

pub use super::suite_file::OutputType;
use super::suite_file::{SuiteFile, cell, render};
use crate::data::load::Row;
use crate::generate::ScoredToken;
use crate::providers::{ChatRequest, Message};

/// What one case scores.
#[derive(Debug, Clone, PartialEq)]
pub struct LikelihoodCase {
    pub output_type: OutputType,
    pub context: String,
    /// The texts scored after the context (a choice with its delimiter, or the reference).
    pub continuations: Vec<String>,
    /// `multiple_choice`: the choices as written (their lengths normalise `acc_norm`).
    pub choices: Vec<String>,
    /// `multiple_choice`: the right choice.
    pub gold: Option<usize>,
}

/// The keys a suite of this type needs, and those it may not have.
pub fn check(f: &SuiteFile) -> Result<(), String> {
    if f.output_type == OutputType::GenerateUntil {
        for (set, key) in [
            (f.choices.is_some(), "choices"),
            (f.choices_column.is_some(), "choices_column"),
            (f.gold.is_some(), "gold"),
            (f.preamble.is_some(), "preamble"),
        ] {
            if set {
                return Err(format!(
                    "`{key}` is for log-likelihood suites; set `output_type` (multiple_choice, loglikelihood, loglikelihood_rolling)"
                ));
            }
        }
        return Ok(());
    }
    let ty = serde_json::to_value(f.output_type).expect("serialises");
    if f.user.is_none() || f.messages.is_some() || f.system.is_some() {
        return Err(format!(
            "output_type {ty}: the context is plain text from the `user` template (no `messages`, no `system`)"
        ));
    }
    if !f.scorers.is_empty() {
        return Err(format!(
            "output_type {ty} is scored by log-likelihood: remove the [[scorers]]"
        ));
    }
    match f.output_type {
        OutputType::MultipleChoice => {
            if f.choices.is_some() == f.choices_column.is_some() {
                return Err(
                    "multiple_choice: set exactly one of `choices` (templates) or `choices_column`"
                        .into(),
                );
            }
            if f.gold.is_none() {
                return Err("multiple_choice: `gold` names the column of the right choice".into());
            }
        }
        OutputType::Loglikelihood if f.reference.is_none() => {
            return Err("loglikelihood: `reference` names the column of the continuation".into());
        }
        _ => {}
    }
    Ok(())
}

/// The choices of a row: the suite's templates rendered, or the row's list.
fn choices(
    f: &SuiteFile,
    env: &minijinja::Environment,
    row: &Row,
) -> Result<Vec<String>, crate::eval::EvalError> {
    if let Some(col) = &f.choices_column {
        let list = row
            .fields
            .get(col)
            .and_then(|v| v.as_array())
            .ok_or_else(|| row.err(format!("`{col}` must be a list of choices")))?;
        return Ok(list.iter().filter_map(cell).collect());
    }
    f.choices
        .iter()
        .flatten()
        .map(|t| render(env, t, row, "choice"))
        .collect()
}

/// The index of a row's right choice: the `gold` column's number, or the choice it spells.
fn gold(f: &SuiteFile, row: &Row, choices: &[String]) -> Result<usize, crate::eval::EvalError> {
    let col = f.gold.as_deref().unwrap_or("");
    let v = row
        .fields
        .get(col)
        .ok_or_else(|| row.err(format!("missing gold column `{col}`")))?;
    let index = match v {
        serde_json::Value::Number(n) => n.as_u64().map(|i| i as usize),
        other => {
            let text = cell(other).unwrap_or_default();
            choices
                .iter()
                .position(|c| c.trim() == text.trim())
                .or_else(|| text.trim().parse().ok())
        }
    };
    index.filter(|&i| i < choices.len()).ok_or_else(|| {
        row.err(format!(
            "`{col}` = {v} is not one of the {} choices",
            choices.len()
        ))
        .into()
    })
}

/// A case of a log-likelihood suite: the context (preamble, few-shot examples with their right
/// answers, then the case's `user` text) and what is scored after it.
pub fn case(
    f: &SuiteFile,
    env: &minijinja::Environment,
    row: &Row,
    shots: &[&Row],
    reference: Option<&str>,
) -> Result<LikelihoodCase, crate::eval::EvalError> {
    let user = f.user.as_deref().unwrap_or("");
    let mut context = match &f.preamble {
        Some(p) => render(env, p, row, "preamble")?,
        None => String::new(),
    };
    for s in shots {
        let answer = match (f.output_type, &f.few_shot) {
            (OutputType::MultipleChoice, _) => {
                let cs = choices(f, env, s)?;
                cs[gold(f, s, &cs)?].clone()
            }
            (_, Some(fs)) => render(env, &fs.assistant, s, "few-shot assistant")?,
            (_, None) => String::new(),
        };
        context.push_str(&render(env, user, s, "few-shot user")?);
        context.push_str(&f.target_delimiter);
        context.push_str(&answer);
        context.push_str(&f.fewshot_delimiter);
    }
    context.push_str(&render(env, user, row, "user")?);
    Ok(match f.output_type {
        OutputType::MultipleChoice => {
            let cs = choices(f, env, row)?;
            let g = gold(f, row, &cs)?;
            LikelihoodCase {
                output_type: f.output_type,
                continuations: cs
                    .iter()
                    .map(|c| format!("{}{c}", f.target_delimiter))
                    .collect(),
                choices: cs,
                gold: Some(g),
                context,
            }
        }
        OutputType::Loglikelihood => LikelihoodCase {
            output_type: f.output_type,
            continuations: vec![format!("{}{}", f.target_delimiter, reference.unwrap_or(""))],
            choices: Vec::new(),
            gold: None,
            context,
        },
        // The whole text is scored: the context is empty.
        _ => LikelihoodCase {
            output_type: f.output_type,
            continuations: vec![context],
            choices: Vec::new(),
            gold: None,
            context: String::new(),
        },
    })
}

impl LikelihoodCase {
    /// The text-completion requests that score each continuation: the prompt echoed with its
    /// log-probabilities (and the top alternative, to tell a greedy continuation), `generate`
    /// tokens generated (0 for the local model; servers may want at least one).
    pub fn requests(&self, generate: usize) -> Vec<ChatRequest> {
        self.continuations
            .iter()
            .map(|c| ChatRequest {
                messages: vec![Message::new("user", &format!("{}{c}", self.context))],
                max_tokens: generate,
                temperature: 0.0,
                top_p: 1.0,
                seed: None,
                stop: Vec::new(),
                raw: true,
                logprobs: Some(1),
                echo: true,
                bos: self.output_type == OutputType::LoglikelihoodRolling,
                response_format: None,
            })
            .collect()
    }
}

/// A continuation's log-likelihood (the sum over its tokens: those at or after byte `from` of
/// the prompt), whether each of its tokens was the most likely one, and how many were scored.
pub fn continuation(tokens: &[ScoredToken], from: usize) -> Option<(f64, bool, usize)> {
    let mut sum = 0f64;
    let mut greedy = true;
    let mut n = 0;
    for t in tokens.iter().filter(|t| t.offset >= from) {
        let Some(lp) = t.logprob else { continue };
        sum += lp as f64;
        n += 1;
        greedy &= t
            .top_logprobs
            .first()
            .is_none_or(|top| top.token == t.token);
    }
    (n > 0).then_some((sum, greedy, n))
}

/// The index of the largest value (the first on a tie, as numpy's argmax).
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::TopLogprob;

    fn tok(token: &str, offset: usize, lp: Option<f32>, top: &str) -> ScoredToken {
        ScoredToken {
            token: token.into(),
            logprob: lp,
            top_logprobs: vec![TopLogprob {
                token: top.into(),
                logprob: -0.1,
                bytes: vec![],
            }],
            offset,
        }
    }

    #[test]
    fn a_continuation_is_the_tokens_from_its_offset() {
        // "Answer: B" with the context "Answer:" (7 bytes).
        let toks = [
            tok("Answer", 0, None, ""),
            tok(":", 6, Some(-1.0), ":"),
            tok(" B", 7, Some(-0.5), " B"),
        ];
        assert_eq!(continuation(&toks, 7), Some((-0.5, true, 1)));
        let toks = [tok("x", 0, None, ""), tok(" A", 1, Some(-2.0), " B")];
        assert_eq!(continuation(&toks, 1), Some((-2.0, false, 1)));
        assert_eq!(continuation(&toks, 5), None);
        assert_eq!(argmax(&[-3.0, -1.0, -1.0, -2.0]), 1);
    }
}
