//! Presets of OpenAI-compatible endpoints: one table, not one file per provider. A preset fills in
//! what a target leaves out (base URL, API key variable) and says how the endpoint differs from
//! OpenAI's (where routing preferences go, which spelling of `max_tokens` and `seed` it takes,
//! whether it reports usage at the end of a stream).

/// Where a target's `routing` setting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The endpoint has no routing choices; `routing` is an error.
    None,
    /// Hugging Face router: `model:provider` or a policy suffix (`:fastest`, `:cheapest`).
    ModelSuffix,
    /// A body field holding an object (OpenRouter's `provider` preferences).
    BodyField(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub base_url: &'static str,
    /// The environment variable holding the API key.
    pub api_key_env: &'static str,
    /// Hosted endpoints refuse requests without a key; local servers usually take none.
    pub key_required: bool,
    pub routing: Routing,
    /// The field for the output-token limit.
    pub max_tokens_field: &'static str,
    /// The field for the sampling seed (None: the endpoint has no seed).
    pub seed_field: Option<&'static str>,
    /// Send `stream_options.include_usage` to get token counts at the end of a stream.
    pub stream_usage: bool,
    /// Its `/v1/completions` returns the prompt's log-probabilities (`echo` with `logprobs`),
    /// which log-likelihood suites need; chat-only endpoints do not.
    pub prompt_logprobs: bool,
    /// A JSON Schema goes as `{"type": "json_object", "schema": ...}` (llama.cpp's spelling;
    /// llama-cpp-python takes only that one) rather than OpenAI's `json_schema`.
    pub schema_as_json_object: bool,
    pub docs: &'static str,
}

const fn preset(name: &'static str, base_url: &'static str, api_key_env: &'static str) -> Preset {
    Preset {
        name,
        base_url,
        api_key_env,
        key_required: true,
        routing: Routing::None,
        max_tokens_field: "max_tokens",
        seed_field: Some("seed"),
        stream_usage: true,
        prompt_logprobs: false,
        schema_as_json_object: false,
        docs: "",
    }
}

const fn scoring(mut p: Preset) -> Preset {
    p.prompt_logprobs = true;
    p
}

const fn local(mut p: Preset) -> Preset {
    p.key_required = false;
    p
}

/// Every preset. `openai-compatible` is the generic one: it needs `base_url`.
pub const PRESETS: &[Preset] = &[
    Preset {
        routing: Routing::ModelSuffix,
        docs: "Hugging Face Inference Providers router; model `org/name`, `org/name:provider` or `org/name:fastest|cheapest`",
        ..preset("hf", "https://router.huggingface.co/v1", "HF_TOKEN")
    },
    Preset {
        docs: "Together AI",
        ..scoring(preset(
            "together",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
        ))
    },
    Preset {
        docs: "Fireworks AI; models as `accounts/fireworks/models/NAME`",
        ..scoring(preset(
            "fireworks",
            "https://api.fireworks.ai/inference/v1",
            "FIREWORKS_API_KEY",
        ))
    },
    Preset {
        docs: "Groq",
        ..preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY")
    },
    Preset {
        seed_field: Some("random_seed"),
        stream_usage: false,
        docs: "Mistral La Plateforme (seed is `random_seed`; usage comes with the last chunk)",
        ..preset("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY")
    },
    Preset {
        routing: Routing::BodyField("provider"),
        docs: "OpenRouter; `routing` is its `provider` preferences object (order, sort, allow_fallbacks, ...)",
        ..preset(
            "openrouter",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
        )
    },
    Preset {
        max_tokens_field: "max_completion_tokens",
        docs: "OpenAI",
        ..preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY")
    },
    Preset {
        docs: "a vLLM server (`vllm serve`)",
        ..scoring(local(preset(
            "vllm",
            "http://127.0.0.1:8000/v1",
            "VLLM_API_KEY",
        )))
    },
    Preset {
        docs: "an Ollama server",
        ..local(preset(
            "ollama",
            "http://127.0.0.1:11434/v1",
            "OLLAMA_API_KEY",
        ))
    },
    Preset {
        docs: "a llama.cpp server (`llama-server`, or `python -m llama_cpp.server`)",
        schema_as_json_object: true,
        ..scoring(local(preset(
            "llamacpp",
            "http://127.0.0.1:8080/v1",
            "LLAMA_API_KEY",
        )))
    },
    Preset {
        docs: "a LiteLLM proxy",
        ..local(preset(
            "litellm",
            "http://127.0.0.1:4000/v1",
            "LITELLM_API_KEY",
        ))
    },
    Preset {
        docs: "any OpenAI-compatible endpoint: set `base_url` (and `api_key_env` if it needs a key)",
        ..scoring(local(preset("openai-compatible", "", "OPENAI_API_KEY")))
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn presets_are_unique_and_well_formed() {
        let names = super::names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for p in super::PRESETS {
            assert!(
                p.base_url.is_empty() || p.base_url.ends_with("/v1"),
                "{}",
                p.name
            );
            assert!(!p.docs.is_empty(), "{}", p.name);
        }
        assert_eq!(
            super::find("openrouter").unwrap().routing,
            super::Routing::BodyField("provider")
        );
    }
}
