//! The KV cache and the attention masks that go with it (causal, left padding, sliding window).

use burn::prelude::*;

/// Keys and values of one layer, `[batch, kv_heads, past, head_dim]`.
#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
}

impl LayerCache {
    /// Append this step's keys/values and return the whole history.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let k = match self.k.take() {
            Some(past) => Tensor::cat(vec![past, k], 2),
            None => k,
        };
        let v = match self.v.take() {
            Some(past) => Tensor::cat(vec![past, v], 2),
            None => v,
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        (k, v)
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
