//! A kernel burn's CPU backend lacks: products of a few rows with a weight matrix, as in decode.
//!
//! burn-flex sends `[1, k] · [k, n]` to its general matmul, which uses one thread below about
//! 192³ multiply-adds and streams weights at ~13 GB/s here. Decoding is nothing but such products,
//! bound by how fast the weights are read, so this kernel reads each weight row once per call
//! with fused multiply-adds on all threads (~29 GB/s here; see BENCHMARKS.md). It is a burn
//! backend extension for `Flex`; every other backend, and autodiff, keeps burn's matmul.

use burn::backend::flex::FlexTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::fused::dot_portable;
use super::strided::Mat;

/// At most this many rows take the kernel; more rows make a real matmul, which burn does well.
pub const MAX_ROWS: usize = 8;

#[backend_extension(Flex)]
pub trait SmallMatmul: Backend {
    /// `x [m, k] · w [k, n]` for a handful of rows `m`.
    fn small_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether the kernel serves tensors on `device` (the CPU backend, without autodiff).
pub fn applies(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

/// `x [m, k] · w [k, n]` through the kernel (any `m`). Callers check [`applies`].
pub fn small_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as SmallMatmul>::small_matmul(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

impl SmallMatmul for Flex {
    fn small_matmul(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let fallback = |x: FlexTensor, w: FlexTensor| {
            <Flex as burn::backend::ops::FloatTensorOps<Flex>>::float_matmul(x, w)
        };
        if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
            return fallback(x, w);
        }
        let (m, k) = (x.layout().shape()[0], x.layout().shape()[1]);
        let n = w.layout().shape()[1];
        if m > MAX_ROWS {
            // Prefill: a real matmul. Over an `[n, k]` matrix seen transposed, gemm reads the
            // weight in its stored order when the output is column-major: only the `m` rows of
            // `x` are packed, not the weight (which a row-major output packs on every call, a
            // third of a short prompt's time). The `[m, n]` result is then transposed into place.
            if w.layout().strides() == [1, k as isize] && x.dtype() == DType::F32 {
                return prefill_product(x, w, m, k, n);
            }
            return fallback(x, w);
        }
        let x = if x.is_contiguous() {
            x
        } else {
            x.to_contiguous()
        };
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let strides = w.layout().strides();
        let start = w.layout().start_offset();
        let storage = w.storage::<f32>();
        let y = if strides == [1, k as isize] {
            // A transposed view of an `[n, k]` matrix (Hugging Face's `[out, in]`): one dot
            // product per output, each reading one contiguous weight row.
            rows_dot(&storage[start..start + n * k], xs, m, k, n)
        } else if strides == [n as isize, 1] {
            axpy_rows(&storage[start..start + k * n], xs, m, k, n)
        } else {
            return fallback(x, w);
        };
        FlexTensor::from_data(TensorData::new(y, [m, n]))
    }
}

#[backend_extension(Flex)]
pub trait DecodeAttention: Backend {
    /// Attention of a few query rows over the whole KV history, fused: `q` `[b, kv, rows, d]`
    /// (already scaled; the rows of one KV head's query heads, `rows = group · s`, ordered by
    /// head then position), `k`, `v` `[b, kv, t, d]` (views of the cache's buffers, any batch
    /// and position strides), `mask` `[b, 1, s, t]` additive. Returns `[b, kv, rows, d]`.
    fn decode_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// [`DecodeAttention`] through the extension. Callers check [`applies`].
pub fn decode_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DecodeAttention>::decode_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
    ))
}

impl DecodeAttention for Flex {
    fn decode_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        mask: FlexTensor,
    ) -> FlexTensor {
        let contiguous = |t: FlexTensor| {
            if t.is_contiguous() {
                t
            } else {
                t.to_contiguous()
            }
        };
        // Keys and values are read in place when each position's `d` values are contiguous.
        let rows_in_place = |t: FlexTensor| {
            if t.layout().strides()[3] == 1 {
                t
            } else {
                t.to_contiguous()
            }
        };
        let (q, mask) = (contiguous(q), contiguous(mask));
        let (k, v) = (rows_in_place(k), rows_in_place(v));
        let [b, kv, rows, d]: [usize; 4] = q.layout().shape()[..].try_into().expect("4-D q");
        let t = k.layout().shape()[2];
        let s = mask.layout().shape()[2];
        let (qs, ms) = (
            q.as_slice::<f32>().expect("f32 q"),
            mask.as_slice::<f32>().expect("f32 mask"),
        );
        let at = |x: &FlexTensor| (x.layout().start_offset(), x.layout().strides().to_vec());
        let ((k0, kst), (v0, vst)) = (at(&k), at(&v));
        let (ks, vs) = (k.storage::<f32>(), v.storage::<f32>());
        let mut out = vec![0f32; b * kv * rows * d];
        // One task per query row: each reads its KV head's keys and values once.
        super::spin::for_each_chunk(&mut out, d, &|task, o| {
            let (bi, h, r) = (task / (kv * rows), (task / rows) % kv, task % rows);
            let qrow = &qs[task * d..(task + 1) * d];
            let i = r % s;
            let mrow = &ms[(bi * s + i) * t..(bi * s + i + 1) * t];
            let row_of = |st: &[isize], start: usize, pos: usize| {
                (start as isize + bi as isize * st[0] + h as isize * st[1] + pos as isize * st[2])
                    as usize
            };
            let mut scores: Vec<f32> = (0..t)
                .map(|p| {
                    if mrow[p] == f32::NEG_INFINITY {
                        f32::NEG_INFINITY
                    } else {
                        let at = row_of(&kst, k0, p);
                        dot(qrow, &ks[at..at + d]) + mrow[p]
                    }
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            o.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                if w > 0.0 {
                    let at = row_of(&vst, v0, p);
                    axpy(o, w / sum, &vs[at..at + d]);
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, [b, kv, rows, d]))
    }
}

/// `x [m, k] · w`, `w` a `[k, n]` view of an `[n, k]` matrix, for many rows.
fn prefill_product(x: FlexTensor, w: FlexTensor, m: usize, k: usize, n: usize) -> FlexTensor {
    let x = if x.is_contiguous() {
        x
    } else {
        x.to_contiguous()
    };
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let ws = &w.storage::<f32>()[w.layout().start_offset()..];
    // Column-major `[m, n]`: element (i, r) at `r·m + i`.
    let mut yt = vec![0f32; m * n];
    // SAFETY: `xs` holds `m·k` values, `ws` the `n·k` of the weight, `yt` `m·n`; strides match.
    unsafe {
        super::fused::gemm(
            super::fused::ALL,
            m,
            n,
            k,
            Mat(yt.as_mut_ptr(), 1, m as isize),
            false,
            Mat(xs.as_ptr(), k as isize, 1),
            Mat(ws.as_ptr(), 1, k as isize),
            1.0,
        );
    }
    FlexTensor::from_data(TensorData::new(transposed(&yt, m, n), [m, n]))
}

/// Row-major `[m, n]` from column-major `yt` (element (i, r) at `r·m + i`), by blocks of 16
/// rows: 16 × 16 tiles through registers where the CPU has AVX-512, else for each column, 16
/// consecutive values of `yt` (one cache line) go to 16 rows that are each written in order.
fn transposed(yt: &[f32], m: usize, n: usize) -> Vec<f32> {
    const ROWS: usize = 16;
    let mut y = vec![0f32; m * n];
    #[cfg(target_arch = "x86_64")]
    let tiles = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let tiles = false;
    y.par_chunks_mut(n * ROWS)
        .enumerate()
        .for_each(|(blk, rows)| {
            let (i0, count) = (blk * ROWS, rows.len() / n);
            let tiled = if tiles && count == ROWS {
                n / 16 * 16
            } else {
                0
            };
            for r0 in (0..tiled).step_by(16) {
                // SAFETY: AVX-512F was detected; column `r0 + c` of `yt` holds rows
                // `i0..i0 + 16` at `(r0 + c)·m + i0`, and `rows` is 16 rows of `n ≥ r0 + 16`.
                unsafe {
                    super::strided::transpose16(
                        |c| yt.as_ptr().add((r0 + c) * m + i0).cast(),
                        rows.as_mut_ptr().add(r0).cast(),
                        n,
                    )
                };
            }
            for r in tiled..n {
                let col = &yt[r * m + i0..r * m + i0 + count];
                for (di, v) in col.iter().enumerate() {
                    rows[di * n + r] = *v;
                }
            }
        });
    y
}

/// `y[i, r] = Σ_j x[i, j] · wt[r, j]` for `wt` stored `[n, k]`.
fn rows_dot(wt: &[f32], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    // A few large tasks per thread.
    let block = n.div_ceil(rayon::current_num_threads().max(1) * 2).max(16);
    let mut yt = vec![0f32; n * m];
    // The spinning pool: consecutive decode kernels start without waking a sleeping thread.
    super::spin::for_each_chunk(&mut yt, block * m, &|b, out| {
        for (r, cell) in out.chunks_mut(m).enumerate() {
            let row = &wt[(b * block + r) * k..(b * block + r + 1) * k];
            for (i, c) in cell.iter_mut().enumerate() {
                *c = dot(row, &x[i * k..(i + 1) * k]);
            }
        }
    });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for r in 0..n {
        for i in 0..m {
            y[i * n + r] = yt[r * m + i];
        }
    }
    y
}

/// `y[i, :] = Σ_j x[i, j] · w[j, :]` for `w` stored `[k, n]`: column blocks per thread.
fn axpy_rows(w: &[f32], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads).div_ceil(16) * 16;
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|b| {
            let (c0, c1) = (b * chunk, ((b + 1) * chunk).min(n));
            let mut acc = vec![0f32; m * (c1 - c0)];
            for j in 0..k {
                let row = &w[j * n + c0..j * n + c1];
                for (i, a) in acc.chunks_mut(c1 - c0).enumerate() {
                    axpy(a, x[i * k + j], row);
                }
            }
            (c0, acc)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (c0, acc) in blocks {
        let width = acc.len() / m;
        for i in 0..m {
            y[i * n + c0..i * n + c0 + width].copy_from_slice(&acc[i * width..(i + 1) * width]);
        }
    }
    y
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { dot_fma(a, b) };
        }
    }
    dot_portable::<32>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_portable::<16>(a, b)
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as in `dot`.
        return unsafe { axpy_fma(y, a, x) };
    }
    axpy_portable(y, a, x)
}

#[inline(always)]
fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_fma(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_portable(y, a, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn column_major_products_come_back_row_major() {
        // Full 16 × 16 tiles, a partial block of rows and columns past the last tile.
        for (m, n) in [(37, 50), (16, 16), (5, 3), (32, 64)] {
            let yt: Vec<f32> = (0..m * n).map(|v| v as f32).collect();
            let y = transposed(&yt, m, n);
            for i in 0..m {
                for r in 0..n {
                    assert_eq!(y[i * n + r], yt[r * m + i], "({i}, {r}) of {m} × {n}");
                }
            }
        }
    }

    fn close(a: &Tensor<2>, b: &Tensor<2>) {
        let (a, b) = (
            a.to_data().try_to_vec::<f32>().unwrap(),
            b.to_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn decode_attention_matches_burns_ops_over_cache_views_and_masks() {
        use burn::tensor::activation::softmax;
        let d = Device::flex();
        let (b, kv, group, s, t, hd) = (2, 3, 3, 2, 37, 64);
        // Keys/values as narrowed views of larger buffers, as the KV cache hands them out.
        let buf = |seed: f64| {
            Tensor::<4>::random([b, kv, t + 11, hd], Distribution::Normal(seed, 1.0), &d)
                .narrow(2, 0, t)
        };
        let (k, v) = (buf(0.0), buf(0.5));
        let q = Tensor::<4>::random([b, kv, group * s, hd], Distribution::Default, &d) * 0.125;
        // Query position 1 cannot see the first 5 keys; batch row 1 cannot see key 30.
        let mut m = vec![0f32; b * s * t];
        for (n, cell) in m.iter_mut().enumerate() {
            let (row, i, p) = (n / (s * t), (n / t) % s, n % t);
            if (i == 1 && p < 5) || (row == 1 && p == 30) {
                *cell = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(m, [b, 1, s, t]), &d);
        let got = decode_attention(q.clone(), k.clone(), v.clone(), mask.clone());
        let scores =
            q.matmul(k.swap_dims(2, 3)).reshape([b, kv, group, s, t]) + mask.unsqueeze_dim::<5>(2);
        let want = softmax(scores.reshape([b, kv, group * s, t]), 3).matmul(v);
        let (g, w) = (
            got.reshape([b * kv * group * s, hd]),
            want.reshape([b * kv * group * s, hd]),
        );
        close(&g, &w);
    }

    #[test]
    fn matches_burn_matmul_for_both_weight_layouts_and_several_rows() {
        let d = Device::flex();
        // 37 rows: the prefill product (column-major gemm, then the blocked transpose).
        for m in [1, 3, 8, 37] {
            let x = Tensor::<2>::random([m, 200], Distribution::Default, &d);
            let w_out_in = Tensor::<2>::random([333, 200], Distribution::Default, &d);
            let view = w_out_in.transpose(); // [in, out] over [out, in] storage
            close(
                &small_matmul(x.clone(), view.clone()),
                &x.clone().matmul(view.clone()),
            );
            let dense = Tensor::<2>::from_data(view.to_data(), &d); // [in, out] contiguous
            close(
                &small_matmul(x.clone(), dense.clone()),
                &x.clone().matmul(dense),
            );
            let strided =
                Tensor::<2>::random([200, 700], Distribution::Default, &d).narrow(1, 100, 333);
            close(
                &small_matmul(x.clone(), strided.clone()),
                &x.matmul(strided),
            );
        }
    }
}
