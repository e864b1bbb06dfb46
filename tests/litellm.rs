//! A real third-party OpenAI-compatible server: the LiteLLM proxy (pinned, installed from PyPI on
//! first use, mock responses only, on 127.0.0.1). switchyard's provider streams from it, reads its
//! usage, and handles its 429s; the suite's answers come from the proxy, not from switchyard.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MASTER_KEY: &str = "sk-litellm-integration-test";

struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_proxy(log: &std::path::Path) -> (Proxy, u16) {
    let port = free_port();
    let cfg = common::fixture("litellm/config.yaml");
    let child = Command::new(common::litellm_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
        .env("LITELLM_LOCAL_AUTOROUTER_PRESETS", "True")
        .env("LITELLM_LOCAL_POLICY_TEMPLATES", "True")
        .env("LITELLM_LOCAL_BLOG_POSTS", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("DISABLE_ADMIN_UI", "True")
        .env("NO_DOCS", "True")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("DATABASE_URL")
        .env_remove("LITELLM_MASTER_KEY")
        .current_dir(cfg.parent().unwrap())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .expect("start litellm");
    let mut proxy = Proxy(child);
    let t0 = Instant::now();
    loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            panic!(
                "litellm exited with {status}: {}",
                std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
        }
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(
                b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.starts_with("HTTP/1.1 200")
        });
        if up {
            return (proxy, port);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "litellm did not come up"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_litellm_proxy_answers_as_a_provider() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_proxy, port) = start_proxy(&d.join("litellm.log"));
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
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(d)
        .env("SWITCHYARD_HOME", d.join("home"))
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
