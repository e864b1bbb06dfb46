//! The JSON family: `json` (the output holds valid JSON), `json_schema` (that JSON validates
//! against a schema) and `json_match` (it contains every key of the reference JSON, equal).

use std::sync::Arc;

use serde_json::Value;

use super::{Checked, clip, pass_if};

/// The output holds JSON.
pub fn json(output: &str) -> Checked {
    extract_json(output).map(|_| None).map_err(|e| (None, e))
}

/// The output's JSON validates against the schema.
pub fn json_schema(validator: &Arc<jsonschema::Validator>, output: &str) -> Checked {
    let v = extract_json(output).map_err(|e| (None, e))?;
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

/// The output's JSON contains the reference's keys with equal values.
pub fn json_match(output: &str, reference: &str) -> Checked {
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

/// A schema compiled (given inline, or read from `file` beside the suite).
pub fn compile_schema(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| format!("invalid schema: {e}"))
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
