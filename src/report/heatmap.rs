//! The score heat map: one row per task (each suite, then its tags), one column per target, each
//! cell the mean score with its 95% interval, coloured from red (0) through yellow to green (1).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::table::{ci_bar, esc, pct};
use crate::eval::results::SummaryRow;

/// Tasks in reading order, as (suite, tag, label): each suite (its `all`), then its tags. A tag
/// that covers every case of its suite for every target would repeat the suite's row: it is
/// named in the suite's label instead.
fn tasks(summary: &[SummaryRow]) -> Vec<(&str, &str, String)> {
    let cases: BTreeMap<(&str, &str, &str), usize> = summary
        .iter()
        .map(|s| {
            (
                (s.suite.as_str(), s.tag.as_str(), s.target.as_str()),
                s.results,
            )
        })
        .collect();
    let whole = |suite: &str, tag: &str| {
        summary
            .iter()
            .filter(|s| s.suite == suite && s.tag == tag)
            .all(|s| cases.get(&(suite, "all", s.target.as_str())) == Some(&s.results))
    };
    let mut pairs: Vec<(&str, &str)> = summary
        .iter()
        .map(|s| (s.suite.as_str(), s.tag.as_str()))
        .collect();
    pairs.sort_by_key(|&(suite, tag)| (suite, tag != "all", tag));
    pairs.dedup();
    let mut out: Vec<(&str, &str, String)> = Vec::new();
    for (suite, tag) in pairs {
        if tag == "all" {
            out.push((suite, tag, suite.to_string()));
        } else if !whole(suite, tag) {
            out.push((suite, tag, tag.to_string()));
        } else if tag != suite
            && let Some(row) = out.iter_mut().find(|t| t.0 == suite && t.1 == "all")
        {
            row.2 = if row.2 == suite {
                format!("{suite} ({tag})")
            } else {
                format!("{}, {tag})", row.2.trim_end_matches(')'))
            };
        }
    }
    out
}

fn by_cell(summary: &[SummaryRow]) -> BTreeMap<(&str, &str, &str), &SummaryRow> {
    summary
        .iter()
        .map(|s| ((s.suite.as_str(), s.tag.as_str(), s.target.as_str()), s))
        .collect()
}

/// A light colour for a score in [0, 1]: hue 0 (red) to 120 (green).
fn colour(score: f64) -> String {
    format!("hsl({:.0},70%,{:.0}%)", 120.0 * score.clamp(0.0, 1.0), 80.0)
}

pub fn html(summary: &[SummaryRow], targets: &[String]) -> String {
    let cells = by_cell(summary);
    let mut s = String::from(
        "<section id=\"heatmap\"><h2>Scores by task</h2><p class=\"note\">Mean score % per target \
         and task, with its 95% interval; the colour runs from red (0) to green (100).</p>\
         <table class=\"heatmap\"><thead><tr><th>task</th>",
    );
    for t in targets {
        let _ = write!(s, "<th>{}</th>", esc(t));
    }
    s.push_str("</tr></thead><tbody>");
    for (suite, tag, label) in tasks(summary) {
        let class = if tag == "all" { "suite" } else { "tag" };
        let _ = write!(s, "<tr class=\"{class}\"><th>{}</th>", esc(&label));
        for t in targets {
            match cells.get(&(suite, tag, t.as_str())) {
                Some(r) => {
                    let _ = write!(
                        s,
                        "<td class=\"hm-cell\" data-score=\"{:.4}\" style=\"background:{}\" \
                         title=\"{}\"><b>{}</b><small>{}–{}</small>{}</td>",
                        r.mean_score,
                        colour(r.mean_score),
                        esc(&format!(
                            "{t} on {suite}/{tag}: {}% (95% CI {}–{}, {}), {} cases, {} errors",
                            pct(r.mean_score),
                            pct(r.ci_low),
                            pct(r.ci_high),
                            r.ci_method,
                            r.cases,
                            r.errors
                        )),
                        pct(r.mean_score),
                        pct(r.ci_low),
                        pct(r.ci_high),
                        ci_bar(r.mean_score, r.ci_low, r.ci_high)
                    );
                }
                None => s.push_str("<td class=\"hm-none\">–</td>"),
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></section>");
    s
}

pub fn markdown(summary: &[SummaryRow], targets: &[String]) -> String {
    let cells = by_cell(summary);
    let mut s = format!(
        "## Scores by task (score %, 95% CI)\n\n| task | {} |\n|---|{}\n",
        targets.join(" | "),
        "---|".repeat(targets.len())
    );
    for (suite, tag, label) in tasks(summary) {
        let label = if tag == "all" {
            format!("**{label}**")
        } else {
            format!("{suite} / {label}")
        };
        let row: Vec<String> = targets
            .iter()
            .map(|t| {
                cells
                    .get(&(suite, tag, t.as_str()))
                    .map_or("–".into(), |r| {
                        format!(
                            "{} ({}–{})",
                            pct(r.mean_score),
                            pct(r.ci_low),
                            pct(r.ci_high)
                        )
                    })
            })
            .collect();
        let _ = writeln!(s, "| {label} | {} |", row.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::results::{ResultRow, summarize};

    #[test]
    fn a_tag_that_covers_its_whole_suite_is_named_beside_it_not_repeated() {
        let row = |suite: &str, case: &str, tags: &str, target: &str| ResultRow {
            suite: suite.into(),
            case_id: case.into(),
            tags: tags.into(),
            target: target.into(),
            score: Some(1.0),
            ..Default::default()
        };
        let mut rows = Vec::new();
        for t in ["a", "b"] {
            rows.extend([
                row("qa", "1", "geo", t),
                row("qa", "2", "history", t),
                row("code", "1", "py,code", t),
                row("code", "2", "py,code", t),
            ]);
        }
        let labels: Vec<String> = tasks(&summarize(&rows)).into_iter().map(|t| t.2).collect();
        assert_eq!(labels, ["code (py)", "qa", "geo", "history"]);
    }
}
