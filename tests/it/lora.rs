//! LoRA adapters at inference: an adapter switchyard trained, put on the real SmolLM2 base, gives
//! the log-probabilities PEFT gives for the same adapter on the same base (the fixture was
//! recorded by scripts/peft_parity.py with torch + transformers + peft), and `switchyard merge`
//! writes a folder with the same logits.

use crate::common::ids;
use serde_json::Value;
use switchyard::generate::Engine;
use switchyard::load::files::open_folder;

const TOLERANCE: f32 = 2e-3;

fn reference() -> Value {
    crate::common::read_json("lora/peft_reference.json")
}

/// The largest |Δ logprob| over the reference's top-10 tokens at its positions.
fn worst_gap(engine: &switchyard::generate::Engine, reference: &Value) -> f32 {
    let mut worst = 0f32;
    for prompt in reference["prompts"].as_array().unwrap() {
        let input = ids(&prompt["input_ids"]);
        let positions = prompt["last_positions"].as_array().unwrap();
        let ours = engine.next_token_logprobs(&input, positions.len());
        for (pos, got) in positions.iter().zip(&ours) {
            for (id, want) in ids(&pos["top_ids"])
                .iter()
                .zip(pos["top_logprobs"].as_array().unwrap())
            {
                worst = worst.max((got[*id as usize] - want.as_f64().unwrap() as f32).abs());
            }
        }
    }
    worst
}

#[test]
fn our_adapter_on_the_base_matches_peft() {
    let (folder, _) = crate::common::smollm2();
    let reference = reference();
    let adapter = crate::common::fixture("lora/adapter");
    let files = open_folder(folder, "smollm2")
        .unwrap()
        .with_adapter(&adapter)
        .unwrap();
    let engine = Engine::load(files, &crate::common::cpu()).unwrap();
    let gap = worst_gap(&engine, &reference);
    eprintln!("adapter on base vs PEFT: max |Δ logprob| {gap:.2e}");
    assert!(
        gap <= TOLERANCE,
        "adapter-on-base differs from PEFT by {gap}"
    );

    // The adapter must matter, or this comparison proves nothing: the base alone is far off.
    let base = Engine::load(
        open_folder(folder, "smollm2").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    let base_gap = worst_gap(&base, &reference);
    assert!(
        base_gap > 50.0 * TOLERANCE,
        "the base alone is only {base_gap} away"
    );
    assert!(
        reference["merged_vs_peft_max_abs_logit_diff"]
            .as_f64()
            .unwrap()
            < 1e-3
    );
}

#[test]
fn a_merged_folder_gives_the_adapters_logits() {
    let (folder, _) = crate::common::smollm2();
    let reference = reference();
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    crate::common::cli_ok(
        crate::common::cli()
            .args(["merge"])
            .arg(crate::common::fixture("lora/adapter"))
            .arg(&merged)
            .args(["--model"])
            .arg(folder),
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(merged.join(f).is_file(), "{f} missing");
    }
    let engine = Engine::load(
        open_folder(&merged, "merged").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    let gap = worst_gap(&engine, &reference);
    assert!(gap <= TOLERANCE, "merged folder differs from PEFT by {gap}");
}

#[test]
fn generate_takes_an_adapter_and_bad_adapters_are_named() {
    let out = crate::common::cli_ok(
        crate::common::cli()
            .args(["generate", "--max-tokens", "12", "--adapter"])
            .arg(crate::common::fixture("lora/adapter"))
            .arg("Reverse the order of these words: river, stone, apple\nAnswer with only the reversed comma-separated list."),
    );
    assert!(!out.trim().is_empty());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "use_dora": true}"#).unwrap();
    let o = crate::common::cli()
        .args(["generate", "--adapter"])
        .arg(dir.path())
        .arg("hi")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("adapter_config.json") && e.contains("use_dora"),
        "{e}"
    );
}

#[test]
fn an_adapter_made_by_peft_loads_with_rslora_scaling() {
    let (folder, _) = crate::common::smollm2();
    let reference = crate::common::read_json("lora/peft_made/reference.json");
    let files = open_folder(folder, "smollm2")
        .unwrap()
        .with_adapter(&crate::common::fixture("lora/peft_made/adapter"))
        .unwrap();
    let engine = Engine::load(files, &crate::common::cpu()).unwrap();
    let gap = worst_gap(&engine, &reference);
    eprintln!("PEFT-made rsLoRA adapter: max |Δ logprob| {gap:.2e}");
    assert!(gap <= TOLERANCE, "PEFT-made adapter differs by {gap}");
    let base = Engine::load(
        open_folder(folder, "smollm2").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    assert!(worst_gap(&base, &reference) > 50.0 * TOLERANCE);
}

/// Every logit of a tiny MoE model `kind` (with `adapter`, if any, merged as it loads) against
/// `want`.
fn moe_gap(kind: &str, folder: &std::path::Path, adapter: Option<&str>, want: &Value) -> f32 {
    let mut files = open_folder(folder, kind).unwrap();
    if let Some(a) = adapter {
        files = files
            .with_adapter(&crate::common::fixture(&format!("lora/{kind}/{a}")))
            .unwrap();
    }
    let model = files.model_on(&crate::common::cpu()).unwrap();
    let input = ids(&want["input_ids"]);
    let got = model.sequence_logits(&input, input.len(), &crate::common::cpu());
    let key = match adapter {
        Some("adapter") => "adapter_logits",
        Some(_) => "peft_made_logits",
        None => "base_logits",
    };
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want[key].as_array().unwrap()) {
        for (a, b) in g.iter().zip(w.as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
        }
    }
    worst
}

/// LoRA on a mixture of experts, both ways: an adapter switchyard trained on a tiny MoE model
/// (attention and every expert) gives PEFT's logits when PEFT loads it through
/// `target_parameters`, and an adapter PEFT made there gives PEFT's logits in switchyard.
/// `switchyard merge` folds the expert adapters into the experts' weights.
fn expert_adapters_match_peft(kind: &str) {
    let reference = crate::common::read_json(&format!("lora/{kind}/reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let base = crate::common::tiny_model(kind, dir.path());
    let config: Value =
        crate::common::read_json(&format!("lora/{kind}/adapter/adapter_config.json"));
    assert_eq!(
        config["target_parameters"],
        serde_json::json!(["mlp.experts.down_proj", "mlp.experts.gate_up_proj"])
    );
    assert!(moe_gap(kind, &base, None, &reference) < 1e-4);
    for adapter in ["adapter", "peft_made"] {
        let gap = moe_gap(kind, &base, Some(adapter), &reference);
        eprintln!("{adapter} on the tiny {kind} vs PEFT: max |Δ logit| {gap:.2e}");
        assert!(gap < 1e-4, "{adapter}: {gap}");
    }
    assert!(reference["adapter_merged_max_abs_diff"].as_f64().unwrap() < 1e-4);
    let merged = dir.path().join("merged");
    crate::common::cli_ok(
        crate::common::cli()
            .args(["merge"])
            .arg(crate::common::fixture(&format!("lora/{kind}/adapter")))
            .arg(&merged)
            .args(["--model"])
            .arg(&base),
    );
    let gap = moe_gap(kind, &merged, None, &{
        let mut r = reference.clone();
        r["base_logits"] = r["adapter_logits"].clone();
        r
    });
    assert!(gap < 1e-4, "merged: {gap}");
}

#[test]
fn expert_adapters_on_mixtral_match_peft_both_ways_and_merge() {
    expert_adapters_match_peft("mixtral");
}

/// The Mistral Large 3 design: LoRA on MLA's projections (q_a, q_b, kv_a, kv_b, o), the dense
/// first layer, the routed experts and the shared expert.
#[test]
fn adapters_on_mla_and_experts_match_peft_both_ways_and_merge() {
    expert_adapters_match_peft("mistral4");
}

/// DeepSeek-V3 (sigmoid router, choice bias), with adapters on MLA and on every expert named one
/// by one. PEFT 0.21 turns any `gate_proj`/`up_proj`/`down_proj` target of a deepseek_v3 model
/// into its fused experts, so adapters on its dense and shared MLPs (same names) cannot be loaded
/// by PEFT there; switchyard trains, generates and merges them all the same.
#[test]
fn adapters_on_deepseek_v3_match_peft_both_ways_and_merge() {
    expert_adapters_match_peft("deepseek_v3");
}
