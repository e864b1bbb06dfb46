//! A routing policy's evidence as tables, read from the policy itself: the routes, what the policy
//! is predicted to score and cost (in sample and, when validated, out of sample), each task's
//! candidates with their intervals and paired differences to the best, and self-hosting
//! economics. The Markdown report keeps the policy's own Markdown; the HTML shows these.

use std::collections::BTreeSet;

use super::table::{Cell, Table, esc, money, pct};
use crate::route::{Policy, Route};

/// The routing table: each task's primary, its score, fallbacks and why.
pub fn routing_table(p: &Policy) -> Table {
    let mut t = Table::new(
        "Routing table",
        &["task", "primary", "score % (95% CI)", "fallbacks", "why"],
    );
    for r in &p.routes {
        let e = r.evidence.iter().find(|e| e.target == r.primary);
        t.row(vec![
            r.task.as_str().into(),
            r.primary.as_str().into(),
            e.map_or("–".into(), |e| {
                Cell::score(e.mean_score, e.ci_low, e.ci_high)
            }),
            r.fallbacks.join(", ").into(),
            r.reason.as_str().into(),
        ]);
    }
    t
}

/// The policy's settings in a sentence.
fn settings(p: &Policy) -> String {
    let c = &p.constraints;
    let limits: Vec<String> = [
        c.min_score.map(|v| format!("score ≥ {}%", pct(v))),
        c.max_p95_latency_s.map(|v| format!("p95 latency ≤ {v} s")),
        c.max_cost_per_1k_requests_usd
            .map(|v| format!("≤ ${v} per 1k requests")),
        c.max_error_rate.map(|v| format!("errors ≤ {}%", pct(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!(
        "Objective: {} · non-inferiority margin {} points · constraints: {}",
        p.objective,
        pct(p.margin),
        if limits.is_empty() {
            "none".into()
        } else {
            limits.join(", ")
        }
    )
}

fn predicted(p: &Policy) -> Table {
    let targets: BTreeSet<&str> = p
        .predicted
        .iter()
        .flat_map(|x| x.single_target.keys().map(String::as_str))
        .collect();
    let mut header = vec!["suite", "cases", "policy score %", "policy $/1k req"];
    let alone: Vec<String> = targets
        .iter()
        .map(|t| format!("{t} alone: score % ($/1k)"))
        .collect();
    header.extend(alone.iter().map(String::as_str));
    let mut t = Table::new("Predicted on the suites' own cases", &header);
    for x in &p.predicted {
        let mut row = vec![
            x.suite.as_str().into(),
            Cell::num(x.cases.to_string()),
            Cell::num(pct(x.policy_mean_score)).class("policy"),
            Cell::num(money(x.policy_cost_per_1k_requests_usd)),
        ];
        row.extend(targets.iter().map(|t| {
            x.single_target.get(*t).map_or(Cell::num("–"), |(s, c)| {
                Cell::num(format!("{} ({})", pct(*s), money(*c)))
            })
        }));
        t.row(row);
    }
    t
}

fn validation(p: &Policy) -> Option<Table> {
    let v = p.validation.as_ref()?;
    let mut t = Table::new(
        format!("Validated out of sample ({}, seed {})", v.method, v.seed),
        &[
            "suite",
            "held-out cases",
            "in-sample score %",
            "held-out score % (95% CI)",
            "CI method",
            "held-out $/1k req",
        ],
    );
    t.note = Some(
        "Routes chosen on other cases than those that score them: the in-sample figure is \
         optimistic by about the difference."
            .into(),
    );
    for h in &v.suites {
        t.row(vec![
            h.suite.as_str().into(),
            Cell::num(h.cases.to_string()),
            Cell::num(pct(h.in_sample_score)),
            Cell::score(h.held_out_score, h.ci_low, h.ci_high),
            h.ci_method.as_str().into(),
            Cell::num(money(h.held_out_cost_per_1k_requests_usd)),
        ]);
    }
    Some(t)
}

/// Score units as points, with no `-0.0`.
fn points(x: f64) -> f64 {
    100.0 * x + 0.0
}

/// One task's candidates: the primary first-class, fallbacks marked, the excluded muted.
fn candidates(r: &Route) -> Table {
    let mut t = Table::new(
        format!("{} ({})", r.task, r.suite),
        &[
            "target",
            "role",
            "cases",
            "score % (95% CI)",
            "vs best, points (95% CI)",
            "non-inferior",
            "p50 / p95 latency s",
            "$/1k req",
            "errors %",
            "frontier",
            "excluded because",
        ],
    );
    t.note = Some(format!(
        "{}{}",
        r.reason,
        if r.constraints_met {
            ""
        } else {
            " (no target met the constraints)"
        }
    ));
    let secs = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
    for e in &r.evidence {
        let role = if e.target == r.primary {
            "primary".to_string()
        } else if let Some(i) = r.fallbacks.iter().position(|f| *f == e.target) {
            format!("fallback {}", i + 1)
        } else {
            String::new()
        };
        let class = if e.target == r.primary {
            Some("primary")
        } else if e.excluded.is_some() {
            Some("excluded")
        } else {
            None
        };
        let vs_best = e.vs_best.as_ref().map_or(Cell::num("best"), |d| {
            Cell::num(format!(
                "{:+.1} ({:+.1} to {:+.1})",
                points(d.diff),
                points(d.ci_low),
                points(d.ci_high)
            ))
        });
        t.rows.push((
            class,
            vec![
                e.target.as_str().into(),
                role.into(),
                Cell::num(e.cases.to_string()),
                Cell::score(e.mean_score, e.ci_low, e.ci_high),
                vs_best,
                Cell::yes_no(e.non_inferior),
                Cell::num(format!(
                    "{} / {}",
                    secs(e.latency_p50_s),
                    secs(e.latency_p95_s)
                )),
                Cell::num(money(e.cost_per_1k_requests_usd)),
                Cell::num(pct(e.error_rate)),
                if e.on_frontier {
                    Cell::from("yes").class("yes")
                } else {
                    Cell::default()
                },
                e.excluded.as_deref().unwrap_or("").into(),
            ],
        ));
    }
    t
}

fn economics(p: &Policy) -> Option<Table> {
    let e = p.economics.as_ref()?;
    let mut t = Table::new(
        "Self-hosting economics",
        &[
            "provider target",
            "$ per 1M tokens (this traffic)",
            "source",
            "break-even tokens/month",
            "reachable on one machine",
        ],
    );
    t.note = Some(format!(
        "Machine: {} at ${}/hour, {:.0} tokens/s ({}): ${:.4} per million tokens at full use; \
         ${:.0} a month for up to {:.3e} tokens.",
        e.input.machine,
        e.input.price_per_hour,
        e.tokens_per_s,
        if e.input.tokens_per_s.is_some() {
            "given"
        } else {
            "measured by the eval"
        },
        e.self_host_usd_per_1m_tokens,
        e.fixed_usd_per_month,
        e.capacity_tokens_per_month
    ));
    for x in &e.providers {
        t.row(vec![
            x.target.as_str().into(),
            Cell::num(format!("{:.4}", x.usd_per_1m_tokens)),
            if x.evaluated {
                "measured in the eval"
            } else {
                "price list × the eval's token mix"
            }
            .into(),
            Cell::num(format!("{:.3e}", x.break_even_tokens_per_month)),
            if x.break_even_within_capacity {
                Cell::yes_no(true)
            } else {
                Cell::from("no: the provider is cheaper per token").class("no")
            },
        ]);
    }
    Some(t)
}

/// The policy evidence section of the HTML report.
pub fn html(p: &Policy) -> String {
    let mut s = format!(
        "<section id=\"evidence\" class=\"evidence\"><h2>Policy evidence</h2><p>{}</p>",
        esc(&settings(p))
    );
    s.push_str(&predicted(p).html("h3", "styled"));
    if let Some(t) = validation(p) {
        s.push_str(&t.html("h3", "styled"));
    }
    s.push_str("<h3>Evidence per task</h3>");
    for r in &p.routes {
        s.push_str(&candidates(r).html("h4", "styled evidence-task"));
    }
    if let Some(t) = economics(p) {
        s.push_str(&t.html("h3", "styled"));
    }
    s.push_str("</section>");
    s
}
