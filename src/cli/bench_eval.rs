//! `switchyard bench eval`: what the eval harness costs on top of a provider's latency. A local
//! OpenAI-compatible server (the fault server, answering every request after a fixed latency,
//! streamed) takes N requests at C-way concurrency twice, in the same process: once from a bare
//! reqwest loop (the peer: the least any client can do), once through `switchyard eval`'s runner
//! (templating, cache, rate limiter, retries, scoring, results streamed to disk). The ratio of
//! wall times is the harness's overhead; resident memory is sampled through the run to show it
//! does not grow with the number of cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::eval::{RunOptions, Suite, runner};
use crate::providers::cache::ResponseCache;
use crate::providers::fault_server::{Behaviour, FaultServer};
use crate::providers::{Target, TargetSpec};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;

#[derive(Args, Debug)]
pub struct EvalBench {
    /// Cases.
    #[arg(long, default_value_t = 10_000)]
    cases: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The server's time to first byte, in ms.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// The server's pause between streamed chunks, in ms (each answer has 8 chunks).
    #[arg(long, default_value_t = 5)]
    chunk_ms: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

const ANSWER: &str = "one two three four five six seven eight";

/// The peer: N streamed requests from a plain reqwest client, bodies read to the end.
async fn bare(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = json!({"model": "stub", "stream": true, "max_tokens": 16,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": format!("[answer:{ANSWER}] case {i}")}]});
                let r = client
                    .post(format!("{url}/chat/completions"))
                    .json(&body)
                    .send()
                    .await?;
                let mut s = r.bytes_stream();
                while let Some(c) = s.next().await {
                    c?;
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(b: EvalBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _g = rt.enter();
    let behaviour = Behaviour {
        latency: Duration::from_millis(b.latency_ms),
        chunk_delay: Duration::from_millis(b.chunk_ms),
    };
    let server = rt.block_on(FaultServer::start(0, behaviour, false))?;
    let dir = tempfile::tempdir()?;
    let mut data = String::new();
    for i in 0..b.cases {
        data.push_str(&json!({"id": format!("c{i}"), "n": i, "answer": ANSWER}).to_string());
        data.push('\n');
    }
    std::fs::write(dir.path().join("cases.jsonl"), data)?;
    std::fs::write(
        dir.path().join("suite.toml"),
        "name = \"bench\"\ndataset = \"cases.jsonl\"\nid_column = \"id\"\nuser = \"[answer:{{ answer }}] case {{ n }}\"\n\
         reference = \"answer\"\n[generation]\nmax_tokens = 16\n[[scorers]]\ntype = \"exact\"\n[[scorers]]\ntype = \"contains\"\n",
    )?;
    let suite = Suite::load(&dir.path().join("suite.toml"))?;
    let mut spec = TargetSpec::parse_quick("openai-compatible:stub").expect("preset");
    spec.name = "stub".into();
    spec.base_url = Some(server.base_url());
    spec.concurrency = Some(b.concurrency);
    let target = Arc::new(Target::build(spec)?);
    let service = b.latency_ms as f64 / 1e3 + 8.0 * b.chunk_ms as f64 / 1e3;
    let ideal = (b.cases as f64 / b.concurrency as f64).ceil() * service;
    eprintln!(
        "{} cases at {}-way concurrency; the server takes {:.0} ms a request, so at best {:.1} s",
        b.cases,
        b.concurrency,
        service * 1e3,
        ideal
    );

    // Warm both paths (connections, allocator), then measure.
    rt.block_on(bare(&server.base_url(), b.concurrency * 2, b.concurrency))?;
    let bare_s = rt.block_on(bare(&server.base_url(), b.cases, b.concurrency))?;
    eprintln!("bare reqwest: {bare_s:.2} s");

    let rss_before = rss_mib();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let t0 = Instant::now();
            while !done.load(Ordering::Relaxed) {
                samples.push((t0.elapsed().as_secs_f64(), rss_mib()));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let opts = RunOptions {
        out: dir.path().join("out"),
        cache: Some(ResponseCache::new(dir.path().join("cache"))),
        fresh: true,
        repeats: None,
        interrupt: Default::default(),
    };
    let started = Instant::now();
    let started_unix = crate::util::now_s();
    let report = rt.block_on(runner::run(
        std::slice::from_ref(&suite),
        std::slice::from_ref(&target),
        &Default::default(),
        &opts,
        &mut runner::Quiet,
    ))?;
    let total_s = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let rows_path = opts.out.join("results.jsonl");
    let (rows, _) = crate::eval::results::read_rows(&rows_path)?;
    let last = rows.iter().map(|r| r.finished_at).fold(0.0, f64::max);
    let lat: Vec<f64> = rows.iter().filter_map(|r| r.latency_s).collect();
    let mean_lat = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    // The request path ends when the last row is written; summaries and Parquet follow.
    let run_s = last - started_unix;
    anyhow::ensure!(
        report.errors == 0 && rows.len() == b.cases,
        "the run had {} errors and {} rows",
        report.errors,
        rows.len()
    );
    let at = |frac: f64| {
        samples
            .get(((samples.len() as f64 * frac) as usize).min(samples.len().saturating_sub(1)))
            .map_or(f64::NAN, |s| s.1)
    };
    let figures = json!({
        "machine": crate::machine::this(), "cases": b.cases, "concurrency": b.concurrency, "server_ms": service * 1e3,
        "ideal_s": ideal, "bare_reqwest_s": bare_s, "harness_s": run_s, "harness_with_summaries_s": total_s,
        "harness_over_bare": run_s / bare_s, "overhead_pct": 100.0 * (run_s / bare_s - 1.0),
        "overhead_vs_ideal_pct": 100.0 * (run_s / ideal - 1.0),
        "mean_latency_ms_seen_by_harness": mean_lat * 1e3,
        "rss_mib": {"before": rss_before, "at_10pct": at(0.1), "at_50pct": at(0.5), "at_90pct": at(0.9),
                    "peak_during": samples.iter().map(|s| s.1).fold(0.0, f64::max)},
    });
    println!("{}", serde_json::to_string_pretty(&figures)?);
    println!(
        "harness {run_s:.2} s vs bare reqwest {bare_s:.2} s = {:.3}× ({:+.2}% overhead); ideal {ideal:.2} s; RSS {:.0} → {:.0} → {:.0} MiB at 10/50/90% of the run",
        run_s / bare_s,
        100.0 * (run_s / bare_s - 1.0),
        at(0.1),
        at(0.5),
        at(0.9)
    );
    if let Some(p) = b.json {
        crate::util::write_json(&p, &figures)?;
    }
    Ok(())
}
