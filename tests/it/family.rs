//! The Mistral 3 family from the CLI, on tiny transformers-made models: `models inspect` counts
//! experts and active parameters as transformers does, LoRA trains on each architecture, and the
//! tuned models generate, answer an eval beside a dense model, and serve.

use std::path::Path;

use crate::common::{cli_ok, in_dir};
use serde_json::Value;

const FAMILY: [&str; 4] = ["ministral3", "mixtral", "deepseek_v3", "mistral4"];

/// A few LoRA steps on every projection of `model`; the adapter folder.
fn tune(dir: &Path, model: &Path) -> std::path::PathBuf {
    // Plain text rows (no chat template): ministral3's context is 64 positions.
    crate::common::reversal_rows(
        dir,
        &[
            ("river", "stone"),
            ("apple", "lamp"),
            ("cloud", "quiet"),
            ("lamp", "river"),
        ],
    );
    std::fs::write(
        dir.join("recipe.toml"),
        format!(
            "base_model = \"{}\"\noutput_dir = \"out\"\nlora_r = 4\nlora_alpha = 8\n\
             lora_target_modules = \"all-linear\"\nmicro_batch_size = 2\nmax_steps = 3\n\
             learning_rate = 1e-2\nsequence_len = 64\n[[datasets]]\npath = \"data.jsonl\"\ntype = \"text\"\n",
            model.display()
        ),
    )
    .unwrap();
    let out = crate::common::run(in_dir(dir).args(["train", "recipe.toml"]));
    assert!(out.ok, "{}", out.stderr);
    let metrics = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|m| m["loss"].as_f64())
        .collect();
    assert!(
        losses.len() >= 3 && losses.iter().all(|l| l.is_finite()),
        "{metrics}"
    );
    dir.join("out/adapter")
}

#[test]
fn inspect_counts_experts_and_active_parameters_as_transformers_does() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["mixtral", "deepseek_v3", "mistral4"] {
        let model = crate::common::tiny_model(kind, dir.path());
        let doc: Value = serde_json::from_str(&cli_ok(
            crate::common::cli()
                .args(["models", "inspect", "--json"])
                .arg(&model),
        ))
        .unwrap();
        let facts =
            crate::common::read_json(&format!("tiny/{kind}/reference.json"))["facts"].clone();
        assert_eq!(doc["parameters"], facts["params_total"], "{kind}");
        assert_eq!(
            doc["active_parameters_per_token"], facts["active_params_per_token"],
            "{kind}"
        );
        assert_eq!(doc["experts"], facts["num_experts"], "{kind}");
        assert_eq!(
            doc["experts_per_token"], facts["experts_per_token"],
            "{kind}"
        );
    }
}

/// Each architecture trains (losses finite), and its tuned model generates through the CLI.
#[test]
fn every_architecture_trains_and_its_tuned_model_generates() {
    for kind in FAMILY {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let model = crate::common::tiny_model(kind, dir);
        let adapter = tune(dir, &model);
        let out = cli_ok(
            crate::common::cli()
                .args(["generate", "--raw", "--max-tokens", "6", "--model"])
                .arg(&model)
                .arg("--adapter")
                .arg(&adapter)
                .arg("Reverse: river, stone"),
        );
        assert!(!out.is_empty(), "{kind}: no output");
        if kind == "ministral3" {
            // A recipe asking for more positions than the model has is refused by key and line.
            let recipe = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
            std::fs::write(
                dir.join("long.toml"),
                recipe.replace("sequence_len = 64", "sequence_len = 128"),
            )
            .unwrap();
            let o = crate::common::run(in_dir(dir).args(["train", "long.toml"]));
            assert!(
                !o.ok
                    && o.stderr.contains("long.toml:9")
                    && o.stderr.contains("sequence_len")
                    && o.stderr.contains("64 positions"),
                "{}",
                o.stderr
            );
        }
    }
}

/// A tuned tiny MoE (the Mistral Large 3 design) is an eval target beside a dense model, and
/// serves chat completions.
#[test]
fn a_tuned_moe_is_an_eval_target_beside_a_dense_model_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dense = crate::common::tiny_model("llama3", dir);
    let moe = crate::common::tiny_model("mistral4", dir);
    let adapter = tune(dir, &moe);
    std::fs::write(
        dir.join("targets.toml"),
        format!(
            "[[targets]]\nname = \"dense\"\nprovider = \"local\"\nmodel = \"{}\"\n\
             [[targets]]\nname = \"moe-tuned\"\nprovider = \"local\"\nmodel = \"{}\"\nadapter = \"{}\"\nbatch_size = 3\n",
            dense.display(),
            moe.display(),
            adapter.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("suite.toml"),
        "name = \"reverse\"\nuser = \"Reverse: {{ q }}\"\nreference = \"a\"\n[generation]\nmax_tokens = 4\n\
         [[scorers]]\ntype = \"exact\"\n[[cases]]\nq = \"river, stone\"\na = \"stone, river\"\n\
         [[cases]]\nq = \"apple, lamp\"\na = \"lamp, apple\"\n[[cases]]\nq = \"cloud, quiet\"\na = \"quiet, cloud\"\n",
    )
    .unwrap();
    cli_ok(in_dir(dir).args([
        "eval",
        "suite.toml",
        "--targets-file",
        "targets.toml",
        "-t",
        "dense",
        "-t",
        "moe-tuned",
        "--no-cache",
        "--out",
        "eval",
    ]));
    let rows: Vec<Value> = std::fs::read_to_string(dir.join("eval/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for target in ["dense", "moe-tuned"] {
        let answered = rows
            .iter()
            .filter(|r| r["target"] == target && r["error"].is_null())
            .count();
        assert_eq!(answered, 3, "{target}: {rows:?}");
    }

    let port = crate::common::free_port();
    let child = crate::common::cli()
        .args(["serve", "--port", &port.to_string(), "--model"])
        .arg(&moe)
        .arg("--adapter")
        .arg(&adapter)
        .args(["--name", "moe"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = crate::common::Proxy(child);
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed().as_secs() < 120, "serve did not come up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let body = r#"{"model": "moe", "max_tokens": 5, "messages": [{"role": "user", "content": "Reverse: river, stone"}]}"#;
    let reply = crate::common::http(port, "POST", "/v1/chat/completions", &[], body);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let json: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        json["usage"]["completion_tokens"].as_u64().map(|n| n > 0),
        Some(true),
        "{json}"
    );
}

/// The Mistral Large 3 economics example's targets load, every one priced, keys by name only.
#[test]
fn the_mistral_large_3_example_targets_load_with_their_prices() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("evals/examples/mistral-large-3/targets.toml");
    let specs = switchyard::providers::target::TargetsFile::load(&path).unwrap();
    let names: Vec<&str> = specs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vllm-mistral-large-3",
            "mistral-large-3",
            "openrouter-mistral-large-3"
        ]
    );
    assert_eq!(specs[0].price_per_hour, Some(50.44));
    for t in &specs[1..] {
        assert_eq!(
            (t.price_in, t.price_out),
            (Some(0.5), Some(1.5)),
            "{}",
            t.name
        );
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("sk-") && !text.contains("api_key ="),
        "no secrets in the example"
    );
}
