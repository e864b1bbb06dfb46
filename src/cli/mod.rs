//! One file per subcommand: parse flags, pick the device, call the library.

mod bench;
#[cfg(feature = "test-support")]
mod bench_eval;
mod bench_serve;
mod bench_train;
mod chat;
mod convert;
mod data;
mod eval;
mod generate;
mod merge;
mod models;
mod peers;
mod progress;
mod providers;
mod report;
mod route;
mod run;
mod serve;
mod suite;
mod train;

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::load::{self, DEFAULT_MODEL, DeviceKind};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Tune an open-weight model, measure it against hosted providers, route each task to the right one."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt (the chat template is applied unless --raw).
    Generate(generate::GenerateArgs),
    /// An interactive chat session with a model.
    Chat(chat::ChatArgs),
    /// Convert a GGUF file into a Hugging Face folder (config, safetensors, tokenizer, chat template).
    Convert(convert::ConvertArgs),
    /// Fetch, list and inspect models in the models directory.
    Models(models::ModelsArgs),
    /// Fine-tune a LoRA adapter from a recipe (recipes/*.toml).
    Train(train::TrainArgs),
    /// Look at a recipe's data as the trainer sees it.
    Data(data::DataArgs),
    /// Run an eval suite (evals/*.toml) on a model and score it.
    Eval(eval::EvalArgs),
    /// Provider presets, and catalogs (prices, context, latency) read into a targets file.
    Providers(providers::ProvidersArgs),
    /// Make suites: from logged traffic.
    Suite(suite::SuiteArgs),
    /// Derive a routing policy from eval results, and export it for other routers.
    Route(route::RouteArgs),
    /// Serve the local model, or a routing policy as a gateway, over an OpenAI-compatible API.
    Serve(serve::ServeArgs),
    /// The main job: recipe → training → evals of base, tuned and providers → routing policy → report.
    Run(run::RunArgs),
    /// Write a run's report: Markdown and one self-contained HTML file with plots.
    Report(report::ReportArgs),
    /// Merge a LoRA adapter into its base model and write a Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Benchmarks, with peers measured side by side in the same run.
    Bench(bench::BenchArgs),
}

/// Where and what to run: shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder, a Hub id (org/name[@rev]) or a name in the models
    /// directory. Default: SmolLM2-135M-Instruct from `switchyard models fetch`.
    #[arg(long, short)]
    pub model: Option<String>,
    /// cpu (burn flex), cuda or wgpu.
    #[arg(long, default_value_t = DeviceKind::Cpu, value_parser = device_kind())]
    pub device: DeviceKind,
    /// CPU threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A LoRA adapter folder in PEFT layout (ours or one trained with PEFT), merged as the model loads.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// With a quantised GGUF (Q4_0, Q4_1, Q8_0): decode on the CPU from its blocks, activations
    /// quantised to 8 bits per block, as llama.cpp does (about 3× faster than f32; logits
    /// then follow llama.cpp's rather than transformers').
    #[arg(long)]
    pub quantized: bool,
    /// The frozen weights' dtype: f32, or bf16 (half the memory; each product casts its input to
    /// bf16 and its output back to f32, so adapters, norms and activations stay f32). Faster than
    /// f32 on GPUs and on CPUs with AVX-512 BF16 (products in `vdpbf16ps`, f32 sums); on other
    /// CPUs burn multiplies bf16 through f32 copies, slower than f32.
    #[arg(long, default_value = "f32", value_parser = precision())]
    pub dtype: crate::model::Precision,
}

/// `--dtype`: f32 or bf16.
pub fn precision() -> impl clap::builder::TypedValueParser<Value = crate::model::Precision> {
    PossibleValuesParser::new(crate::model::Precision::NAMES)
        .map(|s| s.parse().expect("a listed name"))
}

/// `--device`: one of the device names, parsed into a [`DeviceKind`].
pub fn device_kind() -> impl clap::builder::TypedValueParser<Value = DeviceKind> {
    PossibleValuesParser::new(DeviceKind::NAMES).map(|s| s.parse().expect("a listed name"))
}

impl ModelArgs {
    /// The model's files (fetched first when it is the default model and not there yet).
    pub fn files(&self) -> anyhow::Result<load::ModelFiles> {
        ensure_model(self.model.as_deref())?;
        let files = load::open(self.model.as_deref())?;
        let mut files = match &self.adapter {
            Some(dir) => files.with_adapter(dir)?,
            None => files,
        };
        files.quantized_decode = self.quantized;
        files.precision = self.dtype;
        Ok(files)
    }

    pub fn load(&self) -> anyhow::Result<crate::generate::Engine> {
        load::set_threads(self.threads);
        let device = self.device.device()?;
        Ok(crate::generate::Engine::load(self.files()?, &device)?)
    }
}

/// The default model is fetched on first use, as `models fetch` would; any other model must
/// already be where its spec says.
pub fn ensure_model(spec: Option<&str>) -> anyhow::Result<()> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let folder = load::models_dir().join(DEFAULT_MODEL);
    if spec != DEFAULT_MODEL
        || std::path::Path::new(spec).exists()
        || crate::formats::hf::is_complete(&folder)
    {
        return Ok(());
    }
    eprintln!(
        "{DEFAULT_MODEL} is not in {} yet: fetching it (once)…",
        load::models_dir().display()
    );
    let mut count = progress::Counter::new("converting", "tensors");
    load::fetch::fetch_default(load::fetch::FetchFrom::Auto, false, |i, n| {
        count.update(i, n)
    })?;
    count.finish();
    Ok(())
}

/// Ctrl-C: the first asks `interrupt` to stop at its next safe point (after saying `what`), the
/// second quits at once.
pub fn on_ctrl_c(interrupt: &crate::util::Interrupt, what: &'static str) {
    let interrupt = interrupt.clone();
    let _ = ctrlc::set_handler(move || {
        if interrupt.trigger() {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: {what} (Ctrl-C again to quit now)");
    });
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "switchyard=debug,info",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Models(a) => models::run(a),
        Command::Train(a) => train::run(a),
        Command::Data(a) => data::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Providers(a) => providers::run(a),
        Command::Suite(a) => suite::run(a),
        Command::Route(a) => route::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Run(a) => run::run(a),
        Command::Report(a) => report::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
