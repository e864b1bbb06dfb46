//! A suite file as written (`evals/*.toml`): its keys, defaults and output type, and the two
//! helpers that turn a case's columns into text. Both the chat suites (`suite`) and the
//! log-likelihood cases (`likelihood`) read it; it reads neither.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::EvalError;
use super::scorers::ScorerSpec;
use crate::data::load::Row;

/// How a case is answered: generation, or one of lm-evaluation-harness's log-likelihood types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    #[default]
    GenerateUntil,
    MultipleChoice,
    Loglikelihood,
    LoglikelihoodRolling,
}

/// Generation settings of a suite (the same for every target).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    #[serde(default = "d_max")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "d_top_p")]
    pub top_p: f32,
    /// The seed of repeat 0; repeat r uses seed + r.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// OpenAI's `response_format`, sent to every target: `{ type = "json_object" }` or
    /// `{ type = "json_schema", json_schema = { name = "...", schema = {...}, strict = true } }`.
    /// The local model enforces it by constrained decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<crate::providers::ResponseFormat>,
}

fn d_max() -> usize {
    256
}
fn d_top_p() -> f32 {
    1.0
}

impl Default for GenerationSpec {
    fn default() -> Self {
        Self {
            max_tokens: d_max(),
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            response_format: None,
        }
    }
}

/// Few-shot examples: cases rendered with the suite's `user` template and an `assistant` template,
/// placed before each case's question as earlier turns of the chat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShot {
    /// A dataset file of examples (relative to the suite), or inline `[[few_shot.cases]]`.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    #[serde(default)]
    pub cases: Vec<Map<String, Value>>,
    /// Use the first n examples (default: all). With `per_tag`, the first n sharing a case's tag.
    #[serde(default)]
    pub n: Option<usize>,
    /// Pick examples whose `tag_column` value equals the case's (MMLU's per-subject shots).
    #[serde(default)]
    pub per_tag: bool,
    /// The answer turn of an example, e.g. `{{ answer }}`.
    pub assistant: String,
}

/// A suite file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Task names routing uses; every case carries them.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A column whose value is one more tag per case (e.g. MMLU's `subject`).
    #[serde(default)]
    pub tag_column: Option<String>,
    /// A column holding a stable case id (default: the line number).
    #[serde(default)]
    pub id_column: Option<String>,
    /// The cases: a .jsonl, .json, .parquet or .csv file (relative to the suite's folder or the
    /// working directory), or inline `[[cases]]`.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    #[serde(default)]
    pub cases: Vec<Map<String, Value>>,
    /// A column of chat messages: the prompt is every message before the last assistant turn.
    #[serde(default)]
    pub messages: Option<String>,
    /// Or a user message template over the case's columns (`{{ question }}`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub few_shot: Option<FewShot>,
    /// The column holding the reference answer (optional for json, json_schema, regex and judge).
    #[serde(default)]
    pub reference: Option<String>,
    /// Use at most this many cases (the first ones).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Ask each case this many times (sampled answers, latency spread).
    #[serde(default)]
    pub repeats: Option<u32>,
    /// A case passes when its weighted score reaches this (default 1: every scorer passes).
    #[serde(default)]
    pub pass_threshold: Option<f64>,
    #[serde(default)]
    pub generation: GenerationSpec,
    /// How a case is answered: `generate_until` (generation, judged by `scorers`), or one of
    /// lm-evaluation-harness's log-likelihood types (`multiple_choice`, `loglikelihood`,
    /// `loglikelihood_rolling`: the prompt is plain text, scored by the model's log-probs).
    #[serde(default)]
    pub output_type: OutputType,
    /// `multiple_choice`: the choices, as templates over the case (`["A", "B", "C", "D"]`)…
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// …or a column holding a list of them.
    #[serde(default)]
    pub choices_column: Option<String>,
    /// `multiple_choice`: the column naming the right choice, by its index or its text (`"B"`).
    #[serde(default)]
    pub gold: Option<String>,
    /// Log-likelihood types: a template before each context (lm-eval's `description`).
    #[serde(default)]
    pub preamble: Option<String>,
    /// Between a context and a choice (lm-eval's `target_delimiter`).
    #[serde(default = "space")]
    pub target_delimiter: String,
    /// Between few-shot examples (lm-eval's `fewshot_delimiter`).
    #[serde(default = "two_newlines")]
    pub fewshot_delimiter: String,
    #[serde(default)]
    pub scorers: Vec<ScorerSpec>,
}

fn space() -> String {
    " ".into()
}
fn two_newlines() -> String {
    "\n\n".into()
}

pub(crate) fn render(
    env: &minijinja::Environment,
    template: &str,
    row: &Row,
    what: &str,
) -> Result<String, EvalError> {
    env.render_str(template, &row.fields)
        .map_err(|e| row.err(format!("{what} template: {e}")).into())
}

pub(crate) fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
