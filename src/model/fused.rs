//! Fused CPU kernels for the work between the matrix products, forward and backward.
//!
//! Written with burn's ops, RMSNorm, SiLU·mul, RoPE, attention and the loss are chains of
//! element-wise ops that flex runs one after the other on one thread, each allocating its output
//! (and the backward pass keeps every intermediate). Here each is one pass over its rows, split
//! over every thread, with a vectorised `exp`: a burn backend extension for `Flex`, and for
//! `Autodiff<Flex>` with a hand-written backward pass. Every other device keeps burn's ops (the
//! wrappers in `llama.rs` decide), and the unit tests below hold each kernel to those ops, values
//! and gradients.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::strided::Mat;

/// Whether the fused kernels serve tensors on `device`: burn's CPU backend, with or without
/// autodiff, in f32.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.device().inner() == Device::flex() && x.dtype() == DType::F32
}

#[backend_extension(Flex, Autodiff)]
pub trait Fused: Backend {
    /// `x / rms(x) · w` over the last axis of `x` `[rows.., d]`, `w` `[d]`.
    fn fused_rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    /// `silu(gate) · up`, same shapes.
    fn fused_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Rotary embedding, half-split layout: `x` `[b, s, n, d]`, `cos`, `sin` `[b, s, d]`.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// `logsumexp(z) - z[label]` per row of `logits` `[n, vocab]`: `[n]`.
    fn fused_nll(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self>;
    /// `softmax(scale · q·kᵀ + mask) · v` with grouped KV heads: `q` `[b, h, s, d]`, `k`, `v`
    /// `[b, kv, t, d]` (any strides with contiguous rows), `mask` `[b, 1, s, t]` additive.
    /// Returns `[b, s, h, d]`, ready to be read as `[b, s, h·d]`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
    /// A projection: `x·W` for `x` `[m, k]`, `W` `[k, n]` (any strides, read in place).
    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// A projection with its LoRA adapter in one op: `x·W + scale·(x·A)·B` for `x` `[m, k]`,
    /// `W` `[k, n]` (any strides), `A` `[k, r]`, `B` `[r, n]`.
    fn fused_lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
}

pub fn rms_norm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_rms_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        eps,
    ))
}

pub fn silu_mul<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_silu_mul(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

pub fn rope(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_rope(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
}

pub fn nll(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_nll(
        logits.into_dispatch(),
        labels.into_dispatch(),
    ))
}

pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4>,
    scale: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
        scale,
    ))
}

// ---------------------------------------------------------------------------------------------
// Host plumbing.

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused kernels take f32");
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

fn tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Rows per parallel task: enough work per task (about 16k values) to pay for the split.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// Run `$body` compiled for AVX-512 or AVX2+FMA when the CPU has them, else as is: the loops
/// inside are written to vectorise, and `exp` below is branch-free for that.
macro_rules! simd {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
            fn v4<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            fn v3<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
            {
                let f = || $body;
                // SAFETY: the features were just detected.
                unsafe { v4(f) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let f = || $body;
                // SAFETY: as above.
                unsafe { v3(f) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// `e^x` in f32 to about 2 ulp (Cephes' polynomial after reduction by ln 2), branch-free so that
/// loops over it vectorise. Inputs below -87.3 give ~1e-38 rather than 0; callers that need an
/// exact 0 (masked scores) skip those entries.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let z = r * r;
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 0.5);
    let y = p.mul_add(z, r) + 1.0;
    // 2^n from the bits: `n + 127` lies in 1..=254 after the clamp, and adding 2^23 leaves it as
    // the low bits of the mantissa. Unlike `n as i32` (saturating, NaN-checked lane by lane),
    // this stays in vector registers; a NaN input still gives NaN through `y`.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0x7f_ffff;
    y * f32::from_bits(biased << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_portable::<16>(a, b)
}

/// Independent partial results per loop, so that a reduction vectorises: one running max or sum
/// is a chain the compiler must keep in order, which leaves `exp` scalar too.
const LANES: usize = 16;

/// The largest value of `row`.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(*v);
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ e^(v - shift)` over `row`.
#[inline(always)]
fn sum_exp(row: &[f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += exp(v - shift);
        }
    }
    let rest = chunks.remainder().iter().map(|v| exp(v - shift));
    lanes.into_iter().chain(rest).sum()
}

// ---------------------------------------------------------------------------------------------
// RMSNorm.

fn rms_forward(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d * rows_per_task(d))
        .zip(x.par_chunks(d * rows_per_task(d)))
        .for_each(|(ys, xs)| {
            simd!({
                for (yr, xr) in ys.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let r = 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt();
                    for ((yi, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
                        *yi = (xi * r) * wi;
                    }
                }
            })
        });
    y
}

/// `(dx, dw)` of RMSNorm for the output gradient `g`; `dw` only when asked.
fn rms_backward(x: &[f32], w: &[f32], g: &[f32], eps: f32, want_w: bool) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let chunk = d * rows_per_task(d);
    let mut dx = vec![0f32; x.len()];
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .map(|(dxs, (xs, gs))| {
            simd!({
                let mut dw = if want_w { vec![0f32; d] } else { Vec::new() };
                for ((dr, xr), gr) in dxs
                    .chunks_exact_mut(d)
                    .zip(xs.chunks_exact(d))
                    .zip(gs.chunks_exact(d))
                {
                    let r = 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt();
                    let mut gwx = 0f32;
                    for ((gi, wi), xi) in gr.iter().zip(w).zip(xr) {
                        gwx = (gi * wi).mul_add(*xi, gwx);
                    }
                    let c = r * r * r * gwx / d as f32;
                    for (((di, gi), wi), xi) in dr.iter_mut().zip(gr).zip(w).zip(xr) {
                        *di = (r * gi).mul_add(*wi, -c * xi);
                    }
                    if want_w {
                        for ((a, gi), xi) in dw.iter_mut().zip(gr).zip(xr) {
                            *a = (gi * r).mul_add(*xi, *a);
                        }
                    }
                }
                dw
            })
        })
        .collect();
    let mut dw = vec![0f32; if want_w { d } else { 0 }];
    for p in partial {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dx, dw)
}

// ---------------------------------------------------------------------------------------------
// SiLU · mul.

fn silu_mul_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; gate.len()];
    let c = 16_384;
    y.par_chunks_mut(c)
        .zip(gate.par_chunks(c).zip(up.par_chunks(c)))
        .for_each(|(ys, (gs, us))| {
            simd!({
                for ((y, g), u) in ys.iter_mut().zip(gs).zip(us) {
                    *y = g * sigmoid(*g) * u;
                }
            })
        });
    y
}

fn silu_mul_backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dg, mut du) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
    let c = 16_384;
    dg.par_chunks_mut(c)
        .zip(du.par_chunks_mut(c))
        .zip(
            gate.par_chunks(c)
                .zip(up.par_chunks(c))
                .zip(grad.par_chunks(c)),
        )
        .for_each(|((dgs, dus), ((gs, us), gr))| {
            simd!({
                for ((((dg, du), g), u), o) in
                    dgs.iter_mut().zip(dus.iter_mut()).zip(gs).zip(us).zip(gr)
                {
                    let s = sigmoid(*g);
                    *du = o * g * s;
                    *dg = o * u * s * (1.0 + g * (1.0 - s));
                }
            })
        });
    (dg, du)
}

// ---------------------------------------------------------------------------------------------
// RoPE (half split): y = x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1].

/// `sign` +1 rotates forward, -1 applies the transpose (the backward pass).
fn rope_apply(x: &[f32], cos: &[f32], sin: &[f32], n: usize, d: usize, sign: f32) -> Vec<f32> {
    let half = d / 2;
    let mut y = vec![0f32; x.len()];
    // One task per group of positions (`n` heads of `d` each); cos/sin have one `d` row each.
    let per = rows_per_task(n * d);
    y.par_chunks_mut(n * d * per)
        .zip(x.par_chunks(n * d * per))
        .enumerate()
        .for_each(|(task, (ys, xs))| {
            simd!({
                for (p, (yp, xp)) in ys
                    .chunks_exact_mut(n * d)
                    .zip(xs.chunks_exact(n * d))
                    .enumerate()
                {
                    let at = (task * per + p) * d;
                    let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
                    for (yh, xh) in yp.chunks_exact_mut(d).zip(xp.chunks_exact(d)) {
                        for i in 0..half {
                            let (x1, x2) = (xh[i], xh[i + half]);
                            if sign > 0.0 {
                                yh[i] = x1 * c[i] - x2 * s[i];
                                yh[i + half] = x2 * c[i + half] + x1 * s[i + half];
                            } else {
                                yh[i] = x1 * c[i] + x2 * s[i + half];
                                yh[i + half] = x2 * c[i + half] - x1 * s[i];
                            }
                        }
                    }
                }
            })
        });
    y
}

// ---------------------------------------------------------------------------------------------
// Negative log-likelihood over the vocabulary.

/// Per row: `(nll, lse)`.
fn nll_forward(z: &[f32], labels: &[i64], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    let rows: Vec<(f32, f32)> = z
        .par_chunks(vocab)
        .zip(labels.par_iter())
        .map(|(row, &label)| {
            simd!({
                let max = row_max(row);
                let lse = max + sum_exp(row, max).ln();
                (lse - row[label as usize], lse)
            })
        })
        .collect();
    rows.into_iter().unzip()
}

/// `g_i · (softmax(z_i) - onehot(label_i))`.
fn nll_backward(z: &[f32], labels: &[i64], lse: &[f32], g: &[f32], vocab: usize) -> Vec<f32> {
    let mut dz = vec![0f32; z.len()];
    dz.par_chunks_mut(vocab)
        .zip(z.par_chunks(vocab))
        .enumerate()
        .for_each(|(r, (dr, zr))| {
            let (l, gr) = (lse[r], g[r]);
            simd!({
                for (d, v) in dr.iter_mut().zip(zr) {
                    *d = gr * exp(v - l);
                }
            });
            dr[labels[r] as usize] -= gr;
        });
    dz
}

// ---------------------------------------------------------------------------------------------
// Attention.

/// Strided 4-D view `[b, heads, len, d]` with contiguous rows of `d`.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 3],
}

impl<'a> View<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        let st = t.layout().strides();
        assert_eq!(st[3], 1, "rows of d contiguous");
        Self {
            data: t.storage::<f32>(),
            start: t.layout().start_offset(),
            strides: [st[0] as usize, st[1] as usize, st[2] as usize],
        }
    }
}

/// Views with contiguous rows: copies only when the last axis is strided.
fn rows_contiguous(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused kernels take f32");
    let st = t.layout().strides();
    if st[3] == 1 && st.iter().all(|&s| s >= 0) {
        t
    } else {
        t.to_contiguous()
    }
}

struct AttnShape {
    b: usize,
    h: usize,
    kv: usize,
    s: usize,
    t: usize,
    d: usize,
}

fn attn_shape(q: &FlexTensor, k: &FlexTensor) -> AttnShape {
    let (qd, kd) = (dims(q), dims(k));
    AttnShape {
        b: qd[0],
        h: qd[1],
        kv: kd[1],
        s: qd[2],
        t: kd[2],
        d: qd[3],
    }
}

/// A raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every use writes regions no other task touches (see each caller).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// One thread for [`gemm`].
const ONE: gemm::Parallelism = gemm::Parallelism::None;
/// Every thread for [`gemm`], when gemm finds the product large enough.
pub(super) const ALL: gemm::Parallelism = gemm::Parallelism::Rayon(0);

/// Query rows per block of scores: a block `[rows, t]` stays near 1 MiB, so long prompts
/// never hold an `[s, t]` matrix per thread, and at most 64 rows, so that a causal mask leaves
/// later blocks' columns to skip ([`allowed_columns`]).
fn block_rows(s: usize, t: usize) -> usize {
    // Small under test, so that the tests cross block boundaries.
    const VALUES: usize = if cfg!(test) { 256 } else { 262_144 };
    (VALUES / t.max(1)).clamp(4, s.clamp(4, 64))
}

/// The key columns `[c0, c1)` of a block of mask rows (`rows` rows of `t`) outside which every
/// entry is masked (-inf): scores there are exactly 0 after the softmax, so the block's products
/// leave them out. Under a causal mask a block of early query rows skips the later keys, which
/// halves a long prompt's attention. A block with no allowed entry keeps every column.
fn allowed_columns(mask: &[f32], t: usize) -> (usize, usize) {
    let (mut c0, mut c1) = (t, 0);
    for row in mask.chunks_exact(t) {
        let allowed = |m: &f32| *m != f32::NEG_INFINITY;
        if let (Some(f), Some(l)) = (row.iter().position(allowed), row.iter().rposition(allowed)) {
            c0 = c0.min(f);
            c1 = c1.max(l + 1);
        }
    }
    if c0 < c1 { (c0, c1) } else { (0, t) }
}

/// [`allowed_columns`] of every block of `rows` query rows of every batch row of `mask`
/// `[b, s, t]`, block `j` of batch row `bi` at `bi · s.div_ceil(rows) + j`: the mask is the
/// same for every head, so it is read once.
fn block_spans(mask: &[f32], (b, s, t): (usize, usize, usize), rows: usize) -> Vec<(usize, usize)> {
    (0..b)
        .into_par_iter()
        .flat_map_iter(|bi| {
            (0..s).step_by(rows).map(move |r0| {
                let n = rows.min(s - r0);
                allowed_columns(&mask[(bi * s + r0) * t..(bi * s + r0 + n) * t], t)
            })
        })
        .collect()
}

/// `beta · lhs [m, k] · rhs [k, n]` into a fresh row-major `[m, n]` buffer, on every thread.
///
/// # Safety
/// As [`gemm`]: the pointers and strides must describe valid matrices of these sizes.
unsafe fn product(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, beta: f32) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    // SAFETY: the caller's operands; `out` is fresh and `[m, n]`.
    unsafe {
        gemm(
            ALL,
            m,
            n,
            k,
            Mat(out.as_mut_ptr(), n as isize, 1),
            false,
            lhs,
            rhs,
            beta,
        )
    };
    out
}

/// `dst [m, n] (+)= beta · lhs [m, k] · rhs [k, n]`, on one thread ([`ONE`]: the caller's tasks
/// are the parallel unit) or on every thread when the product is large enough ([`ALL`]).
///
/// # Safety
/// The pointers and strides must describe valid matrices of these sizes; `dst` must not alias.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0 as *mut f32,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

/// The `[len, d]` matrix of one head of a `[b, heads, len, d]` view.
fn head(v: &View<'_>, b: usize, h: usize) -> Mat {
    let at = v.start + b * v.strides[0] + h * v.strides[1];
    Mat(v.data[at..].as_ptr(), v.strides[2] as isize, 1)
}

/// Scores of one head turned into probabilities in place: `p [rows, w]` holds `scale · q·kᵀ`
/// on entry, `mask` the same rows and columns of the additive mask, its rows `stride` apart.
/// With `lse_in` (the backward pass) rows are normalised by it; else each row's log-sum-exp is
/// computed and written to `lse_out`.
#[inline(always)]
fn softmax_rows(
    p: &mut [f32],
    mask: &[f32],
    (w, stride): (usize, usize),
    lse_in: Option<&[f32]>,
    lse_out: &mut [f32],
) {
    for (i, (row, mrow)) in p.chunks_exact_mut(w).zip(mask.chunks(stride)).enumerate() {
        let mrow = &mrow[..w];
        for (x, m) in row.iter_mut().zip(mrow) {
            *x += m;
        }
        let l = match lse_in {
            Some(l) => l[i],
            None => {
                let max = row_max(row);
                max + sum_exp(row, max).ln()
            }
        };
        for (x, m) in row.iter_mut().zip(mrow) {
            // A masked entry is exactly 0, not exp's floor.
            *x = if *m == f32::NEG_INFINITY {
                0.0
            } else {
                exp(*x - l)
            };
        }
        if lse_in.is_none() {
            lse_out[i] = l;
        }
    }
}

/// Output `[b, s, h, d]` and the log-sum-exp of each query row `[b, h, s]`.
fn attention_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let AttnShape { b, h, kv, s, t, d } = attn_shape(q, k);
    let (qv, kv_, vv) = (View::of(q), View::of(k), View::of(v));
    let group = h / kv;
    let mut out = vec![0f32; b * s * h * d];
    let mut lse = vec![0f32; b * h * s];
    let dst = Shared(out.as_mut_ptr());
    let rows = block_rows(s, t);
    let spans = block_spans(mask, (b, s, t), rows);
    let blocks = s.div_ceil(rows);
    // One task per (batch row, query head): its scores `[s, t]` by one product, the softmax,
    // and its output columns `[s, d]` of `out` by another.
    lse.par_chunks_mut(s).enumerate().for_each(|(task, l)| {
        let (bi, hi) = (task / h, task % h);
        let kh = hi / group;
        let m = &mask[bi * s * t..(bi + 1) * s * t];
        let mut p = vec![0f32; rows.min(s) * t];
        let (qh, kh_, vh) = (head(&qv, bi, hi), head(&kv_, bi, kh), head(&vv, bi, kh));
        let o = Mat(dst.at((bi * s * h + hi) * d), (h * d) as isize, 1);
        simd!({
            for (j, r0) in (0..s).step_by(rows).enumerate() {
                let n = rows.min(s - r0);
                let block = &m[r0 * t..(r0 + n) * t];
                let (c0, c1) = spans[bi * blocks + j];
                let w = c1 - c0;
                let p = &mut p[..n * w];
                // SAFETY: the views are valid for their shapes (key rows `c0..c1` lie inside
                // `t`); `p` is this task's own, and the output block (row `bi`, head `hi`) is
                // written by this task only.
                unsafe {
                    gemm(
                        ONE,
                        n,
                        w,
                        d,
                        Mat(p.as_mut_ptr(), w as isize, 1),
                        false,
                        qh.skip_rows(r0),
                        kh_.skip_rows(c0).t(),
                        scale,
                    );
                    softmax_rows(p, &block[c0..], (w, t), None, &mut l[r0..r0 + n]);
                    gemm(
                        ONE,
                        n,
                        d,
                        w,
                        o.skip_rows(r0),
                        false,
                        Mat(p.as_ptr(), w as isize, 1),
                        vh.skip_rows(c0),
                        1.0,
                    );
                }
            }
        })
    });
    (out, lse)
}

struct AttnGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Gradients of q `[b, h, s, d]`, k and v `[b, kv, t, d]` (all contiguous).
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &[f32],
    out: &[f32],
    lse: &[f32],
    grad: &[f32],
    scale: f32,
) -> AttnGrads {
    let AttnShape { b, h, kv, s, t, d } = attn_shape(q, k);
    let (qv, kv_, vv) = (View::of(q), View::of(k), View::of(v));
    let group = h / kv;
    let mut g = AttnGrads {
        dq: vec![0f32; b * h * s * d],
        dk: vec![0f32; b * kv * t * d],
        dv: vec![0f32; b * kv * t * d],
    };
    let (dq, dk, dv) = (
        Shared(g.dq.as_mut_ptr()),
        Shared(g.dk.as_mut_ptr()),
        Shared(g.dv.as_mut_ptr()),
    );
    let rows = block_rows(s, t);
    let spans = block_spans(mask, (b, s, t), rows);
    let blocks = s.div_ceil(rows);
    // One task per (batch row, KV head): it owns that head's dk, dv and its query heads' dq.
    (0..b * kv).into_par_iter().for_each(|task| {
        let (bi, kh) = (task / kv, task % kv);
        let m = &mask[bi * s * t..(bi + 1) * s * t];
        let (mut p, mut dp) = (vec![0f32; rows.min(s) * t], vec![0f32; rows.min(s) * t]);
        let mut delta = vec![0f32; rows.min(s)];
        let kv0 = (bi * kv + kh) * t * d;
        let (dk_h, dv_h) = (
            Mat(dk.at(kv0), d as isize, 1),
            Mat(dv.at(kv0), d as isize, 1),
        );
        simd!({
            for gi in 0..group {
                let hi = kh * group + gi;
                let (qh, kh_, vh) = (head(&qv, bi, hi), head(&kv_, bi, kh), head(&vv, bi, kh));
                let go = Mat(grad[(bi * s * h + hi) * d..].as_ptr(), (h * d) as isize, 1);
                let dq_h = Mat(dq.at((bi * h + hi) * s * d), d as isize, 1);
                let l = &lse[(bi * h + hi) * s..(bi * h + hi + 1) * s];
                for (j, r0) in (0..s).step_by(rows).enumerate() {
                    let n = rows.min(s - r0);
                    let block = &m[r0 * t..(r0 + n) * t];
                    let (c0, c1) = spans[bi * blocks + j];
                    let w = c1 - c0;
                    let (p, dp) = (&mut p[..n * w], &mut dp[..n * w]);
                    let (kb, vb) = (kh_.skip_rows(c0), vh.skip_rows(c0));
                    let (dk_b, dv_b) = (dk_h.skip_rows(c0), dv_h.skip_rows(c0));
                    for (i, dl) in delta[..n].iter_mut().enumerate() {
                        let at = ((bi * s + r0 + i) * h + hi) * d;
                        *dl = dot(&out[at..at + d], &grad[at..at + d]);
                    }
                    // SAFETY: valid views (key rows `c0..c1` lie inside `t`); dq's block
                    // (bi, hi) and dk/dv's block (bi, kh) belong to this task alone. dk and dv
                    // start at zero, so every block adds into them.
                    unsafe {
                        let pm = Mat(p.as_mut_ptr(), w as isize, 1);
                        gemm(ONE, n, w, d, pm, false, qh.skip_rows(r0), kb.t(), scale);
                        let lse = Some(&l[r0..r0 + n]);
                        softmax_rows(p, &block[c0..], (w, t), lse, &mut []);
                        let dsm = Mat(dp.as_mut_ptr(), w as isize, 1);
                        gemm(ONE, n, w, d, dsm, false, go.skip_rows(r0), vb.t(), 1.0);
                        for ((ds, pr), dl) in
                            dp.chunks_exact_mut(w).zip(p.chunks_exact(w)).zip(&delta)
                        {
                            for (x, pv) in ds.iter_mut().zip(pr) {
                                *x = pv * (*x - dl) * scale;
                            }
                        }
                        gemm(ONE, n, d, w, dq_h.skip_rows(r0), false, dsm, kb, 1.0);
                        gemm(ONE, w, d, n, dk_b, true, dsm.t(), qh.skip_rows(r0), 1.0);
                        gemm(ONE, w, d, n, dv_b, true, pm.t(), go.skip_rows(r0), 1.0);
                    }
                }
            }
        })
    });
    g
}

/// `x·W` on every thread; in training its backward pass is `g·Wᵀ` (and `xᵀ·g` only for a
/// tracked weight), both read in place.
pub fn linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_linear(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

pub fn lora_linear(
    x: Tensor<2>,
    w: Tensor<2>,
    a: Tensor<2>,
    b: Tensor<2>,
    scale: f64,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as Fused>::fused_lora_linear(
        x.into_dispatch(),
        w.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
        scale,
    ))
}

// ---------------------------------------------------------------------------------------------
// LoRA projection.

/// A 2-D tensor as a gemm operand (f32, any strides).
fn mat(t: &FlexTensor) -> Mat {
    assert_eq!(t.dtype(), DType::F32, "fused kernels take f32");
    let st = t.layout().strides();
    Mat(
        t.storage::<f32>()[t.layout().start_offset()..].as_ptr(),
        st[0],
        st[1],
    )
}

/// Whether the fused projections take a weight of this dtype: f32, and bf16 on CPUs with
/// AVX-512 BF16 (see [`super::bf16`]).
pub fn weight_applies(dtype: DType) -> bool {
    dtype == DType::F32 || (dtype == DType::BF16 && super::bf16::available())
}

/// A 2-D bf16 tensor as an operand of [`super::bf16::gemm`] (any strides).
fn bf16_view(t: &FlexTensor) -> Mat<half::bf16> {
    let st = t.layout().strides();
    let data = &t.storage::<half::bf16>()[t.layout().start_offset()..];
    Mat(data.as_ptr(), st[0], st[1])
}

/// `lhs [m, k] · W` into a fresh `[m, n]` buffer, `W` being the weight `w` `[k, n]`, or its
/// transpose when `transposed` (`w` is then `[n, k]`): f32 through gemm, bf16 through the
/// AVX-512 BF16 kernel.
///
/// # Safety
/// `lhs` must be a valid f32 `[m, k]` matrix and `w` of the stated shape.
unsafe fn weight_product(
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    w: &FlexTensor,
    transposed: bool,
) -> Vec<f32> {
    if w.dtype() == DType::BF16 {
        let v = bf16_view(w);
        let v = if transposed { v.t() } else { v };
        // SAFETY: forwarded from the caller; `weight_applies` let the bf16 weight in only where
        // the kernel runs.
        return unsafe { super::bf16::product(m, n, k, lhs, v) };
    }
    let wm = if transposed { mat(w).t() } else { mat(w) };
    // SAFETY: forwarded from the caller.
    unsafe { product(m, n, k, lhs, wm, 1.0) }
}

/// `(y, x·A)`: the projection and its adapter's rank-r intermediate.
fn linear_forward(x: &FlexTensor, w: &FlexTensor) -> Vec<f32> {
    let (m, k, n) = (dims(x)[0], dims(x)[1], dims(w)[1]);
    // SAFETY: `x` is a valid f32 matrix and `w` a weight of the stated shapes.
    unsafe { weight_product(m, n, k, mat(x), w, false) }
}

fn lora_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    a: &FlexTensor,
    b: &FlexTensor,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (m, k) = (dims(x)[0], dims(x)[1]);
    let (n, r) = (dims(w)[1], dims(a)[1]);
    // SAFETY: every operand is a valid f32 matrix of the stated shape; outputs are fresh.
    unsafe {
        let mut y = weight_product(m, n, k, mat(x), w, false);
        let xa = product(m, r, k, mat(x), mat(a), 1.0);
        gemm(
            ALL,
            m,
            n,
            r,
            Mat(y.as_mut_ptr(), n as isize, 1),
            true,
            Mat(xa.as_ptr(), r as isize, 1),
            mat(b),
            scale,
        );
        (y, xa)
    }
}

fn int_labels(labels: FlexTensor) -> Vec<i64> {
    labels
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer labels")
}

// ---------------------------------------------------------------------------------------------
// The CPU backend.

impl Fused for Flex {
    fn fused_rms_norm(x: FlexTensor, w: FlexTensor, eps: f64) -> FlexTensor {
        let (x, w) = (contiguous(x), contiguous(w));
        let y = rms_forward(f32s(&x), f32s(&w), eps as f32);
        tensor(y, dims(&x))
    }

    fn fused_silu_mul(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let (gate, up) = (contiguous(gate), contiguous(up));
        assert_eq!(dims(&gate), dims(&up), "silu_mul: shapes differ");
        tensor(silu_mul_forward(f32s(&gate), f32s(&up)), dims(&gate))
    }

    fn fused_rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let (x, cos, sin) = (contiguous(x), contiguous(cos), contiguous(sin));
        let sh = dims(&x);
        let y = rope_apply(f32s(&x), f32s(&cos), f32s(&sin), sh[2], sh[3], 1.0);
        tensor(y, sh)
    }

    fn fused_nll(logits: FlexTensor, labels: FlexTensor) -> FlexTensor {
        let z = contiguous(logits);
        let sh = dims(&z);
        let (nll, _) = nll_forward(f32s(&z), &int_labels(labels), sh[1]);
        tensor(nll, vec![sh[0]])
    }

    fn fused_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        mask: FlexTensor,
        scale: f64,
    ) -> FlexTensor {
        let (q, k, v, mask) = (
            rows_contiguous(q),
            rows_contiguous(k),
            rows_contiguous(v),
            contiguous(mask),
        );
        let AttnShape { b, h, s, d, .. } = attn_shape(&q, &k);
        let (out, _) = attention_forward(&q, &k, &v, f32s(&mask), scale as f32);
        tensor(out, vec![b, s, h, d])
    }

    fn fused_linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let (m, n) = (dims(&x)[0], dims(&w)[1]);
        tensor(linear_forward(&x, &w), vec![m, n])
    }

    fn fused_lora_linear(
        x: FlexTensor,
        w: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
    ) -> FlexTensor {
        let x = contiguous(x);
        let (m, n) = (dims(&x)[0], dims(&w)[1]);
        let (y, _) = lora_forward(&x, &w, &a, &b, scale as f32);
        tensor(y, vec![m, n])
    }
}

// ---------------------------------------------------------------------------------------------
// Autodiff over the CPU backend: each op saves what its backward pass reads.

type Ad<C> = Autodiff<Flex, C>;

impl<C: CheckpointStrategy> Fused for Ad<C> {
    fn fused_rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsBackward;
        impl Backward<Flex, 2> for RmsBackward {
            type State = (FlexTensor, FlexTensor, f64);
            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx, nw] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let (x, w, eps) = ops.state;
                let (dx, dw) = rms_backward(f32s(&x), f32s(&w), f32s(&g), eps as f32, nw.is_some());
                if let Some(node) = nx {
                    grads.register::<Flex>(node.id, tensor(dx, dims(&x)));
                }
                if let Some(node) = nw {
                    grads.register::<Flex>(node.id, tensor(dw, dims(&w)));
                }
            }
        }
        match RmsBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (
                    contiguous(x.into_primitive()),
                    contiguous(w.into_primitive()),
                );
                let y = Flex::fused_rms_norm(xp.clone(), wp.clone(), eps);
                prep.finish((xp, wp, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fused_rms_norm(
                x.into_primitive(),
                w.into_primitive(),
                eps,
            )),
        }
    }

    fn fused_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SiluMulBackward;
        impl Backward<Flex, 2> for SiluMulBackward {
            type State = (FlexTensor, FlexTensor);
            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [ng, nu] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let (gate, up) = ops.state;
                let (dg, du) = silu_mul_backward(f32s(&gate), f32s(&up), f32s(&g));
                let sh = dims(&gate);
                if let Some(node) = ng {
                    grads.register::<Flex>(node.id, tensor(dg, sh.clone()));
                }
                if let Some(node) = nu {
                    grads.register::<Flex>(node.id, tensor(du, sh));
                }
            }
        }
        match SiluMulBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (g, u) = (
                    contiguous(gate.into_primitive()),
                    contiguous(up.into_primitive()),
                );
                let y = Flex::fused_silu_mul(g.clone(), u.clone());
                prep.finish((g, u), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fused_silu_mul(
                gate.into_primitive(),
                up.into_primitive(),
            )),
        }
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RopeBackward;
        impl Backward<Flex, 1> for RopeBackward {
            type State = (FlexTensor, FlexTensor, Vec<usize>);
            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let (cos, sin, sh) = ops.state;
                if let Some(node) = nx {
                    let dx = rope_apply(f32s(&g), f32s(&cos), f32s(&sin), sh[2], sh[3], -1.0);
                    grads.register::<Flex>(node.id, tensor(dx, sh));
                }
            }
        }
        // The tables are constants: only `x` is a parent.
        let (cos, sin) = (
            contiguous(cos.into_primitive()),
            contiguous(sin.into_primitive()),
        );
        match RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.into_primitive();
                let sh = dims(&xp);
                let y = Flex::fused_rope(xp, cos.clone(), sin.clone());
                prep.finish((cos, sin, sh), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fused_rope(x.into_primitive(), cos, sin)),
        }
    }

    fn fused_nll(logits: FloatTensor<Self>, labels: FlexTensor) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct NllBackward;
        impl Backward<Flex, 1> for NllBackward {
            type State = (FlexTensor, Vec<i64>, Vec<f32>);
            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nz] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let (z, labels, lse) = ops.state;
                if let Some(node) = nz {
                    let sh = dims(&z);
                    let dz = nll_backward(f32s(&z), &labels, &lse, f32s(&g), sh[1]);
                    grads.register::<Flex>(node.id, tensor(dz, sh));
                }
            }
        }
        let labels = int_labels(labels);
        match NllBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let z = contiguous(logits.into_primitive());
                let sh = dims(&z);
                let (nll, lse) = nll_forward(f32s(&z), &labels, sh[1]);
                prep.finish((z, labels, lse), tensor(nll, vec![sh[0]]))
            }
            OpsKind::UnTracked(prep) => {
                let z = contiguous(logits.into_primitive());
                let sh = dims(&z);
                prep.finish(tensor(nll_forward(f32s(&z), &labels, sh[1]).0, vec![sh[0]]))
            }
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug, Clone)]
        struct Saved {
            q: FlexTensor,
            k: FlexTensor,
            v: FlexTensor,
            mask: FlexTensor,
            out: FlexTensor,
            lse: Vec<f32>,
            scale: f32,
        }
        #[derive(Debug)]
        struct AttentionBackward;
        impl Backward<Flex, 3> for AttentionBackward {
            type State = Saved;
            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nq, nk, nv] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let st = ops.state;
                let a = attention_backward(
                    &st.q,
                    &st.k,
                    &st.v,
                    f32s(&st.mask),
                    f32s(&st.out),
                    &st.lse,
                    f32s(&g),
                    st.scale,
                );
                if let Some(node) = nq {
                    grads.register::<Flex>(node.id, tensor(a.dq, dims(&st.q)));
                }
                if let Some(node) = nk {
                    grads.register::<Flex>(node.id, tensor(a.dk, dims(&st.k)));
                }
                if let Some(node) = nv {
                    grads.register::<Flex>(node.id, tensor(a.dv, dims(&st.v)));
                }
            }
        }
        // The mask is a constant.
        let mask = contiguous(mask.into_primitive());
        match AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (
                    rows_contiguous(q.into_primitive()),
                    rows_contiguous(k.into_primitive()),
                    rows_contiguous(v.into_primitive()),
                );
                let AttnShape { b, h, s, d, .. } = attn_shape(&q, &k);
                let (out, lse) = attention_forward(&q, &k, &v, f32s(&mask), scale as f32);
                let out = tensor(out, vec![b, s, h, d]);
                let saved = Saved {
                    q,
                    k,
                    v,
                    mask,
                    out: out.clone(),
                    lse,
                    scale: scale as f32,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fused_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                mask,
                scale,
            )),
        }
    }

    fn fused_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearBackward;
        impl Backward<Flex, 2> for LinearBackward {
            /// The weight, and the input only when the weight's gradient is wanted.
            type State = (FlexTensor, Option<FlexTensor>);
            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx, nw] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let (w, x) = ops.state;
                let (k, n) = (dims(&w)[0], dims(&w)[1]);
                let m = dims(&g)[0];
                let gm = Mat(f32s(&g).as_ptr(), n as isize, 1);
                // SAFETY: every operand is a valid f32 matrix of the stated shape; each output
                // is a fresh buffer.
                unsafe {
                    if let Some(node) = nx {
                        let dx = weight_product(m, k, n, gm, &w, true);
                        grads.register::<Flex>(node.id, tensor(dx, vec![m, k]));
                    }
                    if let (Some(node), Some(x)) = (nw, x) {
                        let dw = product(k, n, m, mat(&x).t(), gm, 1.0);
                        grads.register::<Flex>(node.id, tensor(dw, vec![k, n]));
                    }
                }
            }
        }
        let weight_tracked = w.is_tracked();
        match LinearBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x.into_primitive());
                let w = w.into_primitive();
                let (m, n) = (dims(&x)[0], dims(&w)[1]);
                let y = linear_forward(&x, &w);
                let saved_x = weight_tracked.then_some(x);
                prep.finish((w, saved_x), tensor(y, vec![m, n]))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::fused_linear(x.into_primitive(), w.into_primitive()))
            }
        }
    }

    fn fused_lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug, Clone)]
        struct Saved {
            x: FlexTensor,
            w: FlexTensor,
            a: FlexTensor,
            b: FlexTensor,
            xa: Vec<f32>,
            scale: f32,
        }
        #[derive(Debug)]
        struct LoraBackward;
        impl Backward<Flex, 4> for LoraBackward {
            type State = Saved;
            fn backward(
                self,
                ops: Ops<Self::State, 4>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [nx, nw, na, nb] = ops.parents;
                let g = contiguous(grads.consume::<Flex>(&ops.node));
                let st = ops.state;
                let (m, k) = (dims(&st.x)[0], dims(&st.x)[1]);
                let (n, r) = (dims(&st.w)[1], dims(&st.a)[1]);
                let gm = Mat(f32s(&g).as_ptr(), n as isize, 1);
                // SAFETY: every operand is a valid f32 matrix of the stated shape; each output
                // is a fresh buffer.
                unsafe {
                    // gb = scale · g·Bᵀ `[m, r]`: the gradient reaching the adapter's intermediate.
                    let gb = product(m, r, n, gm, mat(&st.b).t(), st.scale);
                    let gbm = Mat(gb.as_ptr(), r as isize, 1);
                    if let Some(node) = nx {
                        let mut dx = weight_product(m, k, n, gm, &st.w, true);
                        let dxm = Mat(dx.as_mut_ptr(), k as isize, 1);
                        gemm(ALL, m, k, r, dxm, true, gbm, mat(&st.a).t(), 1.0);
                        grads.register::<Flex>(node.id, tensor(dx, vec![m, k]));
                    }
                    if let Some(node) = na {
                        let da = product(k, r, m, mat(&st.x).t(), gbm, 1.0);
                        grads.register::<Flex>(node.id, tensor(da, vec![k, r]));
                    }
                    if let Some(node) = nb {
                        let xam = Mat(st.xa.as_ptr(), r as isize, 1);
                        let db = product(r, n, m, xam.t(), gm, st.scale);
                        grads.register::<Flex>(node.id, tensor(db, vec![r, n]));
                    }
                    if let Some(node) = nw {
                        let dw = product(k, n, m, mat(&st.x).t(), gm, 1.0);
                        grads.register::<Flex>(node.id, tensor(dw, vec![k, n]));
                    }
                }
            }
        }
        match LoraBackward
            .prepare::<C>([x.node(), w.node(), a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x.into_primitive());
                let (w, a, b) = (w.into_primitive(), a.into_primitive(), b.into_primitive());
                let (m, n) = (dims(&x)[0], dims(&w)[1]);
                let (y, xa) = lora_forward(&x, &w, &a, &b, scale as f32);
                let saved = Saved {
                    x,
                    w,
                    a,
                    b,
                    xa,
                    scale: scale as f32,
                };
                prep.finish(saved, tensor(y, vec![m, n]))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::fused_lora_linear(
                x.into_primitive(),
                w.into_primitive(),
                a.into_primitive(),
                b.into_primitive(),
                scale,
            )),
        }
    }
}

/// `L` independent accumulators, so that several FMA chains and loads are in flight at once:
/// the compiler maps them onto 2-4 vector registers of the enabled width.
#[inline(always)]
pub(super) fn dot_portable<const L: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::Rope;
    use burn::tensor::Distribution;
    use burn::tensor::activation::{silu, softmax};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>) {
        close_within(what, got, want, 2e-5)
    }

    /// Within `tol` of the largest reference value (and 1e-6).
    fn close_within<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
        assert_eq!(got.dims(), want.dims(), "{what}: shapes");
        let (g, w) = (host(got), host(want));
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale + 1e-6,
                "{what}[{i}]: {a} against {b} (scale {scale})"
            );
        }
    }

    fn ad() -> Device {
        Device::flex().autodiff()
    }

    fn rand<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &ad())
    }

    /// Forward values and the gradients of `Σ y·r` (a random `r`) for each input, from the
    /// kernel and from burn's ops.
    fn check<const D: usize, const N: usize>(
        what: &str,
        inputs: [Tensor<D>; N],
        kernel: impl Fn(&[Tensor<D>]) -> Tensor<D>,
        reference: impl Fn(&[Tensor<D>]) -> Tensor<D>,
    ) {
        let run = |f: &dyn Fn(&[Tensor<D>]) -> Tensor<D>| {
            let xs: Vec<Tensor<D>> = inputs
                .iter()
                .map(|x| x.clone().detach().require_grad())
                .collect();
            let y = f(&xs);
            let r = Tensor::<D>::from_data(
                TensorData::new(
                    (0..y.shape().num_elements())
                        .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.4)
                        .collect::<Vec<f32>>(),
                    y.dims(),
                ),
                &ad(),
            );
            let grads = (y.clone() * r).sum().backward();
            let gs: Vec<Tensor<D>> = xs
                .iter()
                .map(|x| x.grad(&grads).expect("a gradient"))
                .collect();
            (y.inner(), gs)
        };
        let (y, g) = run(&kernel);
        let (y_ref, g_ref) = run(&reference);
        close(&format!("{what} forward"), y, y_ref);
        for (i, (a, b)) in g.into_iter().zip(g_ref).enumerate() {
            close(&format!("{what} gradient of input {i}"), a, b);
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_over_the_range_softmax_uses() {
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::INFINITY) > 1e38 && exp(f32::INFINITY).is_finite());
        assert!(exp(f32::NAN).is_nan());
        // The vectorised loops take the same function.
        let xs: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 9.0).collect();
        let want: f32 = xs.iter().map(|x| (x - 2.0).exp()).sum();
        assert!((sum_exp(&xs, 2.0) - want).abs() <= 1e-5 * want);
        assert_eq!(row_max(&xs), 9.0);
    }

    #[test]
    fn rms_norm_matches_burns_ops_values_and_gradients() {
        // 67 wide: the vector loops' tails are exercised too.
        check(
            "rms_norm",
            [rand([3, 5, 67]), rand([1, 1, 67])],
            |t| rms_norm(t[0].clone(), t[1].clone().reshape([67]), 1e-5),
            |t| {
                let x = t[0].clone();
                let var = x.clone().powi_scalar(2).mean_dim(2);
                x * (var + 1e-5).sqrt().recip() * t[1].clone()
            },
        );
    }

    #[test]
    fn silu_mul_matches_burns_ops_values_and_gradients() {
        check(
            "silu_mul",
            [rand([2, 7, 45]) * 4.0, rand([2, 7, 45])],
            |t| silu_mul(t[0].clone(), t[1].clone()),
            |t| silu(t[0].clone()) * t[1].clone(),
        );
    }

    #[test]
    fn rope_matches_the_reference_rotation_values_and_gradients() {
        let (b, s, n, d) = (2, 5, 3, 8);
        let cos = Tensor::<3>::random([b, s, d], Distribution::Default, &ad());
        let sin = Tensor::<3>::random([b, s, d], Distribution::Default, &ad());
        check(
            "rope",
            [rand([b, s, n, d])],
            |t| rope(t[0].clone(), cos.clone(), sin.clone()),
            |t| {
                let (c4, s4) = (
                    cos.clone().reshape([b, 1, s, d]),
                    sin.clone().reshape([b, 1, s, d]),
                );
                Rope::apply(t[0].clone().swap_dims(1, 2), &c4, &s4).swap_dims(1, 2)
            },
        );
    }

    #[test]
    fn nll_matches_logsumexp_minus_the_label_logit_values_and_gradients() {
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 49, 7, 7, 13, 22], [6]), &ad());
        check(
            "nll",
            [rand([6, 50]) * 5.0],
            |t| nll(t[0].clone(), labels.clone()).reshape([6, 1]),
            |t| {
                let z = t[0].clone();
                let max = z.clone().max_dim(1).detach();
                let lse = (z.clone() - max.clone()).exp().sum_dim(1).log() + max;
                lse - z.gather(1, labels.clone().reshape([6, 1]))
            },
        );
    }

    #[test]
    fn attention_matches_burns_ops_with_grouped_heads_cache_views_and_masks() {
        // A few rows after a history (one block of scores), and a prompt long enough to take
        // several blocks of query rows.
        attention_case(5, 4);
        attention_case(40, 4);
    }

    #[test]
    fn attention_blocks_skip_the_columns_their_mask_hides() {
        // Causal after 2 cached keys, 3 query rows, with key 0 hidden from every row (padding).
        let ninf = f32::NEG_INFINITY;
        let t = 5;
        let mut m = vec![0f32; 3 * t];
        for (i, cell) in m.iter_mut().enumerate() {
            let (qi, kj) = (i / t, i % t);
            if kj > 2 + qi || kj == 0 {
                *cell = ninf;
            }
        }
        assert_eq!(allowed_columns(&m[..t], t), (1, 3));
        assert_eq!(allowed_columns(&m[..2 * t], t), (1, 4));
        assert_eq!(allowed_columns(&m, t), (1, 5));
        // Nothing allowed: every column, as without the skip.
        assert_eq!(allowed_columns(&[ninf; 10], t), (0, t));
    }

    fn attention_case(s: usize, past: usize) {
        let (b, h, kv, d) = (2, 6, 2, 16);
        let t = past + s;
        // Causal over a 4-token history; batch row 1 is left-padded by 2 (cannot see keys 0, 1).
        let mut m = vec![0f32; b * s * t];
        for (i, cell) in m.iter_mut().enumerate() {
            let (row, qi, kj) = (i / (s * t), (i / t) % s, i % t);
            if kj > past + qi || (row == 1 && kj < 2) {
                *cell = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(m, [b, 1, s, t]), &ad());
        let scale = 1.0 / (d as f64).sqrt();
        // q in the projections' layout seen as [b, h, s, d]; k and v as narrowed cache buffers.
        let kernel = |x: &[Tensor<4>]| {
            let q = x[0].clone().swap_dims(1, 2);
            let (k, v) = (x[1].clone().narrow(2, 0, t), x[2].clone().narrow(2, 0, t));
            attention(q, k, v, mask.clone(), scale)
        };
        let reference = |x: &[Tensor<4>]| {
            let q = x[0]
                .clone()
                .swap_dims(1, 2)
                .reshape([b, kv, (h / kv) * s, d]);
            let (k, v) = (x[1].clone().narrow(2, 0, t), x[2].clone().narrow(2, 0, t));
            let scores = q.matmul(k.swap_dims(2, 3)) * scale;
            let scores = scores.reshape([b, kv, h / kv, s, t]) + mask.clone().unsqueeze_dim::<5>(2);
            let probs = softmax(scores.reshape([b, kv, (h / kv) * s, t]), 3);
            probs.matmul(v).reshape([b, h, s, d]).swap_dims(1, 2)
        };
        check(
            "attention",
            [
                rand([b, s, h, d]),
                rand([b, kv, t + 3, d]),
                rand([b, kv, t + 3, d]),
            ],
            kernel,
            reference,
        );
        // Without autodiff, the same kernel.
        let plain = |x: Tensor<4>| x.inner();
        let (q, k, v) = (
            rand([b, s, h, d]),
            rand([b, kv, t + 3, d]),
            rand([b, kv, t + 3, d]),
        );
        let got = attention(
            plain(q.clone()).swap_dims(1, 2),
            plain(k.clone()).narrow(2, 0, t),
            plain(v.clone()).narrow(2, 0, t),
            plain(mask.clone()),
            scale,
        );
        let want = kernel(&[q, k, v]).inner();
        close("attention without autodiff", got, want);
    }
    #[test]
    fn lora_linear_matches_burns_ops_values_and_gradients() {
        let (m, k, n, r) = (37, 40, 29, 4);
        // W as a transposed view of an `[n, k]` matrix, as the model holds it.
        check(
            "lora_linear",
            [rand([m, k]), rand([n, k]), rand([k, r]), rand([r, n])],
            |t| {
                lora_linear(
                    t[0].clone(),
                    t[1].clone().transpose(),
                    t[2].clone(),
                    t[3].clone(),
                    0.7,
                )
            },
            |t| {
                let x = t[0].clone();
                x.clone().matmul(t[1].clone().transpose())
                    + x.matmul(t[2].clone()).matmul(t[3].clone()) * 0.7
            },
        );
    }

    #[test]
    fn linear_matches_burns_ops_values_and_gradients() {
        // W as a transposed view of an `[n, k]` matrix, as the model holds it; both gradients.
        let (m, k, n) = (37, 40, 29);
        check(
            "linear",
            [rand([m, k]), rand([n, k])],
            |t| linear(t[0].clone(), t[1].clone().transpose()),
            |t| t[0].clone().matmul(t[1].clone().transpose()),
        );
    }

    /// bf16 weights (frozen, as mixed precision holds them) through the AVX-512 BF16 kernel,
    /// against burn's ops on the same operands rounded to bf16: values and the gradients of the
    /// input and of both adapter matrices. The kernel also rounds the incoming gradient to bf16
    /// for `g·Wᵀ`, hence the tolerance of a few bf16 steps; a wrong layout is off by O(1).
    #[test]
    fn bf16_weights_match_burns_ops_on_rounded_operands_values_and_gradients() {
        if !crate::model::bf16::available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16, so bf16 weights keep burn's ops");
            return;
        }
        let (m, k, n, r) = (37, 70, 45, 4);
        let w = rand([n, k]).inner().cast(DType::BF16);
        let w = Tensor::<2>::from_inner(w);
        assert!(!w.is_require_grad());
        let inputs = [rand([m, k]), rand([k, r]), rand([r, n])];
        let run = |lora: bool, kernel: bool| {
            let xs: Vec<Tensor<2>> = inputs
                .iter()
                .map(|x| x.clone().detach().require_grad())
                .collect();
            let (x, a, b) = (xs[0].clone(), xs[1].clone(), xs[2].clone());
            let y = match (lora, kernel) {
                (true, true) => lora_linear(x, w.clone().transpose(), a, b, 0.7),
                (false, true) => linear(x, w.clone().transpose()),
                (_, false) => {
                    let rounded = x.clone().cast(DType::BF16).cast(DType::F32);
                    let base = rounded.matmul(w.clone().cast(DType::F32).transpose());
                    if lora {
                        base + x.matmul(a).matmul(b) * 0.7
                    } else {
                        base
                    }
                }
            };
            let rv: Vec<f32> = (0..m * n)
                .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.4)
                .collect();
            let grads = (y.clone() * Tensor::from_data(TensorData::new(rv, [m, n]), &ad()))
                .sum()
                .backward();
            let wanted = if lora { 3 } else { 1 };
            let gs: Vec<Tensor<2>> = xs[..wanted]
                .iter()
                .map(|x| x.grad(&grads).expect("a gradient"))
                .collect();
            (y.inner(), gs)
        };
        for lora in [false, true] {
            let what = if lora {
                "bf16 lora_linear"
            } else {
                "bf16 linear"
            };
            let ((y, g), (y_ref, g_ref)) = (run(lora, true), run(lora, false));
            close_within(&format!("{what} forward"), y, y_ref, 1e-3);
            for (i, (a, b)) in g.into_iter().zip(g_ref).enumerate() {
                close_within(&format!("{what} gradient of input {i}"), a, b, 1e-2);
            }
        }
    }
}
