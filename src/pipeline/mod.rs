//! The main job, in one process: fetch the model, train the recipe, evaluate base, tuned and the
//! configured providers on the suites, derive and export the routing policy, write the report.
//! Each stage calls the library directly with typed settings and is skipped when a fingerprint
//! of its inputs matches the one recorded after it last finished ([`stages`]); interrupted stages
//! resume (training from its checkpoints, the eval from its streamed results and the response
//! cache). [`record`] writes what a run used.
//!
//! The pipeline file's `[route]` table is [`DeriveOptions`] itself: every option `route derive`
//! has can be set there.

pub mod record;
pub mod stages;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::eval::{self, EvalObserver, Suite};
use crate::load::{self, DEFAULT_MODEL, LoadError};
use crate::providers::cache::ResponseCache;
use crate::providers::{TargetSpec, TargetsFile, presets};
use crate::route::derive::{self, DeriveOptions};
use crate::route::export::{self, LocalEndpoint};
use crate::train::{self, LoadedRecipe, TrainObserver, TrainOptions};
use crate::util::{FileError, Interrupt, write_atomic, write_json};
use stages::{Stages, fingerprint};

/// A pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    /// The run's folder (relative to the working directory).
    pub out: PathBuf,
    /// The recipe (relative to the pipeline file).
    pub recipe: PathBuf,
    /// Suites (relative to the pipeline file).
    pub suites: Vec<PathBuf>,
    /// Use the first N cases of each suite.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Hosted or other HTTP targets by name, from `targets_file`; those whose API key is not in
    /// the environment are skipped with one line.
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub targets_file: Option<PathBuf>,
    /// `local` targets: requests generated together.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// How the policy is derived (`machine_price_per_hour` also prices the local targets).
    #[serde(default)]
    pub route: DeriveOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{pipeline}: {file} does not exist")]
    Missing { pipeline: PathBuf, file: PathBuf },
    #[error("{pipeline}: provider `{name}` is not in {targets_file}")]
    UnknownProvider {
        pipeline: PathBuf,
        name: String,
        targets_file: PathBuf,
    },
    #[error("stage `{stage}`: {source}\n(fix it and run the same command again to resume)")]
    Stage {
        stage: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stage `{0}` was interrupted; run the same command again to resume")]
    Interrupted(&'static str),
}

fn stage_err(
    stage: &'static str,
) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> PipelineError {
    move |source| PipelineError::Stage { stage, source }
}

/// Watches a pipeline. The stages' own observers come from here; every method has a default
/// that does nothing.
pub trait PipelineObserver {
    /// A stage starts: what it does, in a few words.
    fn stage(&mut self, _stage: &str, _what: &str) {}
    /// A stage is skipped: its inputs are unchanged since it last finished.
    fn skipped(&mut self, _stage: &str, _output: &Path) {}
    /// Something worth a line (a provider skipped for want of a key).
    fn note(&mut self, _message: &str) {}
    /// Converting the fetched model: tensor `i` of `n`.
    fn fetching(&mut self, _i: usize, _n: usize) {}
    /// A target is being built (a local model is loading).
    fn target(&mut self, _spec: &TargetSpec) {}
    fn train(&mut self) -> &mut dyn TrainObserver;
    fn eval(&mut self) -> &mut dyn EvalObserver;
}

pub struct PipelineOptions {
    /// Run every stage even when its inputs are unchanged.
    pub force: bool,
    /// Set by the caller (Ctrl-C): the running stage stops at its next safe point.
    pub interrupt: Interrupt,
}

/// What a finished pipeline wrote.
#[derive(Debug, Clone)]
pub struct Finished {
    pub out: PathBuf,
    pub report: PathBuf,
}

/// A path of the pipeline file, relative to the file's folder.
fn beside(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, e))?;
        toml::from_str(&text).map_err(|e| PipelineError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })
    }
}

/// Run the pipeline in `file`.
pub fn run(
    file: &Path,
    opts: &PipelineOptions,
    observer: &mut dyn PipelineObserver,
) -> Result<Finished, PipelineError> {
    let p = Pipeline::load(file)?;
    let recipe = beside(file, &p.recipe);
    let suites: Vec<PathBuf> = p.suites.iter().map(|x| beside(file, x)).collect();
    for f in std::iter::once(&recipe).chain(&suites) {
        if !f.exists() {
            return Err(PipelineError::Missing {
                pipeline: file.to_path_buf(),
                file: f.clone(),
            });
        }
    }
    let out = p.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| FileError::io(&out, e))?;
    let stages = Stages::new(&out, opts.force);
    let started = crate::util::now_s();
    let loaded = LoadedRecipe::load(&recipe).map_err(|e| stage_err("train")(e.into()))?;

    model_stage(&loaded, observer)?;
    let adapter = train_stage(&stages, &loaded, &out, opts, observer)?;
    let eval_dir = eval_stage(
        &stages, file, &p, &suites, &loaded, &adapter, opts, observer,
    )?;
    route_stage(&stages, file, &p, &out, &eval_dir, observer)?;

    record::write(&out, file, &recipe, &suites, &p, &loaded, started)
        .map_err(|e| stage_err("record")(e.into()))?;
    observer.stage("report", &format!("{}", out.display()));
    let (report, _) = crate::report::write(&out).map_err(|e| stage_err("report")(e.into()))?;
    Ok(Finished { out, report })
}

/// 1. The model: the default model is fetched when the recipe trains it and it is not there.
fn model_stage(
    loaded: &LoadedRecipe,
    observer: &mut dyn PipelineObserver,
) -> Result<(), PipelineError> {
    let base = loaded.recipe.base_model.as_deref().unwrap_or(DEFAULT_MODEL);
    if base != DEFAULT_MODEL {
        return Ok(());
    }
    observer.stage(
        "model",
        &format!("{DEFAULT_MODEL} in {}", load::models_dir().display()),
    );
    load::fetch::fetch_default(load::fetch::FetchFrom::Auto, false, |i, n| {
        observer.fetching(i, n)
    })
    .map_err(|e: LoadError| stage_err("model")(e.into()))?;
    Ok(())
}

/// 2. Training, into `out/train`; resumes a run of the same inputs that was interrupted.
fn train_stage(
    stages: &Stages,
    loaded: &LoadedRecipe,
    out: &Path,
    opts: &PipelineOptions,
    observer: &mut dyn PipelineObserver,
) -> Result<PathBuf, PipelineError> {
    let train_dir = out.join("train");
    let adapter = train::adapter_dir(&train_dir);
    let mut inputs = vec![loaded.path.clone()];
    inputs.extend(
        loaded
            .recipe
            .datasets
            .iter()
            .map(|d| loaded.resolve(&d.path)),
    );
    let fp = fingerprint(&inputs, "")?;
    let weights = adapter.join(crate::formats::adapter::WEIGHTS_FILE);
    if stages.fresh("train", &fp, &[weights]) {
        observer.skipped("train", &adapter);
        return Ok(adapter);
    }
    let resume = train_dir.exists() && stages.started_with("train", &fp);
    stages.start("train", &fp)?;
    observer.stage(
        "train",
        &format!("{} → {}", loaded.path.display(), train_dir.display()),
    );
    let mut recipe = loaded.clone();
    recipe.recipe.output_dir = train_dir;
    let err = stage_err("train");
    let device = recipe.recipe.device.device().map_err(|e| err(e.into()))?;
    let prepared = train::prepare(recipe).map_err(|e| err(e.into()))?;
    let train_opts = TrainOptions {
        resume,
        overwrite: !resume,
    };
    let outcome = train::train(
        &prepared,
        &device,
        &train_opts,
        &opts.interrupt,
        observer.train(),
    )
    .map_err(|e| err(e.into()))?;
    if outcome.interrupted {
        return Err(PipelineError::Interrupted("train"));
    }
    stages.done("train", &fp)?;
    Ok(adapter)
}

/// The targets of the eval: base and tuned in-process, plus the providers that have keys.
fn targets(
    file: &Path,
    p: &Pipeline,
    loaded: &LoadedRecipe,
    adapter: &Path,
    observer: &mut dyn PipelineObserver,
) -> Result<Vec<TargetSpec>, PipelineError> {
    let mut targets = Vec::new();
    let tuned = std::path::absolute(adapter).map_err(|e| FileError::io(adapter, e))?;
    // Both local models on the device and in the base-weight precision the recipe trained in:
    // the tuned adapter is judged as it was trained, and the base beside it on equal terms.
    let recipe = &loaded.recipe;
    for (name, ad) in [("base", None), ("tuned", Some(tuned))] {
        let mut t = TargetSpec::local(name, recipe.base_model.clone(), ad);
        t.dtype = recipe.bf16.precision(recipe.device);
        t.device = Some(recipe.device);
        t.batch_size = p.batch_size;
        t.price_per_hour = p.route.machine_price_per_hour;
        t.timeout_s = 3600.0;
        targets.push(t);
    }
    if p.providers.is_empty() {
        return Ok(targets);
    }
    let tf = p
        .targets_file
        .as_ref()
        .map(|t| beside(file, t))
        .unwrap_or_else(|| PathBuf::from(derive::DEFAULT_TARGETS_FILE));
    let defined = TargetsFile::load(&tf).map_err(|e| stage_err("eval")(e.into()))?;
    for name in &p.providers {
        let t = defined.iter().find(|t| &t.name == name).ok_or_else(|| {
            PipelineError::UnknownProvider {
                pipeline: file.to_path_buf(),
                name: name.clone(),
                targets_file: tf.clone(),
            }
        })?;
        let var = t.api_key_env.clone().or_else(|| {
            presets::find(&t.provider)
                .filter(|p| p.key_required)
                .map(|p| p.api_key_env.to_string())
        });
        match var {
            Some(v) if std::env::var(&v).map_or(true, |k| k.is_empty()) => {
                observer.note(&format!("skipping provider `{name}`: {v} is not set"));
            }
            _ => targets.push(t.clone()),
        }
    }
    Ok(targets)
}

/// 3. The eval of every target on every suite, into `out/eval`.
#[allow(clippy::too_many_arguments)]
fn eval_stage(
    stages: &Stages,
    file: &Path,
    p: &Pipeline,
    suite_files: &[PathBuf],
    loaded: &LoadedRecipe,
    adapter: &Path,
    opts: &PipelineOptions,
    observer: &mut dyn PipelineObserver,
) -> Result<PathBuf, PipelineError> {
    let out = &p.out;
    let specs = targets(file, p, loaded, adapter, observer)?;
    // The targets as run, for the fingerprint and the record.
    let targets_json = out.join("targets.json");
    write_json(&targets_json, &serde_json::json!({ "targets": specs }))?;
    let eval_dir = out.join("eval");
    let mut inputs = suite_files.to_vec();
    inputs.push(targets_json);
    inputs.push(adapter.join(crate::formats::adapter::WEIGHTS_FILE));
    let fp = fingerprint(&inputs, &format!("{:?}", p.limit))?;
    if stages.fresh("eval", &fp, &[eval_dir.join("summary.json")]) {
        observer.skipped("eval", &eval_dir);
        return Ok(eval_dir);
    }
    let err = stage_err("eval");
    observer.stage(
        "eval",
        &format!(
            "{} suites × {} targets → {}",
            suite_files.len(),
            specs.len(),
            eval_dir.display()
        ),
    );
    let mut suites = Vec::new();
    for f in suite_files {
        let mut s = Suite::load(f).map_err(|e| err(e.into()))?;
        if let Some(n) = p.limit {
            s.cases.truncate(n);
        }
        suites.push(s);
    }
    // Judges are found among the targets, or named PRESET:MODEL.
    let local = TargetSpec::local("local", loaded.recipe.base_model.clone(), None);
    let catalog = eval::targets::Catalog::with(specs.clone(), local);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let (_, judge_specs) = catalog
        .resolve(&names, &suites)
        .map_err(|e| err(e.into()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| err(e.into()))?;
    let _guard = rt.enter();
    let (targets, judges) = eval::targets::build(&specs, &judge_specs, |s| observer.target(s))
        .map_err(|e| err(e.into()))?;
    let run_opts = eval::RunOptions {
        out: eval_dir.clone(),
        cache: Some(ResponseCache::new(ResponseCache::default_dir())),
        fresh: false,
        repeats: None,
        interrupt: opts.interrupt.clone(),
    };
    let report = rt
        .block_on(eval::runner::run(
            &suites,
            &targets,
            &judges,
            &run_opts,
            observer.eval(),
        ))
        .map_err(|e| err(e.into()))?;
    if report.interrupted {
        return Err(PipelineError::Interrupted("eval"));
    }
    stages.done("eval", &fp)?;
    Ok(eval_dir)
}

/// 4. The policy from the eval, and its LiteLLM export.
fn route_stage(
    stages: &Stages,
    file: &Path,
    p: &Pipeline,
    out: &Path,
    eval_dir: &Path,
    observer: &mut dyn PipelineObserver,
) -> Result<(), PipelineError> {
    let policy_path = out.join("policy.json");
    let litellm = out.join("litellm.yaml");
    let settings = serde_json::to_string(&p.route).expect("settings serialise");
    let fp = fingerprint(&[eval_dir.join("results.jsonl")], &settings)?;
    if stages.fresh("route", &fp, &[policy_path.clone(), litellm.clone()]) {
        observer.skipped("route", &policy_path);
        return Ok(());
    }
    observer.stage(
        "route",
        &format!("{} and {}", policy_path.display(), litellm.display()),
    );
    let err = stage_err("route");
    let mut opts = p.route.clone();
    opts.targets_file = opts.targets_file.map(|t| beside(file, &t));
    let run = derive::read_run(eval_dir).map_err(|e| err(e.into()))?;
    let policy = derive::derive(&[run], &opts).map_err(|e| err(e.into()))?;
    policy.save(&policy_path).map_err(|e| err(e.into()))?;
    let yaml =
        export::litellm_config(&policy, &LocalEndpoint::default()).map_err(|e| err(e.into()))?;
    write_atomic(&litellm, yaml.as_bytes())?;
    stages.done("route", &fp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Silent(train::Quiet, eval::runner::Quiet);

    impl PipelineObserver for Silent {
        fn train(&mut self) -> &mut dyn TrainObserver {
            &mut self.0
        }
        fn eval(&mut self) -> &mut dyn EvalObserver {
            &mut self.1
        }
    }

    #[test]
    fn local_targets_run_in_the_recipes_precision_and_on_its_device() {
        let p: Pipeline = toml::from_str(
            "name = \"p\"\nout = \"o\"\nrecipe = \"r.toml\"\nsuites = [\"s.toml\"]\nbatch_size = 3\n",
        )
        .unwrap();
        let file = Path::new("/runs/pipeline.toml");
        let base = "base_model = \"m\"\noutput_dir = \"o\"\n[[datasets]]\npath = \"d.jsonl\"\ntype = \"chat\"\n";
        let cases = [
            ("", crate::model::Precision::F32),
            ("bf16 = true\n", crate::model::Precision::Bf16),
            (
                "bf16 = \"auto\"\n",
                train::recipe::Bf16::Auto.precision(load::DeviceKind::Cpu),
            ),
        ];
        for (key, want) in cases {
            let text = format!("{key}{base}");
            let loaded = LoadedRecipe::parse(Path::new("r.toml"), text).unwrap();
            let mut quiet = Silent(train::Quiet, eval::runner::Quiet);
            let specs = targets(file, &p, &loaded, Path::new("/runs/adapter"), &mut quiet).unwrap();
            let names: Vec<_> = specs.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["base", "tuned"], "{key}");
            for t in &specs {
                assert_eq!(t.dtype, want, "{key} {}", t.name);
                assert_eq!(t.device, Some(load::DeviceKind::Cpu), "{key}");
                assert_eq!(t.batch_size, Some(3));
            }
            assert_eq!(
                specs[1].adapter.as_deref(),
                Some(Path::new("/runs/adapter"))
            );
        }
    }

    #[test]
    fn the_route_table_is_route_derives_options() {
        let p: Pipeline = toml::from_str(
            "name = \"p\"\nout = \"o\"\nrecipe = \"r.toml\"\nsuites = [\"s.toml\"]\n[route]\n\
             objective = \"fastest\"\nmax_error_rate = 0.1\nfallbacks = 1\ntasks = [\"mmlu\"]\nmin_cases = 5\n",
        )
        .unwrap();
        let want = DeriveOptions {
            objective: crate::route::Objective::Fastest,
            max_error_rate: Some(0.1),
            fallbacks: 1,
            tasks: vec!["mmlu".into()],
            min_cases: 5,
            ..DeriveOptions::default()
        };
        assert_eq!(p.route, want);
        let e = toml::from_str::<Pipeline>(
            "name = \"p\"\nout = \"o\"\nrecipe = \"r.toml\"\nsuites = []\n[route]\nmax_latency = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("max_latency") && e.contains("max_p95_latency"),
            "{e}"
        );
    }
}
