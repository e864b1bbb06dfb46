//! `switchyard providers sync` against servers on 127.0.0.1 that answer as the Hugging Face
//! router and OpenRouter document their model lists (`tests/fixtures/catalog/`): prices,
//! context and the date read land in the targets, comments stay, and new targets are added.

use switchyard::providers::TargetsFile;

/// Serve the two fixtures at `/hf/v1/models` and `/openrouter/api/v1/models`.
async fn catalogs() -> u16 {
    let hf =
        std::fs::read_to_string(crate::common::fixture("catalog/hf_router_models.json")).unwrap();
    let or =
        std::fs::read_to_string(crate::common::fixture("catalog/openrouter_models.json")).unwrap();
    let json = |body: String| move || async move { ([("content-type", "application/json")], body) };
    let app = axum::Router::new()
        .route("/hf/v1/models", axum::routing::get(json(hf)))
        .route("/openrouter/api/v1/models", axum::routing::get(json(or)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[test]
fn catalogs_set_prices_and_add_targets() {
    let rt = crate::common::runtime();
    let port = rt.block_on(catalogs());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("targets.toml"),
        "# My targets: this comment stays.\n\
         [[targets]]\nname = \"hf-cheapest\"\nprovider = \"hf\"\nmodel = \"meta-llama/Llama-3.1-8B-Instruct\"\nrouting = \"cheapest\"\nprice_in = 9.0\nprice_out = 9.0\n\n\
         # Pinned to one provider by suffix.\n\
         [[targets]]\nname = \"hf-cerebras\"\nprovider = \"hf\"\nmodel = \"meta-llama/Llama-3.1-8B-Instruct:cerebras\"\n\n\
         [[targets]]\nname = \"hf-fastest\"\nprovider = \"hf\"\nmodel = \"meta-llama/Llama-3.1-8B-Instruct\"\nrouting = \"fastest\"\n\n\
         [[targets]]\nname = \"or-llama\"\nprovider = \"openrouter\"\nmodel = \"meta-llama/llama-3.1-8b-instruct\"\n\n\
         [[targets]]\nname = \"hf-gone\"\nprovider = \"hf\"\nmodel = \"nobody/no-such-model\"\n\n\
         [[targets]]\nname = \"groq\"\nprovider = \"groq\"\nmodel = \"llama-3.1-8b-instant\"\nprice_in = 0.05\nprice_out = 0.08\n",
    )
    .unwrap();
    let out = crate::common::cli_ok(
        crate::common::in_dir(d)
            .args(["providers", "sync", "--targets-file", "targets.toml"])
            .args(["--hf-url", &format!("http://127.0.0.1:{port}/hf/v1")])
            .args([
                "--openrouter-url",
                &format!("http://127.0.0.1:{port}/openrouter/api/v1"),
            ])
            .args(["--add", "hf:Qwen/Qwen2.5-72B-Instruct"])
            .env_remove("HF_TOKEN")
            .env_remove("OPENROUTER_API_KEY"),
    );
    assert!(out.contains("hf-gone: not in the catalog"), "{out}");
    let text = std::fs::read_to_string(d.join("targets.toml")).unwrap();
    assert!(
        text.contains("# My targets: this comment stays.")
            && text.contains("# Pinned to one provider by suffix."),
        "{text}"
    );
    let targets = TargetsFile::load(&d.join("targets.toml")).unwrap();
    let get = |n: &str| {
        targets
            .iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("{n}: {text}"))
    };
    let prices = |n: &str| (get(n).price_in, get(n).price_out);
    let via = |n: &str| get(n).catalog.as_ref().and_then(|c| c.provider.clone());
    // The cheapest live provider (sambanova is cheaper, but staging).
    assert_eq!(prices("hf-cheapest"), (Some(0.02), Some(0.05)));
    assert_eq!(via("hf-cheapest").as_deref(), Some("novita"));
    assert_eq!(prices("hf-cerebras"), (Some(0.1), Some(0.1)));
    assert_eq!(via("hf-fastest").as_deref(), Some("cerebras"));
    let c = get("hf-fastest").catalog.clone().unwrap();
    assert_eq!(
        (
            c.context_length,
            c.throughput,
            c.first_token_latency_ms,
            c.supports_tools
        ),
        (Some(32768), Some(2150.0), Some(210.0), Some(true))
    );
    assert_eq!(c.read_at, switchyard::util::today());
    // OpenRouter's per-token strings, per million.
    assert_eq!(prices("or-llama"), (Some(0.02), Some(0.03)));
    // Untouched: a target of another provider, and one the catalog does not list.
    assert_eq!(prices("groq"), (Some(0.05), Some(0.08)));
    assert!(get("hf-gone").catalog.is_none());
    // Added, at the cheapest live provider.
    assert_eq!(prices("hf-qwen2.5-72b-instruct"), (Some(0.13), Some(0.4)));
    assert_eq!(via("hf-qwen2.5-72b-instruct").as_deref(), Some("nebius"));
}
