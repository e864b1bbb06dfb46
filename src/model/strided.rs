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
