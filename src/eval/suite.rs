//! Suites: TOML files in `evals/` that say where the cases come from (a dataset file through
//! polars, or inline `[[cases]]`), how a case becomes a chat request (a column of messages, or
//! `system` + `user` templates over the case's columns, with few-shot examples), the generation
//! settings, the scorers and the tags that routing uses.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::EvalError;
use super::likelihood::{self, LikelihoodCase, OutputType};
use super::scorers::Scorer;
pub use super::suite_file::{FewShot, GenerationSpec, SuiteFile};
use super::suite_file::{cell, render};
use crate::data::load::{self, Row};
use crate::providers::ChatRequest;
use crate::tokenize::Message;

/// One case, ready to ask.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    /// Where it came from: the data file's line (or the inline case's index).
    pub line: usize,
    pub tags: Vec<String>,
    pub messages: Vec<Message>,
    pub reference: Option<String>,
    pub prompt_hash: String,
    /// What a log-likelihood suite scores (None for `generate_until`).
    pub likelihood: Option<LikelihoodCase>,
}

/// A loaded suite: its file, scorers checked, cases built.
#[derive(Debug, Clone)]
pub struct Suite {
    pub file: SuiteFile,
    pub path: PathBuf,
    pub scorers: Vec<Scorer>,
    pub cases: Vec<Case>,
}

fn resolve(suite: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        suite.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn inline_rows(path: &Path, cases: &[Map<String, Value>]) -> Vec<Row> {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| Row {
            file: path.to_path_buf(),
            line: i + 1,
            fields: c.clone(),
        })
        .collect()
}

pub fn prompt_hash(messages: &[Message]) -> String {
    crate::util::sha256_hex(&serde_json::to_vec(messages).unwrap_or_default())[..16].to_string()
}

impl Suite {
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let err = |detail: String| EvalError::Suite {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: SuiteFile =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if file.messages.is_some() == file.user.is_some() {
            return Err(err(
                "set exactly one of `messages` (a column of chat messages) or `user` (a template)"
                    .into(),
            ));
        }
        if file.dataset.is_some() != file.cases.is_empty() {
            return Err(err(
                "set exactly one of `dataset` (a file of cases) or inline `[[cases]]`".into(),
            ));
        }
        likelihood::check(&file).map_err(err)?;
        if file.output_type == OutputType::GenerateUntil && file.scorers.is_empty() {
            return Err(err("at least one [[scorers]] entry is needed".into()));
        }
        if file.few_shot.is_some() && file.user.is_none() {
            return Err(err(
                "`few_shot` needs a `user` template to render examples".into()
            ));
        }
        if file.repeats == Some(0) {
            return Err(err("`repeats` must be at least 1".into()));
        }
        let scorers = file
            .scorers
            .iter()
            .enumerate()
            .map(|(i, s)| Scorer::new(s.clone(), path, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if file.reference.is_none()
            && let Some(s) = scorers.iter().find(|s| s.kind.needs_reference())
        {
            return Err(err(format!(
                "scorer `{}` compares with a reference: set `reference` (the answer column)",
                s.name()
            )));
        }
        let mut rows = match &file.dataset {
            Some(d) => load::read_rows(&resolve(path, d))?,
            None => inline_rows(path, &file.cases),
        };
        if let Some(n) = file.limit {
            rows.truncate(n);
        }
        let mut suite = Suite {
            file,
            path: path.to_path_buf(),
            scorers,
            cases: Vec::with_capacity(rows.len()),
        };
        let shots = suite.few_shot_rows()?;
        let env = minijinja::Environment::new();
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            let case = suite.case(&env, row, &shots)?;
            if !seen.insert(case.id.clone()) {
                return Err(row.err(format!("duplicate case id `{}`", case.id)).into());
            }
            suite.cases.push(case);
        }
        if suite.cases.is_empty() {
            return Err(err("the suite has no cases".into()));
        }
        Ok(suite)
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    pub fn repeats(&self) -> u32 {
        self.file.repeats.unwrap_or(1)
    }

    fn few_shot_rows(&self) -> Result<Vec<Row>, EvalError> {
        let Some(fs) = &self.file.few_shot else {
            return Ok(Vec::new());
        };
        Ok(match &fs.dataset {
            Some(d) => load::read_rows(&resolve(&self.path, d))?,
            None => inline_rows(&self.path, &fs.cases),
        })
    }

    fn case(
        &self,
        env: &minijinja::Environment,
        row: &Row,
        shots: &[Row],
    ) -> Result<Case, EvalError> {
        let f = &self.file;
        let mut msgs = Vec::new();
        if let Some(s) = &f.system {
            msgs.push(Message::new("system", &render(env, s, row, "system")?));
        }
        let tag_value = match &f.tag_column {
            Some(c) => Some(
                row.fields
                    .get(c)
                    .and_then(cell)
                    .ok_or_else(|| row.err(format!("missing tag column `{c}`")))?,
            ),
            None => None,
        };
        if let (Some(fs), Some(user)) = (&f.few_shot, &f.user) {
            let chosen = shots.iter().filter(|s| {
                !fs.per_tag
                    || f.tag_column
                        .as_ref()
                        .and_then(|c| s.fields.get(c))
                        .and_then(cell)
                        == tag_value
            });
            for s in chosen.take(fs.n.unwrap_or(usize::MAX)) {
                msgs.push(Message::new(
                    "user",
                    &render(env, user, s, "few-shot user")?,
                ));
                msgs.push(Message::new(
                    "assistant",
                    &render(env, &fs.assistant, s, "few-shot assistant")?,
                ));
            }
        }
        if let Some(col) = &f.messages {
            msgs.extend(chat_column(row, col)?);
        } else if let Some(t) = &f.user {
            msgs.push(Message::new("user", &render(env, t, row, "user")?));
        }
        let reference = match &f.reference {
            Some(c) => Some(
                row.fields
                    .get(c)
                    .and_then(cell)
                    .ok_or_else(|| row.err(format!("missing reference column `{c}`")))?,
            ),
            None => None,
        };
        let id = match &f.id_column {
            Some(c) => row
                .fields
                .get(c)
                .and_then(cell)
                .ok_or_else(|| row.err(format!("missing id column `{c}`")))?,
            None => row.line.to_string(),
        };
        let mut tags = f.tags.clone();
        tags.extend(tag_value.clone());
        let likelihood = if f.output_type == OutputType::GenerateUntil {
            None
        } else {
            let shots: Vec<&Row> = match &f.few_shot {
                Some(fs) => shots
                    .iter()
                    .filter(|s| {
                        !fs.per_tag
                            || f.tag_column
                                .as_ref()
                                .and_then(|c| s.fields.get(c))
                                .and_then(cell)
                                == tag_value
                    })
                    .take(fs.n.unwrap_or(usize::MAX))
                    .collect(),
                None => Vec::new(),
            };
            let l = likelihood::case(f, env, row, &shots, reference.as_deref())?;
            msgs = vec![Message::new("user", &l.context)];
            Some(l)
        };
        Ok(Case {
            id,
            line: row.line,
            tags,
            prompt_hash: prompt_hash(&msgs),
            messages: msgs,
            reference,
            likelihood,
        })
    }

    /// The request of one case, repeat `r`.
    pub fn request(&self, case: &Case, repeat: u32) -> ChatRequest {
        let g = &self.file.generation;
        ChatRequest {
            messages: case.messages.clone(),
            max_tokens: g.max_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            seed: g.seed.map(|s| s + repeat as u64),
            stop: g.stop.clone(),
            raw: false,
            response_format: g.response_format.clone(),
            ..Default::default()
        }
    }

    pub fn pass_threshold(&self) -> f64 {
        self.file.pass_threshold.unwrap_or(1.0)
    }
}

/// The prompt turns of a column of chat messages: everything before the final assistant turn(s).
fn chat_column(row: &Row, col: &str) -> Result<Vec<Message>, EvalError> {
    let list = row
        .fields
        .get(col)
        .and_then(|v| v.as_array())
        .ok_or_else(|| row.err(format!("`{col}` must be a list of messages")))?;
    let mut all = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let get = |k: &str| {
            m.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| row.err(format!("`{col}[{i}].{k}` must be a string")))
        };
        all.push(Message::new(&get("role")?, &get("content")?));
    }
    while all.last().is_some_and(|m| m.role == "assistant") {
        all.pop();
    }
    if all.is_empty() {
        return Err(row
            .err(format!("`{col}` has no prompt before the answer"))
            .into());
    }
    Ok(all)
}
