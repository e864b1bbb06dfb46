//! From a row to a training sample: the row's format and column mapping, the model's own chat
//! template, and which tokens the loss sees (by default only completions and assistant turns).

use serde::{Deserialize, Serialize};

use super::DataError;
use super::load::{Row, kind};
use crate::tokenize::{Message, ModelTokenizer};

/// How a dataset's rows are laid out (Axolotl's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain text; every token is trained.
    Text,
    /// `prompt` and `completion` columns.
    PromptCompletion,
    /// A `messages` list of `{role, content}` (OpenAI/ShareGPT-style chat).
    Chat,
    /// Alpaca: `instruction`, optional `input`, `output`.
    Alpaca,
}

/// Column names, Axolotl's `field_*` keys; the defaults are the usual names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    #[serde(default = "d_text")]
    pub field_text: String,
    #[serde(default = "d_prompt")]
    pub field_prompt: String,
    #[serde(default = "d_completion")]
    pub field_completion: String,
    #[serde(default = "d_messages")]
    pub field_messages: String,
    #[serde(default = "d_instruction")]
    pub field_instruction: String,
    #[serde(default = "d_input")]
    pub field_input: String,
    #[serde(default = "d_output")]
    pub field_output: String,
    /// An optional column with a system prompt for prompt/completion and Alpaca rows.
    #[serde(default)]
    pub field_system: Option<String>,
}

fn d_text() -> String {
    "text".into()
}
fn d_prompt() -> String {
    "prompt".into()
}
fn d_completion() -> String {
    "completion".into()
}
fn d_messages() -> String {
    "messages".into()
}
fn d_instruction() -> String {
    "instruction".into()
}
fn d_input() -> String {
    "input".into()
}
fn d_output() -> String {
    "output".into()
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            field_text: d_text(),
            field_prompt: d_prompt(),
            field_completion: d_completion(),
            field_messages: d_messages(),
            field_instruction: d_instruction(),
            field_input: d_input(),
            field_output: d_output(),
            field_system: None,
        }
    }
}

/// How rows become text.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub format: Format,
    pub columns: Columns,
    /// Render prompt/completion and Alpaca rows through the model's chat template (else: raw
    /// concatenation followed by EOS).
    pub chat_template: bool,
    /// Train on prompts and user turns too (Axolotl's `train_on_inputs`).
    pub train_on_inputs: bool,
}

/// A piece of rendered text and whether the loss sees its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub trained: bool,
}

/// A tokenized sample: `trained[i]` says whether token `i` is a prediction target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Sample {
    pub fn trained_tokens(&self) -> usize {
        // Token 0 is never predicted.
        self.trained.iter().skip(1).filter(|t| **t).count()
    }
}

/// The chat messages of a row (for chat, prompt/completion and Alpaca formats).
pub fn messages_of(row: &Row, opts: &RenderOptions) -> Result<Vec<Message>, DataError> {
    let c = &opts.columns;
    let mut msgs = Vec::new();
    let system = match &c.field_system {
        Some(col) => row.opt_str(col)?,
        None => None,
    };
    if let Some(s) = system {
        msgs.push(Message::new("system", s));
    }
    match opts.format {
        Format::Chat => {
            let key = &c.field_messages;
            let list = match row.fields.get(key) {
                Some(serde_json::Value::Array(items)) => items,
                Some(serde_json::Value::Null) | None => {
                    return Err(row.err(format!("missing `{key}`")));
                }
                Some(other) => {
                    return Err(row.err(format!("`{key}` must be a list, found {}", kind(other))));
                }
            };
            for (i, m) in list.iter().enumerate() {
                let field = |f: &str| match m.get(f) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    _ => Err(row.err(format!("`{key}[{i}].{f}` must be a string"))),
                };
                let role = field("role")?;
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(row.err(format!(
                        "`{key}[{i}].role` is `{role}`; expected system, user or assistant"
                    )));
                }
                msgs.push(Message::new(&role, &field("content")?));
            }
            if !msgs.iter().any(|m| m.role == "assistant") {
                return Err(row.err(format!("`{key}` has no assistant turn to learn from")));
            }
        }
        Format::PromptCompletion => {
            msgs.push(Message::new("user", row.str(&c.field_prompt)?));
            msgs.push(Message::new("assistant", row.str(&c.field_completion)?));
        }
        Format::Alpaca => {
            let instruction = row.str(&c.field_instruction)?;
            let user = match row.opt_str(&c.field_input)? {
                Some(input) if !input.trim().is_empty() => format!("{instruction}\n\n{input}"),
                _ => instruction.to_string(),
            };
            msgs.push(Message::new("user", &user));
            msgs.push(Message::new("assistant", row.str(&c.field_output)?));
        }
        Format::Text => return Err(row.err("a text row has no messages")),
    }
    Ok(msgs)
}

/// Render a row into segments, each marked trained or not.
pub fn render(
    row: &Row,
    opts: &RenderOptions,
    tok: &ModelTokenizer,
) -> Result<Vec<Segment>, DataError> {
    let eos = tok.eos_token.clone().unwrap_or_default();
    let seg = |text: &str, trained: bool| Segment {
        text: text.to_string(),
        trained,
    };
    let segs = match opts.format {
        Format::Text => vec![
            seg(row.str(&opts.columns.field_text)?, true),
            seg(&eos, true),
        ],
        Format::PromptCompletion | Format::Alpaca if !opts.chat_template => {
            let msgs = messages_of(row, opts)?;
            let n = msgs.len();
            let prompt: String = msgs[..n - 1]
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
            vec![
                seg(&prompt, opts.train_on_inputs),
                seg(&msgs[n - 1].content, true),
                seg(&eos, true),
            ]
        }
        _ => chat_segments(row, &messages_of(row, opts)?, tok, opts.train_on_inputs)?,
    };
    Ok(segs.into_iter().filter(|s| !s.text.is_empty()).collect())
}

/// Split a chat rendered by the model's template into prompt and assistant parts. Each assistant
/// turn is what rendering the conversation up to it adds to the rendering up to the generation
/// prompt before it, so the masks follow the template exactly, whatever it is.
fn chat_segments(
    row: &Row,
    msgs: &[Message],
    tok: &ModelTokenizer,
    train_on_inputs: bool,
) -> Result<Vec<Segment>, DataError> {
    let template = tok.template.as_ref().ok_or_else(|| {
        row.err(
            "the model has no chat template; use format = \"text\" or set chat_template = false",
        )
    })?;
    let render = |m: &[Message], generation: bool| {
        template
            .render(m, generation)
            .map_err(|e| row.err(format!("chat template: {e}")))
    };
    let full = render(msgs, false)?;
    let mut segs = Vec::new();
    let mut done = 0;
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&msgs[..i], true)?;
        let through = render(&msgs[..=i], false)?;
        if !full.starts_with(&through) || !through.starts_with(&before) || before.len() < done {
            return Err(row.err(
                "the chat template renders earlier turns differently once later turns are added, so assistant turns cannot be masked; set train_on_inputs = true",
            ));
        }
        // The turn's end marker is trained (so the model learns to stop); the whitespace the
        // template writes after it is not: generation never produces it.
        let turn = &full[before.len()..through.len()];
        let end = tok
            .eos_token
            .as_deref()
            .and_then(|eos| turn.rfind(eos).map(|i| i + eos.len()))
            .filter(|&e| turn[e..].trim().is_empty())
            .unwrap_or(turn.len());
        segs.push(Segment {
            text: full[done..before.len()].to_string(),
            trained: train_on_inputs,
        });
        segs.push(Segment {
            text: turn[..end].to_string(),
            trained: true,
        });
        done = before.len() + end;
    }
    segs.push(Segment {
        text: full[done..].to_string(),
        trained: train_on_inputs,
    });
    Ok(segs)
}

/// Tokenize segments as one text (so merges across boundaries are the tokenizer's own), then mark
/// each token by the segment its first byte falls in.
pub fn tokenize(segs: &[Segment], tok: &ModelTokenizer) -> Result<Sample, DataError> {
    let text: String = segs.iter().map(|s| s.text.as_str()).collect();
    let enc = tok
        .inner
        .encode(text.as_str(), false)
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
    let mut bounds = Vec::with_capacity(segs.len());
    let mut at = 0;
    for s in segs {
        at += s.text.len();
        bounds.push((at, s.trained));
    }
    let ids = enc.get_ids().to_vec();
    let trained = enc
        .get_offsets()
        .iter()
        .map(|&(start, _)| {
            bounds
                .iter()
                .find(|(end, _)| start < *end)
                .is_some_and(|(_, t)| *t)
        })
        .collect();
    Ok(Sample { ids, trained })
}
