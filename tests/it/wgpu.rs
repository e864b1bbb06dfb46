//! burn's GPU kernels (cubecl, WGSL through wgpu) exercised without a GPU: on the CPU through
//! Mesa's lavapipe Vulkan driver. The same tiny model trains a few LoRA steps and generates on
//! `--device wgpu` and on the CPU, and the two agree, so a bug only the GPU path has (an op the
//! GPU backends lack, a CPU-only assumption, a dtype) shows up without a GPU. Built only with
//! `--features wgpu` (scripts/test.sh runs it when a Vulkan driver is installed).

use std::path::Path;

use crate::common::{cli_ok, in_dir};
use serde_json::Value;

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|m| m["loss"].as_f64())
        .collect()
}

fn train_on(device: &str, root: &Path) -> Vec<f64> {
    let dir = root.join(device);
    std::fs::create_dir_all(&dir).unwrap();
    let model = crate::common::tiny_model("mistral", &dir);
    let rows: String = ["river, stone", "apple, lamp", "cloud, quiet", "lamp, river"]
        .iter()
        .map(|p| {
            format!(
                "{}\n",
                serde_json::json!({"text": format!("Reverse: {p} = reversed")})
            )
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), rows).unwrap();
    std::fs::write(
        dir.join("recipe.toml"),
        format!(
            "base_model = \"{}\"\noutput_dir = \"out\"\ndevice = \"{device}\"\nlora_r = 4\nlora_alpha = 8\n\
             lora_target_modules = \"all-linear\"\nmicro_batch_size = 2\nmax_steps = 3\n\
             learning_rate = 1e-2\nsequence_len = 64\n[[datasets]]\npath = \"data.jsonl\"\ntype = \"text\"\n",
            model.display()
        ),
    )
    .unwrap();
    cli_ok(in_dir(&dir).args(["train", "recipe.toml"]));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["device"], device, "the run says where it ran");
    losses(&dir)
}

fn generate_on(device: &str, model: &Path) -> Value {
    let out = cli_ok(
        crate::common::cli()
            .args([
                "generate",
                "--raw",
                "--format",
                "json",
                "--max-tokens",
                "8",
                "--logprobs",
                "2",
            ])
            .args(["--device", device, "--model"])
            .arg(model)
            .arg("Hello world, this is"),
    );
    serde_json::from_str(&out).unwrap()
}

/// Three LoRA steps on every projection of the tiny Mistral (sliding window), and greedy
/// continuations of it and of the tiny Mistral Large 3 design (MLA, routed experts), on wgpu
/// (lavapipe) and on the CPU: the same losses and log-probabilities (to 1e-3), the same tokens.
#[test]
fn lora_training_and_generation_on_wgpu_match_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let cpu = train_on("cpu", tmp.path());
    let gpu = train_on("wgpu", tmp.path());
    assert_eq!(cpu.len(), gpu.len());
    for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (a - b).abs() < 1e-3 * a.abs().max(1.0),
            "step {i}: cpu {a} vs wgpu {b}"
        );
    }
    assert!(cpu.last() < cpu.first(), "the loss falls: {cpu:?}");
    for kind in ["mistral", "mistral4"] {
        let model = crate::common::tiny_model(kind, &tmp.path().join("gen"));
        let (c, g) = (generate_on("cpu", &model), generate_on("wgpu", &model));
        assert_eq!(
            (c["device"].as_str(), g["device"].as_str()),
            (Some("cpu"), Some("wgpu"))
        );
        assert_eq!(
            c["token_ids"], g["token_ids"],
            "{kind}: cpu {c} vs wgpu {g}"
        );
        let lp = |v: &Value| -> Vec<f64> {
            v["logprobs"]["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .collect()
        };
        let (lc, lg) = (lp(&c), lp(&g));
        assert_eq!(lc.len(), 8, "{kind}: {c}");
        for (a, b) in lc.iter().zip(&lg) {
            assert!((a - b).abs() < 1e-3, "{kind}: logprob {a} vs {b}");
        }
    }
}
