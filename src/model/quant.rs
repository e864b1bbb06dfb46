//! Quantised weights as the GGUF file stores them (Q4_0, Q4_1, Q8_0), and the CPU kernel that
//! multiplies them with a few activation rows without dequantising the matrix.
//!
//! Decoding reads every weight once per token, so it runs at the speed weights come out of memory
//! and through the arithmetic units: SmolLM2's f32 projections are 533 MB per token, its Q4_1/Q8_0
//! blocks about 4.5× fewer bytes. The kernel works as llama.cpp's does: each activation row is
//! quantised to 8 bits per 32-value block (a scale and 32 × i8), the block dot products are
//! integer multiply-adds (`vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` with AVX2), and each block's
//! integer sum is scaled by both scales in f32. Quantising the activations costs about 0.4% of
//! relative precision per value, as in llama.cpp; the prefill path (many rows) keeps the f32
//! weights and burn's matmul.
//!
//! Matrices are `[out, in]` (the checkpoint's rows), held as their blocks' parts: the 4- or 8-bit
//! values of a row contiguously, the scales (and Q4 offsets) as f32 arrays. Loading decodes the
//! file's blocks into these parts (`formats::gguf::blocks`); this module only multiplies.

/// Activation rows one call handles (decode of a small batch); more rows make a real matmul.
pub const MAX_ROWS: usize = 8;
/// Weights per block, for every supported type.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// weight = d·q + m with 4-bit q (Q4_0: m = −8·d).
    Q4_0,
    Q4_1,
    /// weight = d·q with i8 q.
    Q8_0,
}

impl QuantKind {
    pub fn name(self) -> &'static str {
        match self {
            QuantKind::Q4_0 => "Q4_0",
            QuantKind::Q4_1 => "Q4_1",
            QuantKind::Q8_0 => "Q8_0",
        }
    }

    fn nibbles(self) -> bool {
        self != QuantKind::Q8_0
    }

    fn value_bytes(self) -> usize {
        if self.nibbles() { 16 } else { 32 }
    }
}

/// A quantised `[rows, cols]` matrix.
#[derive(Clone)]
pub struct PackedMatrix {
    pub kind: QuantKind,
    pub rows: usize,
    pub cols: usize,
    /// Per row, its blocks' values: 16 bytes per block for 4-bit types (low nibbles are values
    /// 0..16 of the block, high nibbles 16..32), 32 × i8 for Q8_0.
    qs: Vec<u8>,
    /// `[rows * blocks]` scales.
    d: Vec<f32>,
    /// `[rows * blocks]` offsets of the 4-bit types (weight = d·q + m); empty for Q8_0.
    m: Vec<f32>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix({} [{}, {}])",
            self.kind.name(),
            self.rows,
            self.cols
        )
    }
}

/// Parts whose lengths do not fit the matrix.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{kind} [{rows}, {cols}]: {values} value bytes, {scales} scales, {offsets} offsets do not make whole {BLOCK}-value blocks"
)]
pub struct PartsError {
    kind: &'static str,
    rows: usize,
    cols: usize,
    values: usize,
    scales: usize,
    offsets: usize,
}

impl PackedMatrix {
    /// From decoded blocks' parts; the lengths must fit `[rows, cols]`.
    pub fn from_parts(
        kind: QuantKind,
        [rows, cols]: [usize; 2],
        qs: Vec<u8>,
        d: Vec<f32>,
        m: Vec<f32>,
    ) -> Result<Self, PartsError> {
        let blocks = rows * (cols / BLOCK);
        let want_m = if kind.nibbles() { blocks } else { 0 };
        if cols == 0
            || !cols.is_multiple_of(BLOCK)
            || qs.len() != blocks * kind.value_bytes()
            || d.len() != blocks
            || m.len() != want_m
        {
            return Err(PartsError {
                kind: kind.name(),
                rows,
                cols,
                values: qs.len(),
                scales: d.len(),
                offsets: m.len(),
            });
        }
        Ok(Self {
            kind,
            rows,
            cols,
            qs,
            d,
            m,
        })
    }

    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Row `r`'s values, scales and offsets.
    fn row(&self, r: usize) -> Row<'_> {
        let nb = self.blocks();
        let vb = self.kind.value_bytes();
        Row {
            nibbles: self.kind.nibbles(),
            qs: &self.qs[r * nb * vb..(r + 1) * nb * vb],
            d: &self.d[r * nb..(r + 1) * nb],
            m: if self.m.is_empty() {
                &[]
            } else {
                &self.m[r * nb..(r + 1) * nb]
            },
        }
    }
}

#[derive(Clone, Copy)]
struct Row<'a> {
    nibbles: bool,
    qs: &'a [u8],
    d: &'a [f32],
    m: &'a [f32],
}

/// Activation rows quantised to 8 bits per 32-value block (llama.cpp's Q8_1).
struct QuantizedRows {
    /// `[m, cols]` values.
    q: Vec<i8>,
    /// `[m, blocks]` scales.
    d: Vec<f32>,
    /// `[m, blocks]`: scale × sum of the block's values (what a weight offset multiplies).
    s: Vec<f32>,
}

fn quantize_rows(x: &[f32]) -> QuantizedRows {
    let blocks = x.len() / BLOCK;
    let mut out = QuantizedRows {
        q: Vec::with_capacity(x.len()),
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
    };
    for c in x.chunks_exact(BLOCK) {
        let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for &v in c {
            let q = (v * inv).round() as i32;
            sum += q;
            out.q.push(q as i8);
        }
        out.d.push(d);
        out.s.push(d * sum as f32);
    }
    out
}

/// `y_j = x · W_jᵀ` for several matrices that share the input `x` (`[m, cols]`, row-major): the
/// rows of all of them split over the threads in one parallel region (q/k/v, or gate/up, cost one
/// fork-join instead of three). Returns each `y_j` as `[m, rows_j]`, row-major.
pub fn matmul_many(mats: &[&PackedMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    assert!((1..=MAX_ROWS).contains(&m), "{m} rows");
    let cols = mats[0].cols;
    assert!(mats.iter().all(|w| w.cols == cols) && x.len() == m * cols);
    let xq = quantize_rows(x);
    let kernel = Kernel::detect();
    let total: usize = mats.iter().map(|w| w.rows).sum();
    // Output `[total, m]`: each task writes a contiguous range of rows.
    let mut yt = vec![0f32; total * m];
    let threads = rayon::current_num_threads().max(1);
    let chunk = total.div_ceil(threads * 4).max(16);
    let offsets: Vec<usize> = mats
        .iter()
        .scan(0, |acc, w| {
            let at = *acc;
            *acc += w.rows;
            Some(at)
        })
        .collect();
    let body = |(c, out): (usize, &mut [f32])| {
        let first = c * chunk;
        for (i, cell) in out.chunks_mut(m).enumerate() {
            let g = first + i;
            let j = offsets.partition_point(|&o| o <= g) - 1;
            kernel.row(mats[j].row(g - offsets[j]), &xq, m, cols, cell);
        }
    };
    if total * cols < 1 << 16 || threads == 1 {
        yt.chunks_mut(chunk * m).enumerate().for_each(body);
    } else {
        super::spin::for_each_chunk(&mut yt, chunk * m, &|c, out| body((c, out)));
    }
    let mut outs = Vec::with_capacity(mats.len());
    for (j, w) in mats.iter().enumerate() {
        let y = if m == 1 {
            yt[offsets[j]..offsets[j] + w.rows].to_vec()
        } else {
            let mut y = vec![0f32; m * w.rows];
            for r in 0..w.rows {
                for i in 0..m {
                    y[i * w.rows + r] = yt[(offsets[j] + r) * m + i];
                }
            }
            y
        };
        outs.push(y);
    }
    outs
}

/// Which implementation of the block dot products this CPU runs.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512vnni") {
                return Kernel::Vnni;
            }
            if avx2 {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// `out[i] = row · x[i]` for the `m` quantised activation rows.
    #[inline]
    fn row(self, row: Row<'_>, x: &QuantizedRows, m: usize, cols: usize, out: &mut [f32]) {
        match self {
            Kernel::Portable => portable_row(row, x, m, cols, out),
            // SAFETY: the features each function is compiled for were detected in `detect`; `row`
            // holds `cols / 32` blocks and `x` holds `m` rows of `cols` values.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::row_avx2(row, x, m, cols, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => unsafe { x86::row_vnni(row, x, m, cols, out) },
        }
    }
}

/// The reference implementation: the same integer sums without vector instructions.
fn portable_row(row: Row<'_>, x: &QuantizedRows, m: usize, cols: usize, out: &mut [f32]) {
    let nb = cols / BLOCK;
    for (i, o) in out.iter_mut().enumerate().take(m) {
        let mut acc = 0f32;
        for b in 0..nb {
            let xs = &x.q[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
            let dot: i32 = if row.nibbles {
                let qs = &row.qs[b * 16..(b + 1) * 16];
                qs.iter()
                    .zip(&xs[..16])
                    .zip(&xs[16..])
                    .map(|((&q, &lo), &hi)| {
                        (q & 0xF) as i32 * lo as i32 + (q >> 4) as i32 * hi as i32
                    })
                    .sum()
            } else {
                row.qs[b * 32..(b + 1) * 32]
                    .iter()
                    .zip(xs)
                    .map(|(&q, &v)| (q as i8) as i32 * v as i32)
                    .sum()
            };
            acc += row.d[b] * x.d[i * nb + b] * dot as f32;
            if row.nibbles {
                acc += row.m[b] * x.s[i * nb + b];
            }
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, MAX_ROWS, QuantizedRows, Row};
    use std::arch::x86_64::*;

    /// One kernel per instruction set: `$dot(u, s)` sums groups of four u8 × i8 products into
    /// eight i32 lanes. Each activation-row count `M` gets its own instance, so that the
    /// accumulators live in registers.
    macro_rules! row_kernel {
        ($name:ident, $inner:ident, $features:literal, $dot:expr) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(
                row: Row<'_>,
                x: &QuantizedRows,
                m: usize,
                cols: usize,
                out: &mut [f32],
            ) {
                unsafe {
                    match m {
                        1 => $inner::<1>(row, x, cols, out),
                        2 => $inner::<2>(row, x, cols, out),
                        3 => $inner::<3>(row, x, cols, out),
                        4 => $inner::<4>(row, x, cols, out),
                        5 => $inner::<5>(row, x, cols, out),
                        6 => $inner::<6>(row, x, cols, out),
                        7 => $inner::<7>(row, x, cols, out),
                        _ => $inner::<MAX_ROWS>(row, x, cols, out),
                    }
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn $inner<const M: usize>(
                row: Row<'_>,
                x: &QuantizedRows,
                cols: usize,
                out: &mut [f32],
            ) {
                let nb = cols / BLOCK;
                let low = _mm256_set1_epi8(0x0F);
                // Two accumulators per activation row (even and odd blocks), so that
                // consecutive blocks' FMAs do not wait on each other.
                let mut acc0 = [_mm256_setzero_ps(); M];
                let mut acc1 = [_mm256_setzero_ps(); M];
                let (qp, xp) = (row.qs.as_ptr(), x.q.as_ptr());
                // One block's contribution to each activation row's accumulator.
                macro_rules! block {
                    ($b:expr, $acc:ident) => {
                        // SAFETY: block `$b` of the row and values `$b*32..$b*32+32` of each
                        // activation row are in bounds (checked by the caller's shapes).
                        unsafe {
                            let b = $b;
                            let w = if row.nibbles {
                                let q = _mm_loadu_si128(qp.add(b * 16).cast());
                                _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low)
                            } else {
                                _mm256_loadu_si256(qp.add(b * 32).cast())
                            };
                            let d = _mm256_set1_ps(*row.d.get_unchecked(b));
                            for i in 0..M {
                                let xv = _mm256_loadu_si256(xp.add(i * cols + b * BLOCK).cast());
                                let p = if row.nibbles {
                                    $dot(w, xv)
                                } else {
                                    // u8 × i8 only: move the weight's sign onto the activation.
                                    $dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w))
                                };
                                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), d);
                                let xd = _mm256_set1_ps(*x.d.get_unchecked(i * nb + b));
                                $acc[i] = _mm256_fmadd_ps(t, xd, $acc[i]);
                            }
                        }
                    };
                }
                let mut b = 0;
                while b + 2 <= nb {
                    block!(b, acc0);
                    block!(b + 1, acc1);
                    b += 2;
                }
                if b < nb {
                    block!(b, acc0);
                }
                for i in 0..M {
                    let mut v = _mm256_add_ps(acc0[i], acc1[i]);
                    let mut tail = 0f32;
                    if row.nibbles {
                        // The offsets' share: Σ_b m_b · (scale × sum of x's block b), eight
                        // blocks per instruction (a scalar chain here costs as much as the dots).
                        let sums = &x.s[i * nb..(i + 1) * nb];
                        let mut c = 0;
                        while c + 8 <= nb {
                            // SAFETY: `c + 8 <= nb` elements of both slices.
                            unsafe {
                                v = _mm256_fmadd_ps(
                                    _mm256_loadu_ps(row.m.as_ptr().add(c)),
                                    _mm256_loadu_ps(sums.as_ptr().add(c)),
                                    v,
                                );
                            }
                            c += 8;
                        }
                        tail = row.m[c..].iter().zip(&sums[c..]).map(|(a, b)| a * b).sum();
                    }
                    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                    out[i] = _mm_cvtss_f32(s) + tail;
                }
            }
        };
    }

    #[inline(always)]
    unsafe fn dot_vnni(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY (callers): compiled into functions with avx512vnni + avx512vl enabled.
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
    }

    #[inline(always)]
    unsafe fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY (callers): compiled into functions with avx2 enabled. u8 ≤ 15 (or |i8| ≤ 128)
        // times i8 pairs stay inside i16.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }

    row_kernel!(
        row_vnni,
        rows_vnni,
        "avx2,fma,avx512f,avx512vl,avx512vnni",
        dot_vnni
    );
    row_kernel!(row_avx2, rows_avx2, "avx2,fma", dot_avx2);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of random blocks of `kind` (scales kept small and finite).
    fn random(kind: QuantKind, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let blocks = rows * cols / BLOCK;
        let (mut qs, mut d, mut m) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..blocks {
            let scale = (next() % 1000) as f32 / 20000.0 + 0.001;
            d.push(scale);
            match kind {
                QuantKind::Q4_0 => m.push(-8.0 * scale),
                QuantKind::Q4_1 => m.push(-((next() % 100) as f32) / 500.0),
                QuantKind::Q8_0 => {}
            }
            qs.extend((0..kind.value_bytes()).map(|_| next() as u8));
        }
        PackedMatrix::from_parts(kind, [rows, cols], qs, d, m).unwrap()
    }

    /// The exact f32 values the blocks stand for.
    fn dequantize(w: &PackedMatrix) -> Vec<f32> {
        let mut out = Vec::with_capacity(w.rows * w.cols);
        for b in 0..w.rows * w.blocks() {
            if w.kind.nibbles() {
                let qs = &w.qs[b * 16..(b + 1) * 16];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * w.d[b] + w.m[b]));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * w.d[b] + w.m[b]));
            } else {
                out.extend(
                    w.qs[b * 32..(b + 1) * 32]
                        .iter()
                        .map(|&q| (q as i8) as f32 * w.d[b]),
                );
            }
        }
        out
    }

    fn dense_product(w: &PackedMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let dense = dequantize(w);
        let mut y = vec![0f32; m * w.rows];
        for i in 0..m {
            for r in 0..w.rows {
                y[i * w.rows + r] = (0..w.cols)
                    .map(|c| dense[r * w.cols + c] as f64 * x[i * w.cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                k.push(Kernel::Avx2);
                if has!("avx512f") && has!("avx512vl") && has!("avx512vnni") {
                    k.push(Kernel::Vnni);
                }
            }
        }
        k
    }

    #[test]
    fn kernels_agree_exactly_and_stay_close_to_the_f32_product() {
        let (rows, cols) = (77, 192);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            let w = random(kind, rows, cols, 7);
            let w2 = random(kind, 40, cols, 8);
            for m in [1, 3, 8] {
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let xq = quantize_rows(&x);
                let mut want = vec![0f32; m];
                for r in 0..rows {
                    portable_row(w.row(r), &xq, m, cols, &mut want);
                    for kernel in kernels() {
                        let mut got = vec![0f32; m];
                        kernel.row(w.row(r), &xq, m, cols, &mut got);
                        for i in 0..m {
                            // Same integer sums; only the f32 additions differ in order.
                            let e = want[i];
                            assert!(
                                (got[i] - e).abs() <= 1e-5 * (1.0 + e.abs()),
                                "{kernel:?} {kind:?} m={m} r={r}: {} vs {e}",
                                got[i]
                            );
                        }
                    }
                }
                // Against the exact product of the dequantised weights: the activations' 8-bit
                // quantisation error, relative to the size of the terms.
                let ys = matmul_many(&[&w, &w2], &x, m);
                for (y, mat) in ys.iter().zip([&w, &w2]) {
                    let exact = dense_product(mat, &x, m);
                    let dense = dequantize(mat);
                    for i in 0..m {
                        for r in 0..mat.rows {
                            let scale: f32 = (0..cols)
                                .map(|c| (dense[r * cols + c] * x[i * cols + c]).abs())
                                .sum();
                            let (a, b) = (y[i * mat.rows + r], exact[i * mat.rows + r]);
                            assert!(
                                (a - b).abs() <= 0.01 * scale + 1e-6,
                                "{kind:?} m={m} r={r}: {a} vs {b} (terms {scale})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parts_must_make_whole_blocks() {
        assert!(
            PackedMatrix::from_parts(QuantKind::Q8_0, [2, 64], vec![0; 128], vec![0.0; 4], vec![])
                .is_ok()
        );
        assert!(
            PackedMatrix::from_parts(QuantKind::Q8_0, [2, 64], vec![0; 127], vec![0.0; 4], vec![])
                .is_err()
        );
        assert!(
            PackedMatrix::from_parts(
                QuantKind::Q4_1,
                [2, 48],
                vec![0; 48],
                vec![0.0; 3],
                vec![0.0; 3]
            )
            .is_err()
        );
        assert!(
            PackedMatrix::from_parts(QuantKind::Q4_1, [2, 64], vec![0; 64], vec![0.0; 4], vec![])
                .is_err()
        );
    }
}
