//! The outputs side by side (promptfoo's matrix view): one row per case, the prompt and the
//! reference, then every target's answer with its score, latency and the scorers' reasons.
//!
//! The cases travel as JSON inside the page (`<script type="application/json">`, with `<`, `>`
//! and `&` written as `\u` escapes so that no output can close the element) and `matrix.js`
//! renders them as text nodes, a page at a time, behind filters: a run of thousands of cases
//! stays one file that opens at once.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::eval::results::ResultRow;

/// Longer texts are cut in the page (`results.jsonl` keeps them whole).
const MAX_CHARS: usize = 6000;

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        None => s.to_string(),
        Some((i, _)) => format!(
            "{}… [{} more characters in eval/results.jsonl]",
            &s[..i],
            s[i..].chars().count()
        ),
    }
}

#[derive(Serialize)]
struct Verdict {
    scorer: String,
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extracted: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// One answer (one repeat) of one target.
#[derive(Serialize)]
struct Answer {
    repeat: u32,
    output: Option<String>,
    score: Option<f64>,
    pass: Option<bool>,
    latency_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The scorers' verdicts; when they are not a list (log-likelihood suites), the reason.
    verdicts: Vec<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct Case {
    suite: String,
    id: String,
    tags: Vec<String>,
    /// The last user message; `prompt` holds every message as (role, content).
    ask: String,
    prompt: Vec<(String, String)>,
    reference: Option<String>,
    /// Per target (in `targets` order), its answers; empty when it has none.
    answers: Vec<Vec<Answer>>,
}

#[derive(Serialize)]
struct Data<'a> {
    targets: &'a [String],
    cases: Vec<Case>,
}

/// The chat messages of a row's prompt as (role, content).
fn messages(prompt: &str) -> Vec<(String, String)> {
    let Ok(Value::Array(ms)) = serde_json::from_str::<Value>(prompt) else {
        return vec![("prompt".into(), clip(prompt))];
    };
    ms.iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                m["role"].as_str().unwrap_or("?").to_string(),
                clip(&content),
            )
        })
        .collect()
}

fn verdicts(json: &str) -> Vec<Verdict> {
    let Ok(Value::Array(vs)) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    vs.iter()
        .map(|v| Verdict {
            scorer: v["scorer"].as_str().unwrap_or("?").to_string(),
            score: v["score"].as_f64(),
            extracted: v["extracted"].as_str().map(clip),
            reason: v["reason"].as_str().map(clip),
        })
        .collect()
}

fn answer(r: &ResultRow) -> Answer {
    let verdicts = verdicts(&r.verdicts);
    Answer {
        repeat: r.repeat,
        output: r.output.as_deref().map(clip),
        score: r.score,
        pass: r.pass,
        latency_s: r.latency_s,
        error: r.error.as_deref().map(clip),
        reason: if verdicts.is_empty() {
            r.reason.as_deref().map(clip)
        } else {
            None
        },
        verdicts,
    }
}

/// The cases of the rows, in suite and file order, with each target's answers.
fn cases(rows: &[ResultRow], targets: &[String]) -> Vec<Case> {
    let column: BTreeMap<&str, usize> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut by_case: BTreeMap<(&str, u64, &str), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        by_case
            .entry((r.suite.as_str(), r.line, r.case_id.as_str()))
            .or_default()
            .push(r);
    }
    by_case
        .into_values()
        .map(|mut rs| {
            rs.sort_by_key(|r| r.repeat);
            let first = rs[0];
            let prompt = messages(&first.prompt);
            let mut answers: Vec<Vec<Answer>> = targets.iter().map(|_| Vec::new()).collect();
            for r in &rs {
                if let Some(&i) = column.get(r.target.as_str()) {
                    answers[i].push(answer(r));
                }
            }
            Case {
                suite: first.suite.clone(),
                id: first.case_id.clone(),
                tags: first
                    .tags
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect(),
                ask: prompt
                    .iter()
                    .rev()
                    .find(|(role, _)| role == "user")
                    .or(prompt.last())
                    .map(|m| m.1.clone())
                    .unwrap_or_default(),
                prompt,
                reference: first.reference.as_deref().map(clip),
                answers,
            }
        })
        .collect()
}

/// JSON that is safe inside a `<script>` element: no `<`, `>` or `&` left (each is a `\u`
/// escape inside a JSON string, the only place they can occur).
fn script_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .expect("plain structs serialise")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The matrix section: controls, an empty table the script fills, the data and the script.
pub fn html(rows: &[ResultRow], targets: &[String]) -> String {
    let data = Data {
        targets,
        cases: cases(rows, targets),
    };
    format!(
        "<section id=\"matrix\" class=\"matrix\"><h2>Outputs side by side</h2>\
         <p class=\"note\">Every case with each target's answer, its score and the scorers' reasons. \
         Filters go in the address too (<code>#suite=…&amp;tag=…&amp;status=fail|pass&amp;disagree=1&amp;q=…</code>).</p>\
         <div class=\"controls\">\
         <label>suite <select id=\"f-suite\"><option value=\"\">all</option></select></label>\
         <label>tag <select id=\"f-tag\"><option value=\"\">all</option></select></label>\
         <label>result <select id=\"f-status\"><option value=\"\">all</option>\
         <option value=\"fail\">any target failed</option><option value=\"pass\">all targets passed</option></select></label>\
         <label><input type=\"checkbox\" id=\"f-disagree\"> targets disagree</label>\
         <label>search <input type=\"search\" id=\"f-q\" placeholder=\"prompt, output, reference, reason\"></label>\
         <span id=\"matrix-count\" class=\"count\"></span></div>\
         <noscript><p>The outputs need JavaScript; <code>eval/results.jsonl</code> holds them.</p></noscript>\
         <div class=\"matrix-wrap\"><table id=\"matrix-table\" class=\"matrix-table\"><thead></thead><tbody></tbody></table></div>\
         <button id=\"matrix-more\" hidden>show more</button>\
         <script type=\"application/json\" id=\"matrix-data\">{}</script><script>{}</script></section>",
        script_json(&data),
        include_str!("matrix.js")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_json_cannot_close_its_script_element() {
        let targets = vec!["a".to_string()];
        let row = ResultRow {
            suite: "s".into(),
            case_id: "1".into(),
            target: "a".into(),
            prompt: r#"[{"role":"user","content":"say </script>"}]"#.into(),
            output: Some("</script><script>alert(1)</script> & <!--".into()),
            verdicts: r#"[{"scorer":"exact","score":0.0,"reason":"wanted <b>"}]"#.into(),
            ..Default::default()
        };
        let json = script_json(&Data {
            targets: &targets,
            cases: cases(&[row], &targets),
        });
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        let back: Value = serde_json::from_str(&json).unwrap();
        let case = &back["cases"][0];
        assert_eq!(case["ask"], "say </script>");
        assert_eq!(
            case["answers"][0][0]["output"],
            "</script><script>alert(1)</script> & <!--"
        );
        assert_eq!(case["answers"][0][0]["verdicts"][0]["reason"], "wanted <b>");
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_CHARS + 5);
        let c = clip(&s);
        assert!(c.starts_with(&"é".repeat(MAX_CHARS)));
        assert!(c.ends_with("[5 more characters in eval/results.jsonl]"));
    }
}
