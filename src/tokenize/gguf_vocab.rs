//! Build a Hugging Face `tokenizer.json` from the vocabulary stored in GGUF metadata.

use serde_json::{Value, json};

use crate::formats::gguf::hf::GgufVocab;

use super::TokenizeError;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_regex(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer llama.cpp names by `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<Value, TokenizeError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM: every digit alone, then GPT-2 byte-level splitting.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split_regex(LLAMA3_REGEX), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split_regex(QWEN2_REGEX), byte_level(false)]})
        }
        other => {
            return Err(TokenizeError::Unsupported(format!(
                "GGUF key `tokenizer.ggml.pre` = `{other}` is not supported (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            )));
        }
    })
}

/// The `tokenizer.json` document for a GGUF vocabulary (gpt2-style byte-level BPE only).
pub fn tokenizer_json(v: &GgufVocab) -> Result<Value, TokenizeError> {
    if v.model != "gpt2" {
        return Err(TokenizeError::Unsupported(format!(
            "GGUF key `tokenizer.ggml.model` = `{}` is not supported (supported: gpt2, i.e. byte-level BPE)",
            v.model
        )));
    }
    let mut vocab = serde_json::Map::with_capacity(v.tokens.len());
    let mut added = Vec::new();
    for (id, tok) in v.tokens.iter().enumerate() {
        vocab.insert(tok.clone(), id.into());
        let ty = v.token_types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty != TOKEN_CONTROL, "special": ty == TOKEN_CONTROL}));
        }
    }
    let merges: Vec<Value> = v
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| {
                    TokenizeError::Unsupported(format!(
                        "GGUF key `tokenizer.ggml.merges`, entry {i}: `{m}` is not `left right`"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let post = if v.add_bos {
        let bos = v
            .bos_id
            .and_then(|i| v.tokens.get(i as usize))
            .cloned()
            .unwrap_or_default();
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [v.bos_id], "tokens": [bos]}}})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(&v.pre)?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    }))
}

/// The `tokenizer_config.json` for a GGUF vocabulary: special tokens and the chat template.
pub fn tokenizer_config_json(v: &GgufVocab) -> Value {
    let name = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize)).cloned();
    let mut decoder = serde_json::Map::new();
    for (id, tok) in v.tokens.iter().enumerate() {
        let ty = v.token_types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            decoder.insert(
                id.to_string(),
                json!({"content": tok, "lstrip": false, "normalized": ty != TOKEN_CONTROL,
                "rstrip": false, "single_word": false, "special": ty == TOKEN_CONTROL}),
            );
        }
    }
    let mut cfg = json!({
        "add_bos_token": v.add_bos,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": name(v.bos_id),
        "eos_token": name(v.eos_id),
        "unk_token": name(v.unk_id),
        "pad_token": name(v.pad_id),
        "clean_up_tokenization_spaces": false,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
    });
    if let Some(t) = &v.chat_template {
        cfg["chat_template"] = t.clone().into();
    }
    cfg
}
