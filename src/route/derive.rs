//! Deriving a policy from eval results.
//!
//! Per task (suite tag), among the targets that meet the constraints: the best is the highest
//! mean score; a target is **non-inferior** when the 95% interval of its paired difference to the
//! best (same cases) lies above −margin. The objective then picks among the non-inferior ones
//! (cheapest, fastest) or takes the best (quality). A cheaper target never wins on a point
//! estimate alone: only when the evidence says it is not worse by more than the margin.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::economics::{Capacity, EconomicsInput};
use super::validate::{self, Split};
use super::{Constraints, Evidence, Objective, Policy, Prediction, Route, RouteError};
use crate::eval::results::{self, ResultRow, SummaryRow};
use crate::eval::stats::Paired;
use crate::providers::{TargetSpec, TargetsFile};

/// How a policy is derived: the `[route]` table of a pipeline, and `route derive`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveOptions {
    #[serde(default)]
    pub objective: Objective,
    /// A cheaper (or faster) target wins only if its paired difference to the best has a 95%
    /// interval above −margin (score units: 0.02 = 2 points).
    #[serde(default = "d_margin")]
    pub margin: f64,
    /// Minimum mean score (0–1).
    #[serde(default)]
    pub min_score: Option<f64>,
    /// Maximum p95 latency in seconds.
    #[serde(default)]
    pub max_p95_latency: Option<f64>,
    /// Maximum cost per 1,000 requests in USD.
    #[serde(default)]
    pub max_cost_per_1k: Option<f64>,
    /// Maximum share of failed requests (0–1).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Tasks with fewer cases than this get no route of their own (their cases follow their
    /// suite's broader tag): choosing among targets on a handful of cases fits noise.
    #[serde(default = "d_min_cases")]
    pub min_cases: usize,
    /// Fallbacks per route.
    #[serde(default = "d_fallbacks")]
    pub fallbacks: usize,
    /// Only these tasks (empty: every tag in the results).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Self-hosting economics: the machine's price per hour in USD (e.g. a GPU instance).
    #[serde(default)]
    pub machine_price_per_hour: Option<f64>,
    /// Its throughput in tokens/s (default: what the local targets measured in the eval).
    #[serde(default)]
    pub machine_tokens_per_s: Option<f64>,
    /// A name for the machine in the report.
    #[serde(default = "d_machine")]
    pub machine: String,
    /// A load curve measured by `switchyard bench serve` (its `serve.json`): self-hosting is
    /// priced at the highest throughput that meets `slo_p95_ttft`.
    #[serde(default)]
    pub capacity: Option<PathBuf>,
    /// The curve of that file to use, when it has several.
    #[serde(default)]
    pub capacity_target: Option<String>,
    /// The service-level objective on p95 time to first token, in seconds.
    #[serde(default)]
    pub slo_p95_ttft: Option<f64>,
    /// Priced targets to compare self-hosting with even if they were not evaluated (default:
    /// [`DEFAULT_TARGETS_FILE`] when it exists).
    #[serde(default)]
    pub targets_file: Option<PathBuf>,
    /// Validate out of sample: choose routes on the other cases and score the policy on this
    /// fraction of each task's cases (the policy is the one chosen without them).
    #[serde(default)]
    pub holdout: Option<f64>,
    /// Or cross-fit over k folds: each fold scored by routes chosen on the others (the policy
    /// is chosen on every case).
    #[serde(default)]
    pub folds: Option<usize>,
    /// The seed of the split.
    #[serde(default)]
    pub seed: u64,
}

pub const DEFAULT_MARGIN: f64 = 0.02;
pub const DEFAULT_MIN_CASES: usize = 30;
pub const DEFAULT_FALLBACKS: usize = 2;
pub const DEFAULT_MACHINE: &str = "the eval's machine";
/// The targets file read for prices when none is given, relative to the working directory.
pub const DEFAULT_TARGETS_FILE: &str = "evals/targets.toml";

fn d_margin() -> f64 {
    DEFAULT_MARGIN
}
fn d_min_cases() -> usize {
    DEFAULT_MIN_CASES
}
fn d_fallbacks() -> usize {
    DEFAULT_FALLBACKS
}
fn d_machine() -> String {
    DEFAULT_MACHINE.into()
}

impl Default for DeriveOptions {
    fn default() -> Self {
        Self {
            objective: Objective::default(),
            margin: DEFAULT_MARGIN,
            min_score: None,
            max_p95_latency: None,
            max_cost_per_1k: None,
            max_error_rate: None,
            min_cases: DEFAULT_MIN_CASES,
            fallbacks: DEFAULT_FALLBACKS,
            tasks: Vec::new(),
            machine_price_per_hour: None,
            machine_tokens_per_s: None,
            machine: DEFAULT_MACHINE.into(),
            capacity: None,
            capacity_target: None,
            slo_p95_ttft: None,
            targets_file: None,
            holdout: None,
            folds: None,
            seed: 0,
        }
    }
}

impl DeriveOptions {
    /// The out-of-sample split asked for, checked.
    fn split(&self) -> Result<Option<Split>, RouteError> {
        let bad = |key: &str, detail: String| RouteError::BadOption {
            key: key.to_string(),
            detail,
        };
        match (self.holdout, self.folds) {
            (Some(_), Some(_)) => Err(bad("holdout", "set `holdout` or `folds`, not both".into())),
            (Some(f), None) if !(f > 0.0 && f < 1.0) => {
                Err(bad("holdout", format!("{f} is not a fraction in (0, 1)")))
            }
            (Some(f), None) => Ok(Some(Split::Holdout(f))),
            (None, Some(k)) if k < 2 => Err(bad("folds", format!("{k}: at least 2"))),
            (None, Some(k)) => Ok(Some(Split::Folds(k))),
            (None, None) => Ok(None),
        }
    }

    /// The limits every route must respect.
    pub fn constraints(&self) -> Constraints {
        Constraints {
            min_score: self.min_score,
            max_p95_latency_s: self.max_p95_latency,
            max_cost_per_1k_requests_usd: self.max_cost_per_1k,
            max_error_rate: self.max_error_rate,
        }
    }

    /// The self-hosting question, when a machine price is given: the machine, and the price list
    /// of the targets file.
    fn economics(&self) -> Result<Option<EconomicsInput>, RouteError> {
        let bad = |key: &str, detail: String| RouteError::BadOption {
            key: key.to_string(),
            detail,
        };
        let Some(price_per_hour) = self.machine_price_per_hour else {
            return match (&self.capacity, self.slo_p95_ttft) {
                (Some(_), _) => Err(bad(
                    "capacity",
                    "prices self-hosting: set `machine_price_per_hour` too".into(),
                )),
                (None, Some(_)) => Err(bad(
                    "slo_p95_ttft",
                    "applies to a measured `capacity`: set it and `machine_price_per_hour`".into(),
                )),
                _ => Ok(None),
            };
        };
        let capacity = match &self.capacity {
            Some(_) if self.machine_tokens_per_s.is_some() => {
                return Err(bad(
                    "capacity",
                    "set `capacity` (measured) or `machine_tokens_per_s` (given), not both".into(),
                ));
            }
            Some(file) => Some(
                Capacity::choose(file, self.capacity_target.as_deref(), self.slo_p95_ttft)
                    .map_err(|e| bad("capacity", e))?,
            ),
            None if self.slo_p95_ttft.is_some() => {
                return Err(bad(
                    "slo_p95_ttft",
                    "applies to a measured `capacity` (a `bench serve` file)".into(),
                ));
            }
            None => None,
        };
        let default = Path::new(DEFAULT_TARGETS_FILE);
        let file = self
            .targets_file
            .as_deref()
            .or(default.exists().then_some(default));
        let price_list = match file {
            Some(f) => TargetsFile::load(f)?
                .into_iter()
                .filter_map(|t| Some((t.name, t.price_in?, t.price_out?)))
                .collect(),
            None => Vec::new(),
        };
        Ok(Some(EconomicsInput {
            price_per_hour,
            tokens_per_s: self.machine_tokens_per_s,
            machine: self.machine.clone(),
            price_list,
            capacity,
        }))
    }
}

/// A run folder's rows and target settings.
pub struct RunData {
    pub folder: PathBuf,
    pub rows: Vec<ResultRow>,
    pub targets: BTreeMap<String, TargetSpec>,
}

/// Read an eval run folder (`results.jsonl` + `run.json`).
pub fn read_run(folder: &Path) -> Result<RunData, RouteError> {
    let folder = if folder.is_file() {
        folder.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        folder.to_path_buf()
    };
    let err = |p: &Path, detail: String| RouteError::File {
        path: p.to_path_buf(),
        detail,
    };
    let rpath = folder.join("results.jsonl");
    if !rpath.exists() {
        return Err(err(
            &rpath,
            "not found: give an eval run folder (runs/eval/...)".into(),
        ));
    }
    let (rows, _) = results::read_rows(&rpath)?;
    let jpath = folder.join("run.json");
    let run: Value = crate::util::read_json(&jpath)?;
    let mut targets = BTreeMap::new();
    for t in run["targets"].as_array().into_iter().flatten() {
        let spec: TargetSpec = serde_json::from_value(t["spec"].clone())
            .map_err(|e| err(&jpath, format!("targets: {e}")))?;
        targets.insert(spec.name.clone(), spec);
    }
    Ok(RunData {
        folder,
        rows,
        targets,
    })
}

fn paired_vs(
    cmp: &[results::Comparison],
    suite: &str,
    tag: &str,
    t: &str,
    best: &str,
) -> Option<Paired> {
    cmp.iter().find_map(|c| {
        if c.suite != suite || c.tag != tag {
            return None;
        }
        if c.a == t && c.b == best {
            Some(c.paired.clone())
        } else if c.a == best && c.b == t {
            let p = &c.paired;
            Some(Paired {
                diff: -p.diff,
                ci_low: -p.ci_high,
                ci_high: -p.ci_low,
                a_better: p.b_better,
                b_better: p.a_better,
                ..p.clone()
            })
        } else {
            None
        }
    })
}

fn exclusion(s: &SummaryRow, c: &Constraints) -> Option<String> {
    if let Some(m) = c.min_score
        && s.mean_score < m
    {
        return Some(format!("score {:.3} < min {m}", s.mean_score));
    }
    if let Some(m) = c.max_p95_latency_s {
        match s.latency_p95_s {
            Some(l) if l > m => return Some(format!("p95 latency {l:.2} s > max {m} s")),
            None => return Some("no latency measured".into()),
            _ => {}
        }
    }
    if let Some(m) = c.max_cost_per_1k_requests_usd {
        match s.cost_per_1k_requests_usd {
            Some(v) if v > m => return Some(format!("cost ${v:.4}/1k > max ${m}")),
            None => return Some("unpriced (set prices on the target)".into()),
            _ => {}
        }
    }
    if let Some(m) = c.max_error_rate
        && s.error_rate > m
    {
        return Some(format!("error rate {:.3} > max {m}", s.error_rate));
    }
    None
}

fn key(o: Objective, e: &Evidence) -> f64 {
    match o {
        Objective::Cheapest => e.cost_per_1k_requests_usd.unwrap_or(f64::INFINITY),
        Objective::Fastest => e.latency_p95_s.unwrap_or(f64::INFINITY),
        Objective::Quality => -e.mean_score,
    }
}

/// Derive the route of one task from its summaries and comparisons.
fn route_for(
    suite: &str,
    tag: &str,
    task: &str,
    summaries: &[&SummaryRow],
    cmp: &[results::Comparison],
    o: &DeriveOptions,
) -> Route {
    let mut ev: Vec<Evidence> = summaries
        .iter()
        .map(|s| Evidence {
            target: s.target.clone(),
            cases: s.cases,
            mean_score: s.mean_score,
            ci_low: s.ci_low,
            ci_high: s.ci_high,
            latency_p50_s: s.latency_p50_s,
            latency_p95_s: s.latency_p95_s,
            cost_per_1k_requests_usd: s.cost_per_1k_requests_usd,
            error_rate: s.error_rate,
            excluded: exclusion(s, &o.constraints()),
            vs_best: None,
            non_inferior: false,
            on_frontier: false,
        })
        .collect();
    let constraints_met = ev.iter().any(|e| e.excluded.is_none());
    let pool = |e: &Evidence| !constraints_met || e.excluded.is_none();
    let best = ev
        .iter()
        .filter(|e| pool(e))
        .max_by(|a, b| {
            a.mean_score
                .total_cmp(&b.mean_score)
                .then(key(Objective::Cheapest, b).total_cmp(&key(Objective::Cheapest, a)))
        })
        .map(|e| e.target.clone())
        .unwrap_or_default();
    for e in ev.iter_mut() {
        if e.target == best {
            e.non_inferior = true;
        } else {
            e.vs_best = paired_vs(cmp, suite, tag, &e.target, &best);
            e.non_inferior = e.vs_best.as_ref().is_some_and(|p| p.ci_low >= -o.margin);
        }
    }
    let snapshot = ev.clone();
    for e in ev.iter_mut() {
        e.on_frontier = e.cost_per_1k_requests_usd.is_some()
            && !snapshot.iter().any(|x| {
                let (Some(xc), Some(ec)) = (x.cost_per_1k_requests_usd, e.cost_per_1k_requests_usd)
                else {
                    return false;
                };
                x.target != e.target
                    && xc <= ec
                    && x.mean_score >= e.mean_score
                    && (xc < ec || x.mean_score > e.mean_score)
            });
    }
    let mut order: Vec<&Evidence> = ev.iter().filter(|e| pool(e)).collect();
    // Non-inferior targets by the objective; then the rest by quality (a fallback that is much
    // worse is not better for being cheap).
    order.sort_by(|a, b| {
        b.non_inferior.cmp(&a.non_inferior).then(if a.non_inferior {
            key(o.objective, a)
                .total_cmp(&key(o.objective, b))
                .then(b.mean_score.total_cmp(&a.mean_score))
        } else {
            b.mean_score.total_cmp(&a.mean_score)
        })
    });
    let primary = match o.objective {
        Objective::Quality => best.clone(),
        _ => order
            .first()
            .map(|e| e.target.clone())
            .unwrap_or_else(|| best.clone()),
    };
    let fallbacks: Vec<String> = order
        .iter()
        .map(|e| e.target.clone())
        .filter(|t| *t != primary)
        .take(o.fallbacks)
        .collect();
    let p = ev.iter().find(|e| e.target == primary);
    let reason = match (p, constraints_met) {
        (_, false) => format!("no target meets the constraints; `{primary}` has the best score"),
        (Some(p), true) if primary == best => format!(
            "`{primary}` has the best score, {:.1}% (95% CI {:.1}–{:.1}, n = {})",
            100.0 * p.mean_score,
            100.0 * p.ci_low,
            100.0 * p.ci_high,
            p.cases
        ),
        (Some(p), true) => {
            let d = p.vs_best.as_ref();
            format!(
                "`{primary}` is non-inferior to the best, `{best}` (difference {:+.1} points, 95% CI {:+.1} to {:+.1}, margin {:.1}), and {}",
                100.0 * d.map_or(0.0, |d| d.diff),
                100.0 * d.map_or(0.0, |d| d.ci_low),
                100.0 * d.map_or(0.0, |d| d.ci_high),
                100.0 * o.margin,
                match o.objective {
                    Objective::Cheapest => "cheaper",
                    Objective::Fastest => "faster",
                    Objective::Quality => "better",
                }
            )
        }
        (None, _) => "no evidence".into(),
    };
    Route {
        task: task.to_string(),
        suite: suite.to_string(),
        primary,
        fallbacks,
        reason,
        constraints_met,
        evidence: ev,
    }
}

/// The routes results support: per task (and `default`, which pools every suite's cases).
fn routes_from(rows: &[ResultRow], o: &DeriveOptions) -> Result<Vec<Route>, RouteError> {
    let mut rows = rows.to_vec();
    let pooled: Vec<ResultRow> = rows
        .iter()
        .map(|r| ResultRow {
            suite: "*".into(),
            case_id: format!("{}/{}", r.suite, r.case_id),
            tags: String::new(),
            ..r.clone()
        })
        .collect();
    rows.extend(pooled);
    let summary = results::summarize(&rows);
    let mut names: Vec<String> = summary.iter().map(|s| s.target.clone()).collect();
    names.sort();
    names.dedup();
    let cmp = results::compare(&rows, &names);
    let mut groups: BTreeMap<(String, String), Vec<&SummaryRow>> = BTreeMap::new();
    for s in &summary {
        groups
            .entry((s.suite.clone(), s.tag.clone()))
            .or_default()
            .push(s);
    }
    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for ((suite, tag), ss) in &groups {
        let task = if suite == "*" {
            "default".to_string()
        } else if tag == "all" {
            continue;
        } else {
            tag.clone()
        };
        if !o.tasks.is_empty() && task != "default" && !o.tasks.contains(&task) {
            continue;
        }
        if task != "default" && ss.iter().map(|s| s.cases).max().unwrap_or(0) < o.min_cases {
            continue;
        }
        if !seen.insert(task.clone()) {
            return Err(RouteError::SharedTag(task));
        }
        routes.push(route_for(suite, tag, &task, ss, &cmp, o));
    }
    Ok(routes)
}

/// Derive a policy from eval run folders.
pub fn derive(runs: &[RunData], o: &DeriveOptions) -> Result<Policy, RouteError> {
    let rows: Vec<ResultRow> = runs.iter().flat_map(|r| r.rows.iter().cloned()).collect();
    if rows.is_empty() {
        return Err(RouteError::NoResults);
    }
    let (routes, predicted, validation) = match o.split()? {
        None => {
            let routes = routes_from(&rows, o)?;
            let predicted = predict(&rows, &routes);
            (routes, predicted, None)
        }
        Some(split @ Split::Holdout(f)) => {
            // The policy is chosen without the held-out cases, and scored on them.
            let folds = validate::folds(&rows, split, o.seed);
            let chosen_on = validate::rows_of(&rows, &folds, 0, false);
            let held = validate::rows_of(&rows, &folds, 0, true);
            let routes = routes_from(&chosen_on, o)?;
            let predicted = predict(&chosen_on, &routes);
            let out = validate::policy_cases(&held, &routes);
            let v = validate::held_out(format!("holdout {f}"), o.seed, out, &predicted);
            (routes, predicted, Some(v))
        }
        Some(split @ Split::Folds(k)) => {
            // Each fold scored by the routes the other folds choose; the policy uses every case.
            let folds = validate::folds(&rows, split, o.seed);
            let mut out: BTreeMap<String, Vec<(f64, Option<f64>)>> = BTreeMap::new();
            for f in 0..k {
                let fold_routes = routes_from(&validate::rows_of(&rows, &folds, f, false), o)?;
                let test = validate::rows_of(&rows, &folds, f, true);
                for (suite, cases) in validate::policy_cases(&test, &fold_routes) {
                    out.entry(suite).or_default().extend(cases);
                }
            }
            let routes = routes_from(&rows, o)?;
            let predicted = predict(&rows, &routes);
            let v = validate::held_out(format!("{k}-fold"), o.seed, out, &predicted);
            (routes, predicted, Some(v))
        }
    };
    let mut targets = BTreeMap::new();
    let mut run_ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in runs {
        targets.extend(r.targets.clone());
        let mut ids: Vec<String> = r.rows.iter().map(|x| x.run_id.clone()).collect();
        ids.sort();
        ids.dedup();
        run_ids.insert(r.folder.display().to_string(), ids);
    }
    let economics = o
        .economics()?
        .map(|e| super::economics::compute(&rows, &targets, &e));
    Ok(Policy {
        version: 1,
        created_at: crate::util::now_s(),
        objective: o.objective,
        constraints: o.constraints(),
        margin: o.margin,
        runs: run_ids,
        targets,
        routes,
        predicted,
        validation,
        economics,
    })
}

/// Route each case by its most specific tag that has a route; score and cost it with the
/// primary's own answer to that case.
fn predict(rows: &[ResultRow], routes: &[Route]) -> Vec<Prediction> {
    let by_task: HashMap<&str, &Route> = routes.iter().map(|r| (r.task.as_str(), r)).collect();
    let mut cell: HashMap<(&str, &str, &str), (f64, Option<f64>)> = HashMap::new();
    let mut cases: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for r in rows {
        let score: f64 = r.score.unwrap_or(0.0);
        let e = cell
            .entry((r.suite.as_str(), r.case_id.as_str(), r.target.as_str()))
            .or_insert((score, r.cost_usd));
        e.0 = e.0.min(score);
        let tags = r.tags.as_str();
        let list = cases.entry(r.suite.as_str()).or_default();
        if !list.iter().any(|(c, _)| *c == r.case_id) {
            list.push((r.case_id.as_str(), tags));
        }
    }
    let targets: Vec<&str> = {
        let mut t: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
        t.sort();
        t.dedup();
        t
    };
    cases
        .into_iter()
        .map(|(suite, list)| {
            let mut score = 0.0;
            let mut cost = Some(0.0);
            for (case, tags) in &list {
                let route = tags
                    .split(',')
                    .rev()
                    .find_map(|t| by_task.get(t))
                    .or_else(|| by_task.get("default"));
                let (s, c) = route
                    .and_then(|r| cell.get(&(suite, *case, r.primary.as_str())))
                    .copied()
                    .unwrap_or((0.0, None));
                score += s;
                cost = cost.zip(c).map(|(a, b)| a + b);
            }
            let n = list.len().max(1) as f64;
            let single_target = targets
                .iter()
                .map(|t| {
                    let mut s = 0.0;
                    let mut c = Some(0.0);
                    for (case, _) in &list {
                        let (x, y) = cell
                            .get(&(suite, *case, *t))
                            .copied()
                            .unwrap_or((0.0, None));
                        s += x;
                        c = c.zip(y).map(|(a, b)| a + b);
                    }
                    (t.to_string(), (s / n, c.map(|c| 1000.0 * c / n)))
                })
                .collect();
            Prediction {
                suite: suite.to_string(),
                cases: list.len(),
                policy_mean_score: score / n,
                policy_cost_per_1k_requests_usd: cost.map(|c| 1000.0 * c / n),
                single_target,
            }
        })
        .collect()
}
