//! Bad model files get one clear error that names the file and the key or tensor, from the CLI
//! as a user would see it.

use std::path::{Path, PathBuf};

fn switchyard(args: &[&str]) -> (bool, String) {
    let out = crate::common::run(crate::common::bare().args(args));
    (out.ok, out.stderr)
}

fn inspect_fails(model: &Path, needles: &[&str]) {
    let (ok, err) = switchyard(&["models", "inspect", model.to_str().unwrap()]);
    assert!(!ok, "inspect of {} should fail", model.display());
    assert!(
        !err.contains("panicked"),
        "a panic is not an error message: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`:\n{err}");
    }
}

/// A copy of a tiny fixture model, with its tokenizer or (to test that error) without.
fn tiny_copy(name: &str, with_tokenizer: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = crate::common::tiny_model(name, tmp.path());
    if !with_tokenizer {
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn truncated_gguf_names_the_file_and_the_tensor() {
    let (_, gguf) = crate::common::smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(gguf).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    inspect_fails(&cut, &["cut.gguf", "truncated", "tensor `blk."]);
    // Cut inside the metadata: the key being read is named.
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    inspect_fails(&cut, &["cut.gguf", "truncated", "tokenizer.ggml"]);
}

#[test]
fn a_file_that_is_not_gguf_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("notes.gguf");
    std::fs::write(&p, b"this is not a model").unwrap();
    inspect_fails(&p, &["notes.gguf", "not a GGUF file"]);
}

#[test]
fn corrupt_safetensors_names_the_file() {
    let (_tmp, dir) = tiny_copy("mistral", true);
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    )
    .unwrap();
    inspect_fails(&dir, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn config_missing_a_key_names_it() {
    let (_tmp, dir) = tiny_copy("qwen2", true);
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    inspect_fails(&dir, &["config.json", "hidden_size"]);
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let (_tmp, dir) = tiny_copy("qwen2", true);
    edit_config(&dir, |c| c["model_type"] = "gpt_neox".into());
    inspect_fails(
        &dir,
        &["config.json", "gpt_neox", "llama", "mistral", "qwen2"],
    );
}

#[test]
fn tensor_shape_mismatch_names_tensor_and_shapes() {
    let (_tmp, dir) = tiny_copy("llama3", true);
    edit_config(&dir, |c| c["intermediate_size"] = 96.into());
    let (ok, err) = switchyard(&[
        "generate",
        "--raw",
        "--max-tokens",
        "1",
        "--model",
        dir.to_str().unwrap(),
        "hi",
    ]);
    assert!(!ok);
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[128, 64]")
            && err.contains("[96, 64]"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_names_the_file() {
    let (_tmp, dir) = tiny_copy("mistral", false);
    inspect_fails(&dir, &["tokenizer.json", "missing"]);
}

#[test]
fn unknown_model_name_says_what_to_do() {
    let (ok, err) = switchyard(&["models", "inspect", "no-such-model"]);
    assert!(!ok);
    assert!(
        err.contains("no-such-model") && err.contains("Hub id"),
        "{err}"
    );
}
