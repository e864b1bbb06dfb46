//! Routing policies: which target serves which task, derived from eval results under the user's
//! constraints, with the evidence that decided it; exported for the routers people run.
//!
//! - [`derive`]: results → policy (non-inferiority on paired differences, constraints, objective,
//!   fallbacks, the cost/quality frontier, the predicted score and cost on the suites' traffic).
//! - [`economics`]: self-hosting cost per million tokens beside each provider's, and break-even.
//! - [`export`]: the LiteLLM proxy config and provider-native model strings.

pub mod derive;
pub mod economics;
pub mod export;
pub mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::stats::Paired;
use crate::providers::TargetSpec;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{path}: {detail}")]
    File {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Io(#[from] crate::util::FileError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Targets(#[from] crate::providers::ProviderError),
    #[error("the runs have no results")]
    NoResults,
    #[error("task `{0}` is a tag of more than one suite; give the suites distinct tags")]
    SharedTag(String),
    #[error("target `{target}`: unknown provider `{provider}`")]
    UnknownProvider { target: String, provider: String },
    #[error("`{key}`: {detail}")]
    BadOption { key: String, detail: String },
}

/// What the policy optimises once quality is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The cheapest target whose quality is non-inferior to the best.
    #[default]
    Cheapest,
    /// The fastest (p95 latency) target whose quality is non-inferior to the best.
    Fastest,
    /// The best mean score.
    Quality,
}

impl Objective {
    pub const NAMES: [&'static str; 3] = ["cheapest", "fastest", "quality"];

    pub fn name(self) -> &'static str {
        match self {
            Objective::Cheapest => "cheapest",
            Objective::Fastest => "fastest",
            Objective::Quality => "quality",
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Objective {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .zip([Objective::Cheapest, Objective::Fastest, Objective::Quality])
            .find_map(|(n, o)| (*n == s).then_some(o))
            .ok_or_else(|| format!("`{s}`: choose {}", Self::NAMES.join(", ")))
    }
}

/// Limits every route must respect.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Constraints {
    /// Minimum mean score (0–1).
    pub min_score: Option<f64>,
    pub max_p95_latency_s: Option<f64>,
    pub max_cost_per_1k_requests_usd: Option<f64>,
    /// Maximum share of failed requests.
    pub max_error_rate: Option<f64>,
}

/// One target's record on one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub target: String,
    pub cases: usize,
    pub mean_score: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub latency_p50_s: Option<f64>,
    pub latency_p95_s: Option<f64>,
    pub cost_per_1k_requests_usd: Option<f64>,
    pub error_rate: f64,
    /// Why the constraints rule it out (None: eligible).
    pub excluded: Option<String>,
    /// This target − the best eligible one, on the same cases.
    pub vs_best: Option<Paired>,
    /// Its difference to the best has a 95% interval above −margin.
    pub non_inferior: bool,
    /// On the cost/quality frontier (no other target is both cheaper and better).
    pub on_frontier: bool,
}

/// The route of one task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// A suite tag (`mmlu`, `astronomy`), or `default` for requests without a known task.
    pub task: String,
    pub suite: String,
    pub primary: String,
    pub fallbacks: Vec<String>,
    /// Why the primary was chosen, in a sentence.
    pub reason: String,
    /// False when no target met the constraints and the route falls back to the best quality.
    pub constraints_met: bool,
    pub evidence: Vec<Evidence>,
}

/// What the policy is expected to score and cost on a suite's own cases, beside sending
/// everything to one target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub suite: String,
    pub cases: usize,
    pub policy_mean_score: f64,
    pub policy_cost_per_1k_requests_usd: Option<f64>,
    /// target → (mean score, cost per 1k requests) if every case went to it.
    pub single_target: BTreeMap<String, (f64, Option<f64>)>,
}

/// A routing policy: the native file `switchyard serve --policy` and the exporters read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Policy {
    pub version: u32,
    pub created_at: f64,
    pub objective: Objective,
    pub constraints: Constraints,
    /// Non-inferiority margin, in score units (0.02 = 2 points).
    pub margin: f64,
    /// The eval runs the evidence comes from: folder → run ids.
    pub runs: BTreeMap<String, Vec<String>>,
    /// How to reach each target (settings only: API keys by variable name).
    pub targets: BTreeMap<String, TargetSpec>,
    pub routes: Vec<Route>,
    /// In sample: measured on the cases the routes were chosen on.
    pub predicted: Vec<Prediction>,
    /// Out of sample, when asked for (`holdout` or `folds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<validate::Validation>,
    #[serde(default)]
    pub economics: Option<economics::Economics>,
}

impl Policy {
    /// The route for a task: its own, else `default`.
    pub fn route(&self, task: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.task == task)
            .or_else(|| self.routes.iter().find(|r| r.task == "default"))
    }

    /// Write the policy (JSON) and its Markdown rendering beside it (`.md`); returns the latter.
    pub fn save(&self, path: &Path) -> Result<std::path::PathBuf, RouteError> {
        crate::util::write_json(path, self)?;
        let md = path.with_extension("md");
        crate::util::write_atomic(&md, self.markdown().as_bytes())?;
        Ok(md)
    }

    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let err = |detail: String| RouteError::File {
            path: path.to_path_buf(),
            detail,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::util::FileError::io(path, e))?;
        let p: Policy = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a switchyard policy: {e}")))?;
        for r in &p.routes {
            for t in std::iter::once(&r.primary).chain(&r.fallbacks) {
                if !p.targets.contains_key(t) {
                    return Err(err(format!(
                        "route `{}` uses target `{t}`, which `targets` does not define",
                        r.task
                    )));
                }
            }
        }
        Ok(p)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn money(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

impl Policy {
    /// The policy as Markdown: routes, the evidence behind each, predictions, economics.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Routing policy\n\nObjective: **{:?}** · non-inferiority margin {} points · constraints: {}\n\n\
             | task | primary | fallbacks | why |\n|---|---|---|---|\n",
            self.objective,
            pct(self.margin),
            serde_json::to_string(&self.constraints).unwrap_or_default()
        );
        for r in &self.routes {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.task,
                r.primary,
                r.fallbacks.join(", "),
                r.reason
            ));
        }
        s.push_str("\n## Predicted on the suites' own cases\n\n| suite | cases | policy score % | policy $/1k req | each target alone: score % ($/1k) |\n|---|---:|---:|---:|---|\n");
        for p in &self.predicted {
            let alone: Vec<String> = p
                .single_target
                .iter()
                .map(|(t, (sc, c))| format!("{t} {} ({})", pct(*sc), money(*c)))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                p.suite,
                p.cases,
                pct(p.policy_mean_score),
                money(p.policy_cost_per_1k_requests_usd),
                alone.join(" · ")
            ));
        }
        if let Some(v) = &self.validation {
            s.push_str(&format!(
                "\n## Validated out of sample ({}, seed {})\n\nRoutes chosen on other cases than those that score them: the in-sample figure above is optimistic by about the difference.\n\n| suite | held-out cases | in-sample score % | held-out score % (95% CI) | held-out $/1k req |\n|---|---:|---:|---|---:|\n",
                v.method, v.seed
            ));
            for h in &v.suites {
                s.push_str(&format!(
                    "| {} | {} | {} | {} ({}–{}, {}) | {} |\n",
                    h.suite,
                    h.cases,
                    pct(h.in_sample_score),
                    pct(h.held_out_score),
                    pct(h.ci_low),
                    pct(h.ci_high),
                    h.ci_method,
                    money(h.held_out_cost_per_1k_requests_usd)
                ));
            }
        }
        s.push_str("\n## Evidence\n");
        for r in &self.routes {
            s.push_str(&format!(
                "\n### {} ({})\n\n| target | n | score % (95% CI) | vs best, points (95% CI) | non-inferior | p50 / p95 latency s | $/1k req | errors | frontier | excluded |\n|---|---:|---|---|---|---|---:|---:|---|---|\n",
                r.task, r.suite
            ));
            for e in &r.evidence {
                s.push_str(&format!(
                    "| {} | {} | {} ({}–{}) | {} | {} | {} / {} | {} | {} | {} | {} |\n",
                    e.target,
                    e.cases,
                    pct(e.mean_score),
                    pct(e.ci_low),
                    pct(e.ci_high),
                    e.vs_best.as_ref().map_or("best".into(), |d| format!(
                        "{:+.1} ({:+.1} to {:+.1})",
                        100.0 * d.diff,
                        100.0 * d.ci_low,
                        100.0 * d.ci_high
                    )),
                    if e.non_inferior { "yes" } else { "no" },
                    e.latency_p50_s.map_or("–".into(), |v| format!("{v:.2}")),
                    e.latency_p95_s.map_or("–".into(), |v| format!("{v:.2}")),
                    money(e.cost_per_1k_requests_usd),
                    pct(e.error_rate),
                    if e.on_frontier { "yes" } else { "" },
                    e.excluded.as_deref().unwrap_or("")
                ));
            }
        }
        if let Some(e) = &self.economics {
            s.push_str(&format!(
                "\n## Self-hosting economics\n\nMachine: {} at ${}/hour, {:.0} tokens/s ({}): **${:.4} per million tokens** at full use; \
                 ${:.0} a month for up to {:.3e} tokens.\n\n| provider target | $ per 1M tokens (this traffic) | source | break-even tokens/month | reachable on one machine |\n|---|---:|---|---:|---|\n",
                e.input.machine,
                e.input.price_per_hour,
                e.tokens_per_s,
                match (&e.input.capacity, e.input.tokens_per_s) {
                    (Some(_), _) => "measured under load, below",
                    (None, Some(_)) => "given",
                    (None, None) => "measured by the eval",
                },
                e.self_host_usd_per_1m_tokens,
                e.fixed_usd_per_month,
                e.capacity_tokens_per_month
            ));
            if let Some(c) = &e.input.capacity {
                s.push_str(&format!(
                    "\nCapacity from a measured load curve (`{}`, `{}` on {}, {}): the highest throughput {} is at \
                     concurrency {}: {:.1} output tokens/s ({:.1} with prompt tokens), p95 TTFT {} s, p95 latency {} s; \
                     **${:.4} per million output tokens**. Levels (concurrency: output tok/s, p95 TTFT): {}.\n\n",
                    c.file,
                    c.target,
                    c.measured_on,
                    c.date,
                    c.slo_p95_ttft_s
                        .map_or("without errors".to_string(), |s| format!("within p95 TTFT ≤ {s} s")),
                    c.concurrency,
                    c.output_tokens_per_s,
                    c.total_tokens_per_s,
                    c.ttft_p95_s.map_or("–".into(), |v| format!("{v:.3}")),
                    c.latency_p95_s.map_or("–".into(), |v| format!("{v:.3}")),
                    e.self_host_usd_per_1m_output_tokens.unwrap_or(f64::NAN),
                    c.levels
                        .iter()
                        .map(|(n, t, p)| format!(
                            "{n}: {t:.1}, {}",
                            p.map_or("–".into(), |v| format!("{v:.3} s"))
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            for p in &e.providers {
                s.push_str(&format!(
                    "| {} | {:.4} | {} | {:.3e} | {} |\n",
                    p.target,
                    p.usd_per_1m_tokens,
                    if p.evaluated {
                        "measured in the eval"
                    } else {
                        "price list × the eval's token mix"
                    },
                    p.break_even_tokens_per_month,
                    if p.break_even_within_capacity {
                        "yes"
                    } else {
                        "no: the provider is cheaper per token"
                    }
                ));
            }
        }
        s
    }
}
