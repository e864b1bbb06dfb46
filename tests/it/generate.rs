//! Generation on the real model: batching with padding, stop strings, streaming, log-probs,
//! seeded sampling, and the `generate` / `chat` commands.

use std::io::Write;
use std::process::Stdio;

use switchyard::generate::{Engine, FinishReason, GenerateOptions, SamplingParams};
use switchyard::load::files::open_folder;
use switchyard::tokenize::Message;

fn engine() -> Engine {
    let (folder, _) = crate::common::smollm2();
    Engine::load(
        open_folder(folder, "smollm2").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap()
}

fn chat_ids(e: &Engine, q: &str) -> Vec<u32> {
    let p = e
        .tokenizer
        .apply_chat_template(&[Message::new("user", q)], true)
        .unwrap();
    e.tokenizer.encode(&p, false).unwrap()
}

#[test]
fn a_batch_with_left_padding_generates_what_each_prompt_generates_alone() {
    let e = engine();
    let prompts = vec![
        chat_ids(&e, "What is the capital of France?"),
        chat_ids(
            &e,
            "Name three primary colors, separated by commas, and nothing else please.",
        ),
        e.tokenizer.encode("1, 2, 3, 4,", false).unwrap(),
    ];
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let (batch, _) = e.generate_batch(&prompts, &opts, |_, _| {}).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let (alone, _) = e
            .generate_batch(std::slice::from_ref(p), &opts, |_, _| {})
            .unwrap();
        assert_eq!(
            b.token_ids, alone[0].token_ids,
            "batched `{}` vs alone `{}`",
            b.text, alone[0].text
        );
    }
    assert_eq!(batch[0].text, "The capital of France is Paris.");
}

#[test]
fn stop_strings_cut_the_text_and_streaming_matches_the_result() {
    let e = engine();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        stop: vec![" Paris".into()],
        ..Default::default()
    };
    let mut streamed = String::new();
    let (g, _) = e
        .generate_batch(
            &[chat_ids(&e, "What is the capital of France?")],
            &opts,
            |_, s| streamed.push_str(s),
        )
        .unwrap();
    assert_eq!(g[0].text, "The capital of France is");
    assert_eq!(g[0].finish_reason, FinishReason::Stop);
    assert_eq!(streamed, g[0].text);
    let opts = GenerateOptions {
        max_new_tokens: 3,
        ..Default::default()
    };
    let (g, _) = e
        .generate_batch(
            &[chat_ids(&e, "What is the capital of France?")],
            &opts,
            |_, _| {},
        )
        .unwrap();
    assert_eq!(
        (g[0].token_ids.len(), g[0].finish_reason),
        (3, FinishReason::Length)
    );
}

#[test]
fn sampling_is_reproducible_by_seed_and_varies_across_seeds() {
    let e = engine();
    let ids = chat_ids(&e, "Write a short poem about the sea.");
    let run = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 24,
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                top_k: 50,
                seed,
                ..Default::default()
            },
            ..Default::default()
        };
        e.generate_batch(std::slice::from_ref(&ids), &opts, |_, _| {})
            .unwrap()
            .0
            .remove(0)
            .token_ids
    };
    assert_eq!(run(1), run(1));
    assert!(
        (2..6).any(|s| run(s) != run(1)),
        "five seeds, one continuation: sampling is not sampling"
    );
}

#[test]
fn generate_json_reports_openai_shaped_logprobs() {
    let out = crate::common::cli_ok(crate::common::cli().args([
        "generate",
        "--format",
        "json",
        "--logprobs",
        "3",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    ]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["text"], "The capital of France is Paris.");
    assert_eq!(doc["finish_reason"], "stop");
    let content = doc["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        doc["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(
            lps.windows(2).all(|w| w[0] >= w[1]),
            "top_logprobs sorted: {lps:?}"
        );
        assert!(lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-5);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["token"], top[0]["token"]);
        assert_eq!(entry["logprob"], top[0]["logprob"]);
        assert_eq!(
            entry["bytes"].as_array().unwrap().len(),
            entry["token"].as_str().unwrap().len()
        );
    }
}

/// `generate --quantized` on the GGUF decodes from its blocks, and its greedy continuation of a
/// raw prompt is llama.cpp's (tests/fixtures/smollm2_llamacpp_reference.json, prompt `raw`,
/// whose top two differ by at least 0.9 at each of these 5 steps). Later steps are left out:
/// both engines quantise activations, and their rounding differs enough to swap near ties.
#[test]
fn generate_quantized_continues_as_llamacpp_does() {
    let (_, gguf) = crate::common::smollm2();
    let reference = crate::common::read_json("smollm2_llamacpp_reference.json");
    let raw = &reference["prompts"][0];
    assert_eq!(raw["name"], "raw");
    let want: Vec<u64> = raw["greedy"].as_array().unwrap()[..5]
        .iter()
        .map(|s| s["top_ids"][0].as_u64().unwrap())
        .collect();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut cmd = crate::common::cli();
        cmd.args(["generate", "--model", gguf.to_str().unwrap(), "--raw"])
            .args(["--format", "json", "--max-tokens", "5"])
            .args(extra)
            .arg("The capital of France is");
        serde_json::from_str(&crate::common::cli_ok(&mut cmd)).unwrap()
    };
    let ids = |doc: &serde_json::Value| -> Vec<u64> {
        doc["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    };
    let quantized = run(&["--quantized"]);
    // 30 layers × 7 projections + the tied output layer.
    assert_eq!(quantized["quantized_products"], 211);
    assert_eq!(ids(&quantized), want);
    let f32 = run(&[]);
    assert_eq!(f32["quantized_products"], 0);
    assert_eq!(ids(&f32), want);
}

#[test]
fn chat_answers_over_stdin() {
    let mut child = crate::common::cli()
        .args(["chat", "--max-tokens", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("The capital of France is Paris."));
}

/// Constrained decoding on the real model. The bytes read from the vocabulary spell what the
/// tokenizer encodes (multi-byte characters split across tokens included), special tokens have
/// none; and under a schema every row of a batch, greedy or sampled, is JSON that follows it,
/// where the same prompt unconstrained is prose.
#[test]
fn under_a_schema_every_row_of_a_batch_is_json_that_follows_it() {
    use switchyard::generate::constrain::Grammar;
    let e = engine();
    let text = "Héllo 日本語 {\"a\": [1, 22]}\n\tend 🚀";
    let ids = e.tokenizer.encode(text, false).unwrap();
    let bytes = e.tokenizer.token_bytes();
    let spelled: Vec<u8> = ids
        .iter()
        .flat_map(|&i| bytes[i as usize].clone().unwrap())
        .collect();
    assert_eq!(String::from_utf8_lossy(&spelled), text);
    assert!(bytes[e.tokenizer.eos_ids[0] as usize].is_none());

    let schema = serde_json::json!({
        "type": "object", "additionalProperties": false,
        "required": ["name", "age", "mood", "friends"],
        "properties": {
            "name": {"type": "string", "minLength": 2, "maxLength": 12},
            "age": {"type": "integer", "minimum": 30, "maximum": 40},
            "mood": {"enum": ["happy", "sad"]},
            "friends": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 2}
        }
    });
    let g = std::sync::Arc::new(Grammar::from_schema(&schema).unwrap());
    // The trie walk finds exactly the tokens a brute-force check of the whole vocabulary finds,
    // in a key, in a bounded string, in a number and where only `}` or `,` may come.
    let trie = e.token_trie();
    for prefix in [
        "",
        "{\"na",
        "{\"name\": \"Bo",
        "{\"name\": \"Bob\", \"age\": 3",
        "{\"name\": \"Bob\", \"age\": 33, \"mood\": \"sad\", \"friends\": [\"a\"]",
    ] {
        let mut m = switchyard::generate::constrain::Matcher::new(&g);
        assert!(m.feed_all(&g, prefix.as_bytes()), "{prefix}");
        let mut walk = trie.allowed(&g, &m);
        walk.sort_unstable();
        let brute: Vec<u32> = (0..bytes.len() as u32)
            .filter(|&t| trie.accepts(&g, &m, t))
            .collect();
        assert_eq!(walk, brute, "after {prefix:?}");
        assert!(!walk.is_empty(), "after {prefix:?}");
    }
    let prompts = vec![
        chat_ids(&e, "Describe a fictional person."),
        chat_ids(&e, "Tell me about your best friend."),
    ];
    let plain = GenerateOptions {
        max_new_tokens: 20,
        ..Default::default()
    };
    let (free, _) = e.generate_batch(&prompts[..1], &plain, |_, _| {}).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&free[0].text).is_err(),
        "{}",
        free[0].text
    );
    for temperature in [0.0, 1.0] {
        let opts = GenerateOptions {
            max_new_tokens: 90,
            sampling: SamplingParams {
                temperature,
                seed: 5,
                ..Default::default()
            },
            constraint: Some(g.clone()),
            ..Default::default()
        };
        let (gens, _) = e.generate_batch(&prompts, &opts, |_, _| {}).unwrap();
        for out in gens {
            assert_eq!(out.finish_reason, FinishReason::Stop, "{}", out.text);
            let v: serde_json::Value =
                serde_json::from_str(&out.text).unwrap_or_else(|err| panic!("{err}: {}", out.text));
            let name = v["name"].as_str().unwrap().chars().count();
            assert!((2..=12).contains(&name), "{v}");
            assert!((30..=40).contains(&v["age"].as_i64().unwrap()), "{v}");
            assert!(
                ["happy", "sad"].contains(&v["mood"].as_str().unwrap()),
                "{v}"
            );
            let friends = v["friends"].as_array().unwrap();
            assert!((1..=2).contains(&friends.len()), "{v}");
            assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
        }
    }
}

/// OpenAI's `bytes` are a token's raw bytes: a byte-level token holding part of a UTF-8
/// character gives that byte, not the replacement character its text alone decodes to. The tiny
/// random Llama's near-uniform top-20 over a byte-level vocabulary is full of such tokens.
#[test]
fn logprobs_bytes_are_raw_token_bytes_even_for_part_of_a_character() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model("llama3", dir.path());
    let doc = crate::common::generate_json(
        dir.path(),
        &model,
        &["--logprobs", "20", "--max-tokens", "8"],
        "hello",
    );
    let out = doc.to_string();
    let mut partial = 0;
    for entry in doc["logprobs"]["content"].as_array().unwrap() {
        for t in entry["top_logprobs"].as_array().unwrap() {
            let bytes: Vec<u8> = t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert!(!bytes.is_empty(), "{t}");
            if t["token"] == "\u{FFFD}" {
                partial += 1;
                assert!(
                    bytes.len() == 1 && bytes[0] >= 0x80,
                    "a partial character's token gave {bytes:?}, not its raw byte"
                );
            } else {
                assert_eq!(
                    String::from_utf8(bytes).unwrap(),
                    t["token"].as_str().unwrap()
                );
            }
        }
    }
    assert!(
        partial > 0,
        "no partial-character token among the candidates: {out}"
    );
}
