//! A strided matrix operand for the CPU kernels (`fused`, `kernels`, `bf16`): pointer, row
//! stride, column stride, in elements. Any layout, transposed views included, without a copy.

/// `(pointer, row stride, column stride)`; f32 unless said otherwise.
#[derive(Clone, Copy)]
pub struct Mat<T = f32>(pub *const T, pub isize, pub isize);

impl<T: Copy> Mat<T> {
    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Mat(self.0, self.2, self.1)
    }

    /// The view from row `r` on.
    pub fn skip_rows(self, r: usize) -> Self {
        Mat(self.0.wrapping_offset(r as isize * self.1), self.1, self.2)
    }

    /// The element at row `i`, column `j`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the matrix the view describes.
    #[inline(always)]
    pub unsafe fn at(&self, i: usize, j: usize) -> T {
        // SAFETY: the caller keeps `(i, j)` inside the matrix.
        unsafe { *self.0.offset(i as isize * self.1 + j as isize * self.2) }
    }
}

/// A 16 × 16 block of `u32`s transposed through registers: source row `c` (16 contiguous
/// values from `src(c)`) becomes column `c` of the 16 destination rows at `dst + r·ld`.
///
/// # Safety
/// AVX-512F present; every `src(c)` readable for 16 values, `dst` writable for 16 rows of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose16(src: impl Fn(usize) -> *const u32, dst: *mut u32, ld: usize) {
    use std::arch::x86_64::*;
    // SAFETY: as the caller promises.
    unsafe {
        let mut r = [_mm512_setzero_si512(); 16];
        for (c, r) in r.iter_mut().enumerate() {
            *r = _mm512_loadu_si512(src(c).cast());
        }
        // 32-bit, then 64-bit interleaves within 128-bit lanes: lane l of `q[4i + j]` holds
        // element `4l + j` of rows `4i..4i + 4`.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut q = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            q[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            q[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            q[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            q[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        // Then 128-bit lanes across the four groups of rows.
        for j in 0..4 {
            let (a, b, c, d) = (q[j], q[4 + j], q[8 + j], q[12 + j]);
            let ab_lo = _mm512_shuffle_i32x4::<0x44>(a, b); // a0 a1 b0 b1
            let ab_hi = _mm512_shuffle_i32x4::<0xee>(a, b); // a2 a3 b2 b3
            let cd_lo = _mm512_shuffle_i32x4::<0x44>(c, d);
            let cd_hi = _mm512_shuffle_i32x4::<0xee>(c, d);
            let out = [
                _mm512_shuffle_i32x4::<0x88>(ab_lo, cd_lo), // a0 b0 c0 d0
                _mm512_shuffle_i32x4::<0xdd>(ab_lo, cd_lo), // a1 b1 c1 d1
                _mm512_shuffle_i32x4::<0x88>(ab_hi, cd_hi),
                _mm512_shuffle_i32x4::<0xdd>(ab_hi, cd_hi),
            ];
            for (l, v) in out.into_iter().enumerate() {
                _mm512_storeu_si512(dst.add((4 * l + j) * ld).cast(), v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn transpose16(_: impl Fn(usize) -> *const u32, _: *mut u32, _: usize) {
    unreachable!("AVX-512 is x86-64 only")
}
