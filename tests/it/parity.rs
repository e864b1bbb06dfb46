//! Numerical parity with the reference implementation (PyTorch transformers), on the real
//! SmolLM2 weights and on tiny random-weight Mistral, Qwen2 and llama3-scaled Llama models.
//! Fixtures: `scripts/reference_logprobs.py` and `scripts/tiny_models.py`.

use crate::common::ids;
use serde_json::Value;
use switchyard::formats::TensorSource;
use switchyard::formats::shards::SafetensorsFolder;
use switchyard::generate::Engine;
use switchyard::generate::{GenerateOptions, log_softmax};
use switchyard::load::files::{open_folder, open_gguf};
use switchyard::load::source::ModelWeights;
use switchyard::model::Vars;
use switchyard::model::{CausalLm, ModelConfig};

/// The network read from any tensor source, as the loader builds it.
fn load(cfg: &switchyard::model::ResolvedConfig, src: &dyn TensorSource) -> CausalLm {
    let device = crate::common::cpu();
    CausalLm::load(cfg, &Vars::new(&ModelWeights(src), &device)).unwrap()
}

fn read_config(dir: &std::path::Path) -> Result<ModelConfig, switchyard::util::FileError> {
    switchyard::util::read_json(&dir.join("config.json"))
}

const TOLERANCE: f32 = 2e-3;

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn smollm2_matches_transformers_logprobs_and_tokenization() {
    let (folder, _) = crate::common::smollm2();
    let engine = Engine::load(
        open_folder(folder, "smollm2").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    let reference = read(&crate::common::fixture("smollm2_reference.json"));
    let mut worst = 0f32;
    for prompt in reference["prompts"].as_array().unwrap() {
        let name = prompt["name"].as_str().unwrap();
        let expected_ids = ids(&prompt["input_ids"]);
        let ours = engine
            .tokenizer
            .encode(prompt["text"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(
            ours, expected_ids,
            "tokenization of prompt `{name}` differs from transformers"
        );
        let positions = prompt["last_positions"].as_array().unwrap();
        let logprobs = engine.next_token_logprobs(&ours, positions.len());
        for (pos, got) in positions.iter().zip(&logprobs) {
            let top = ids(&pos["top_ids"]);
            let want: Vec<f32> = pos["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            for (&id, &w) in top.iter().zip(&want) {
                let diff = (got[id as usize] - w).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= TOLERANCE,
                    "prompt `{name}` position {}: token {id} logprob {} vs {w}",
                    pos["position"],
                    got[id as usize]
                );
            }
        }
    }
    eprintln!(
        "max |Δ logprob| over the top-10 at the last 8 positions of every prompt: {worst:.2e}"
    );
}

#[test]
fn smollm2_answers_the_capital_of_france_greedily() {
    let (folder, _) = crate::common::smollm2();
    let engine = Engine::load(
        open_folder(folder, "smollm2").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    let messages = [switchyard::tokenize::Message::new(
        "user",
        "What is the capital of France?",
    )];
    let prompt = engine
        .tokenizer
        .apply_chat_template(&messages, true)
        .unwrap();
    let reference = read(&crate::common::fixture("smollm2_reference.json"));
    let chat = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "chat")
        .unwrap();
    assert_eq!(
        prompt,
        chat["text"].as_str().unwrap(),
        "chat template renders differently from transformers"
    );
    let prompt_ids = engine.tokenizer.encode(&prompt, false).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let (gens, _) = engine
        .generate_batch(&[prompt_ids], &opts, |_, _| {})
        .unwrap();
    assert_eq!(gens[0].text, "The capital of France is Paris.");
    let mut want = ids(&chat["greedy"]["new_token_ids"]);
    want.retain(|t| !engine.tokenizer.eos_ids.contains(t));
    assert_eq!(gens[0].token_ids, want);
}

#[test]
fn gguf_and_its_converted_folder_give_identical_logits() {
    let (folder, gguf) = crate::common::smollm2();
    let device = crate::common::cpu();
    let a = Engine::load(open_gguf(gguf, "gguf").unwrap(), &device).unwrap();
    let b = Engine::load(open_folder(folder, "folder").unwrap(), &device).unwrap();
    let text = "Rust is a systems programming language that";
    let ids = a.tokenizer.encode(text, false).unwrap();
    assert_eq!(ids, b.tokenizer.encode(text, false).unwrap());
    let la = a.model.sequence_logits(&ids, 3, &device);
    let lb = b.model.sequence_logits(&ids, 3, &device);
    assert_eq!(
        la, lb,
        "GGUF → HF folder → reload must not change a single logit"
    );
}

/// The network's projections are the config's table, in order, with its shapes.
fn assert_built_as_the_table(
    name: &str,
    cfg: &switchyard::model::ResolvedConfig,
    model: &CausalLm,
) {
    let table: Vec<(String, [usize; 2])> = cfg
        .projections()
        .into_iter()
        .map(|(n, p)| (n, [p.d_in, p.d_out]))
        .collect();
    let built: Vec<(String, [usize; 2])> = model
        .projections()
        .into_iter()
        .map(|(n, p)| (n, p.dims()))
        .collect();
    assert_eq!(built, table, "{name}");
}

/// Tiny random-weight models: all positions' logits against transformers.
fn tiny(name: &str) {
    let dir = crate::common::fixture(&format!("tiny/{name}"));
    let config: ModelConfig = read_config(&dir).unwrap();
    let cfg = config.resolve().unwrap();
    let device = crate::common::cpu();
    let model = load(&cfg, &SafetensorsFolder::open(&dir).unwrap());
    assert_built_as_the_table(name, &cfg, &model);
    let reference = read(&dir.join("reference.json"));
    let input = ids(&reference["input_ids"]);
    let got = model.sequence_logits(&input, input.len(), &device);
    let mut worst = 0f32;
    for (p, (g, w)) in got
        .iter()
        .zip(reference["logits"].as_array().unwrap())
        .enumerate()
    {
        let w: Vec<f32> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let (gl, wl) = (log_softmax(g), log_softmax(&w));
        for (i, (a, b)) in gl.iter().zip(&wl).enumerate() {
            worst = worst.max((a - b).abs());
            assert!(
                (a - b).abs() <= TOLERANCE,
                "{name}: position {p}, token {i}: {a} vs {b}"
            );
        }
    }
    eprintln!("{name}: max |Δ logprob| = {worst:.2e}");
}

/// Tiny random-weight models of the Mistral 3 family, held closer: every logit at every position
/// within 1e-4 of transformers' (f32), and transformers' greedy continuation reproduced with the
/// KV cache (batched beside a longer prompt, so left padding is exercised) and without it.
fn tiny_exact(name: &str) -> f32 {
    let reference = read(&crate::common::fixture(&format!(
        "tiny/{name}/reference.json"
    )));
    let tmp = tempfile::tempdir().unwrap();
    let dir = crate::common::tiny_model(name, tmp.path());
    tiny_exact_in(name, &dir, &reference)
}

fn tiny_exact_in(name: &str, dir: &std::path::Path, reference: &Value) -> f32 {
    let device = crate::common::cpu();
    let files = open_folder(dir, name).unwrap();
    let cfg = files.resolved.clone();
    let model = files.model_on(&device).unwrap();
    assert_built_as_the_table(name, &cfg, &model);
    let input = ids(&reference["input_ids"]);
    let got = model.sequence_logits(&input, input.len(), &device);
    let want = reference["logits"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: positions");
    let mut worst = 0f32;
    for (p, (g, w)) in got.iter().zip(want).enumerate() {
        let w = w.as_array().unwrap();
        assert_eq!(g.len(), w.len(), "{name}: vocabulary");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let b = b.as_f64().unwrap() as f32;
            worst = worst.max((a - b).abs());
            assert!(
                (a - b).abs() <= 1e-4,
                "{name}: position {p}, token {i}: logit {a} vs transformers' {b}"
            );
        }
    }
    eprintln!("{name}: max |Δ logit| over every position and token = {worst:.2e}");

    let greedy = &reference["greedy"];
    let prompt = ids(&greedy["prompt"]);
    let want = ids(&greedy["new_tokens"]);
    let engine = switchyard::generate::Engine::new(model, files.tokenizer, device.clone());
    // Without the cache: the whole sequence again for every new token (past EOS too).
    let mut seq = prompt.clone();
    for _ in 0..want.len() {
        let logits = engine.model.sequence_logits(&seq, 1, &device);
        seq.push(switchyard::generate::top_n(&logits[0], 1)[0] as u32);
    }
    assert_eq!(
        seq[prompt.len()..],
        want[..],
        "{name}: greedy without the KV cache"
    );
    // With the cache, one token at a time.
    let mut cache = switchyard::model::KvCache::new(engine.model.num_layers(), vec![0]);
    let mut logits = engine.step(prompt.clone(), 1, &mut cache);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let next = switchyard::generate::top_n(&logits[0], 1)[0] as u32;
        got.push(next);
        logits = engine.step(vec![next], 1, &mut cache);
    }
    assert_eq!(got, want, "{name}: greedy with the KV cache");
    // MLA caches the compressed latent and the shared rotary key, not per-head keys and values.
    if let Some(m) = cfg.mla {
        let per = cache.layers[0].per_position().unwrap();
        assert_eq!(per, ([1, 1, m.kv_lora_rank], [1, 1, m.qk_rope]), "{name}");
        let expanded = 2 * cfg.heads * (m.qk_nope + m.v);
        eprintln!(
            "{name}: cache {} values per token and layer, expanded K/V would be {expanded}",
            m.kv_lora_rank + m.qk_rope
        );
    }
    // Generation proper, batched beside the whole input (so the prompt is left-padded), up to
    // the first EOS.
    let eos = engine.tokenizer.eos_ids.clone();
    let until_eos: Vec<u32> = want
        .iter()
        .copied()
        .take_while(|t| !eos.contains(t))
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        ..Default::default()
    };
    let (gens, _) = engine
        .generate_batch(&[prompt.clone(), input.clone()], &opts, |_, _| {})
        .unwrap();
    assert_eq!(gens[0].token_ids, until_eos, "{name}: batched generation");
    worst
}

#[test]
fn tiny_ministral3_with_yarn_and_query_scaling_matches_transformers() {
    tiny_exact("ministral3");
}

#[test]
fn tiny_mixtral_with_routed_experts_matches_transformers() {
    tiny_exact("mixtral");
}

#[test]
fn tiny_deepseek_v3_with_latent_attention_and_sigmoid_routing_matches_transformers() {
    tiny_exact("deepseek_v3");
}

#[test]
fn tiny_mistral4_the_mistral_large_3_design_matches_transformers() {
    tiny_exact("mistral4");
}

/// DeepSeek's FP8 layout (e4m3 with 16×16 block scales, a partial last block included),
/// dequantised at load: the logits of transformers' own block dequantisation.
#[test]
fn tiny_deepseek_v3_in_fp8_blocks_matches_transformers_dequantisation() {
    tiny_exact("deepseek_v3_fp8");
}

/// The same FP8 weights in the compressed-tensors layout (Mistral Large 3's release format:
/// `weight_scale`, and the block size under `config_groups`).
#[test]
fn tiny_deepseek_v3_in_compressed_tensors_fp8_matches_transformers_dequantisation() {
    let (_tmp, dir) = tiny_as_is("deepseek_v3_ct");
    let reference = read(&crate::common::fixture(
        "tiny/deepseek_v3_fp8/reference.json",
    ));
    tiny_exact_in("deepseek_v3_ct", &dir, &reference);
}

/// Every file of fixture folder `tiny/{name}` (whatever its layout) and the tiny tokenizer, in a
/// temporary folder.
fn tiny_as_is(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for src in [format!("tiny/{name}"), "tiny/tokenizer".into()] {
        for e in std::fs::read_dir(crate::common::fixture(&src)).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "reference.json" {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
    }
    (tmp, dir)
}

/// Mixtral in Mistral's own layout (`params.json`, `consolidated.safetensors`, `wq`/`wk` in
/// interleaved-pair RoPE order) gives the Hugging Face folder's logits.
#[test]
fn tiny_mixtral_in_mistral_native_layout_matches_transformers() {
    let (_tmp, dir) = tiny_as_is("mixtral_native");
    assert!(!dir.join("config.json").exists());
    let reference = read(&crate::common::fixture(
        "tiny/mixtral_native/reference.json",
    ));
    tiny_exact_in("mixtral_native", &dir, &reference);
}

/// Mistral Large 3's own layout (params.json with MLA widths, `moe`, `yarn`, `llama_4_scaling`;
/// `layers.L.attention.wq_a`, `experts.N.w1`, …) on the tiny mistral4: transformers' logits.
#[test]
fn tiny_mistral4_in_mistral_native_layout_matches_transformers() {
    let (_tmp, dir) = tiny_as_is("mistral4_native");
    let reference = read(&crate::common::fixture("tiny/mistral4/reference.json"));
    tiny_exact_in("mistral4_native", &dir, &reference);
}

/// A multimodal Ministral 3 checkpoint (`mistral3`: the text model under `language_model.`,
/// beside a vision tower) runs its text part, with the text model's logits.
#[test]
fn tiny_mistral3_multimodal_checkpoint_runs_its_text_part() {
    let (_tmp, dir) = tiny_as_is("mistral3");
    let reference = read(&crate::common::fixture("tiny/ministral3/reference.json"));
    tiny_exact_in("mistral3", &dir, &reference);
}

#[test]
fn tiny_mistral_with_sliding_window_matches_transformers() {
    tiny("mistral");
}

#[test]
fn tiny_qwen2_with_qkv_bias_matches_transformers() {
    tiny("qwen2");
}

#[test]
fn tiny_llama_with_llama3_rope_scaling_matches_transformers() {
    tiny("llama3");
}

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    use std::collections::BTreeMap;
    use switchyard::formats::shards::write_safetensors;
    let dir = crate::common::fixture("tiny/qwen2");
    let single = SafetensorsFolder::open(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    let (mut shards, mut weight_map) = ([BTreeMap::new(), BTreeMap::new()], serde_json::Map::new());
    for (i, name) in single.names().into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i % 2].insert(name.clone(), single.get(&name).unwrap().unwrap());
    }
    for (i, shard) in shards.iter().enumerate() {
        write_safetensors(
            &tmp.path()
                .join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            shard,
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let cfg = read_config(&dir).unwrap().resolve().unwrap();
    let device = crate::common::cpu();
    let a = load(&cfg, &single);
    let b = load(&cfg, &SafetensorsFolder::open(tmp.path()).unwrap());
    let input = [1, 5, 9, 77, 200];
    assert_eq!(
        a.sequence_logits(&input, 5, &device),
        b.sequence_logits(&input, 5, &device)
    );
}

/// Greedy steps against llama.cpp on the same GGUF (`scripts/llamacpp_reference.py`), feeding
/// llama.cpp's token at each step. Returns the largest difference of the log-probability of
/// llama.cpp's top token, and the steps whose argmax differs where llama.cpp's top two are more
/// than `margin` apart.
fn against_llamacpp(quantized: bool, margin: f32) -> (f32, Vec<String>) {
    let (_, gguf) = crate::common::smollm2();
    let mut files = open_gguf(gguf, "gguf").unwrap();
    files.quantized_decode = quantized;
    let engine = Engine::load(files, &crate::common::cpu()).unwrap();
    // 30 layers × 7 projections + the tied output layer, or none.
    let expected = if quantized { 30 * 7 + 1 } else { 0 };
    assert_eq!(engine.model.quantized_products(), expected);
    let reference = read(&crate::common::fixture("smollm2_llamacpp_reference.json"));
    let (mut worst, mut flips) = (0f32, Vec::new());
    for prompt in reference["prompts"].as_array().unwrap() {
        let name = prompt["name"].as_str().unwrap();
        let mut cache = switchyard::model::KvCache::new(engine.model.num_layers(), vec![0]);
        let mut logits = engine
            .step(ids(&prompt["input_ids"]), 1, &mut cache)
            .remove(0);
        for (i, step) in prompt["greedy"].as_array().unwrap().iter().enumerate() {
            let lp = log_softmax(&logits);
            let top = ids(&step["top_ids"]);
            let want: Vec<f32> = step["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            worst = worst.max((lp[top[0] as usize] - want[0]).abs());
            let ours = switchyard::generate::top_n(&logits, 1)[0] as u32;
            if ours != top[0] && want[0] - want[1] > margin {
                flips.push(format!("{name} step {i}: {ours} instead of {}", top[0]));
            }
            logits = engine.step(vec![top[0]], 1, &mut cache).remove(0);
        }
    }
    (worst, flips)
}

/// The quantised decode against llama.cpp on the same blocks. The two differ by more than
/// rounding (llama.cpp also quantises prefill activations and keeps its KV cache in f16; here
/// prefill of more than 8 tokens runs on the f32 dequantisation; and 8-bit rounding of the
/// activations turns tiny differences into log-prob changes of a few hundredths), so the bounds
/// are loose: greedy choices must agree where llama.cpp's top two are over 0.5 apart. A broken
/// kernel (wrong nibble order, scale or row permutation) moves log-probs by whole units.
#[test]
fn quantized_decode_stays_with_llamacpp_on_the_same_gguf() {
    let (worst, flips) = against_llamacpp(true, 0.5);
    assert!(
        flips.is_empty(),
        "greedy choices differ from llama.cpp: {flips:?}"
    );
    assert!(
        worst <= 0.5,
        "quantised decode is {worst} log-prob away from llama.cpp"
    );
    eprintln!("max |Δ log-prob| of llama.cpp's top token: {worst:.4}");
}
