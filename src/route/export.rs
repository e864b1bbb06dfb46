//! Exports of a policy for routers people already run.
//!
//! **LiteLLM proxy** (`config.yaml`): each route becomes model groups `route/TASK` (the primary)
//! and `route/TASK/fallback-N`, one deployment each, chained by `fallbacks`. LiteLLM never cools
//! down a group with a single deployment, so retries inside a group would be paid by every request
//! while a primary is down; the export therefore sets `num_retries: 0` (a failure goes straight to
//! the next group) and states the cooldown settings explicitly for groups that gain deployments.
//!
//! **Provider-native strings**: the Hugging Face router's `model:provider` (or `:fastest`,
//! `:cheapest`), OpenRouter's `{model, provider}` object, or base URL + model for the rest.

use serde_json::{Value, json};

use super::{Policy, RouteError};
use crate::providers::{TargetSpec, presets};

/// Where `switchyard serve` answers for the policy's local targets.
pub struct LocalEndpoint {
    pub base_url: String,
    /// The variable holding `switchyard serve`'s bearer token, if it has one.
    pub api_key_env: Option<String>,
}

/// Where `switchyard serve` answers by default.
pub const DEFAULT_SERVE_URL: &str = "http://127.0.0.1:8000/v1";

impl Default for LocalEndpoint {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_SERVE_URL.into(),
            api_key_env: None,
        }
    }
}

fn litellm_params(t: &TargetSpec, local: &LocalEndpoint) -> Result<Value, RouteError> {
    let (base, model, key_env) = if t.provider == "local" {
        (
            local.base_url.clone(),
            t.name.clone(),
            local.api_key_env.clone(),
        )
    } else {
        let preset = presets::find(&t.provider).ok_or_else(|| RouteError::UnknownProvider {
            target: t.name.clone(),
            provider: t.provider.clone(),
        })?;
        let mut model = t.model.clone().unwrap_or_default();
        if let (presets::Routing::ModelSuffix, Some(Value::String(r))) =
            (preset.routing, &t.routing)
        {
            model = format!("{model}:{r}");
        }
        (
            t.base_url
                .clone()
                .unwrap_or_else(|| preset.base_url.to_string()),
            model,
            t.api_key_env
                .clone()
                .or_else(|| preset.key_required.then(|| preset.api_key_env.to_string())),
        )
    };
    let mut p = json!({
        "model": format!("openai/{model}"),
        "api_base": base,
        // LiteLLM reads `os.environ/NAME` at startup: the key stays in the environment.
        "api_key": key_env.map_or("no-key-needed".to_string(), |k| format!("os.environ/{k}")),
        "timeout": t.timeout_s,
        "max_retries": 0,
    });
    let o = p.as_object_mut().expect("object");
    if let Some(v) = t.price_in {
        o.insert("input_cost_per_token".into(), json!(v / 1e6));
    }
    if let Some(v) = t.price_out {
        o.insert("output_cost_per_token".into(), json!(v / 1e6));
    }
    if let Some(r) = t.rpm {
        o.insert("rpm".into(), json!(r as u64));
    }
    if let Some(r) = t.tpm {
        o.insert("tpm".into(), json!(r as u64));
    }
    if t.provider == "openrouter"
        && let Some(r) = &t.routing
    {
        o.insert("extra_body".into(), json!({ "provider": r }));
    }
    for (k, v) in &t.body {
        o.entry("extra_body").or_insert_with(|| json!({}))[k] = v.clone();
    }
    Ok(p)
}

/// The LiteLLM proxy config for a policy, as YAML.
pub fn litellm_config(p: &Policy, local: &LocalEndpoint) -> Result<String, RouteError> {
    let mut models = Vec::new();
    let mut fallbacks = Vec::new();
    for r in &p.routes {
        let group = format!("route/{}", r.task);
        let mut chain = Vec::new();
        for (i, t) in std::iter::once(&r.primary).chain(&r.fallbacks).enumerate() {
            let spec = &p.targets[t];
            let name = if i == 0 {
                group.clone()
            } else {
                format!("{group}/fallback-{i}")
            };
            models.push(json!({
                "model_name": name,
                "litellm_params": litellm_params(spec, local)?,
                "model_info": { "id": format!("{}/{}", r.task, t), "switchyard_target": t },
            }));
            if i > 0 {
                chain.push(name);
            }
        }
        if !chain.is_empty() {
            fallbacks.push(json!({ group.clone(): chain }));
        }
    }
    let config = json!({
        "model_list": models,
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 0,
            "allowed_fails": 1,
            "cooldown_time": 30,
            "fallbacks": fallbacks,
        },
        "litellm_settings": { "drop_params": true, "num_retries": 0 },
        "general_settings": { "master_key": "os.environ/LITELLM_MASTER_KEY" },
    });
    let mut yaml = String::from(
        "# LiteLLM proxy config exported by `switchyard route export` from a switchyard policy.\n\
         # One model group per task: `route/TASK` is the primary, `route/TASK/fallback-N` the fallbacks\n\
         # in policy order. num_retries is 0 because LiteLLM never cools down a single-deployment\n\
         # group: a failure goes straight to the next group instead of being retried by every request.\n\
         # API keys are read from the environment (os.environ/NAME); set LITELLM_MASTER_KEY too.\n",
    );
    // A tree of maps, strings and numbers: serialising it cannot fail.
    yaml.push_str(&serde_yaml_ng::to_string(&config).expect("the config serialises"));
    Ok(yaml)
}

/// Per task, each target in policy order as the provider's own model string or object.
pub fn native(p: &Policy) -> Value {
    let entry = |t: &TargetSpec| -> Value {
        let model = t.model.clone().unwrap_or_else(|| t.name.clone());
        match (t.provider.as_str(), &t.routing) {
            ("hf", Some(Value::String(r))) => {
                json!({"target": t.name, "provider": "hf", "model": format!("{model}:{r}")})
            }
            ("openrouter", Some(r)) => {
                json!({"target": t.name, "provider": "openrouter", "model": model, "provider_preferences": r})
            }
            ("local", _) => {
                json!({"target": t.name, "provider": "local", "serve": "switchyard serve", "model": t.name, "adapter": t.adapter})
            }
            (p, _) => json!({
                "target": t.name, "provider": p, "model": model,
                "base_url": t.base_url.clone().or_else(|| presets::find(p).map(|x| x.base_url.to_string())),
            }),
        }
    };
    let routes: serde_json::Map<String, Value> = p
        .routes
        .iter()
        .map(|r| {
            let chain: Vec<Value> = std::iter::once(&r.primary)
                .chain(&r.fallbacks)
                .map(|t| entry(&p.targets[t]))
                .collect();
            (r.task.clone(), Value::Array(chain))
        })
        .collect();
    json!({ "objective": p.objective, "routes": routes })
}
