//! Generation: prefill, KV-cached decode, sampling, stop strings and EOS, streaming, batches of
//! prompts (left-padded with masks), and per-token log-probabilities in the OpenAI shape.

pub mod constrain;
pub mod sampling;

use std::time::{Duration, Instant};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::{LoadError, ModelFiles};
use crate::model::{Batch, CausalLm, KvCache};
use crate::tokenize::{ModelTokenizer, TokenizeError};
pub use sampling::{Sampler, SamplingParams, log_softmax, top_n};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("empty prompt: nothing to condition on")]
    EmptyPrompt,
    /// The prompt does not leave room for one more token in the model's context.
    #[error("prompt has {prompt} tokens; the model's context is {context}")]
    ContextLength { prompt: usize, context: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Strings that end generation; the text is cut before them.
    pub stop: Vec<String>,
    /// Top-N log-probabilities per generated token (OpenAI `top_logprobs`), if wanted.
    pub logprobs: Option<usize>,
    /// A grammar every answer must follow (OpenAI `response_format`): each row's tokens are
    /// masked to those it allows, and EOS waits until the document is whole.
    #[serde(skip)]
    pub constraint: Option<std::sync::Arc<constrain::Grammar>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop string (OpenAI calls both `stop`).
    Stop,
    /// `max_new_tokens` or the context length.
    Length,
}

/// One candidate of `top_logprobs`, as OpenAI writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One entry of `logprobs.content`, as OpenAI writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// One token of a text scored by the model (a prompt echoed back with its log-probabilities, as
/// OpenAI's completions endpoint writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredToken {
    pub token: String,
    /// Its log-probability given the tokens before it (None for the first: nothing predicts it).
    pub logprob: Option<f32>,
    /// The most likely tokens at its position (empty for the first).
    pub top_logprobs: Vec<TopLogprob>,
    /// Where it starts in the text, in bytes.
    pub offset: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Wall-clock split of a generation call.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timings {
    pub prefill: Duration,
    pub decode: Duration,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
}

impl Timings {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// A model with its tokenizer on a device: what `generate`, `chat` and the providers hold.
pub struct Engine {
    pub model: CausalLm,
    pub tokenizer: ModelTokenizer,
    pub device: Device,
    /// The vocabulary as a byte trie, built on the first constrained generation.
    trie: std::sync::OnceLock<constrain::TokenTrie>,
}

/// Per-row state of a generation in progress.
struct Row {
    seen: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    emitted: usize,
    sampler: Sampler,
    done: Option<FinishReason>,
    logprobs: Vec<TokenLogprob>,
    prompt_len: usize,
    /// Where the row's answer is in the grammar, when generation is constrained.
    matcher: Option<constrain::Matcher>,
}

impl Engine {
    /// The model of `files` on `device`, with its tokenizer.
    pub fn load(files: ModelFiles, device: &Device) -> Result<Self, LoadError> {
        let model = files.model_on(device)?;
        Ok(Self::new(model, files.tokenizer, device.clone()))
    }

    pub fn new(model: CausalLm, tokenizer: ModelTokenizer, device: Device) -> Self {
        Self {
            model,
            tokenizer,
            device,
            trie: std::sync::OnceLock::new(),
        }
    }

    /// The vocabulary's byte strings in a trie (what constrained decoding walks).
    pub fn token_trie(&self) -> &constrain::TokenTrie {
        self.trie.get_or_init(|| {
            constrain::TokenTrie::new(self.tokenizer.token_bytes(), self.tokenizer.eos_ids.clone())
        })
    }

    /// The model's text for a token, and its raw bytes as OpenAI's `bytes` gives them: a token
    /// holding part of a UTF-8 character keeps that byte (its text alone is U+FFFD); special
    /// tokens give their text's bytes.
    fn token_repr(&self, id: u32) -> (String, Vec<u8>) {
        let text = self.tokenizer.decode(&[id], false).unwrap_or_default();
        let bytes = match self.token_trie().bytes_of(id) {
            Some(raw) => raw.to_vec(),
            None => text.as_bytes().to_vec(),
        };
        (text, bytes)
    }

    fn logprob_entry(&self, logp: &[f32], chosen: u32, n: usize) -> TokenLogprob {
        let (token, bytes) = self.token_repr(chosen);
        let top_logprobs = top_n(logp, n)
            .into_iter()
            .map(|i| {
                let (token, bytes) = self.token_repr(i as u32);
                TopLogprob {
                    token,
                    logprob: logp[i],
                    bytes,
                }
            })
            .collect();
        TokenLogprob {
            token,
            logprob: logp[chosen as usize],
            bytes,
            top_logprobs,
        }
    }

    /// Run the model over `tokens` (`[batch, seq]`, row-major) and return last-position logits per row.
    pub fn step(&self, tokens: Vec<u32>, batch: usize, cache: &mut KvCache) -> Vec<Vec<f32>> {
        let seq = tokens.len() / batch;
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let input = Batch {
            tokens: Tensor::from_data(TensorData::new(ids, [batch, seq]), &self.device),
            positions: cache.positions(seq, &self.device),
            mask: cache.mask(seq, self.model.sliding_window(), &self.device),
        };
        let hidden = self.model.forward_hidden(input, cache);
        cache.len += seq;
        let last = hidden.narrow(1, seq - 1, 1);
        let logits = self.model.logits(last);
        let vocab = logits.dims()[2];
        let flat = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
        flat.chunks(vocab).map(<[f32]>::to_vec).collect()
    }

    /// Generate for several prompts at once (left-padded), calling `on_text(row, new_text)` as text
    /// becomes final. Returns one [`Generation`] per prompt, and the timings.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(usize, &str),
    ) -> Result<(Vec<Generation>, Timings), GenerateError> {
        let b = prompts.len();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 {
            return Err(GenerateError::EmptyPrompt);
        }
        let max_positions = self.model.max_positions();
        if longest >= max_positions {
            return Err(GenerateError::ContextLength {
                prompt: longest,
                context: max_positions,
            });
        }
        let pad_id = self.tokenizer.eos_ids.first().copied().unwrap_or(0);
        let pad_left: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut tokens = Vec::with_capacity(b * longest);
        for p in prompts {
            tokens.extend(std::iter::repeat_n(pad_id, longest - p.len()));
            tokens.extend(p);
        }
        let mut rows: Vec<Row> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Row {
                seen: p.clone(),
                generated: Vec::new(),
                text: String::new(),
                emitted: 0,
                sampler: Sampler::new(SamplingParams {
                    seed: opts.sampling.seed.wrapping_add(i as u64),
                    ..opts.sampling.clone()
                }),
                done: None,
                logprobs: Vec::new(),
                prompt_len: p.len(),
                matcher: opts.constraint.as_deref().map(constrain::Matcher::new),
            })
            .collect();
        let mut cache = KvCache::new(self.model.num_layers(), pad_left);
        let mut timings = Timings::default();
        let budget = opts.max_new_tokens.min(max_positions - longest);
        let mut input = tokens;
        let mut started = Instant::now();
        for step in 0..budget {
            let logits = self.step(input, b, &mut cache);
            if step == 0 {
                timings.prefill = started.elapsed();
                timings.prefill_tokens = b * longest;
                started = Instant::now();
            } else {
                timings.decode_tokens += rows.iter().filter(|r| r.done.is_none()).count();
            }
            let mut next = Vec::with_capacity(b);
            for (i, (row, mut l)) in rows.iter_mut().zip(logits).enumerate() {
                if row.done.is_some() {
                    next.push(pad_id);
                    continue;
                }
                row.sampler.penalise(&mut l, &row.seen);
                let tok = match (&opts.constraint, &mut row.matcher) {
                    (Some(g), Some(m)) => self.sample_constrained(&mut row.sampler, &l, g, m),
                    _ => row.sampler.sample(&l),
                };
                // The EOS token ends the text and, as with OpenAI, is not part of `logprobs.content`.
                // Log-probabilities are the model's own, before any grammar mask.
                if let Some(n) = opts
                    .logprobs
                    .filter(|_| !self.tokenizer.eos_ids.contains(&tok))
                {
                    let lp = log_softmax(&l);
                    row.logprobs.push(self.logprob_entry(&lp, tok, n));
                }
                next.push(tok);
                self.advance(i, row, tok, opts, &mut on_text)?;
            }
            if rows.iter().all(|r| r.done.is_some()) {
                break;
            }
            input = next;
        }
        timings.decode = started.elapsed();
        let out = rows
            .into_iter()
            .enumerate()
            .map(|(i, mut row)| {
                if row.done.is_none() {
                    // Out of budget: flush what was held back for stop-string matching.
                    on_text(i, &row.text[row.emitted..]);
                    row.done = Some(FinishReason::Length);
                }
                Generation {
                    text: row.text,
                    token_ids: row.generated,
                    finish_reason: row.done.unwrap_or(FinishReason::Length),
                    prompt_tokens: row.prompt_len,
                    logprobs: opts.logprobs.map(|_| row.logprobs),
                }
            })
            .collect();
        Ok((out, timings))
    }

    /// Sample a token the grammar allows and move the matcher past it. The unmasked choice is
    /// tried first: when the grammar takes it (most steps), the full mask is never computed.
    /// Otherwise the step samples again from the masked logits. For greedy decoding this is
    /// the argmax of the allowed tokens; for sampling it is exactly the distribution restricted
    /// to them (a rejected draw is followed by a draw from the renormalised rest).
    fn sample_constrained(
        &self,
        sampler: &mut Sampler,
        logits: &[f32],
        g: &constrain::Grammar,
        m: &mut constrain::Matcher,
    ) -> u32 {
        let trie = self.token_trie();
        let mut tok = sampler.sample(logits);
        if !trie.accepts(g, m, tok) {
            let mut masked = logits.to_vec();
            constrain::mask_logits(&mut masked, g, m, trie);
            tok = sampler.sample(&masked);
        }
        if let Some(b) = trie.bytes(tok) {
            m.feed_all(g, b);
        }
        tok
    }

    /// Take one sampled token into a row: EOS, stop strings, and streaming of settled text.
    fn advance(
        &self,
        index: usize,
        row: &mut Row,
        tok: u32,
        opts: &GenerateOptions,
        on_text: &mut impl FnMut(usize, &str),
    ) -> Result<(), TokenizeError> {
        row.seen.push(tok);
        if self.tokenizer.eos_ids.contains(&tok) {
            on_text(index, &row.text[row.emitted..]);
            row.emitted = row.text.len();
            row.done = Some(FinishReason::Stop);
            return Ok(());
        }
        row.generated.push(tok);
        row.text = self.tokenizer.decode(&row.generated, true)?;
        if let Some(cut) = opts
            .stop
            .iter()
            .filter_map(|s| row.text.find(s.as_str()))
            .min()
        {
            row.text.truncate(cut);
            if row.emitted < row.text.len() {
                on_text(index, &row.text[row.emitted..]);
            }
            row.emitted = row.text.len().max(row.emitted);
            row.done = Some(FinishReason::Stop);
            return Ok(());
        }
        // Hold back a possible partial stop string and an unfinished UTF-8 sequence.
        let hold = opts
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut settled = row.text.len().saturating_sub(hold);
        if row.text.ends_with('\u{FFFD}') {
            settled = settled.min(row.text.len() - '\u{FFFD}'.len_utf8());
        }
        while !row.text.is_char_boundary(settled) {
            settled -= 1;
        }
        if settled > row.emitted {
            on_text(index, &row.text[row.emitted..settled]);
            row.emitted = settled;
        }
        Ok(())
    }

    /// Every token of `ids` with its log-probability given those before it, and the `top` most
    /// likely tokens at its position; `offsets` are where the tokens start in their text.
    pub fn score(&self, ids: &[u32], offsets: &[usize], top: usize) -> Vec<ScoredToken> {
        self.score_batch(&[(ids, offsets)], top).remove(0)
    }

    /// [`Self::score`] for several texts in one forward pass (left-padded, masked).
    pub fn score_batch(&self, rows: &[(&[u32], &[usize])], top: usize) -> Vec<Vec<ScoredToken>> {
        let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if longest < 2 {
            return rows
                .iter()
                .map(|(ids, offsets)| self.scored(ids, offsets, &[], top))
                .collect();
        }
        // Every position but the last predicts the token after it.
        let seq = longest - 1;
        let pad_id = self.tokenizer.eos_ids.first().copied().unwrap_or(0);
        let pad_left: Vec<usize> = rows
            .iter()
            .map(|(ids, _)| seq - ids.len().saturating_sub(1))
            .collect();
        let mut tokens = Vec::with_capacity(rows.len() * seq);
        for ((ids, _), &pad) in rows.iter().zip(&pad_left) {
            tokens.extend(std::iter::repeat_n(pad_id as i64, pad));
            tokens.extend(
                ids.iter()
                    .take(ids.len().saturating_sub(1))
                    .map(|&t| t as i64),
            );
        }
        let mut cache = KvCache::new(self.model.num_layers(), pad_left.clone());
        let input = Batch {
            tokens: Tensor::from_data(TensorData::new(tokens, [rows.len(), seq]), &self.device),
            positions: cache.positions(seq, &self.device),
            mask: cache.mask(seq, self.model.sliding_window(), &self.device),
        };
        let hidden = self.model.forward_hidden(input, &mut cache);
        rows.iter()
            .zip(&pad_left)
            .enumerate()
            .map(|(i, ((ids, offsets), &pad))| {
                let n = seq - pad;
                if n == 0 {
                    return self.scored(ids, offsets, &[], top);
                }
                // One row's logits at a time: [n, vocab] on the host.
                let row = hidden.clone().narrow(0, i, 1).narrow(1, pad, n);
                let logits = self.model.logits(row);
                let vocab = logits.dims()[2];
                let flat = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
                let per_pos: Vec<&[f32]> = flat.chunks(vocab).collect();
                self.scored(ids, offsets, &per_pos, top)
            })
            .collect()
    }

    /// Tokens scored from the logits before each of them (`logits[i]` predicts token `i + 1`).
    fn scored(
        &self,
        ids: &[u32],
        offsets: &[usize],
        logits: &[&[f32]],
        top: usize,
    ) -> Vec<ScoredToken> {
        let lse = |l: &[f32]| -> f32 {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = l.iter().map(|&x| ((x - max) as f64).exp()).sum();
            (max as f64 + sum.ln()) as f32
        };
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                let (token, _) = self.token_repr(id);
                let offset = offsets.get(i).copied().unwrap_or(0);
                match i.checked_sub(1).and_then(|p| logits.get(p)) {
                    None => ScoredToken {
                        token,
                        logprob: None,
                        top_logprobs: Vec::new(),
                        offset,
                    },
                    Some(l) => {
                        let z = lse(l);
                        ScoredToken {
                            token,
                            logprob: Some(l[id as usize] - z),
                            top_logprobs: top_n(l, top)
                                .into_iter()
                                .map(|j| {
                                    let (token, bytes) = self.token_repr(j as u32);
                                    TopLogprob {
                                        token,
                                        logprob: l[j] - z,
                                        bytes,
                                    }
                                })
                                .collect(),
                            offset,
                        }
                    }
                }
            })
            .collect()
    }

    /// Log-probabilities of the next token at the last `last_n` positions of `tokens` (one row).
    pub fn next_token_logprobs(&self, tokens: &[u32], last_n: usize) -> Vec<Vec<f32>> {
        self.model
            .sequence_logits(tokens, last_n, &self.device)
            .iter()
            .map(|l| log_softmax(l))
            .collect()
    }
}
