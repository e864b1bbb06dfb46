//! Products with bf16 weights on CPUs with AVX-512 BF16 (`vdpbf16ps`), f32 accumulation.
//!
//! burn's CPU backend multiplies bf16 by converting both operands to f32 first, so bf16 weights
//! ran slower than f32 ones (BENCHMARKS.md). Here the f32 activations are rounded to bf16 once
//! per product, and each `vdpbf16ps` does 32 multiply-adds into 16 f32 sums: twice the
//! multiply-adds of an f32 FMA per instruction, from half the weight bytes.
//!
//! The layout is the classic packed one. The activations `A [m, k]` become rows of bf16 pairs
//! (`u32`: `A[i, 2p]` low, `A[i, 2p + 1]` high); the weight `B [k, n]` becomes panels of
//! [`NR`] columns, each a run of `k / 2` pair-rows of [`NR`] `u32`s. A micro-kernel keeps a tile
//! of `MR × NR` sums in 24 registers and, per pair of `k`, broadcasts one pair of each row of
//! `A` against two registers of `B`. Tiles are split over rayon's threads by blocks of rows and
//! panels of columns.
//!
//! [`available`] says whether this CPU has the instructions; the callers keep burn's path
//! otherwise. [`product_reference`] is the same product in plain Rust (same rounding of both
//! operands, f64 sums), which the unit tests hold the kernel to.

use half::bf16;
use rayon::prelude::*;
use std::sync::OnceLock;

use super::strided::{Mat, transpose16};

/// Rows of `A` per micro-kernel tile.
const MR: usize = 12;
/// Columns of `B` per panel: two registers of 16 f32 sums.
const NR: usize = 32;
/// Pairs of `k` per cache block: a block of one panel is `KCP · NR · 4` = 16 KiB, in L1.
const KCP: usize = 128;
/// Rows of `A` per task: a block `MC × KCP` of pairs is 48 KiB, in L2.
const MC: usize = 96;

/// Whether this CPU runs the bf16 kernels (AVX-512 F and BF16), checked once.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN), as `half` and the CPU's
/// `vcvtneps2bf16` do. Branch-free, so the packing loops vectorise.
#[inline(always)]
fn round(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    if nan { (b >> 16) | 0x40 } else { rounded }
}

/// `A [m, k]` as rows of `k.div_ceil(2)` pairs of bf16 (an odd `k` pads with zero).
///
/// # Safety
/// `a` must describe a valid `[m, k]` matrix.
unsafe fn pack_a(m: usize, k: usize, a: Mat<f32>, out: &mut [u32]) {
    let kp = k.div_ceil(2);
    assert_eq!(out.len(), m * kp, "packed A is [m, k / 2]");
    let a = SendView(a);
    out.par_chunks_mut(kp * 16)
        .enumerate()
        .for_each(|(c, rows)| {
            let a = a.get();
            for (r, row) in rows.chunks_mut(kp).enumerate() {
                let i = c * 16 + r;
                if a.2 == 1 {
                    // SAFETY: row `i` of a valid matrix with contiguous rows of `k`.
                    let src =
                        unsafe { std::slice::from_raw_parts(a.0.offset(i as isize * a.1), k) };
                    // SAFETY: `gemm` runs only where `available()`.
                    unsafe { round_row(src, row) };
                } else {
                    for (p, dst) in row.iter_mut().enumerate() {
                        // SAFETY: `(i, 2p)` and `(i, 2p + 1)` are inside `[m, k]` when `< k`.
                        let lo = round(unsafe { a.at(i, 2 * p) });
                        let hi = if 2 * p + 1 < k {
                            round(unsafe { a.at(i, 2 * p + 1) })
                        } else {
                            0
                        };
                        *dst = lo | (hi << 16);
                    }
                }
            }
        });
}

/// `B [k, n]` as `n.div_ceil(NR)` panels, each `k.div_ceil(2)` pair-rows of [`NR`] columns
/// (columns past `n` and an odd `k`'s last pair pad with zero).
///
/// # Safety
/// `b` must describe a valid `[k, n]` matrix.
unsafe fn pack_b(k: usize, n: usize, b: Mat<bf16>, out: &mut [u32]) {
    let kp = k.div_ceil(2);
    let b = SendView(b);
    out.par_chunks_mut(kp * NR)
        .enumerate()
        .for_each(|(pn, panel)| {
            let b = b.get();
            let cols = NR.min(n - pn * NR);
            if cols < NR {
                panel.fill(0);
            }
            let bits = |i: usize, j: usize| -> u32 {
                // SAFETY: callers pass `i < k`, `j < n`.
                u32::from(unsafe { b.at(i, pn * NR + j) }.to_bits())
            };
            if b.1 == 1 {
                // Each column is contiguous in `k` (a weight stored `[n, k]`, read transposed): a
                // pair is one unaligned `u32` of the column; walk down the columns.
                let col = |j: usize| {
                    // SAFETY: column `j < cols` of the panel holds `k` contiguous values.
                    unsafe { b.0.offset((pn * NR + j) as isize * b.2) }
                };
                // Blocks of 16 columns × 16 pairs through a register transpose, the rest one by one.
                let (full, blocks) = (cols / 16 * 16, k / 32);
                for j0 in (0..full).step_by(16) {
                    for q in 0..blocks {
                        // SAFETY: columns `j0..j0 + 16` hold values `32q..32q + 32 ≤ k`; the block
                        // goes to pair-rows `16q..16q + 16` at columns `j0..j0 + 16` of the panel.
                        unsafe {
                            transpose16(
                                |c| col(j0 + c).add(32 * q).cast::<u32>(),
                                panel.as_mut_ptr().add(16 * q * NR + j0),
                                NR,
                            )
                        };
                    }
                }
                for j in 0..cols {
                    let col = col(j);
                    let from = if j < full { blocks * 16 } else { 0 };
                    for p in from..k / 2 {
                        // SAFETY: values `2p` and `2p + 1 < k` of the column.
                        panel[p * NR + j] =
                            unsafe { col.add(2 * p).cast::<u32>().read_unaligned() };
                    }
                    if k % 2 == 1 {
                        panel[(kp - 1) * NR + j] = bits(k - 1, j);
                    }
                }
            } else if b.2 == 1 {
                // Rows contiguous in `n` (a weight read as stored): interleave two rows per pair.
                let row = |i: usize| -> &[bf16] {
                    // SAFETY: row `i < k` of the panel holds `cols` contiguous values.
                    unsafe {
                        std::slice::from_raw_parts(b.0.offset(i as isize * b.1).add(pn * NR), cols)
                    }
                };
                for p in 0..kp {
                    let lo = row(2 * p);
                    let hi = (2 * p + 1 < k).then(|| row(2 * p + 1));
                    // SAFETY: `gemm` runs only where `available()`.
                    unsafe { interleave(lo, hi, &mut panel[p * NR..p * NR + cols]) };
                }
            } else {
                for p in 0..kp {
                    let row = &mut panel[p * NR..p * NR + cols];
                    for (j, dst) in row.iter_mut().enumerate() {
                        let hi = if 2 * p + 1 < k { bits(2 * p + 1, j) } else { 0 };
                        *dst = bits(2 * p, j) | (hi << 16);
                    }
                }
            }
        });
}

/// A row of `A` as pairs of bf16: 32 values per `vcvtne2ps2bf16` (round to nearest even, as
/// [`round`], which does the tail; the instruction reads denormals as zero).
///
/// # Safety
/// [`available`]; `dst` holds `src.len().div_ceil(2)` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let k = src.len();
    assert_eq!(dst.len(), k.div_ceil(2));
    let full = k / 32;
    for c in 0..full {
        // SAFETY: values `32c..32c + 32 ≤ k` of `src`, pairs `16c..16c + 16` of `dst`.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c).cast(), v);
        }
    }
    for p in full * 16..k / 2 {
        dst[p] = round(src[2 * p]) | (round(src[2 * p + 1]) << 16);
    }
    if k % 2 == 1 {
        dst[k / 2] = round(src[k - 1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 kernels are x86-64 only")
}

/// Two rows of `B` as pairs (`lo` low, `hi` high, zero without one), vectorised by the compiler
/// for AVX-512.
///
/// # Safety
/// [`available`].
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
unsafe fn interleave(lo: &[bf16], hi: Option<&[bf16]>, dst: &mut [u32]) {
    match hi {
        Some(hi) => {
            for ((d, l), h) in dst.iter_mut().zip(lo).zip(hi) {
                *d = u32::from(l.to_bits()) | (u32::from(h.to_bits()) << 16);
            }
        }
        None => {
            for (d, l) in dst.iter_mut().zip(lo) {
                *d = u32::from(l.to_bits());
            }
        }
    }
}

/// Packed operands larger than this are freed after the product rather than kept for the
/// next one (the output layer's: tens of MiB).
const KEEP: usize = 4 << 20;

thread_local! {
    /// Each calling thread's packing buffers, kept between products: fresh ones cost a page
    /// fault per 4 KiB, which was a tenth of a training step.
    static SCRATCH: std::cell::Cell<(Vec<u32>, Vec<u32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// `v` holding at least `len` elements (their values are the packers' to write).
fn sized(v: &mut Vec<u32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0);
    }
}

/// A view that rayon's tasks may share: every task only reads through it.
#[derive(Clone, Copy)]
struct SendView<T>(Mat<T>);
// SAFETY: the views are read-only and the matrices outlive the parallel loops that read them.
unsafe impl<T> Send for SendView<T> {}
unsafe impl<T> Sync for SendView<T> {}

impl<T: Copy> SendView<T> {
    /// The view (a method, so that closures capture the whole `Send` wrapper).
    fn get(&self) -> Mat<T> {
        self.0
    }
}

/// The output pointer the tasks share; each writes its own block of rows and panel of columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint tiles (see `product`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// A product's output: row-major f32 rows at stride `ld`, overwritten or added to.
#[derive(Clone, Copy)]
pub struct Dst {
    pub ptr: *mut f32,
    pub ld: usize,
    pub accumulate: bool,
}

/// `dst [m, n] (+)= A [m, k] · B [k, n]`, `A` f32 (rounded to bf16 here), `B` bf16, sums in
/// f32, on every thread.
///
/// # Safety
/// [`available`] must be true; the views must describe valid matrices of these sizes, and
/// `dst` a valid `[m, n]` buffer that nothing else aliases.
pub unsafe fn gemm(m: usize, n: usize, k: usize, dst: Dst, a: Mat<f32>, b: Mat<bf16>) {
    let Dst {
        ptr: dst,
        ld: ldd,
        accumulate,
    } = dst;
    assert!(available(), "bf16 kernels need AVX-512 BF16");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i` of the caller's `[m, n]` output.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * ldd), n) }.fill(0.0);
            }
        }
        return;
    }
    let kp = k.div_ceil(2);
    if m <= FEW && b.1 == 1 {
        // SAFETY: forwarded from the caller.
        unsafe {
            few_rows(
                [m, n, k],
                Dst {
                    ptr: dst,
                    ld: ldd,
                    accumulate,
                },
                a,
                b,
            )
        };
        return;
    }
    let panels = n.div_ceil(NR);
    // Taken out of the thread's scratch (a nested product on this thread gets fresh ones).
    let (mut ap, mut bp) = SCRATCH.take();
    sized(&mut ap, m * kp);
    sized(&mut bp, panels * kp * NR);
    // SAFETY: forwarded from the caller; every element of both packed ranges is written.
    unsafe {
        pack_a(m, k, a, &mut ap[..m * kp]);
        pack_b(k, n, b, &mut bp[..panels * kp * NR]);
    }
    let blocks = m.div_ceil(MC);
    let out = Out(dst);
    (0..blocks * panels).into_par_iter().for_each(|task| {
        let out = out.get();
        // Neighbouring tasks share a block of `A` (in L2) and walk its panels.
        let (blk, pn) = (task / panels, task % panels);
        let cols = NR.min(n - pn * NR);
        let rows = (blk * MC)..(m.min((blk + 1) * MC));
        for k0 in (0..kp).step_by(KCP) {
            let pairs = KCP.min(kp - k0);
            let load = accumulate || k0 > 0;
            let b = &bp[pn * kp * NR + k0 * NR..];
            for r0 in rows.clone().step_by(MR) {
                let r = MR.min(rows.end - r0);
                let a = &ap[r0 * kp + k0..];
                // SAFETY: the tile `[r0, r0 + r) × [pn·NR, pn·NR + cols)` is inside `dst`, and
                // only this task writes it; `a` and `b` hold `pairs` pairs from `k0` on.
                unsafe {
                    let c = out.add(r0 * ldd + pn * NR);
                    let t = Tile {
                        a,
                        lda: kp,
                        b,
                        pairs,
                        c,
                        ldc: ldd,
                        cols,
                        load,
                    };
                    tile(r, &t);
                }
            }
        }
    });
    let keep = |v: Vec<u32>| if v.len() <= KEEP { v } else { Vec::new() };
    SCRATCH.set((keep(ap), keep(bp)));
}

/// Rows of `A` up to which a weight with contiguous columns is read in place, unpacked (decode,
/// and the eval harness's batches of up to 8): the same as the f32 decode kernels' limit
/// (`kernels::MAX_ROWS`, not imported: the f32 kernels sit above this file).
const FEW: usize = 8;

/// Rows whose dot products one step computes together (more would spill registers).
const GROUP: usize = 4;

/// Columns of `B` whose dot products one step computes together. `GROUP × COLS` independent
/// sums hide `vdpbf16ps`'s latency (one column at a time left a one-row decode waiting on a
/// single dependency chain per output), and each row's activations load once for all of them.
const COLS: usize = 4;

/// `m ≤ FEW` rows against `B` whose columns are contiguous in `k` (a weight stored `[n, k]`):
/// each output is a dot product of two contiguous runs, 32 bf16 per `vdpbf16ps`, so the weight
/// is streamed once and never packed (decode reads every weight once per token).
///
/// # Safety
/// As [`gemm`], with `b.1 == 1` and `1 ≤ m ≤ FEW`.
unsafe fn few_rows([m, n, k]: [usize; 3], dst: Dst, a: Mat<f32>, b: Mat<bf16>) {
    let Dst {
        ptr: dst,
        ld: ldd,
        accumulate,
    } = dst;
    let kp = k.div_ceil(2);
    let mut ap = vec![0u32; m * kp];
    // SAFETY: forwarded from the caller.
    unsafe { pack_a(m, k, a, &mut ap) };
    let (out, b) = (Out(dst), SendView(b));
    let rows = Rows { ap: &ap, m, kp, k };
    // Two tasks per thread, each a contiguous run of the weight that the prefetcher can follow,
    // on the spinning pool: a token's couple of hundred products then start without waking a
    // sleeping thread (rayon's wake-ups and task switches were about 15% of a bf16 decode).
    let threads = rayon::current_num_threads().max(1);
    let block = n.div_ceil(threads * 2).div_ceil(COLS).max(4) * COLS;
    super::spin::run(n.div_ceil(block), &|t| {
        let (out, b) = (out.get(), b.get());
        for j0 in (t * block..((t + 1) * block).min(n)).step_by(COLS) {
            let cols = COLS.min(n - j0);
            let mut sums = [[0f32; COLS]; FEW];
            // SAFETY: columns `j0..j0 + cols ≤ n` hold `k` contiguous values each;
            // `available()` held in `gemm`.
            unsafe {
                let col = b.0.offset(j0 as isize * b.2);
                if cols == COLS {
                    rows.dots::<COLS>(col, b.2, &mut sums);
                } else {
                    for c in 0..cols {
                        let mut one = [[0f32; 1]; FEW];
                        rows.dots::<1>(col.offset(c as isize * b.2), b.2, &mut one);
                        for (s, o) in sums.iter_mut().zip(&one) {
                            s[c] = o[0];
                        }
                    }
                }
            }
            for (i, row) in sums.iter().enumerate().take(m) {
                for (c, sum) in row.iter().enumerate().take(cols) {
                    // SAFETY: `(i, j0 + c)` is inside the caller's `[m, n]` output; only this
                    // task writes it.
                    unsafe {
                        let d = out.add(i * ldd + j0 + c);
                        *d = if accumulate { *d + sum } else { *sum };
                    }
                }
            }
        }
    });
}

/// The packed rows of `A` a decode product reads: `m` rows of `kp` pairs, `k` values each.
#[derive(Clone, Copy)]
struct Rows<'a> {
    ap: &'a [u32],
    m: usize,
    kp: usize,
    k: usize,
}

impl Rows<'_> {
    /// `sums[i][c]` = row `i` · column `c` of `C` contiguous columns at stride `stride` from
    /// `col`, [`GROUP`] rows at a time (a group's columns are still in L1 for the next group).
    ///
    /// # Safety
    /// [`available`]; `col` starts `C` columns of `k` values each.
    unsafe fn dots<const C: usize>(
        &self,
        col: *const bf16,
        stride: isize,
        sums: &mut [[f32; C]; FEW],
    ) {
        for g0 in (0..self.m).step_by(GROUP) {
            let group = Rows {
                ap: &self.ap[g0 * self.kp..],
                m: (self.m - g0).min(GROUP),
                ..*self
            };
            let s = &mut sums[g0..];
            // SAFETY: forwarded from the caller; the group's rows are packed.
            unsafe {
                match group.m {
                    1 => dots::<1, C>(&group, col, stride, s),
                    2 => dots::<2, C>(&group, col, stride, s),
                    3 => dots::<3, C>(&group, col, stride, s),
                    _ => dots::<GROUP, C>(&group, col, stride, s),
                }
            }
        }
    }
}

/// `R × C` dot products of packed rows of `A` with `C` contiguous columns of `B`.
///
/// # Safety
/// As [`Rows::dots`], with `R == rows.m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dots<const R: usize, const C: usize>(
    rows: &Rows<'_>,
    col: *const bf16,
    stride: isize,
    sums: &mut [[f32; C]],
) {
    use std::arch::x86_64::*;
    let Rows { ap, kp, k, .. } = *rows;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let chunks = k / 32;
    for q in 0..chunks {
        // SAFETY: values `32q..32q + 32 ≤ k` of each column, pairs `16q..16q + 16` of each row.
        unsafe {
            let mut w = [_mm512_setzero_si512(); C];
            for (c, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(col.offset(c as isize * stride).add(32 * q).cast());
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                    ap.as_ptr().add(i * kp + 16 * q).cast(),
                ));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbf16_ps(*acc, x, std::mem::transmute::<__m512i, __m512bh>(*w));
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            let mut sum = _mm512_reduce_add_ps(*acc);
            for l in 32 * chunks..k {
                let bits = (ap[i * kp + l / 2] >> (16 * (l % 2))) as u16;
                // SAFETY: value `l < k` of column `c`.
                let w = unsafe { *col.offset(c as isize * stride).add(l) };
                sum += half::bf16::from_bits(bits).to_f32() * w.to_f32();
            }
            sums[i][c] = sum;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dots<const R: usize, const C: usize>(
    _: &Rows<'_>,
    _: *const bf16,
    _: isize,
    _: &mut [[f32; C]],
) {
    unreachable!("bf16 kernels are x86-64 only")
}

/// One micro-kernel call's operands: `a` holds the tile's rows of `pairs` pairs at stride `lda`,
/// `b` `pairs` rows of [`NR`]; `c` is `[rows, cols]` at row stride `ldc`, `cols ≤ NR`, read
/// first when `load`.
struct Tile<'a> {
    a: &'a [u32],
    lda: usize,
    b: &'a [u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    load: bool,
}

/// `rows` rows, dispatched to the micro-kernel compiled for that many.
///
/// # Safety
/// As [`kernel`].
unsafe fn tile(rows: usize, t: &Tile<'_>) {
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: forwarded from the caller.
                $($r => unsafe { kernel::<$r>(t) },)*
                _ => unreachable!("at most MR rows"),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// The micro-kernel: `C [R, cols] (+)= A [R, 2·pairs] · B [2·pairs, NR]` from packed operands.
///
/// # Safety
/// [`available`]; the [`Tile`]'s operands as it describes them, with `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(t: &Tile<'_>) {
    let &Tile {
        a,
        lda,
        b,
        pairs,
        c,
        ldc,
        cols,
        load,
    } = t;
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= (R - 1) * lda + pairs && b.len() >= pairs * NR);
    let m0: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u16 << cols) - 1
    };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if load {
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r` of `C`, masked to its `cols` columns.
            unsafe {
                acc[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                acc[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: pair-row `p` of the panel, and pair `p` of each row of `A`, are in bounds.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(r * lda + p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r` of `C`, masked to its `cols` columns.
        unsafe {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const R: usize>(_: &Tile<'_>) {
    unreachable!("bf16 kernels are x86-64 only ({})", R)
}

/// `A [m, k] · B [k, n]` into a fresh row-major `[m, n]` buffer, on every thread.
///
/// # Safety
/// As [`gemm`].
pub unsafe fn product(m: usize, n: usize, k: usize, a: Mat<f32>, b: Mat<bf16>) -> Vec<f32> {
    // Not zeroed first: without `accumulate`, `gemm` writes every element of `[m, n]` (every
    // tile's rows and columns, the few-row path each output, `k = 0` zeros).
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the caller's operands; `out` has room for `[m, n]`, all of which `gemm` writes
    // before the length is set.
    unsafe {
        let dst = Dst {
            ptr: out.as_mut_ptr(),
            ld: n,
            accumulate: false,
        };
        gemm(m, n, k, dst, a, b);
        out.set_len(m * n);
    }
    out
}

/// The same product in plain Rust: both operands rounded to bf16 as the kernel rounds them,
/// sums in f64. What the tests hold [`gemm`] to.
///
/// # Safety
/// The views must describe valid matrices of these sizes.
pub unsafe fn product_reference(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<f32>,
    b: Mat<bf16>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for l in 0..k {
                // SAFETY: `(i, l)` and `(l, j)` are inside the caller's matrices.
                let (x, w) = unsafe { (a.at(i, l), b.at(l, j)) };
                s += f64::from(bf16::from_bits(round(x) as u16).to_f32()) * f64::from(w.to_f32());
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_matches_half() {
        for x in data(10_000, 7)
            .into_iter()
            .chain([0.0, -0.0, 1e-40, f32::MAX, f32::INFINITY])
        {
            assert_eq!(round(x) as u16, bf16::from_f32(x).to_bits(), "{x}");
        }
        assert!(bf16::from_bits(round(f32::NAN) as u16).is_nan());
    }

    /// Every shape class the tiling has: a few rows read against the weight in place (decode),
    /// rows past a tile and a block, columns past a panel,
    /// an odd `k`, `k` past a cache block; `A` contiguous and strided; `B` in both layouts a
    /// projection uses (a weight stored `[n, k]` read transposed, and read as stored); and
    /// accumulation into an existing output.
    #[test]
    fn matches_the_reference_on_every_tiling_edge() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16, so the kernel is never called");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 40, 75),
            (4, 9, 64),
            (1, 6, 608),
            (2, 13, 1536),
            (6, 50, 100),
            (8, 21, 576),
            (5, 17, 3),
            (13, 33, 257),
            (97, 70, 300),
            (200, 64, 64),
        ] {
            let a = data(m * k, 1);
            let w: Vec<bf16> = data(n * k, 2).into_iter().map(bf16::from_f32).collect();
            // `B` as the transposed view of `w` stored `[n, k]`, and as `w` read as `[k, n]`.
            for (b, label) in [
                (Mat(w.as_ptr(), 1, k as isize), "column-contiguous"),
                (Mat(w.as_ptr(), n as isize, 1), "row-major"),
            ] {
                for (av, alabel) in [
                    (Mat(a.as_ptr(), k as isize, 1), "row-major A"),
                    (Mat(a.as_ptr(), 1, m as isize), "transposed A"),
                ] {
                    // SAFETY: both views lie inside their buffers.
                    let (got, want) =
                        unsafe { (product(m, n, k, av, b), product_reference(m, n, k, av, b)) };
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (k as f32).sqrt() + 1e-5 * w.abs();
                        assert!(
                            (g - w).abs() <= tol,
                            "{m}x{n}x{k} {label}, {alabel}: [{i}] {g} vs {w}"
                        );
                    }
                }
            }
            // Accumulating adds the product to what is there.
            let b = Mat(w.as_ptr(), 1, k as isize);
            let av = Mat(a.as_ptr(), k as isize, 1);
            let mut out = vec![1.5f32; m * n];
            // SAFETY: as above; `out` is `[m, n]`.
            let want = unsafe {
                let dst = Dst {
                    ptr: out.as_mut_ptr(),
                    ld: n,
                    accumulate: true,
                };
                gemm(m, n, k, dst, av, b);
                product_reference(m, n, k, av, b)
            };
            for (g, w) in out.iter().zip(&want) {
                assert!(
                    (g - (w + 1.5)).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{g} vs {w} + 1.5"
                );
            }
        }
    }
}
