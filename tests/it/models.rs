//! `switchyard models list | inspect` on the fetched default model.

fn switchyard(args: &[&str]) -> String {
    crate::common::cli_ok(crate::common::cli().args(args))
}

#[test]
fn list_shows_the_folder_and_the_gguf() {
    let out = switchyard(&["models", "list"]);
    assert!(
        out.contains("SmolLM2-135M-Instruct ") && out.contains("hf folder"),
        "{out}"
    );
    assert!(
        out.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && out.contains("gguf"),
        "{out}"
    );
}

#[test]
fn inspect_reports_the_real_architecture() {
    let doc: serde_json::Value =
        serde_json::from_str(&switchyard(&["models", "inspect", "--json"])).unwrap();
    assert_eq!(doc["architecture"], "LlamaForCausalLM");
    assert_eq!(
        (
            doc["layers"].as_u64(),
            doc["hidden"].as_u64(),
            doc["intermediate"].as_u64()
        ),
        (Some(30), Some(576), Some(1536))
    );
    assert_eq!(
        (
            doc["heads"].as_u64(),
            doc["kv_heads"].as_u64(),
            doc["head_dim"].as_u64()
        ),
        (Some(9), Some(3), Some(64))
    );
    assert_eq!(
        (doc["vocab"].as_u64(), doc["context"].as_u64()),
        (Some(49152), Some(8192))
    );
    assert_eq!(doc["rope_theta"].as_f64(), Some(100000.0));
    assert_eq!(doc["tied_embeddings"], true);
    // 134.5 M parameters: SmolLM2-135M.
    assert_eq!(doc["parameters"].as_u64(), Some(134_515_008));
    assert!(
        doc["chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>")
    );
    assert_eq!(doc["eos_ids"], serde_json::json!([2]));
    // The GGUF itself: the storage types as shipped.
    let (_, gguf) = crate::common::smollm2();
    let doc: serde_json::Value = serde_json::from_str(&switchyard(&[
        "models",
        "inspect",
        "--json",
        gguf.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(
        doc["tensor_dtypes"],
        serde_json::json!({"F32": 61, "Q4_1": 210, "Q8_0": 1})
    );
}
