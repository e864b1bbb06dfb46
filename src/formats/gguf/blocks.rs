//! The GGUF block layouts Q4_0, Q4_1 and Q8_0, decoded in one place: into their parts (the 4- or
//! 8-bit values of each row, f32 scales and f32 offsets), from which both the f32 dequantisation
//! and the CPU decode kernel (`model::quant`) read.

use half::f16;

/// Weights per block, for every supported type.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// f16 scale, 32 × 4-bit values, weight = d·(q − 8).
    Q4_0,
    /// f16 scale and f16 minimum, 32 × 4-bit values, weight = d·q + m.
    Q4_1,
    /// f16 scale, 32 × i8 values, weight = d·q.
    Q8_0,
}

impl BlockKind {
    /// Bytes of one 32-weight block in a GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockKind::Q4_0 => 18,
            BlockKind::Q4_1 => 20,
            BlockKind::Q8_0 => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Q4_0 => "Q4_0",
            BlockKind::Q4_1 => "Q4_1",
            BlockKind::Q8_0 => "Q8_0",
        }
    }

    /// Whether values are 4-bit (two per byte).
    pub fn nibbles(self) -> bool {
        self != BlockKind::Q8_0
    }

    /// Value bytes per block: 16 for the 4-bit types, 32 for Q8_0.
    pub fn value_bytes(self) -> usize {
        if self.nibbles() { 16 } else { 32 }
    }
}

/// Bytes that do not make whole blocks of a matrix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlockError {
    #[error("{kind} rows of {cols} values are not whole {BLOCK}-value blocks")]
    NotWholeBlocks { kind: &'static str, cols: usize },
    #[error("{kind} [{rows}, {cols}] needs {want} bytes, got {got}")]
    Length {
        kind: &'static str,
        rows: usize,
        cols: usize,
        want: usize,
        got: usize,
    },
}

/// A `[rows, cols]` matrix of blocks, split into parts.
#[derive(Clone)]
pub struct Blocks {
    pub kind: BlockKind,
    pub rows: usize,
    pub cols: usize,
    /// Per row, its blocks' values: 16 bytes per block for 4-bit types (low nibbles are values
    /// 0..16 of the block, high nibbles 16..32), 32 × i8 for Q8_0.
    pub qs: Vec<u8>,
    /// `[rows * blocks]` scales.
    pub d: Vec<f32>,
    /// `[rows * blocks]` offsets of the 4-bit types (weight = d·q + m; −8·d for Q4_0); empty
    /// for Q8_0.
    pub m: Vec<f32>,
}

impl std::fmt::Debug for Blocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Blocks({} [{}, {}])",
            self.kind.name(),
            self.rows,
            self.cols
        )
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl Blocks {
    /// Decode `rows` rows of `cols / 32` blocks of `kind`, as stored in the file.
    pub fn decode(
        kind: BlockKind,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Self, BlockError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(BlockError::NotWholeBlocks {
                kind: kind.name(),
                cols,
            });
        }
        let blocks = rows * (cols / BLOCK);
        let want = blocks * kind.block_bytes();
        if raw.len() != want {
            return Err(BlockError::Length {
                kind: kind.name(),
                rows,
                cols,
                want,
                got: raw.len(),
            });
        }
        let per = kind.value_bytes();
        let mut qs = Vec::with_capacity(blocks * per);
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(if kind.nibbles() { blocks } else { 0 });
        for blk in raw.chunks_exact(kind.block_bytes()) {
            let scale = half_at(blk, 0);
            d.push(scale);
            match kind {
                BlockKind::Q4_0 => m.push(-8.0 * scale),
                BlockKind::Q4_1 => m.push(half_at(blk, 2)),
                BlockKind::Q8_0 => {}
            }
            qs.extend_from_slice(&blk[blk.len() - per..]);
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

    pub fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// `[rows, cols]` in f32, row-major: exactly the values the GGUF file describes.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in 0..self.rows * self.blocks_per_row() {
            let d = self.d[b];
            if self.kind.nibbles() {
                let (qs, m) = (&self.qs[b * 16..(b + 1) * 16], self.m[b]);
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            } else {
                out.extend(
                    self.qs[b * 32..(b + 1) * 32]
                        .iter()
                        .map(|&q| (q as i8) as f32 * d),
                );
            }
        }
        out
    }

    /// The same matrix with its rows reordered: row `i` of the result is row `src(i)` of this one.
    pub fn permute_rows(&self, src: impl Fn(usize) -> usize) -> Self {
        let (nb, vb) = (self.blocks_per_row(), self.kind.value_bytes());
        let mut out = Self {
            qs: Vec::with_capacity(self.qs.len()),
            d: Vec::with_capacity(self.d.len()),
            m: Vec::with_capacity(self.m.len()),
            ..*self
        };
        for i in 0..self.rows {
            let r = src(i);
            out.qs
                .extend_from_slice(&self.qs[r * nb * vb..(r + 1) * nb * vb]);
            out.d.extend_from_slice(&self.d[r * nb..(r + 1) * nb]);
            if !self.m.is_empty() {
                out.m.extend_from_slice(&self.m[r * nb..(r + 1) * nb]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_dequantises_low_then_high_nibbles() {
        let mut block = Vec::new();
        block.extend(f16::from_f32(0.5).to_le_bytes());
        block.extend(f16::from_f32(-1.0).to_le_bytes());
        for i in 0..16u8 {
            block.push(i | ((15 - i) << 4));
        }
        let v = Blocks::decode(BlockKind::Q4_1, 1, 32, &block)
            .unwrap()
            .dequantize();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 15.0 * 0.5 - 1.0);
        assert_eq!(v[16], 15.0 * 0.5 - 1.0);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn q4_0_and_q8_0_blocks() {
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend(std::iter::repeat_n(0x9u8 | (0x7 << 4), 16));
        let v = Blocks::decode(BlockKind::Q4_0, 1, 32, &block)
            .unwrap()
            .dequantize();
        assert_eq!((v[0], v[31]), (2.0, -2.0));
        let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = Blocks::decode(BlockKind::Q8_0, 1, 32, &block)
            .unwrap()
            .dequantize();
        assert_eq!((v[0], v[31]), (-4.0, 15.0 * 0.25));
    }

    #[test]
    fn permuted_rows_and_bad_sizes() {
        let raw: Vec<u8> = (0..4 * 2 * 20).map(|i| (i * 7 % 251) as u8).collect();
        let mut raw = raw;
        for b in 0..8 {
            // Finite f16 scales and offsets.
            raw[b * 20..b * 20 + 4].copy_from_slice(&[0, 0x3c, 0, 0xbc]);
        }
        let w = Blocks::decode(BlockKind::Q4_1, 4, 64, &raw).unwrap();
        let p = w.permute_rows(|i| 3 - i);
        let (a, b) = (w.dequantize(), p.dequantize());
        assert_eq!(&a[..64], &b[3 * 64..]);
        assert_eq!(&a[64..128], &b[2 * 64..3 * 64]);
        assert!(Blocks::decode(BlockKind::Q4_1, 2, 48, &[0; 60]).is_err());
        assert!(Blocks::decode(BlockKind::Q8_0, 2, 64, &[0; 135]).is_err());
        assert!(Blocks::decode(BlockKind::Q8_0, 2, 64, &[0; 136]).is_ok());
    }
}
