//! Targets: a provider + model + settings, declared in TOML (`[[targets]]`), built into something
//! the runner can call with its own concurrency, rate limits, retry policy and prices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::http::{HttpProvider, HttpSettings};
use super::limits::RateLimiter;
use super::local::LocalProvider;
use super::retry::{self, RetryPolicy};
use super::{ChatRequest, ChatResponse, Deltas, Outcome, Provider, ProviderError, presets};
use crate::generate::Engine;
use crate::load::{self, DeviceKind};

fn yes() -> bool {
    true
}
fn d_timeout() -> f64 {
    120.0
}
fn d_retries() -> u32 {
    5
}

/// One target as written in a targets file.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The name results and routes use.
    pub name: String,
    /// `local` (the burn model in-process) or a preset: hf, together, fireworks, groq, mistral,
    /// openrouter, openai, vllm, ollama, llamacpp, litellm, openai-compatible.
    pub provider: String,
    /// The model: a hosted model id, or for `local` a model spec (default: SmolLM2-135M-Instruct).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the API key (default: the preset's).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra fields merged into every request body.
    #[serde(default)]
    pub body: serde_json::Map<String, Value>,
    /// Routing preferences: a provider or policy suffix for `hf`, a `provider` object for `openrouter`.
    #[serde(default)]
    pub routing: Option<Value>,
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    /// Requests in flight at once (default: 8 over HTTP; the batch size for `local`).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<f64>,
    /// Tokens (in + out) per minute.
    #[serde(default)]
    pub tpm: Option<f64>,
    /// USD per million input tokens.
    #[serde(default)]
    pub price_in: Option<f64>,
    /// USD per million output tokens.
    #[serde(default)]
    pub price_out: Option<f64>,
    /// USD per hour of the machine serving it (self-hosting): charged by the machine time a
    /// request used (the local model reports its share of a batch; over HTTP, latency divided by
    /// `concurrency`).
    #[serde(default)]
    pub price_per_hour: Option<f64>,
    /// `local`: a LoRA adapter folder (PEFT layout) merged at load.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// `local` with a GGUF model: decode from its quantised blocks, as llama.cpp does.
    #[serde(default)]
    pub quantized: bool,
    /// `local`: the frozen weights' dtype, `f32` (default) or `bf16` (see `--dtype`).
    #[serde(default)]
    pub dtype: crate::model::Precision,
    #[serde(default)]
    pub device: Option<DeviceKind>,
    #[serde(default)]
    pub threads: Option<usize>,
    /// `local`: requests answered together.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Where `price_in`/`price_out` came from, when a catalog set them (`providers sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<super::catalog::CatalogEntry>,
}

/// A targets file: `[[targets]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsFile {
    pub targets: Vec<TargetSpec>,
}

impl TargetsFile {
    pub fn load(path: &Path) -> Result<Vec<TargetSpec>, ProviderError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProviderError::Config(format!("{}: {e}", path.display())))?;
        let bad =
            |e: String| ProviderError::Config(format!("{}: {}", path.display(), e.trim_end()));
        // TOML as people write it; JSON as programs (`switchyard run`) write it.
        let mut f: TargetsFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| bad(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for t in &mut f.targets {
            if let Some(a) = t.adapter.as_mut()
                && a.is_relative()
                && !a.exists()
            {
                *a = base.join(&*a);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &f.targets {
            if !seen.insert(t.name.as_str()) {
                return Err(ProviderError::Config(format!(
                    "{}: target `{}` is defined twice",
                    path.display(),
                    t.name
                )));
            }
        }
        Ok(f.targets)
    }
}

impl TargetSpec {
    /// A quick target from the command line: `PRESET:MODEL` (e.g. `llamacpp:smollm2`).
    pub fn parse_quick(s: &str) -> Option<Self> {
        let (preset, model) = s.split_once(':')?;
        presets::find(preset)?;
        Some(Self {
            name: s.to_string(),
            provider: preset.to_string(),
            model: Some(model.to_string()),
            stream: true,
            timeout_s: d_timeout(),
            max_retries: d_retries(),
            ..Default::default()
        })
    }

    /// The local model with an optional adapter.
    pub fn local(name: &str, model: Option<String>, adapter: Option<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            provider: "local".into(),
            model,
            adapter,
            stream: true,
            timeout_s: 3600.0,
            max_retries: 0,
            ..Default::default()
        }
    }
}

/// A target ready to call: its provider behind its concurrency limit, rate limits and retry
/// policy, reached through [`Target::ask`].
pub struct Target {
    pub spec: TargetSpec,
    provider: Arc<dyn Provider>,
    limiter: RateLimiter,
    slots: Semaphore,
    concurrency: usize,
    retry: RetryPolicy,
}

/// Header values may name environment variables as `${NAME}`, so that secrets stay out of files.
fn expand_headers(
    target: &str,
    h: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let err = |m: String| ProviderError::Config(format!("target `{target}`: {m}"));
    h.iter()
        .map(|(k, v)| {
            if v == "[not recorded]" {
                return Err(err(format!(
                    "header `{k}` was not recorded in the run (its value was literal): give it as \"${{VAR}}\" in the targets file"
                )));
            }
            let mut out = String::new();
            let mut rest = v.as_str();
            while let Some(start) = rest.find("${") {
                let end = rest[start..]
                    .find('}')
                    .ok_or_else(|| err(format!("header `{k}`: unclosed `${{`")))?;
                let name = &rest[start + 2..start + end];
                let value = std::env::var(name)
                    .map_err(|_| err(format!("header `{k}` needs the environment variable {name}")))?;
                out.push_str(&rest[..start]);
                out.push_str(&value);
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            Ok((k.clone(), out))
        })
        .collect()
}

impl Target {
    pub fn build(spec: TargetSpec) -> Result<Self, ProviderError> {
        let err = |m: String| ProviderError::Config(format!("target `{}`: {m}", spec.name));
        let (provider, concurrency): (Arc<dyn Provider>, usize) = if spec.provider == "local" {
            for (set, key) in [
                (spec.base_url.is_some(), "base_url"),
                (spec.api_key_env.is_some(), "api_key_env"),
                (spec.routing.is_some(), "routing"),
            ] {
                if set {
                    return Err(err(format!("`{key}` has no meaning for a local target")));
                }
            }
            let batch = spec.batch_size.unwrap_or(8);
            let p = spawn_local(&spec, batch).map_err(|e| err(e.to_string()))?;
            (Arc::new(p), spec.concurrency.unwrap_or(batch))
        } else {
            let preset = presets::find(&spec.provider).ok_or_else(|| {
                err(format!(
                    "unknown provider `{}`; use `local` or a preset: {}",
                    spec.provider,
                    presets::names().join(", ")
                ))
            })?;
            let model = spec
                .model
                .clone()
                .ok_or_else(|| err("`model` is required for a hosted target".into()))?;
            let p = HttpProvider::new(
                preset,
                HttpSettings {
                    base_url: spec
                        .base_url
                        .clone()
                        .unwrap_or_else(|| preset.base_url.to_string()),
                    model,
                    api_key_env: spec
                        .api_key_env
                        .clone()
                        .unwrap_or_else(|| preset.api_key_env.to_string()),
                    headers: expand_headers(&spec.name, &spec.headers)?,
                    body: spec.body.clone(),
                    routing: spec.routing.clone(),
                    stream: spec.stream,
                    timeout: Duration::from_secs_f64(spec.timeout_s.max(0.001)),
                },
            )
            .map_err(|e| err(e.to_string()))?;
            (Arc::new(p), spec.concurrency.unwrap_or(8))
        };
        let concurrency = concurrency.max(1);
        Ok(Self {
            limiter: RateLimiter::new(spec.rpm, spec.tpm),
            slots: Semaphore::new(concurrency),
            concurrency,
            retry: RetryPolicy {
                max_retries: spec.max_retries,
                ..Default::default()
            },
            provider,
            spec,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Requests in flight at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether the target can score a prompt (log-likelihood suites): the local model, or an
    /// endpoint whose `/v1/completions` returns prompt log-probabilities.
    pub fn scores_prompts(&self) -> bool {
        self.spec.provider == "local"
            || presets::find(&self.spec.provider).is_some_and(|p| p.prompt_logprobs)
    }

    /// What identifies this target's answers in a response cache (never a secret).
    pub fn identity(&self) -> Value {
        self.provider.identity()
    }

    /// The one door to the target: wait for a slot of its concurrency, then send with its rate
    /// limits and retries.
    pub async fn ask(&self, req: &ChatRequest) -> Outcome {
        self.ask_with(req, None).await
    }

    /// [`Self::ask`], passing the answer's text to `deltas` as it arrives (retried only until the
    /// first text has gone out).
    pub async fn ask_streaming(&self, req: &ChatRequest, deltas: &Deltas) -> Outcome {
        self.ask_with(req, Some(deltas)).await
    }

    async fn ask_with(&self, req: &ChatRequest, deltas: Option<&Deltas>) -> Outcome {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore stays open");
        retry::send(
            self.provider.as_ref(),
            req,
            &self.limiter,
            &self.retry,
            deltas,
        )
        .await
    }

    /// USD for one answered request, if the target has prices.
    pub fn cost(&self, r: &ChatResponse) -> Option<f64> {
        let s = &self.spec;
        if s.price_in.is_none() && s.price_out.is_none() && s.price_per_hour.is_none() {
            return None;
        }
        let mut usd = 0.0;
        if let Some(p) = s.price_in {
            usd += p * r.prompt_tokens? as f64 / 1e6;
        }
        if let Some(p) = s.price_out {
            usd += p * r.completion_tokens? as f64 / 1e6;
        }
        if let Some(p) = s.price_per_hour {
            // The local model reports its share of a batch; for a server of one's own behind HTTP,
            // a request holds one of `concurrency` slots for its latency (exact when the run keeps
            // the server busy, as an eval does).
            let machine_s = r.compute_s.unwrap_or(r.latency_s / self.concurrency as f64);
            usd += p * machine_s / 3600.0;
        }
        Some(usd)
    }
}

/// The local model on its worker thread: loaded there from the spec's model, adapter and device.
fn spawn_local(spec: &TargetSpec, batch: usize) -> Result<LocalProvider, ProviderError> {
    let quantized = spec.quantized;
    let precision = spec.dtype;
    let (model, adapter, device, threads) = (
        spec.model.clone(),
        spec.adapter.clone(),
        spec.device.unwrap_or_default(),
        spec.threads,
    );
    let fail = |e: &dyn std::fmt::Display| ProviderError::Local(e.to_string());
    LocalProvider::spawn(
        move || {
            load::set_threads(threads);
            let dev = device.device().map_err(|e| fail(&e))?;
            let files = load::open(model.as_deref()).map_err(|e| fail(&e))?;
            let origin = files.path.display().to_string();
            let adapter_sha = match &adapter {
                Some(d) => Some(
                    crate::util::sha256_file(&d.join(crate::formats::adapter::WEIGHTS_FILE))
                        .map_err(|e| fail(&e))?,
                ),
                None => None,
            };
            let mut files = match &adapter {
                Some(d) => files.with_adapter(d).map_err(|e| fail(&e))?,
                None => files,
            };
            files.quantized_decode = quantized;
            files.precision = precision;
            let engine = Engine::load(files, &dev).map_err(|e| fail(&e))?;
            let mut identity = serde_json::json!({
                "kind": "local", "model": origin, "adapter_sha256": adapter_sha,
            });
            // Only when set, so that f32 targets keep their cached answers.
            if quantized {
                identity["quantized"] = true.into();
            }
            if precision != crate::model::Precision::F32 {
                identity["dtype"] = precision.name().into();
            }
            Ok((engine, identity))
        },
        batch,
    )
}
