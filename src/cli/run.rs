//! `switchyard run PIPELINE.toml`: the main job, from recipe to routing table. Fetch the model,
//! train the recipe, evaluate base, tuned and the configured providers on the suites, derive and
//! export the routing policy, write the report. Each stage runs as the same `switchyard`
//! subcommand a user would type, and is skipped when a fingerprint of its inputs matches the one
//! recorded after it last finished; interrupted stages resume (training from its checkpoints, the
//! eval from its streamed results and the response cache).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchyard::providers::target::TargetsFile;
use switchyard::providers::{TargetSpec, presets};
use switchyard::weights::write_atomic;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file (TOML), e.g. recipes/pipeline.toml.
    pipeline: PathBuf,
    /// Run every stage even when its inputs are unchanged.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RouteSettings {
    #[serde(default)]
    objective: Option<String>,
    #[serde(default)]
    margin: Option<f64>,
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    max_p95_latency: Option<f64>,
    #[serde(default)]
    max_cost_per_1k: Option<f64>,
    /// Tasks with fewer cases get no route of their own.
    #[serde(default)]
    min_cases: Option<usize>,
    /// USD per hour of the machine that self-hosts (prices the local targets, and the economics).
    #[serde(default)]
    machine_price_per_hour: Option<f64>,
    #[serde(default)]
    machine_tokens_per_s: Option<f64>,
}

/// A pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    name: String,
    /// The run's folder (relative to the working directory).
    out: PathBuf,
    /// The recipe (relative to the pipeline file).
    recipe: PathBuf,
    /// Suites (relative to the pipeline file).
    suites: Vec<PathBuf>,
    /// Use the first N cases of each suite.
    #[serde(default)]
    limit: Option<usize>,
    /// Hosted or other HTTP targets by name, from `targets_file`; those whose API key is not in
    /// the environment are skipped with one line.
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    targets_file: Option<PathBuf>,
    /// `local` targets: requests generated together.
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    route: RouteSettings,
}

fn beside(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn sha_files(paths: &[PathBuf], extra: &str) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.display().to_string().as_bytes());
        h.update(std::fs::read(p).with_context(|| format!("read {}", p.display()))?);
    }
    h.update(extra.as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

struct Stages {
    dir: PathBuf,
    force: bool,
}

impl Stages {
    fn path(&self, stage: &str) -> PathBuf {
        self.dir.join(".stages").join(format!("{stage}.json"))
    }
    fn fresh(&self, stage: &str, fingerprint: &str, outputs: &[PathBuf]) -> bool {
        !self.force
            && outputs.iter().all(|p| p.exists())
            && std::fs::read_to_string(self.path(stage))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["fingerprint"] == fingerprint)
    }
    fn done(&self, stage: &str, fingerprint: &str) -> anyhow::Result<()> {
        let v = json!({"stage": stage, "fingerprint": fingerprint, "finished_at": now()});
        write_atomic(
            &self.path(stage),
            serde_json::to_string_pretty(&v)?.as_bytes(),
        )?;
        Ok(())
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Run this same binary with `args`, streaming its output; fail with the stage's name.
fn step(stage: &str, args: &[String]) -> anyhow::Result<()> {
    eprintln!("\n== {stage}: switchyard {}", args.join(" "));
    let status = Command::new(std::env::current_exe()?)
        .args(args)
        .status()
        .with_context(|| format!("{stage}: start"))?;
    if !status.success() {
        bail!("stage `{stage}` failed ({status}); fix it and run the same command again to resume");
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let file = &a.pipeline;
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let p: Pipeline = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    let recipe = beside(file, &p.recipe);
    let suites: Vec<PathBuf> = p.suites.iter().map(|x| beside(file, x)).collect();
    for f in std::iter::once(&recipe).chain(&suites) {
        if !f.exists() {
            bail!("{}: {} does not exist", file.display(), f.display());
        }
    }
    let out = p.out.clone();
    std::fs::create_dir_all(&out)?;
    let stages = Stages {
        dir: out.clone(),
        force: a.force,
    };
    let started = now();

    // 1. The model.
    step("model", &["models".into(), "fetch".into()])?;

    // 2. Training.
    let train_dir = out.join("train");
    let adapter = train_dir.join("adapter");
    let loaded = switchyard::train::recipe::LoadedRecipe::load(&recipe)?;
    let mut inputs = vec![recipe.clone()];
    inputs.extend(
        loaded
            .recipe
            .datasets
            .iter()
            .map(|d| loaded.resolve(&d.path)),
    );
    let train_fp = sha_files(&inputs, "")?;
    if stages.fresh(
        "train",
        &train_fp,
        &[adapter.join("adapter_model.safetensors")],
    ) {
        eprintln!("\n== train: unchanged, skipped ({})", adapter.display());
    } else {
        let resume = train_dir.exists()
            && std::fs::read_to_string(stages.path("train-started"))
                .is_ok_and(|t| t.contains(&train_fp));
        write_atomic(&stages.path("train-started"), train_fp.as_bytes())?;
        let mut args = vec![
            "train".into(),
            s(&recipe),
            "--output-dir".into(),
            s(&train_dir),
        ];
        args.push(if resume { "--resume" } else { "--overwrite" }.into());
        step("train", &args)?;
        stages.done("train", &train_fp)?;
    }

    // 3. Targets: base and tuned in-process, plus the providers that have keys.
    let price = p.route.machine_price_per_hour;
    let mut targets = Vec::new();
    for (name, ad) in [
        ("base", None),
        ("tuned", Some(std::path::absolute(&adapter)?)),
    ] {
        let mut t = TargetSpec::local(name, loaded.recipe.base_model.clone(), ad);
        t.batch_size = p.batch_size;
        t.price_per_hour = price;
        t.timeout_s = 3600.0;
        targets.push(t);
    }
    if !p.providers.is_empty() {
        let tf = p
            .targets_file
            .as_ref()
            .map(|t| beside(file, t))
            .unwrap_or_else(|| PathBuf::from("evals/targets.toml"));
        let defined = TargetsFile::load(&tf)?;
        for name in &p.providers {
            let t = defined.iter().find(|t| &t.name == name).with_context(|| {
                format!(
                    "{}: provider `{name}` is not in {}",
                    file.display(),
                    tf.display()
                )
            })?;
            let var = t.api_key_env.clone().or_else(|| {
                presets::find(&t.provider)
                    .filter(|p| p.key_required)
                    .map(|p| p.api_key_env.to_string())
            });
            match var {
                Some(v) if std::env::var(&v).map_or(true, |k| k.is_empty()) => {
                    eprintln!("skipping provider `{name}`: {v} is not set");
                }
                _ => targets.push(t.clone()),
            }
        }
    }
    let targets_toml = out.join("targets.json");
    let body = serde_json::to_string_pretty(&json!({ "targets": targets }))?;
    write_atomic(&targets_toml, body.as_bytes())?;

    // 4. Eval.
    let eval_dir = out.join("eval");
    let mut eval_inputs = suites.clone();
    eval_inputs.push(targets_toml.clone());
    eval_inputs.push(adapter.join("adapter_model.safetensors"));
    let eval_fp = sha_files(&eval_inputs, &format!("{:?}", p.limit))?;
    if stages.fresh("eval", &eval_fp, &[eval_dir.join("summary.json")]) {
        eprintln!("\n== eval: unchanged, skipped ({})", eval_dir.display());
    } else {
        let mut args: Vec<String> = vec!["eval".into()];
        args.extend(suites.iter().map(|x| s(x)));
        args.extend([
            "--targets-file".into(),
            s(&targets_toml),
            "--out".into(),
            s(&eval_dir),
        ]);
        for t in &targets {
            args.extend(["--target".into(), t.name.clone()]);
        }
        if let Some(n) = p.limit {
            args.extend(["--limit".into(), n.to_string()]);
        }
        step("eval", &args)?;
        stages.done("eval", &eval_fp)?;
    }

    // 5. Route.
    let policy = out.join("policy.json");
    let r = &p.route;
    let route_fp = sha_files(
        &[eval_dir.join("results.jsonl")],
        &serde_json::to_string(r)?,
    )?;
    if stages.fresh(
        "route",
        &route_fp,
        &[policy.clone(), out.join("litellm.yaml")],
    ) {
        eprintln!("\n== route: unchanged, skipped ({})", policy.display());
    } else {
        let mut args: Vec<String> = vec![
            "route".into(),
            "derive".into(),
            s(&eval_dir),
            "--out".into(),
            s(&policy),
        ];
        let opt = |args: &mut Vec<String>, flag: &str, v: Option<String>| {
            if let Some(v) = v {
                args.extend([flag.to_string(), v]);
            }
        };
        opt(&mut args, "--objective", r.objective.clone());
        opt(&mut args, "--margin", r.margin.map(|v| v.to_string()));
        opt(&mut args, "--min-cases", r.min_cases.map(|v| v.to_string()));
        opt(&mut args, "--min-score", r.min_score.map(|v| v.to_string()));
        opt(
            &mut args,
            "--max-p95-latency",
            r.max_p95_latency.map(|v| v.to_string()),
        );
        opt(
            &mut args,
            "--max-cost-per-1k",
            r.max_cost_per_1k.map(|v| v.to_string()),
        );
        opt(
            &mut args,
            "--machine-price-per-hour",
            r.machine_price_per_hour.map(|v| v.to_string()),
        );
        opt(
            &mut args,
            "--machine-tokens-per-s",
            r.machine_tokens_per_s.map(|v| v.to_string()),
        );
        step("route", &args)?;
        step(
            "export",
            &[
                "route".into(),
                "export".into(),
                s(&policy),
                "--format".into(),
                "litellm".into(),
                "--out".into(),
                s(&out.join("litellm.yaml")),
            ],
        )?;
        stages.done("route", &route_fp)?;
    }

    // 6. The run record, then the report.
    record(&out, file, &recipe, &suites, &p, &loaded, started)?;
    step("report", &["report".into(), s(&out)])?;
    eprintln!("\ndone: {}", out.join("report.html").display());
    Ok(())
}

/// `record/`: the exact files this run used, and `record/record.json`: versions, seeds, the
/// model's hash, the git commit, stage fingerprints.
fn record(
    out: &Path,
    pipeline: &Path,
    recipe: &Path,
    suites: &[PathBuf],
    p: &Pipeline,
    loaded: &switchyard::train::recipe::LoadedRecipe,
    started: f64,
) -> anyhow::Result<()> {
    let dir = out.join("record");
    // A recipe and a suite may share a file name: each kind gets its own folder.
    let mut copied = Vec::new();
    for (sub, f) in std::iter::once(("", pipeline))
        .chain(std::iter::once(("recipe", recipe)))
        .chain(suites.iter().map(|x| ("suites", x.as_path())))
    {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let rel = Path::new(sub).join(&name);
        write_atomic(&dir.join(&rel), &std::fs::read(f)?)?;
        copied.push(rel.display().to_string());
    }
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty());
    let files = switchyard::weights::resolve::open(loaded.recipe.base_model.as_deref())?;
    let mut model_hash = serde_json::Map::new();
    for entry in std::fs::read_dir(&files.path)? {
        let e = entry?.path();
        if e.extension().is_some_and(|x| x == "safetensors") {
            let mut h = Sha256::new();
            std::io::copy(&mut std::fs::File::open(&e)?, &mut h)?;
            model_hash.insert(
                e.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                json!(format!("{:x}", h.finalize())),
            );
        }
    }
    let stages: serde_json::Map<String, serde_json::Value> = ["train", "eval", "route"]
        .iter()
        .filter_map(|s| {
            let t = std::fs::read_to_string(out.join(".stages").join(format!("{s}.json"))).ok()?;
            Some((s.to_string(), serde_json::from_str(&t).ok()?))
        })
        .collect();
    let v = json!({
        "pipeline": p.name,
        "started_at": started,
        "switchyard": env!("CARGO_PKG_VERSION"),
        "burn": "0.22.1",
        "git_commit": git,
        "git_dirty": dirty,
        "model": {"spec": loaded.recipe.base_model, "folder": files.path, "sha256": model_hash},
        "seeds": {"recipe": loaded.recipe.seed},
        "limit": p.limit,
        "stages": stages,
        "files": copied,
    });
    write_atomic(
        &dir.join("record.json"),
        serde_json::to_string_pretty(&v)?.as_bytes(),
    )?;
    Ok(())
}
