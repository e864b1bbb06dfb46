//! Out-of-sample validation of a policy. Choosing each task's best target on the same cases
//! that then measure it is optimistic (with many targets and few cases, the winner is partly
//! the luckiest). Here the cases are split by case, stratified by task: routes are chosen on
//! one part and the policy is scored on the other (`holdout`), or each of k folds is scored by
//! routes chosen on the other k − 1 (`folds`, cross-fitting). The held-out score and cost are
//! reported with 95% intervals beside the in-sample figure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Prediction, Route};
use crate::eval::results::ResultRow;
use crate::eval::stats;

/// How the cases are split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// This fraction of each task's cases is held out.
    Holdout(f64),
    /// k folds, each scored by routes chosen on the others.
    Folds(usize),
}

/// A suite's policy score in sample and out of sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeldOut {
    pub suite: String,
    /// Cases the held-out figure is measured on.
    pub cases: usize,
    /// The policy's score on the cases its routes were chosen on (optimistic).
    pub in_sample_score: f64,
    pub held_out_score: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub ci_method: String,
    pub held_out_cost_per_1k_requests_usd: Option<f64>,
}

/// What a policy's validation found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Validation {
    /// `holdout 0.3` or `5-fold`.
    pub method: String,
    pub seed: u64,
    pub suites: Vec<HeldOut>,
}

/// A case's place: suite and case id.
pub type CaseKey = (String, String);

/// The fold of every case (0 = held out, for a holdout split): within each task (a suite's
/// most specific tag), cases in a seeded order dealt round-robin, so every task is in every fold.
pub fn folds(rows: &[ResultRow], split: Split, seed: u64) -> BTreeMap<CaseKey, usize> {
    let mut by_task: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in rows {
        let task = r.tags.rsplit(',').next().unwrap_or("").to_string();
        let list = by_task.entry((r.suite.clone(), task)).or_default();
        if !list.contains(&r.case_id) {
            list.push(r.case_id.clone());
        }
    }
    let mut out = BTreeMap::new();
    for ((suite, _), mut cases) in by_task {
        let hash =
            |c: &str| crate::util::sha256_hex(format!("{seed}\u{1f}{suite}\u{1f}{c}").as_bytes());
        cases.sort_by_cached_key(|c| hash(c));
        let n = cases.len();
        for (i, c) in cases.into_iter().enumerate() {
            let fold = match split {
                // The first ⌈f·n⌉ of the shuffled cases (at least one, never all).
                Split::Holdout(f) => {
                    let held = ((f * n as f64).ceil() as usize).clamp(1, n.saturating_sub(1));
                    usize::from(i >= held)
                }
                Split::Folds(k) => i % k.max(2),
            };
            out.insert((suite.clone(), c), fold);
        }
    }
    out
}

/// The rows of the cases in (`inside`) or out of a fold.
pub fn rows_of(
    rows: &[ResultRow],
    folds: &BTreeMap<CaseKey, usize>,
    fold: usize,
    inside: bool,
) -> Vec<ResultRow> {
    rows.iter()
        .filter(|r| {
            let f = folds.get(&(r.suite.clone(), r.case_id.clone()));
            f.is_some_and(|&f| (f == fold) == inside)
        })
        .cloned()
        .collect()
}

/// Per suite, the policy's score and cost on each case: the answer of its route's primary.
pub fn policy_cases(
    rows: &[ResultRow],
    routes: &[Route],
) -> BTreeMap<String, Vec<(f64, Option<f64>)>> {
    let by_task: BTreeMap<&str, &Route> = routes.iter().map(|r| (r.task.as_str(), r)).collect();
    // (suite, case, target) → the worst score over repeats, and the cost of one answer.
    let mut cell: BTreeMap<(&str, &str, &str), (f64, Option<f64>)> = BTreeMap::new();
    let mut cases: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for r in rows {
        let score = r.score.unwrap_or(0.0);
        let e = cell
            .entry((r.suite.as_str(), r.case_id.as_str(), r.target.as_str()))
            .or_insert((score, r.cost_usd));
        e.0 = e.0.min(score);
        let list = cases.entry(r.suite.as_str()).or_default();
        if !list.iter().any(|(c, _)| *c == r.case_id) {
            list.push((r.case_id.as_str(), r.tags.as_str()));
        }
    }
    cases
        .into_iter()
        .map(|(suite, list)| {
            let scored = list
                .iter()
                .map(|(case, tags)| {
                    let route = tags
                        .split(',')
                        .rev()
                        .find_map(|t| by_task.get(t))
                        .or_else(|| by_task.get("default"));
                    route
                        .and_then(|r| cell.get(&(suite, *case, r.primary.as_str())))
                        .copied()
                        .unwrap_or((0.0, None))
                })
                .collect();
            (suite.to_string(), scored)
        })
        .collect()
}

/// The held-out figures per suite from the policy's per-case answers out of sample, beside
/// the in-sample predictions.
pub fn held_out(
    method: String,
    seed: u64,
    out_of_sample: BTreeMap<String, Vec<(f64, Option<f64>)>>,
    in_sample: &[Prediction],
) -> Validation {
    let suites = out_of_sample
        .into_iter()
        .map(|(suite, cases)| {
            let scores: Vec<f64> = cases.iter().map(|c| c.0).collect();
            let est = stats::mean_ci(&scores, false);
            let cost: Option<f64> = cases.iter().map(|c| c.1).sum();
            let n = cases.len().max(1) as f64;
            HeldOut {
                in_sample_score: in_sample
                    .iter()
                    .find(|p| p.suite == suite)
                    .map_or(f64::NAN, |p| p.policy_mean_score),
                cases: cases.len(),
                held_out_score: est.mean,
                ci_low: est.ci_low,
                ci_high: est.ci_high,
                ci_method: est.method,
                held_out_cost_per_1k_requests_usd: cost.map(|c| 1000.0 * c / n),
                suite,
            }
        })
        .collect();
    Validation {
        method,
        seed,
        suites,
    }
}
