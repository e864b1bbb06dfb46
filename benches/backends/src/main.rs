//! CPU backend comparison for burn 0.22.1.
//!
//! `backends [--threads N] [--out results.json] [--repeats R]`
//!
//! For every backend compiled in (cargo features `flex`, `ndarray`, `ndarray-openblas`) it measures,
//! with a warm-up and the median of several repeats:
//!  1. sgemm GFLOP/s for [512x576]@[576x1536] and [128x576]@[576x576] (prefill-like),
//!  2. the time of one [1x576]@[576x1536] matvec, cycling over 60 distinct weight matrices
//!     (about 212 MB, so the weights do not stay in the per-core caches; decode-like),
//!  3. a decode-like chain of 30 "layers" (q/k/v/o projections, SwiGLU MLP, two RMSNorm-like
//!     ops and residual adds, batch 1), reported as tokens/s = 1 / (time of the whole chain).
//!
//! All tensors are f32. Both backends are eager, so a timing ends when the last op returns;
//! `Device::sync()` is still called at the end of every timed region.

use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::{activation, Distribution};

const D: usize = 576;
const D_KV: usize = 192;
const D_FF: usize = 1536;
const N_MATVEC_WEIGHTS: usize = 60;
const N_LAYERS: usize = 30;

struct Args {
    threads: Option<usize>,
    out: Option<String>,
    repeats: usize,
}

fn parse_args() -> Args {
    let mut args = Args { threads: None, out: None, repeats: 11 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => args.threads = Some(it.next().expect("--threads N").parse().expect("N")),
            "--out" => args.out = Some(it.next().expect("--out PATH")),
            "--repeats" => args.repeats = it.next().expect("--repeats R").parse().expect("R"),
            "-h" | "--help" => {
                println!("usage: backends [--threads N] [--out results.json] [--repeats R]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Runs `f` `warmup` times, then `repeats` times, and returns the median seconds of one call.
fn bench(dev: &Device, warmup: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    dev.sync().ok();
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f();
        dev.sync().ok();
        times.push(t0.elapsed().as_secs_f64());
    }
    median(times)
}

/// Picks how many calls of `f` make one repeat last at least `min` (for short kernels).
fn calibrate(dev: &Device, min: Duration, mut f: impl FnMut()) -> usize {
    let mut n = 1usize;
    loop {
        let t0 = Instant::now();
        for _ in 0..n {
            f();
        }
        dev.sync().ok();
        if t0.elapsed() >= min || n >= 1 << 16 {
            return n;
        }
        n *= 2;
    }
}

fn rand2(shape: [usize; 2], dev: &Device) -> Tensor<2> {
    Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.02), dev)
}

/// RMSNorm-like: x / sqrt(mean(x^2) + eps) * gamma.
fn rms_norm(x: Tensor<2>, gamma: &Tensor<2>) -> Tensor<2> {
    let ms = x.clone().powi_scalar(2).mean_dim(1);
    x * ms.add_scalar(1e-5).sqrt().recip() * gamma.clone()
}

struct Layer {
    wq: Tensor<2>,
    wk: Tensor<2>,
    wv: Tensor<2>,
    wo: Tensor<2>,
    wg: Tensor<2>,
    wu: Tensor<2>,
    wd: Tensor<2>,
    g1: Tensor<2>,
    g2: Tensor<2>,
}

impl Layer {
    fn new(dev: &Device) -> Self {
        Layer {
            wq: rand2([D, D], dev),
            wk: rand2([D, D_KV], dev),
            wv: rand2([D, D_KV], dev),
            wo: rand2([D, D], dev),
            wg: rand2([D, D_FF], dev),
            wu: rand2([D, D_FF], dev),
            wd: rand2([D_FF, D], dev),
            g1: Tensor::<2>::ones([1, D], dev),
            g2: Tensor::<2>::ones([1, D], dev),
        }
    }

    /// One decode step of one layer for x: [1, D]. There is no attention over a KV cache (the
    /// q/k/v projections are computed, the attention output is stood in for by q), so this is the
    /// matmul + elementwise part of a decode step only.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = rms_norm(x.clone(), &self.g1);
        let q = h.clone().matmul(self.wq.clone());
        let k = h.clone().matmul(self.wk.clone());
        let v = h.matmul(self.wv.clone());
        // Keep k and v alive until here (eager backends compute them anyway).
        drop((k, v));
        let x = x + q.matmul(self.wo.clone());
        let h = rms_norm(x.clone(), &self.g2);
        let gate = activation::silu(h.clone().matmul(self.wg.clone()));
        let up = h.matmul(self.wu.clone());
        x + (gate * up).matmul(self.wd.clone())
    }
}

struct Row {
    backend: String,
    burn_features: String,
    sgemm_big_gflops: f64,
    sgemm_small_gflops: f64,
    matvec_us: f64,
    matvec_gbps: f64,
    chain_ms: f64,
    chain_tok_s: f64,
}

fn run_backend(name: &str, burn_features: &str, dev: &Device, repeats: usize) -> Row {
    eprintln!("== {name}: sgemm");
    let sgemm = |m: usize, k: usize, n: usize| -> f64 {
        let a = rand2([m, k], dev);
        let b = rand2([k, n], dev);
        let f = || {
            let _c = a.clone().matmul(b.clone());
        };
        for _ in 0..3 {
            f();
        }
        let inner = calibrate(dev, Duration::from_millis(40), f);
        let secs = bench(dev, 1, repeats, || {
            for _ in 0..inner {
                f();
            }
        }) / inner as f64;
        2.0 * (m * k * n) as f64 / secs / 1e9
    };
    let sgemm_big_gflops = sgemm(512, D, D_FF);
    let sgemm_small_gflops = sgemm(128, D, D);

    eprintln!("== {name}: matvec over {N_MATVEC_WEIGHTS} weights");
    let ws: Vec<Tensor<2>> = (0..N_MATVEC_WEIGHTS).map(|_| rand2([D, D_FF], dev)).collect();
    let x = rand2([1, D], dev);
    let per_pass = bench(dev, 2, repeats, || {
        for w in &ws {
            let _y = x.clone().matmul(w.clone());
        }
    });
    drop(ws);
    let matvec_s = per_pass / N_MATVEC_WEIGHTS as f64;
    let matvec_gbps = (D * D_FF * 4) as f64 / matvec_s / 1e9;

    eprintln!("== {name}: decode chain ({N_LAYERS} layers)");
    let layers: Vec<Layer> = (0..N_LAYERS).map(|_| Layer::new(dev)).collect();
    let x0 = rand2([1, D], dev);
    let mut out_sum = 0.0f32;
    let chain_s = bench(dev, 2, repeats, || {
        let mut x = x0.clone();
        for l in &layers {
            x = l.forward(x);
        }
        // Read one value back so that the whole chain has really been computed.
        out_sum += x.slice([0..1, 0..1]).into_scalar::<f32>();
    });
    assert!(out_sum.is_finite(), "decode chain produced a non-finite value");

    Row {
        backend: name.to_string(),
        burn_features: burn_features.to_string(),
        sgemm_big_gflops,
        sgemm_small_gflops,
        matvec_us: matvec_s * 1e6,
        matvec_gbps,
        chain_ms: chain_s * 1e3,
        chain_tok_s: 1.0 / chain_s,
    }
}

#[cfg(feature = "ndarray-openblas")]
extern "C" {
    fn openblas_set_num_threads(n: std::os::raw::c_int);
    fn openblas_get_num_threads() -> std::os::raw::c_int;
}

fn main() {
    let args = parse_args();

    // Thread counts must be fixed before the first burn op.
    if let Some(n) = args.threads {
        // matrixmultiply (ndarray's pure-Rust gemm) reads MATMUL_NUM_THREADS once, on first use.
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("warning: rayon build_global({n}) failed: {e}");
        }
    }
    #[cfg(feature = "ndarray-openblas")]
    unsafe {
        if let Some(n) = args.threads {
            openblas_set_num_threads(n as std::os::raw::c_int);
        }
        eprintln!("OpenBLAS threads: {}", openblas_get_num_threads());
    }
    let rayon_threads = rayon::current_num_threads();
    eprintln!(
        "rayon threads: {rayon_threads}, MATMUL_NUM_THREADS={:?}, OPENBLAS_NUM_THREADS={:?}, OPENBLAS_CORETYPE={:?}",
        std::env::var("MATMUL_NUM_THREADS").ok(),
        std::env::var("OPENBLAS_NUM_THREADS").ok(),
        std::env::var("OPENBLAS_CORETYPE").ok()
    );

    let mut rows = Vec::new();

    #[cfg(feature = "flex")]
    {
        let dev = Device::flex();
        rows.push(run_backend("flex", "std, flex, rayon, simd, x86-v4", &dev, args.repeats));
    }

    #[cfg(feature = "ndarray")]
    {
        #[allow(deprecated)]
        let dev = Device::ndarray();
        let (name, feats) = if cfg!(feature = "ndarray-openblas") {
            ("ndarray+openblas-system", "std, ndarray, rayon, simd, openblas-system")
        } else {
            ("ndarray", "std, ndarray, rayon, simd")
        };
        rows.push(run_backend(name, feats, &dev, args.repeats));
    }

    if rows.is_empty() {
        eprintln!("no backend compiled in: build with --features flex, ndarray or ndarray-openblas");
        std::process::exit(2);
    }

    println!("| backend | sgemm 512x576x1536 GFLOP/s | sgemm 128x576x576 GFLOP/s | matvec µs | decode-chain tok/s |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.backend, r.sgemm_big_gflops, r.sgemm_small_gflops, r.matvec_us, r.chain_tok_s
        );
    }
    println!();
    for r in &rows {
        println!(
            "- {}: burn features [{}]; matvec = {:.1} GB/s of weights; decode chain = {:.2} ms",
            r.backend, r.burn_features, r.matvec_gbps, r.chain_ms
        );
    }

    if let Some(path) = args.out {
        let mut s = String::from("{\n");
        s += &format!("  \"threads\": {},\n", rayon_threads);
        s += &format!("  \"repeats\": {},\n", args.repeats);
        s += "  \"results\": [\n";
        for (i, r) in rows.iter().enumerate() {
            s += &format!(
                "    {{\"backend\": \"{}\", \"burn_features\": \"{}\", \"sgemm_512x576x1536_gflops\": {:.3}, \"sgemm_128x576x576_gflops\": {:.3}, \"matvec_us\": {:.3}, \"matvec_gb_per_s\": {:.3}, \"decode_chain_ms\": {:.4}, \"decode_chain_tok_per_s\": {:.4}}}{}\n",
                r.backend,
                r.burn_features,
                r.sgemm_big_gflops,
                r.sgemm_small_gflops,
                r.matvec_us,
                r.matvec_gbps,
                r.chain_ms,
                r.chain_tok_s,
                if i + 1 < rows.len() { "," } else { "" }
            );
        }
        s += "  ]\n}\n";
        std::fs::write(&path, s).expect("write --out");
        eprintln!("wrote {path}");
    }
}
