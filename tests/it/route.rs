//! Routing policies: derived from eval results (non-inferiority, constraints, objective), exported
//! as a LiteLLM proxy config that the real proxy loads, routes by and falls back with.

use std::path::Path;
use std::time::Duration;

use switchyard::eval::ResultRow;
use switchyard::providers::fault_server::{Behaviour, FaultServer};

fn row(target: &str, case: usize, score: f64, cost: f64) -> ResultRow {
    ResultRow {
        run_id: "test-run".into(),
        suite: "s".into(),
        case_id: case.to_string(),
        line: case as u64,
        tags: "qa".into(),
        target: target.into(),
        provider: "openai-compatible".into(),
        model: Some("m".into()),
        repeat: 0,
        seed: None,
        prompt_hash: "h".into(),
        prompt: "[]".into(),
        output: Some("x".into()),
        reference: Some("x".into()),
        score: Some(score),
        pass: Some(score == 1.0),
        verdicts: "[]".into(),
        reason: None,
        latency_s: Some(0.1),
        ttft_s: Some(0.05),
        output_tok_s: None,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cost_usd: Some(cost),
        compute_s: None,
        finish_reason: Some("stop".into()),
        error: None,
        attempts: 1,
        cached: false,
        finished_at: 0.0,
        ..Default::default()
    }
}

/// An eval run folder: `strong` passes every case, `cheap` all but `misses`, `weak` half.
pub(crate) fn write_run(dir: &Path, n: usize, misses: usize, urls: &[(&str, String)]) {
    let mut lines = String::new();
    for i in 0..n {
        for r in [
            row("strong", i, 1.0, 0.002),
            row("cheap", i, if i < misses { 0.0 } else { 1.0 }, 0.0001),
            row("weak", i, (i % 2) as f64, 0.00001),
        ] {
            lines.push_str(&serde_json::to_string(&r).unwrap());
            lines.push('\n');
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("results.jsonl"), lines).unwrap();
    let targets: Vec<serde_json::Value> = urls
        .iter()
        .map(|(name, url)| serde_json::json!({"spec": {"name": name, "provider": "openai-compatible",
            "model": format!("{name}-model"), "base_url": url, "timeout_s": 5.0, "price_in": 1.0, "price_out": 2.0}}))
        .collect();
    std::fs::write(
        dir.join("run.json"),
        serde_json::json!({"targets": targets}).to_string(),
    )
    .unwrap();
}

use crate::common::{cli_ok as ok, in_dir as switchyard};

/// `switchyard route derive RUN --out policy.json EXTRA...` in `d`, which must succeed.
fn derive(d: &Path, run: &str, extra: &[&str]) {
    ok(switchyard(d)
        .args(["route", "derive", run, "--out", "policy.json"])
        .args(extra));
}

fn policy(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("policy.json")).unwrap()).unwrap()
}

/// The route of `task` in the policy written to `d/policy.json`.
fn route(d: &Path, task: &str) -> serde_json::Value {
    let p = policy(d);
    p["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == task)
        .unwrap_or_else(|| panic!("no route for {task}: {p}"))
        .clone()
}

/// A route's evidence for one target.
fn evidence<'a>(route: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    route["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == target)
        .unwrap()
}

pub(crate) fn urls() -> Vec<(&'static str, String)> {
    ["strong", "cheap", "weak"]
        .iter()
        .map(|t| (*t, "http://127.0.0.1:9/v1".to_string()))
        .collect()
}

#[test]
fn a_cheaper_target_wins_only_when_the_evidence_says_it_is_not_worse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 400 cases, `cheap` misses 2: its difference to `strong` is −0.5 points, CI well inside −2.
    write_run(&d.join("run"), 400, 2, &urls());
    derive(d, "run", &[]);
    let qa = route(d, "qa");
    assert_eq!(qa["primary"], "cheap", "{qa}");
    assert_eq!(qa["fallbacks"][0], "strong");
    assert!(
        qa["reason"].as_str().unwrap().contains("non-inferior"),
        "{qa}"
    );
    let md = std::fs::read_to_string(d.join("policy.md")).unwrap();
    assert!(md.contains("| qa | cheap | strong, weak |"), "{md}");

    // Objective quality: the best, whatever it costs.
    derive(d, "run", &["--objective", "quality"]);
    assert_eq!(policy(d)["routes"][1]["primary"], "strong");

    // 40 cases with 4 misses: the same point estimate cannot rule out a 2-point loss.
    write_run(&d.join("small"), 40, 4, &urls());
    derive(d, "small", &[]);
    let qa = route(d, "qa");
    assert_eq!(qa["primary"], "strong", "{qa}");
    let cheap = evidence(&qa, "cheap");
    assert_eq!(cheap["non_inferior"], false);
    assert!(cheap["vs_best"]["ci_low"].as_f64().unwrap() < -0.02);

    // Constraints rule targets out, and say why.
    derive(d, "run", &["--max-cost-per-1k", "0.5"]);
    let qa = route(d, "qa");
    assert_eq!(qa["primary"], "cheap");
    let strong = evidence(&qa, "strong");
    assert!(
        strong["excluded"].as_str().unwrap().contains("cost"),
        "{strong}"
    );
    assert!(
        !qa["fallbacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "strong")
    );
}

#[test]
fn litellm_loads_the_exported_policy_routes_and_falls_back() {
    let rt = crate::common::runtime();
    let fast = Behaviour {
        latency: Duration::from_millis(5),
        chunk_delay: Duration::ZERO,
    };
    let strong = rt.block_on(FaultServer::start(0, fast, true)).unwrap();
    let weak = rt.block_on(FaultServer::start(0, fast, true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let down = format!("http://127.0.0.1:{}/v1", crate::common::free_port()); // nothing listens there
    write_run(
        &d.join("run"),
        200,
        60,
        &[
            ("strong", strong.base_url()),
            ("cheap", down),
            ("weak", weak.base_url()),
        ],
    );
    derive(d, "run", &["--objective", "quality"]);
    let qa = route(d, "qa");
    assert_eq!(
        (qa["primary"].as_str(), qa["fallbacks"][0].as_str()),
        (Some("strong"), Some("cheap"))
    );
    ok(switchyard(d).args([
        "route",
        "export",
        "policy.json",
        "--format",
        "litellm",
        "--out",
        "litellm.yaml",
    ]));
    let yaml = std::fs::read_to_string(d.join("litellm.yaml")).unwrap();
    assert!(
        yaml.contains("route/qa/fallback-1") && yaml.contains("num_retries: 0"),
        "{yaml}"
    );

    let key = "sk-route-test-key";
    let (_proxy, port) = crate::common::start_litellm(
        &d.join("litellm.yaml"),
        &d.join("litellm.log"),
        &[("LITELLM_MASTER_KEY", key)],
    );
    let ask = |model: &str| -> (u16, serde_json::Value) {
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "[answer:routed] hello"}]});
        let auth = format!("Bearer {key}");
        crate::common::post_json(
            port,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &body,
        )
    };
    // The primary answers the route.
    let (code, v) = ask("route/qa");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "routed");
    assert_eq!((strong.requests(), weak.requests()), (1, 0));
    // The primary goes down: the first fallback is down too; the second answers.
    drop(strong);
    let (code, v) = ask("route/qa");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "routed");
    assert_eq!(weak.requests(), 1);
}

/// Twenty targets that are all right half the time, on 40 cases: choosing the best one on the
/// cases that then score it is optimistic (the winner is the luckiest); a held-out half, and
/// 5-fold cross-fitting, bring the estimate back to what any target does.
#[test]
fn held_out_validation_corrects_an_optimistic_in_sample_choice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut state = 0x2545f4914f6cdd1du64;
    let mut coin = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11).is_multiple_of(2)
    };
    let mut lines = String::new();
    let names: Vec<String> = (0..20).map(|t| format!("t{t:02}")).collect();
    for case in 0..40 {
        for t in &names {
            let score = if coin() { 1.0 } else { 0.0 };
            lines.push_str(&serde_json::to_string(&row(t, case, score, 0.001)).unwrap());
            lines.push('\n');
        }
    }
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("results.jsonl"), lines).unwrap();
    let targets: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"spec": {"name": n, "provider": "openai-compatible", "model": n,
            "base_url": "http://127.0.0.1:9/v1"}})
        })
        .collect();
    std::fs::write(
        run.join("run.json"),
        serde_json::json!({"targets": targets}).to_string(),
    )
    .unwrap();
    for split in [["--holdout", "0.5"], ["--folds", "5"]] {
        derive(
            d,
            "run",
            &[
                "--objective",
                "quality",
                "--min-cases",
                "1",
                split[0],
                split[1],
                "--seed",
                "3",
            ],
        );
        let p = policy(d);
        let v = &p["validation"]["suites"][0];
        let (inside, held) = (
            v["in_sample_score"].as_f64().unwrap(),
            v["held_out_score"].as_f64().unwrap(),
        );
        assert!(
            inside - held >= 0.1,
            "{split:?}: in sample {inside}, held out {held}"
        );
        let (lo, hi) = (
            v["ci_low"].as_f64().unwrap(),
            v["ci_high"].as_f64().unwrap(),
        );
        assert!(lo <= 0.5 && 0.5 <= hi, "{split:?}: {held} ({lo}–{hi})");
        let md = std::fs::read_to_string(d.join("policy.md")).unwrap();
        assert!(md.contains("Validated out of sample"), "{md}");
    }
}
