//! A real third-party OpenAI-compatible server: the LiteLLM proxy (pinned, installed from PyPI on
//! first use, mock responses only, on 127.0.0.1). switchyard's provider streams from it, reads its
//! usage, and handles its 429s; the suite's answers come from the proxy, not from switchyard.

const MASTER_KEY: &str = "sk-litellm-integration-test";

#[test]
fn the_litellm_proxy_answers_as_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_proxy, port) = crate::common::start_litellm(
        &crate::common::fixture("litellm/config.yaml"),
        &d.join("litellm.log"),
        &[],
    );
    let targets = ["mock-echo", "mock-paris", "mock-ratelimit"]
        .iter()
        .map(|m| {
            format!(
                "[[targets]]\nname = \"{m}\"\nprovider = \"litellm\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
                 model = \"{m}\"\napi_key_env = \"LITELLM_TEST_KEY\"\nmax_retries = 1\nconcurrency = 4\ntimeout_s = 30\n\
                 price_in = 0.5\nprice_out = 1.5\n"
            )
        })
        .collect::<String>();
    std::fs::write(d.join("targets.toml"), targets).unwrap();
    std::fs::write(
        d.join("suite.toml"),
        "name = \"capitals\"\nuser = \"What is the capital of {{ country }}?\"\nreference = \"capital\"\n\
         [[scorers]]\ntype = \"contains\"\n\
         [[cases]]\ncountry = \"France\"\ncapital = \"France\"\n[[cases]]\ncountry = \"Peru\"\ncapital = \"Peru\"\n\
         [[cases]]\ncountry = \"Chad\"\ncapital = \"Paris\"\n",
    )
    .unwrap();
    let out = crate::common::in_dir(d)
        .env("LITELLM_TEST_KEY", MASTER_KEY)
        .args([
            "eval",
            "suite.toml",
            "--targets-file",
            "targets.toml",
            "--out",
            "out",
            "--no-cache",
        ])
        .args([
            "-t",
            "mock-echo",
            "-t",
            "mock-paris",
            "-t",
            "mock-ratelimit",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("out/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 9);
    let get = |t: &str, case: &str| {
        rows.iter()
            .find(|r| r["target"] == t && r["case_id"] == case)
            .unwrap()
    };
    // The echo depends on the request: the proxy got our messages.
    let echo = get("mock-echo", "2");
    assert_eq!(
        echo["output"], "echo: What is the capital of Peru?",
        "{echo}"
    );
    assert_eq!(echo["score"], 1.0);
    // Streamed: first token before the last, and the proxy's own usage counts.
    let ttft = echo["ttft_s"].as_f64().unwrap();
    assert!(
        ttft > 0.0 && ttft <= echo["latency_s"].as_f64().unwrap(),
        "{echo}"
    );
    assert!(
        echo["completion_tokens"].as_u64().unwrap() > 0
            && echo["prompt_tokens"].as_u64().unwrap() > 0
    );
    assert!(echo["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(get("mock-paris", "3")["score"], 1.0);
    assert_eq!(get("mock-paris", "2")["score"], 0.0);
    // Its 429 is retried once, then recorded as the case's error.
    let limited = get("mock-ratelimit", "1");
    assert_eq!(limited["attempts"], 2, "{limited}");
    assert!(
        limited["error"].as_str().unwrap().contains("429"),
        "{limited}"
    );
    let summary = std::fs::read_to_string(d.join("out/summary.csv")).unwrap();
    assert!(summary.contains("mock-echo"), "{summary}");
    assert!(stdout.contains("mock-echo − mock-paris"), "{stdout}");
}
