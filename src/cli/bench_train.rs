//! `switchyard bench train`: LoRA training tokens/s and peak memory on the same batches, for
//! switchyard and PyTorch + PEFT, in the same run. Each measurement runs in its own process so
//! that peak memory is that configuration's alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use serde_json::{Value, json};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct TrainBench {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Timed optimiser steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Adapter placements to measure: qv (q_proj, v_proj) and all (every linear projection).
    #[arg(long, value_delimiter = ',', default_value = "qv,all")]
    configs: Vec<String>,
    /// Skip PyTorch + PEFT.
    #[arg(long)]
    no_peer: bool,
    /// The Python with torch, transformers and peft.
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The hidden worker: one configuration, one process.
#[derive(Args, Debug)]
pub struct TrainWorker {
    #[command(flatten)]
    model: ModelArgs,
    workload: PathBuf,
    config: String,
}

/// The adapted projections of a configuration: q and v, or every linear projection of the
/// model's architecture.
fn targets(config: &str, cfg: &crate::model::ResolvedConfig) -> Vec<String> {
    match config {
        "qv" => vec!["q_proj".into(), "v_proj".into()],
        _ => {
            let mut names: Vec<String> = Vec::new();
            for (_, p) in cfg.projections() {
                if p.module != "lm_head" && !names.iter().any(|n| n == p.short()) {
                    names.push(p.short().to_string());
                }
            }
            names
        }
    }
}

/// Peak resident memory of this process, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub fn worker(w: TrainWorker) -> anyhow::Result<()> {
    crate::load::set_threads(w.model.threads);
    let device = w.model.device.device()?;
    let wl: Value = serde_json::from_str(&std::fs::read_to_string(&w.workload)?)?;
    let rows: Vec<Vec<u32>> = serde_json::from_value(wl["rows"].clone())?;
    let rank = wl["rank"].as_u64().unwrap_or(8) as usize;
    let steps = wl["steps"].as_u64().unwrap_or(5) as usize;
    let mut files = crate::load::open(w.model.model.as_deref())?;
    files.precision = w.model.dtype;
    let targets = targets(&w.config, &files.resolved);
    let tps = crate::train::throughput(&files, &targets, rank, &rows, steps, &device)?;
    println!(
        "{}",
        json!({"tokens_per_s": tps, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(())
}

fn run_json(cmd: &mut Command) -> Result<Value, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("no JSON result: {e}"))
}

pub fn run(b: TrainBench) -> anyhow::Result<()> {
    let files = b.model.files()?;
    let model_dir = files.path.clone();
    let text = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. \
                A heron stood in the shallows near the old mill, waiting for the children to leave. "
        .repeat(b.seq_len * b.micro_batch / 16 + 8);
    let ids = files.tokenizer.encode(&text, false)?;
    anyhow::ensure!(ids.len() >= b.seq_len * b.micro_batch, "text too short");
    let rows: Vec<Vec<u32>> = (0..b.micro_batch)
        .map(|i| ids[i * b.seq_len..(i + 1) * b.seq_len].to_vec())
        .collect();
    drop(files);
    let threads = b.model.threads.unwrap_or_else(rayon::current_num_threads);
    let wl = tempfile::NamedTempFile::new()?;
    std::fs::write(
        wl.path(),
        json!({"rows": rows, "rank": b.rank, "steps": b.steps, "threads": threads,
        "device": super::peers::torch_device(b.model.device),
        "dtype": match b.model.dtype {
            crate::model::Precision::F32 => "float32",
            crate::model::Precision::Bf16 => "bfloat16",
        }})
        .to_string(),
    )?;
    let exe = std::env::current_exe()?;
    let py = b.python.clone().unwrap_or_else(|| {
        let venv = Path::new(".venv/bin/python");
        if venv.exists() {
            venv.to_path_buf()
        } else {
            PathBuf::from("python3")
        }
    });
    let script = super::peers::script("bench_peft_train.py");
    eprintln!(
        "LoRA r={} · micro batch {} × {} tokens, every token trained · {} base, fp32 adapters and AdamW · {} device · {} threads · {} timed steps",
        b.rank,
        b.micro_batch,
        b.seq_len,
        b.model.dtype.name(),
        b.model.device,
        threads,
        b.steps
    );
    eprintln!("machine: {}", crate::machine::this().summary());
    let mut results = Vec::new();
    println!(
        "{:<10} {:<12} {:>12} {:>14} {:>10}",
        "config", "engine", "tokens/s", "peak RSS MiB", "speed ×"
    );
    for config in &b.configs {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "train-worker", "--threads", &threads.to_string()])
            .args(["--device", b.model.device.name()])
            .args(["--dtype", b.model.dtype.name()]);
        if let Some(m) = &b.model.model {
            cmd.args(["--model", m]);
        }
        cmd.arg(wl.path()).arg(config);
        let ours = run_json(&mut cmd).map_err(anyhow::Error::msg)?;
        let peer = if b.no_peer {
            Err("skipped".to_string())
        } else {
            run_json(
                Command::new(&py)
                    .arg(&script)
                    .arg(&model_dir)
                    .arg(wl.path())
                    .arg(config),
            )
        };
        let ours_tps = ours["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let ratio = peer
            .as_ref()
            .ok()
            .and_then(|p| p["tokens_per_s"].as_f64())
            .map(|t| ours_tps / t);
        println!(
            "{config:<10} {:<12} {:>12.1} {:>14.0} {:>10}",
            "switchyard",
            ours_tps,
            ours["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            ratio.map(|r| format!("{r:.2}")).unwrap_or_default()
        );
        match &peer {
            Ok(p) => println!(
                "{config:<10} {:<12} {:>12.1} {:>14.0} {:>10}",
                "peft",
                p["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                p["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                "1.00"
            ),
            Err(e) => println!("{config:<10} peft: {e}"),
        }
        results
            .push(json!({"config": config, "switchyard": ours, "peft": peer.ok(), "ratio": ratio}));
    }
    println!("(speed × = switchyard tokens/s ÷ PyTorch + PEFT tokens/s)");
    if let Some(out) = &b.out {
        let doc = json!({"machine": crate::machine::this(), "rank": b.rank, "micro_batch": b.micro_batch, "seq_len": b.seq_len, "steps": b.steps,
                         "threads": threads, "results": results});
        crate::util::write_json(out, &doc)?;
    }
    Ok(())
}
