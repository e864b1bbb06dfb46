//! `switchyard serve`: the local model (or, with `--policy`, a routing gateway) behind an
//! OpenAI-compatible HTTP API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::providers::{Target, TargetSpec};
use crate::route::Policy;
use crate::serve::{self, Backend, ServeOptions};
use anyhow::Context;
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Serve a routing policy (from `switchyard route derive`) as a gateway instead of one model.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The model name clients ask for (default: the model's folder name, `+adapter` if one is given).
    #[arg(long)]
    name: Option<String>,
    /// Address to bind. The default answers this machine only; 0.0.0.0 exposes the server.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// An environment variable holding the bearer token clients must send (none: no auth).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Largest request body, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
    /// Requests handled at once; more get 429.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Local model: requests generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let api_key = match &a.api_key_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--api-key-env: the variable {var} is not set"))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _g = rt.enter();
    let backend = match &a.policy {
        Some(p) => {
            let policy = Policy::load(p)?;
            let mut targets = BTreeMap::new();
            for (name, spec) in &policy.targets {
                let used = policy
                    .routes
                    .iter()
                    .any(|r| &r.primary == name || r.fallbacks.contains(name));
                if used {
                    if spec.provider == "local" {
                        super::ensure_model(spec.model.as_deref())?;
                    }
                    eprintln!("target {name}: {}", spec.provider);
                    targets.insert(name.clone(), Arc::new(Target::build(spec.clone())?));
                }
            }
            Backend::Gateway {
                policy: Box::new(policy),
                targets,
            }
        }
        None => {
            let name = a.name.clone().unwrap_or_else(|| {
                let base = a
                    .model
                    .model
                    .clone()
                    .unwrap_or_else(|| "SmolLM2-135M-Instruct".into());
                let base = base.rsplit('/').next().unwrap_or(&base).to_string();
                match &a.model.adapter {
                    Some(d) => format!(
                        "{base}+{}",
                        d.file_name()
                            .map_or("adapter".into(), |f| f.to_string_lossy().to_string())
                    ),
                    None => base,
                }
            });
            super::ensure_model(a.model.model.as_deref())?;
            let mut spec = TargetSpec::local(&name, a.model.model.clone(), a.model.adapter.clone());
            spec.batch_size = Some(a.batch_size);
            spec.device = Some(a.model.device);
            spec.threads = a.model.threads;
            spec.quantized = a.model.quantized;
            spec.dtype = a.model.dtype;
            Backend::Local {
                name,
                target: Arc::new(Target::build(spec)?),
            }
        }
    };
    let models = match &backend {
        Backend::Local { name, .. } => name.clone(),
        Backend::Gateway { policy, .. } => policy
            .routes
            .iter()
            .map(|r| format!("route/{}", r.task))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let app = serve::app(
        backend,
        ServeOptions {
            api_key,
            max_body_bytes: a.max_body_kib * 1024,
            max_concurrency: a.max_concurrency,
        },
    );
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("bind {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!("serving {models} at http://{addr}/v1 (OpenAI-compatible; Ctrl-C stops)");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}
