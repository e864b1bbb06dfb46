//! The KV cache and the attention masks that go with it (causal, left padding, sliding window).

use burn::prelude::*;

/// Keys and values of one layer, `[batch, kv_heads, past, head_dim]`.
///
/// After the first step the history lives in buffers with room to spare, and each step writes
/// its keys and values into place: burn's CPU backend assigns a slice of a uniquely owned tensor
/// without copying it, so a decode step costs O(new tokens) here instead of re-concatenating the
/// whole history (O(past)). Attention reads narrowed views of the buffers, which flex's strided
/// matmul takes without copying. The buffers double when full.
#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
    /// Positions filled in `k` and `v` (their third dimension may be larger).
    len: usize,
}

/// Room a buffer gets beyond what it holds when it is (re)allocated, at least.
const HEADROOM: usize = 256;

impl LayerCache {
    /// Append this step's keys/values and return the whole history.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let s = k.dims()[2];
        let (k, v) = match (self.k.take(), self.v.take()) {
            (Some(kb), Some(vb)) => (Self::write(kb, k, self.len), Self::write(vb, v, self.len)),
            // The first step keeps its tensors as they are (training never goes further, and
            // autodiff sees exactly the projections' outputs).
            _ => (k, v),
        };
        self.len += s;
        let len = self.len;
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        (k.narrow(2, 0, len), v.narrow(2, 0, len))
    }

    /// What one position holds: `[batch, heads, width]` of the keys and of the values (for MLA:
    /// the latent and the rotary key, one "head" each). `None` before the first step.
    pub fn per_position(&self) -> Option<([usize; 3], [usize; 3])> {
        let (k, v) = (self.k.as_ref()?.dims(), self.v.as_ref()?.dims());
        Some(([k[0], k[1], k[3]], [v[0], v[1], v[3]]))
    }

    /// `new` written at positions `at..` of `buf`, growing it when it is full.
    fn write(buf: Tensor<4>, new: Tensor<4>, at: usize) -> Tensor<4> {
        let [b, h, cap, d] = buf.dims();
        let s = new.dims()[2];
        let buf = if at + s > cap {
            let grown = (2 * cap).max(at + s + HEADROOM);
            let fresh = Tensor::<4>::zeros([b, h, grown, d], &buf.device());
            fresh.slice_assign([0..b, 0..h, 0..at, 0..d], buf.narrow(2, 0, at))
        } else {
            buf
        };
        buf.slice_assign([0..b, 0..h, at..at + s, 0..d], new)
    }
}

/// The cache of every layer, plus what the mask needs to know about each row.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Tokens already in the cache (the same for every row; padding included).
    pub len: usize,
    /// Left-padding tokens at the start of each row.
    pub pad_left: Vec<usize>,
}

impl KvCache {
    pub fn new(layers: usize, pad_left: Vec<usize>) -> Self {
        Self {
            layers: vec![LayerCache::default(); layers],
            len: 0,
            pad_left,
        }
    }

    pub fn batch(&self) -> usize {
        self.pad_left.len()
    }

    /// Positions `[batch, seq]` of the next `seq` tokens: padding does not advance a row's position.
    pub fn positions(&self, seq: usize, device: &Device) -> Tensor<2, Int> {
        let b = self.batch();
        let mut pos = Vec::with_capacity(b * seq);
        for &pad in &self.pad_left {
            for i in 0..seq {
                pos.push((self.len + i).saturating_sub(pad) as i64);
            }
        }
        Tensor::from_data(TensorData::new(pos, [b, seq]), device)
    }

    /// Additive mask `[batch, 1, seq, len + seq]` for the next `seq` tokens.
    pub fn mask(&self, seq: usize, window: Option<usize>, device: &Device) -> Tensor<4> {
        let (b, past) = (self.batch(), self.len);
        let total = past + seq;
        let mut m = vec![0f32; b * seq * total];
        for (r, &pad) in self.pad_left.iter().enumerate() {
            for i in 0..seq {
                let q = past + i;
                let row = &mut m[(r * seq + i) * total..(r * seq + i + 1) * total];
                for (j, cell) in row.iter_mut().enumerate() {
                    let allowed = j <= q && j >= pad && window.is_none_or(|w| q - j < w);
                    // A padding query attends to itself only, so its softmax stays finite.
                    if !(allowed || (q < pad && j == q)) {
                        *cell = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [b, 1, seq, total]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_step_by_step_gives_the_concatenated_history() {
        let device = Device::default();
        let mut cache = LayerCache::default();
        let mut all_k: Vec<Tensor<4>> = Vec::new();
        // A prefill of 5, then enough single steps to grow the buffer twice.
        for (i, s) in std::iter::once(5)
            .chain(std::iter::repeat_n(1, 2 * HEADROOM + 20))
            .enumerate()
        {
            let k = Tensor::<4>::from_data(
                TensorData::new(
                    (0..2 * 3 * s * 4).map(|j| (i * 1000 + j) as f32).collect(),
                    [2, 3, s, 4],
                ),
                &device,
            );
            let (hk, hv) = cache.append(k.clone(), k.clone() * 2.0);
            all_k.push(k);
            if i % 97 == 0 || i > 2 * HEADROOM {
                let want = Tensor::cat(all_k.clone(), 2);
                assert_eq!(hk.dims(), want.dims());
                assert_eq!(hk.to_data(), want.to_data(), "keys after step {i}");
                assert_eq!(
                    hv.to_data(),
                    (want * 2.0).to_data(),
                    "values after step {i}"
                );
            }
        }
    }

    #[test]
    fn mask_is_causal_skips_padding_and_honours_the_window() {
        let device = Device::default();
        let cache = KvCache {
            layers: vec![],
            len: 0,
            pad_left: vec![1],
        };
        let m = cache
            .mask(4, Some(2), &device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let allowed: Vec<bool> = m.iter().map(|v| v.is_finite()).collect();
        #[rustfmt::skip]
        let expected = [
            true,  false, false, false, // padding query: itself only
            false, true,  false, false,
            false, true,  true,  false,
            false, false, true,  true,  // window of 2
        ];
        assert_eq!(allowed, expected);
        let pos = cache
            .positions(4, &device)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(pos, vec![0, 0, 1, 2]);
    }
}
