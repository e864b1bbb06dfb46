//! Datasets for training: files through polars, rows rendered with the model's chat template,
//! loss masks, a seeded train/validation split, packing, and batches with their attention masks.

pub mod format;
pub mod load;

use std::path::PathBuf;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use format::{Columns, Format, RenderOptions, Sample, Segment};
pub use load::Row;

use crate::tokenize::ModelTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {detail}")]
    File { file: PathBuf, detail: String },
    #[error("{file}:{line}: {detail}")]
    Row {
        file: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// One `[[datasets]]` entry of a recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A .jsonl, .json, .parquet or .csv file (relative paths: from the recipe's folder).
    pub path: PathBuf,
    #[serde(rename = "type")]
    pub format: Format,
    /// Sampling weight: 2.0 uses every row twice, 0.5 a seeded half of them.
    #[serde(default = "one")]
    pub weight: f64,
    /// Render prompt/completion and Alpaca rows with the model's chat template.
    #[serde(default = "yes")]
    pub chat_template: bool,
    #[serde(flatten)]
    pub columns: Columns,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// What loading found, for `--dry-run` and the run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataStats {
    pub rows: usize,
    pub samples: usize,
    pub dropped_too_long: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// Read, render and tokenize every dataset; rows longer than `max_len` tokens are dropped.
pub fn load_samples(
    specs: &[(DatasetSpec, PathBuf)],
    tok: &ModelTokenizer,
    train_on_inputs: bool,
    max_len: usize,
    seed: u64,
) -> Result<(Vec<Sample>, DataStats), DataError> {
    let mut stats = DataStats::default();
    let mut out = Vec::new();
    for (spec, path) in specs {
        let rows = load::read_rows(path)?;
        stats.rows += rows.len();
        let opts = RenderOptions {
            format: spec.format,
            columns: spec.columns.clone(),
            chat_template: spec.chat_template,
            train_on_inputs,
        };
        let mut samples = Vec::with_capacity(rows.len());
        for row in &rows {
            let segs = format::render(row, &opts, tok)?;
            let sample = format::tokenize(&segs, tok)?;
            if sample.trained_tokens() == 0 {
                return Err(row.err("no token of this row is trained (empty completion?)"));
            }
            if sample.ids.len() > max_len {
                stats.dropped_too_long += 1;
                continue;
            }
            samples.push(sample);
        }
        out.extend(weighted(samples, spec.weight, seed));
    }
    stats.samples = out.len();
    stats.tokens = out.iter().map(|s| s.ids.len()).sum();
    stats.trained_tokens = out.iter().map(Sample::trained_tokens).sum();
    Ok((out, stats))
}

/// Repeat whole copies of the samples, then a seeded subset for the fractional part.
fn weighted(samples: Vec<Sample>, weight: f64, seed: u64) -> Vec<Sample> {
    let whole = weight.floor() as usize;
    let frac = weight - weight.floor();
    let mut out = Vec::new();
    for _ in 0..whole {
        out.extend(samples.iter().cloned());
    }
    let extra = (frac * samples.len() as f64).round() as usize;
    if extra > 0 {
        let mut idx: Vec<usize> = (0..samples.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed));
        out.extend(idx[..extra].iter().map(|&i| samples[i].clone()));
    }
    out
}

/// A seeded split: `val_size` < 1 is a fraction, otherwise a count.
pub fn split(mut samples: Vec<Sample>, val_size: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    samples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n = if val_size < 1.0 {
        (val_size * samples.len() as f64).round() as usize
    } else {
        val_size as usize
    }
    .min(samples.len());
    let val = samples.split_off(samples.len() - n);
    (samples, val)
}

/// One row of a batch: one sample, or several packed ones that never attend to each other.
pub type Sequence = Vec<Sample>;

/// Samples as sequences: one each, or packed greedily (in order) up to `max_len` tokens.
pub fn sequences(samples: &[Sample], pack: bool, max_len: usize) -> Vec<Sequence> {
    if !pack {
        return samples.iter().map(|s| vec![s.clone()]).collect();
    }
    let mut out: Vec<Sequence> = Vec::new();
    let mut cur: Sequence = Vec::new();
    let mut len = 0;
    for s in samples {
        if len + s.ids.len() > max_len && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            len = 0;
        }
        len += s.ids.len();
        cur.push(s.clone());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A batch on the host, ready to become tensors.
#[derive(Debug, Clone)]
pub struct HostBatch {
    pub rows: usize,
    pub len: usize,
    /// `[rows * len]` token ids (padding: the pad id).
    pub ids: Vec<i64>,
    /// `[rows * len]` positions, restarting at 0 for every packed sample.
    pub positions: Vec<i64>,
    /// `[rows, 1, len, len]` additive mask: causal within each sample, nothing across samples.
    pub mask: Vec<f32>,
    /// Flat indices (`row * len + t`) of the positions whose next token is trained.
    pub predict_at: Vec<i64>,
    /// The token each of those positions must predict.
    pub labels: Vec<i64>,
}

impl HostBatch {
    pub fn trained_tokens(&self) -> usize {
        self.labels.len()
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Lay out sequences right-padded to the longest one.
    pub fn new(seqs: &[&Sequence], pad_id: u32, window: Option<usize>) -> Self {
        let rows = seqs.len();
        let len = seqs
            .iter()
            .map(|q| q.iter().map(|s| s.ids.len()).sum::<usize>())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut b = HostBatch {
            rows,
            len,
            ids: vec![pad_id as i64; rows * len],
            positions: vec![0; rows * len],
            mask: vec![f32::NEG_INFINITY; rows * len * len],
            predict_at: Vec::new(),
            labels: Vec::new(),
        };
        for (r, seq) in seqs.iter().enumerate() {
            let mut start = 0;
            for s in seq.iter() {
                let n = s.ids.len();
                for i in 0..n {
                    let t = start + i;
                    b.ids[r * len + t] = s.ids[i] as i64;
                    b.positions[r * len + t] = i as i64;
                    let row = &mut b.mask[(r * len + t) * len..(r * len + t + 1) * len];
                    for (j, cell) in row.iter_mut().enumerate().take(t + 1).skip(start) {
                        if window.is_none_or(|w| t - j < w) {
                            *cell = 0.0;
                        }
                    }
                    if i + 1 < n && s.trained[i + 1] {
                        b.predict_at.push((r * len + t) as i64);
                        b.labels.push(s.ids[i + 1] as i64);
                    }
                }
                start += n;
            }
            // Padding attends to itself only, so no softmax row is empty.
            for t in start..len {
                b.mask[(r * len + t) * len + t] = 0.0;
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ids: &[u32], trained: &[bool]) -> Sample {
        Sample {
            ids: ids.to_vec(),
            trained: trained.to_vec(),
        }
    }

    #[test]
    fn packed_samples_do_not_see_each_other_and_restart_positions() {
        let a = sample(&[1, 2, 3], &[false, false, true]);
        let b = sample(&[4, 5], &[false, true]);
        let seqs = sequences(&[a, b], true, 8);
        assert_eq!(seqs.len(), 1);
        let hb = HostBatch::new(&[&seqs[0]], 0, None);
        assert_eq!(hb.ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(hb.positions, vec![0, 1, 2, 0, 1]);
        // Position 1 predicts token 3 (trained); position 3 predicts token 5.
        assert_eq!(hb.predict_at, vec![1, 3]);
        assert_eq!(hb.labels, vec![3, 5]);
        let allowed = |q: usize, k: usize| hb.mask[q * 5 + k] == 0.0;
        assert!(allowed(2, 0) && allowed(4, 3));
        assert!(!allowed(3, 2), "the second sample must not see the first");
        assert!(!allowed(0, 1), "causal");
    }

    #[test]
    fn split_is_seeded_and_sized() {
        let s: Vec<Sample> = (0..10).map(|i| sample(&[i], &[true])).collect();
        let (t1, v1) = split(s.clone(), 0.2, 7);
        let (t2, v2) = split(s.clone(), 0.2, 7);
        assert_eq!((t1.len(), v1.len()), (8, 2));
        assert_eq!(v1, v2);
        assert_eq!(t1, t2);
        assert_eq!(split(s, 3.0, 7).1.len(), 3);
    }
}
