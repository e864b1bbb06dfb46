//! `switchyard convert GGUF OUT_DIR` writes a complete Hugging Face folder.

#[test]
fn convert_writes_a_hugging_face_folder_that_loads() {
    let (_, gguf) = crate::common::smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smol");
    crate::common::cli_ok(crate::common::cli().arg("convert").arg(gguf).arg(&out));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(
        (
            cfg["num_hidden_layers"].as_u64(),
            cfg["num_key_value_heads"].as_u64()
        ),
        (Some(30), Some(3))
    );
    assert_eq!(cfg["rope_theta"].as_f64(), Some(100000.0));
    assert_eq!(cfg["tie_word_embeddings"], true);
    let st = crate::common::run(
        crate::common::bare()
            .args(["generate", "--max-tokens", "12", "--model"])
            .arg(&out)
            .arg("What is the capital of France?"),
    );
    assert_eq!(st.stdout.trim(), "The capital of France is Paris.");
}

#[test]
fn convert_of_a_missing_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let st = crate::common::run(
        crate::common::bare()
            .args(["convert", "/nonexistent/model.gguf"])
            .arg(tmp.path().join("out")),
    );
    assert!(!st.ok);
    assert!(st.stderr.contains("/nonexistent/model.gguf"));
}
