//! `switchyard bench generate`: prefill and decode tokens/s of switchyard, and of PyTorch
//! transformers and llama.cpp on the same token ids in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::generate::Engine;
use crate::model::KvCache;
use crate::tokenize::Message;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Prefill and decode tokens/s, with peers side by side.
    Generate(GenerateBench),
    /// LoRA training tokens/s and peak memory, with PyTorch + PEFT side by side.
    Train(super::bench_train::TrainBench),
    /// Load curves of OpenAI-compatible servers: throughput against time to first token and
    /// latency percentiles at each concurrency (JSON, Markdown and a plot).
    Serve(super::bench_serve::ServeBench),
    /// What the eval harness adds to a provider's latency (against a bare client), and its memory
    /// (built with `--features test-support`: it runs against the test suite's fault server).
    #[cfg(feature = "test-support")]
    Eval(super::bench_eval::EvalBench),
    #[command(hide = true)]
    TrainWorker(super::bench_train::TrainWorker),
}

#[derive(Args, Debug)]
struct GenerateBench {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens in the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Greedy decode steps measured (EOS ignored).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Peers to run in the same session: transformers, llama.cpp (each skipped with a note if its
    /// Python package is missing).
    #[arg(long, value_delimiter = ',', default_value = "transformers,llama.cpp")]
    peers: Vec<String>,
    /// The Python that has the peers installed (default: .venv/bin/python if present, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// The GGUF for llama.cpp (default: the default model's GGUF in the models directory).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    engine: String,
    versions: String,
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Exactly `n` tokens of ordinary English prose.
fn prefill_ids(engine: &Engine, n: usize) -> anyhow::Result<Vec<u32>> {
    let text =
        "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. "
            .repeat(n / 8 + 4);
    let ids = engine.tokenizer.encode(&text, false)?;
    anyhow::ensure!(ids.len() >= n, "prompt text too short for {n} tokens");
    Ok(ids[..n].to_vec())
}

fn ours(
    engine: &Engine,
    prefill: &[u32],
    prompt: &[u32],
    new_tokens: usize,
    repeats: usize,
) -> (f64, f64) {
    let run_prefill = || {
        let mut cache = KvCache::new(engine.model.num_layers(), vec![0]);
        let t = Instant::now();
        engine.step(prefill.to_vec(), 1, &mut cache);
        t.elapsed().as_secs_f64()
    };
    let run_decode = || {
        let mut cache = KvCache::new(engine.model.num_layers(), vec![0]);
        let mut logits = engine.step(prompt.to_vec(), 1, &mut cache).remove(0);
        let t = Instant::now();
        for _ in 0..new_tokens {
            let next = crate::generate::top_n(&logits, 1)[0] as u32;
            logits = engine.step(vec![next], 1, &mut cache).remove(0);
        }
        t.elapsed().as_secs_f64()
    };
    run_prefill();
    let p = median((0..repeats).map(|_| run_prefill()).collect());
    run_decode();
    let d = median((0..repeats).map(|_| run_decode()).collect());
    (prefill.len() as f64 / p, new_tokens as f64 / d)
}

fn python(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let venv = Path::new(".venv/bin/python");
    if venv.exists() {
        venv.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

fn peer(python: &Path, script: &str, model: &Path, workload: &Path) -> Result<Row, String> {
    let script_path = super::peers::script(script);
    let out = Command::new(python)
        .arg(&script_path)
        .arg(model)
        .arg(workload)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{script} printed no JSON: {e}"))?;
    Ok(Row {
        engine: v["peer"].as_str().unwrap_or(script).to_string(),
        versions: v["versions"].as_str().unwrap_or_default().to_string(),
        prefill_tok_s: v["prefill_tok_s"].as_f64().unwrap_or(f64::NAN),
        decode_tok_s: v["decode_tok_s"].as_f64().unwrap_or(f64::NAN),
    })
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let b = match a.command {
        BenchCommand::Generate(b) => b,
        BenchCommand::Train(t) => return super::bench_train::run(t),
        BenchCommand::Serve(s) => return super::bench_serve::run(s),
        #[cfg(feature = "test-support")]
        BenchCommand::Eval(e) => return super::bench_eval::run(e),
        BenchCommand::TrainWorker(w) => return super::bench_train::worker(w),
    };
    anyhow::ensure!(
        b.repeats > 0 && b.new_tokens > 0 && b.prompt_tokens > 0,
        "counts must be positive"
    );
    let files = b.model.files()?;
    let model_path = files.path.clone();
    crate::load::set_threads(b.model.threads);
    let device = b.model.device.device()?;
    let engine = Engine::load(files, &device)?;
    let threads = rayon::current_num_threads();
    let prefill = prefill_ids(&engine, b.prompt_tokens)?;
    let chat = engine.tokenizer.apply_chat_template(
        &[Message::new("user", "What is the capital of France?")],
        true,
    )?;
    let prompt = engine.tokenizer.encode(&chat, false)?;

    let workload = json!({"prefill_ids": prefill, "decode_prompt_ids": prompt, "new_tokens": b.new_tokens,
                          "threads": threads, "repeats": b.repeats,
                          "device": super::peers::torch_device(b.model.device),
                          "dtype": b.model.dtype.name()});
    let wl_file = tempfile::NamedTempFile::new()?;
    std::fs::write(wl_file.path(), workload.to_string())?;

    eprintln!("machine: {}", crate::machine::this().summary());
    eprintln!(
        "switchyard: {} threads, {:?} device, {} prefill tokens, {} decode steps, median of {}",
        threads, b.model.device, b.prompt_tokens, b.new_tokens, b.repeats
    );
    let (p, d) = ours(&engine, &prefill, &prompt, b.new_tokens, b.repeats);
    let mut rows = vec![Row {
        engine: "switchyard".into(),
        versions: format!(
            "switchyard {} (burn 0.22.1, {:?}, {} weights of {})",
            env!("CARGO_PKG_VERSION"),
            b.model.device,
            b.model.dtype.name(),
            model_path.display()
        ),
        prefill_tok_s: p,
        decode_tok_s: d,
    }];
    drop(engine);
    let gguf = b
        .gguf
        .clone()
        .unwrap_or_else(|| crate::load::models_dir().join(crate::load::fetch::GGUF_NAME));
    // The same GGUF llama.cpp runs, decoded from its quantised blocks (the llama.cpp-like way).
    if b.model.device == crate::load::DeviceKind::Cpu && gguf.is_file() {
        let mut files = crate::load::open(Some(&gguf.display().to_string()))?;
        files.quantized_decode = true;
        let engine = Engine::load(files, &device)?;
        let (p, d) = ours(&engine, &prefill, &prompt, b.new_tokens, b.repeats);
        rows.push(Row {
            engine: "switchyard-q".into(),
            versions: format!(
                "switchyard {} (burn 0.22.1, {:?}, quantised decode from {}; prefill on its f32 dequantisation)",
                env!("CARGO_PKG_VERSION"),
                b.model.device,
                gguf.display()
            ),
            prefill_tok_s: p,
            decode_tok_s: d,
        });
    }
    let py = python(b.python.as_deref());
    let mut skipped = Vec::new();
    for name in &b.peers {
        let result = match name.as_str() {
            "transformers" => peer(&py, "bench_transformers.py", &model_path, wl_file.path()),
            "llama.cpp" | "llamacpp" => peer(&py, "bench_llamacpp.py", &gguf, wl_file.path()),
            other => Err(format!(
                "unknown peer `{other}` (known: transformers, llama.cpp)"
            )),
        };
        match result {
            Ok(r) => rows.push(r),
            Err(e) => skipped.push(format!("{name}: skipped ({e})")),
        }
    }
    // Each peer is compared with the switchyard engine that reads the same weights: transformers
    // with the f32 folder, llama.cpp with the quantised GGUF (when that row exists).
    let quantized_row = rows.iter().position(|r| r.engine == "switchyard-q");
    let against = |i: usize| -> usize {
        match (rows[i].engine.as_str(), quantized_row) {
            (e, _) if e.starts_with("switchyard") => i,
            (e, Some(q)) if e.starts_with("llama.cpp") => q,
            _ => 0,
        }
    };
    println!(
        "{:<14} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "engine", "prefill tok/s", "decode tok/s", "compared with", "prefill ×", "decode ×"
    );
    let mut ratios = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let a = &rows[against(i)];
        let (pr, dr) = (
            a.prefill_tok_s / r.prefill_tok_s,
            a.decode_tok_s / r.decode_tok_s,
        );
        println!(
            "{:<14} {:>14.1} {:>14.1} {:>14} {:>10.2} {:>10.2}",
            r.engine, r.prefill_tok_s, r.decode_tok_s, a.engine, pr, dr
        );
        ratios.push(json!({"engine": r.engine, "compared_with": a.engine,
                           "prefill_ratio": pr, "decode_ratio": dr}));
    }
    println!(
        "(× = the switchyard engine's rate divided by that engine's; above 1 means switchyard is faster)"
    );
    for s in &skipped {
        println!("{s}");
    }
    for r in &rows {
        println!("  {}: {}", r.engine, r.versions);
    }
    if let Some(out) = &b.out {
        let doc = json!({"machine": crate::machine::this(), "threads": threads, "prompt_tokens": b.prompt_tokens, "new_tokens": b.new_tokens,
                         "repeats": b.repeats, "results": rows, "ratios": ratios,
                         "skipped": skipped});
        crate::util::write_json(out, &doc)?;
    }
    Ok(())
}
