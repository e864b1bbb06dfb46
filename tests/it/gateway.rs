//! The gateway asks its targets through the same door as the eval runner: a policy's
//! `max_retries` and `rpm` hold when serving. The server runs in this process on 127.0.0.1, in
//! front of fault-injecting upstreams.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::providers::fault_server::{Behaviour, FaultServer};
use switchyard::providers::{Target, TargetSpec};
use switchyard::route::Policy;
use switchyard::serve::{self, Backend, ServeOptions};

/// A policy over `targets` (name → spec) with `routes` (task, primary, fallbacks).
fn gateway(targets: &[(&str, Value)], routes: &[(&str, &str, &[&str])]) -> Backend {
    let specs: BTreeMap<String, Value> = targets
        .iter()
        .map(|(n, s)| (n.to_string(), s.clone()))
        .collect();
    let routes: Vec<Value> = routes
        .iter()
        .map(|(task, primary, fallbacks)| {
            json!({"task": task, "suite": "s", "primary": primary, "fallbacks": fallbacks,
                   "reason": "test", "constraints_met": true, "evidence": []})
        })
        .collect();
    let policy: Policy = serde_json::from_value(json!({
        "version": 1, "created_at": 0.0, "objective": "quality", "constraints": {}, "margin": 0.02,
        "runs": {}, "targets": specs, "predicted": [], "routes": routes,
    }))
    .unwrap();
    let targets = policy
        .targets
        .iter()
        .map(|(n, s)| {
            let t = Target::build(TargetSpec::clone(s)).unwrap();
            (n.clone(), Arc::new(t))
        })
        .collect();
    Backend::Gateway {
        policy: Box::new(policy),
        targets,
    }
}

fn upstream(name: &str, server: &FaultServer, extra: Value) -> Value {
    let mut spec = json!({"name": name, "provider": "openai-compatible", "model": name,
                          "base_url": server.base_url(), "timeout_s": 5.0});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

/// Serve `backend` on a free port of 127.0.0.1, on the current runtime.
async fn start(backend: Backend) -> u16 {
    let app = serve::app(
        backend,
        ServeOptions {
            api_key: None,
            max_body_bytes: 1 << 20,
            max_concurrency: 64,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Ask a task's route; the status, the answer's text and the target that gave it.
async fn ask(port: u16, task: &str, prompt: &str) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&json!({"model": format!("route/{task}"), "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let target = r
        .headers()
        .get("x-switchyard-target")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let v: Value = r.json().await.unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, text, target)
}

#[test]
fn the_gateway_retries_a_target_before_falling_back() {
    let rt = crate::common::runtime();
    let _g = rt.enter();
    let flaky = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    let backup = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    // `patient` and `impatient` are the same upstream with two and one retries.
    let backend = gateway(
        &[
            (
                "patient",
                upstream("patient", &flaky, json!({"max_retries": 2})),
            ),
            (
                "impatient",
                upstream("impatient", &flaky, json!({"max_retries": 1})),
            ),
            (
                "backup",
                upstream("backup", &backup, json!({"max_retries": 2})),
            ),
        ],
        &[
            ("qa", "patient", &["backup"]),
            ("qb", "impatient", &["backup"]),
        ],
    );
    let port = rt.block_on(start(backend));
    // Two server errors, then an answer: the primary's two retries get it.
    let (status, text, target) = rt.block_on(ask(port, "qa", "[fault:500x2][answer:steady] one"));
    assert_eq!(
        (status, text.as_str(), target.as_str()),
        (200, "steady", "patient")
    );
    assert_eq!(flaky.requests(), 3);
    assert_eq!(backup.requests(), 0);
    // One retry is not enough: after two attempts the fallback is asked, which answers on its
    // third (the upstreams count attempts per prompt each).
    let (status, text, target) = rt.block_on(ask(port, "qb", "[fault:500x2][answer:spare] two"));
    assert_eq!(
        (status, text.as_str(), target.as_str()),
        (200, "spare", "backup")
    );
    assert_eq!(flaky.requests(), 5);
    assert_eq!(backup.requests(), 3);
}

#[test]
fn the_gateway_holds_a_targets_requests_per_minute() {
    let rt = crate::common::runtime();
    let _g = rt.enter();
    let server = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    // 60 per minute: a bucket of 10 requests that refills at one a second.
    let backend = gateway(
        &[(
            "limited",
            upstream("limited", &server, json!({"rpm": 60, "max_retries": 0})),
        )],
        &[("qa", "limited", &[])],
    );
    let port = rt.block_on(start(backend));
    for i in 0..12 {
        let (status, text, _) = rt.block_on(ask(port, "qa", &format!("[answer:ok {i}] q{i}")));
        assert_eq!((status, text), (200, format!("ok {i}")));
    }
    let hits = server.hits();
    assert_eq!(hits.len(), 12);
    // The 11th and 12th requests waited for the bucket: about a second each.
    let spread = hits[11].at - hits[0].at;
    assert!(
        spread >= 1.5,
        "12 requests at 60 rpm took {spread:.2} s upstream"
    );
    let burst = hits[9].at - hits[0].at;
    assert!(
        burst < Duration::from_secs(1).as_secs_f64(),
        "the first ten fit the bucket: {burst:.2} s"
    );
}
