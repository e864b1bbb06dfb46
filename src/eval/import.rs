//! Suites from real traffic: logged OpenAI-format chat requests with their responses become
//! cases whose reference is the logged answer. Reads JSONL of `{"request": {...}, "response":
//! {...}}` and LiteLLM's logged payloads (its standard logging object: `messages`, `response`,
//! `model`). Case ids are hashes (never the logged ids, users or metadata); `sample` draws a
//! seeded sample stratified by model.

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crate::util::{FileError, sha256_hex};

/// One logged exchange, reduced to what a case needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// A hash of the logged id (or of the request, when the log has no id).
    pub id: String,
    pub model: String,
    /// The request's messages (role and text content).
    pub messages: Vec<Value>,
    /// The logged answer.
    pub answer: String,
}

/// The text of a message's content: a string, or its text parts joined.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

/// One line of a log as an exchange, or why it is not one.
pub fn parse_line(v: &Value) -> Result<Logged, String> {
    // `{request, response}`, or LiteLLM's payload (`messages` and `response` at the top).
    let (request, response) = match (v.get("request"), v.get("response")) {
        (Some(req), Some(resp)) => (req, resp),
        (None, Some(resp)) if v.get("messages").is_some() => (v, resp),
        _ => {
            return Err(
                "neither `{request, response}` nor a LiteLLM payload (`messages`, `response`)"
                    .into(),
            );
        }
    };
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` is missing or not a list")?;
    let messages: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or(format!("`messages[{i}].role` is missing"))?;
            let content = m
                .get("content")
                .and_then(text_of)
                .ok_or(format!("`messages[{i}].content` is not text"))?;
            Ok(json!({"role": role, "content": content}))
        })
        .collect::<Result<_, String>>()?;
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    let answer = response
        .pointer("/choices/0/message/content")
        .and_then(text_of)
        .ok_or("`response.choices[0].message.content` is missing")?;
    let model = response
        .get("model")
        .or_else(|| request.get("model"))
        .or_else(|| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let original = v
        .get("id")
        .or_else(|| response.get("id"))
        .map(Value::to_string)
        .unwrap_or_else(|| json!({"messages": messages, "answer": answer}).to_string());
    Ok(Logged {
        id: sha256_hex(original.as_bytes())[..16].to_string(),
        model,
        messages,
        answer,
    })
}

/// Every exchange of a JSONL log; a line that is not one is an error naming file and line.
pub fn read_log(path: &Path) -> Result<Vec<Logged>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| FileError::parse(path, format!("line {}: not JSON: {e}", i + 1)))?;
        out.push(
            parse_line(&v).map_err(|e| FileError::parse(path, format!("line {}: {e}", i + 1)))?,
        );
    }
    Ok(out)
}

/// A seeded sample of `n`, stratified by model: each model gets its share of `n` (largest
/// remainders first), drawn in a seeded order. Duplicate exchanges (same hash) count once.
pub fn sample(mut logged: Vec<Logged>, n: Option<usize>, seed: u64) -> Vec<Logged> {
    let mut seen = std::collections::HashSet::new();
    logged.retain(|l| seen.insert(l.id.clone()));
    let Some(n) = n.filter(|&n| n < logged.len()) else {
        return logged;
    };
    let mut by_model: BTreeMap<String, Vec<Logged>> = BTreeMap::new();
    for l in logged.iter().cloned() {
        by_model.entry(l.model.clone()).or_default().push(l);
    }
    let total = logged.len() as f64;
    let mut shares: Vec<(String, usize, f64)> = by_model
        .iter()
        .map(|(m, ls)| {
            let exact = n as f64 * ls.len() as f64 / total;
            (m.clone(), exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = n - shares.iter().map(|s| s.1).sum::<usize>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].2.total_cmp(&shares[a].2));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for (model, take, _) in shares {
        let mut ls = by_model.remove(&model).unwrap_or_default();
        ls.shuffle(&mut rng);
        out.extend(ls.into_iter().take(take));
    }
    out
}

/// The dataset rows (`id`, `model`, `messages` with the logged answer last, `reference`) and a
/// suite around them: `scorer` is a scorer table written into it (e.g. a similarity or judge).
pub fn suite_files(
    name: &str,
    data_file: &str,
    logged: &[Logged],
    scorer: &str,
) -> (String, String) {
    let mut rows = String::new();
    for l in logged {
        let mut messages = l.messages.clone();
        messages.push(json!({"role": "assistant", "content": l.answer}));
        rows.push_str(
            &json!({"id": l.id, "model": l.model, "messages": messages, "reference": l.answer})
                .to_string(),
        );
        rows.push('\n');
    }
    let suite = format!(
        "# Imported from logged traffic by `switchyard suite import`: {n} exchanges, the logged\n\
         # answer as the reference. Ids are hashes of the logged ids.\n\
         name = \"{name}\"\n\
         tags = [\"{name}\"]\n\
         tag_column = \"model\"\n\
         id_column = \"id\"\n\
         dataset = \"{data_file}\"\n\
         messages = \"messages\"\n\
         reference = \"reference\"\n\
         {scorer}",
        n = logged.len()
    );
    (suite, rows)
}
