//! `switchyard serve` answers the official `openai` Python client: the local model directly
//! (chat, token streaming, text completions, errors, auth), and a policy as a gateway that falls
//! back when a target is down; and the eval harness uses it as a target.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::providers::fault_server::{Behaviour, FaultServer};

const KEY: &str = "sk-serve-test";

fn python() -> std::path::PathBuf {
    crate::common::litellm_bin()
        .parent()
        .unwrap()
        .join("python")
}

fn start_serve(args: &[&str], dir: &Path) -> (crate::common::Proxy, u16) {
    let port = crate::common::free_port();
    let child = crate::common::cli()
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--api-key-env",
            "SERVE_KEY",
        ])
        .args(args)
        .env("SERVE_KEY", KEY)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("serve.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut p = crate::common::Proxy(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!(
                "serve exited {s}: {}",
                std::fs::read_to_string(dir.join("serve.err")).unwrap()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "serve did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (p, port)
}

fn client(mode: &str, port: u16, model: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(crate::common::fixture("serve/openai_client.py"))
        .args([mode, &format!("http://127.0.0.1:{port}/v1"), KEY, model])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_openai_client_talks_to_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_serve, port) = start_serve(&["--name", "smollm2", "--max-body-kib", "4"], d);
    let v = client("local", port, "smollm2");
    assert_eq!(v["models"], serde_json::json!(["smollm2"]));
    assert_eq!(v["chat"], "The capital of France is Paris.", "{v}");
    assert_eq!(v["finish"], "stop");
    assert_eq!(v["usage"], serde_json::json!([37, 7]));
    // Streamed token by token, the same text and usage.
    assert_eq!(v["stream_text"], v["chat"]);
    assert!(v["stream_chunks"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(v["stream_usage"], v["usage"]);
    assert!(!v["text"].as_str().unwrap().is_empty());
    assert_eq!(v["unknown_model"][0], 404);
    assert_eq!(v["empty_messages"], 400);
    assert_eq!(v["wrong_key"], 401);
    // Content parts are read as text.
    assert_eq!(v["parts"], v["chat"]);
    // Log-probabilities: one per token, greedy (the chosen token is the top alternative), in
    // the answer's order.
    let lp = v["logprobs"].as_array().unwrap();
    assert_eq!(lp.len(), 5, "{v}");
    let text: String = lp.iter().map(|t| t[0].as_str().unwrap()).collect();
    assert_eq!(text, v["logprobs_text"].as_str().unwrap());
    for t in lp {
        assert_eq!(t[2].as_array().unwrap().len(), 3);
        assert_eq!(t[0], t[2][0], "greedy: {t}");
        assert!(t[1].as_f64().unwrap() <= 0.0);
    }
    assert_eq!(v["n"], serde_json::json!([0, 1, 2]));
    for field in ["role", "temperature", "top_p"] {
        assert_eq!(v["bad"][field][0], 400, "{field}: {v}");
    }
    assert_eq!(v["bad"]["role"][1], "messages[0].role");
    assert_eq!(v["bad"]["temperature"][1], "temperature");
    assert_eq!(v["bad"]["top_p"][1], "top_p");
    // Structured output, enforced by constrained decoding: the client's `parse` gets a
    // `Person`, a streamed answer validates against its schema (jsonschema), JSON mode gives an
    // object, and what cannot be guaranteed is refused naming where it is.
    assert_eq!(v["parsed_finish"], "stop", "{v}");
    let person = &v["parsed"];
    assert!(
        person["name"].is_string() && person["age"].is_i64() && person["hobbies"].is_array(),
        "{v}"
    );
    assert_eq!(v["schema_stream"][0], "valid", "{v}");
    assert_eq!(v["json_object"][0], "object", "{v}");
    let pattern = &v["bad_format"]["pattern"];
    assert_eq!(pattern[0], 400, "{v}");
    assert_eq!(pattern[1], "response_format");
    assert!(
        pattern[2]
            .as_str()
            .unwrap()
            .contains("`response_format.json_schema.schema.properties.id.pattern`"),
        "{v}"
    );
    assert_eq!(v["bad_format"]["kind"][0], 400, "{v}");
    assert_eq!(v["bad_format"]["kind"][1], "response_format");
    // The prompt echoed and scored: its tokens spell it, the first has no log-probability, the
    // others do, each with its alternatives, and offsets point into the text.
    let prompt = "The capital of France is Paris";
    assert_eq!(v["echo_text"], prompt);
    let e = &v["echo"];
    let tokens: Vec<&str> = e["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), prompt);
    let lps = e["token_logprobs"].as_array().unwrap();
    assert!(lps[0].is_null() && lps[1..].iter().all(|x| x.as_f64().unwrap() <= 0.0));
    assert!(e["top_logprobs"][0].is_null());
    assert_eq!(e["top_logprobs"][1].as_object().unwrap().len(), 2);
    let offsets: Vec<usize> = e["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    for (t, o) in tokens.iter().zip(&offsets) {
        assert!(prompt[*o..].starts_with(t), "{t} at {o}");
    }
    // " Paris" after "The capital of France is" is the model's own top choice.
    let last = tokens.len() - 1;
    assert_eq!(tokens[last], " Paris");
    let top = e["top_logprobs"][last].as_object().unwrap();
    let best = top
        .iter()
        .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
        .unwrap();
    assert_eq!(best.0, " Paris");
    // A body over the limit is refused with an OpenAI-style error.
    let big = format!(
        "{{\"model\": \"smollm2\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "x".repeat(8000)
    );
    let auth = format!("Bearer {KEY}");
    let text = crate::common::http(
        port,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &big,
    );
    assert!(
        text.starts_with("HTTP/1.1 413") && text.contains("\"error\""),
        "{text}"
    );

    // The eval harness uses the server as a target.
    std::fs::write(
        d.join("targets.toml"),
        format!("[[targets]]\nname = \"served\"\nprovider = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"smollm2\"\napi_key_env = \"SERVE_KEY\"\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("suite.toml"),
        "name = \"capitals\"\nuser = \"What is the capital of {{ c }}?\"\nreference = \"r\"\n[generation]\nmax_tokens = 16\n\
         [[scorers]]\ntype = \"contains\"\n[[cases]]\nc = \"France\"\nr = \"Paris\"\n",
    )
    .unwrap();
    let out = crate::common::cli_ok(
        crate::common::cli()
            .current_dir(d)
            .env("SERVE_KEY", KEY)
            .args([
                "eval",
                "suite.toml",
                "--targets-file",
                "targets.toml",
                "-t",
                "served",
                "--no-cache",
                "--out",
                "out",
            ]),
    );
    assert!(out.contains("100.0%"), "{out}");

    // A log-likelihood suite through the server's `/v1/completions` with `echo` and `logprobs`:
    // the same log-likelihoods lm-evaluation-harness gives on the same weights.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::common::cli_ok(
        crate::common::cli()
            .current_dir(d)
            .env("SERVE_KEY", KEY)
            .arg("eval")
            .arg(root.join("evals/mmlu-loglikelihood.toml"))
            .args([
                "--targets-file",
                "targets.toml",
                "-t",
                "served",
                "--limit",
                "3",
            ])
            .args(["--no-cache", "--out", "ll"]),
    );
    let reference = crate::common::read_json("lm_eval/mmlu_reference.json");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("ll/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let want = reference["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == r["case_id"])
            .unwrap();
        for (a, b) in r["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["loglikelihoods"].as_array().unwrap())
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 2e-3, "{}: {a} vs lm-eval {b}", r["case_id"]);
        }
    }
}

#[test]
fn the_gateway_routes_by_task_and_falls_back() {
    let rt = crate::common::runtime();
    let up = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let down = format!("http://127.0.0.1:{}/v1", crate::common::free_port());
    // No retries: the test is about falling back (the gateway honours a target's retries).
    let target = |name: &str, url: &str| serde_json::json!({"name": name, "provider": "openai-compatible", "model": name, "base_url": url, "timeout_s": 5.0, "max_retries": 0});
    let route = |task: &str| {
        serde_json::json!({"task": task, "suite": "s", "primary": "down", "fallbacks": ["up"], "reason": "test",
            "constraints_met": true, "evidence": []})
    };
    let policy = serde_json::json!({
        "version": 1, "created_at": 0.0, "objective": "quality", "constraints": {}, "margin": 0.02, "runs": {},
        "targets": {"down": target("down", &down), "up": target("up", &up.base_url())},
        "routes": [route("qa"), route("default")], "predicted": [],
    });
    std::fs::write(d.join("policy.json"), policy.to_string()).unwrap();
    let (_serve, port) = start_serve(&["--policy", "policy.json"], d);
    let v = client("gateway", port, "route/qa");
    assert_eq!(v["chat"], "routed", "{v}");
    assert_eq!(v["target"], "up");
    assert_eq!(v["attempts"], "2");
    assert_eq!(v["stream_text"], "streamed too");
    // Passed through as the target streams it, not re-chunked at the end.
    assert_eq!(v["stream_chunks"], 2, "{v}");
    assert!(
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "route/qa")
    );
    assert_eq!(up.requests(), 2);
}

/// More requests than `--max-concurrency` at once: the extra one gets 429 with Retry-After and an
/// OpenAI-style body, not a queue that grows without bound.
#[test]
fn requests_beyond_the_concurrency_limit_get_429() {
    let rt = crate::common::runtime();
    let slow = Behaviour {
        latency: Duration::from_millis(1500),
        chunk_delay: Duration::ZERO,
    };
    let up = rt.block_on(FaultServer::start(0, slow, true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = serde_json::json!({
        "version": 1, "created_at": 0.0, "objective": "quality", "constraints": {}, "margin": 0.02, "runs": {},
        "targets": {"up": {"name": "up", "provider": "openai-compatible", "model": "up", "base_url": up.base_url()}},
        "routes": [{"task": "qa", "suite": "s", "primary": "up", "fallbacks": [], "reason": "test", "constraints_met": true, "evidence": []}],
        "predicted": [],
    });
    std::fs::write(d.join("policy.json"), policy.to_string()).unwrap();
    let (_serve, port) = start_serve(&["--policy", "policy.json", "--max-concurrency", "1"], d);
    let call = move || {
        let auth = format!("Bearer {KEY}");
        crate::common::http(
            port,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth)],
            r#"{"model": "route/qa", "messages": [{"role": "user", "content": "[answer:x] q"}]}"#,
        )
    };
    let first = std::thread::spawn(call);
    std::thread::sleep(Duration::from_millis(500));
    let second = call();
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    assert!(
        second.to_lowercase().contains("retry-after: 1") && second.contains("rate_limit_error"),
        "{second}"
    );
    assert!(first.join().unwrap().starts_with("HTTP/1.1 200"));
}

/// `bench serve` measures the server under load (a closed loop of streamed requests per
/// concurrency level), and `route derive --capacity` prices self-hosting at the fastest level
/// that meets the time-to-first-token objective.
#[test]
fn a_load_curve_of_the_server_prices_self_hosting_at_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, port) = start_serve(&["--batch-size", "4"], d);
    let text = crate::common::cli_ok(
        crate::common::cli()
            .current_dir(d)
            .args(["bench", "serve", "openai-compatible:SmolLM2-135M-Instruct"])
            .args(["--base-url", &format!("http://127.0.0.1:{port}/v1")])
            .args([
                "--concurrency",
                "1,4",
                "--requests",
                "4",
                "--max-tokens",
                "8",
            ])
            .args(["--out", "bench", "--slo-p95-ttft", "60"])
            .env("OPENAI_API_KEY", KEY),
    );
    assert!(
        text.contains("concurrency   4:   4 requests (0 errors)"),
        "{text}"
    );
    let json = std::fs::read_to_string(d.join("bench/serve.json")).unwrap();
    assert!(!json.contains(KEY), "no secret in the results");
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let levels = r["curves"][0]["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        assert_eq!(
            (l["requests"].as_u64(), l["errors"].as_u64()),
            (Some(4), Some(0)),
            "{l}"
        );
        let out = l["output_tokens"].as_u64().unwrap();
        assert!(
            (4..=32).contains(&out),
            "four answers of at most 8 tokens: {l}"
        );
        let (ttft, latency) = (
            l["ttft_s"]["p95"].as_f64().unwrap(),
            l["latency_s"]["p95"].as_f64().unwrap(),
        );
        assert!(ttft > 0.0 && ttft <= latency, "{l}");
        let rate = out as f64 / l["duration_s"].as_f64().unwrap();
        assert!(
            (l["output_tokens_per_s"].as_f64().unwrap() - rate).abs() < 1e-9,
            "{l}"
        );
    }
    let svg = std::fs::read_to_string(d.join("bench/serve.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.matches("<circle").count() >= 2,
        "{svg}"
    );
    assert!(
        std::fs::read_to_string(d.join("bench/serve.md"))
            .unwrap()
            .contains("| 4 | 4 | 0 |")
    );

    // Priced at the fastest level within the objective: $2/hour over its measured tokens/s.
    let (best, best_total) = levels
        .iter()
        .map(|l| {
            (
                l["output_tokens_per_s"].as_f64().unwrap(),
                l["total_tokens_per_s"].as_f64().unwrap(),
            )
        })
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    crate::route::write_run(&d.join("run"), 10, 1, &crate::route::urls());
    let derive = |slo: &str| {
        crate::common::run(
            crate::common::in_dir(d)
                .args([
                    "route",
                    "derive",
                    "run",
                    "--out",
                    "policy.json",
                    "--min-cases",
                    "1",
                ])
                .args([
                    "--machine-price-per-hour",
                    "2",
                    "--capacity",
                    "bench/serve.json",
                ])
                .args(["--slo-p95-ttft", slo]),
        )
    };
    let o = derive("60");
    assert!(o.ok, "{}", o.stderr);
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("policy.json")).unwrap()).unwrap();
    let e = &p["economics"];
    assert_eq!(e["tokens_per_s"].as_f64().unwrap(), best_total);
    let per_m = e["self_host_usd_per_1m_output_tokens"].as_f64().unwrap();
    assert!((per_m - 2.0 / (best * 3600.0) * 1e6).abs() < 1e-9, "{e}");
    assert_eq!(e["input"]["capacity"]["slo_p95_ttft_s"], 60.0);
    let md = std::fs::read_to_string(d.join("policy.md")).unwrap();
    assert!(md.contains("Capacity from a measured load curve"), "{md}");
    // An objective no level meets is an error naming the option and each level's p95.
    let o = derive("0.000001");
    assert!(
        !o.ok && o.stderr.contains("capacity") && o.stderr.contains("no level"),
        "{}",
        o.stderr
    );
}
