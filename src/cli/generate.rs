//! `switchyard generate`: one prompt, streamed to stdout, or a JSON document with `--format json`.

use std::io::Write;

use crate::generate::constrain::Grammar;
use crate::generate::{GenerateOptions, SamplingParams};
use crate::tokenize::Message;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::ModelArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// >1 discourages repeating tokens already seen.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this string appears (repeatable); it is not included in the output.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Answer with a JSON object (constrained decoding: OpenAI's `json_object`).
    #[arg(long, conflicts_with = "json_schema")]
    pub json: bool,
    /// Answer with JSON that validates against the JSON Schema in this file (constrained
    /// decoding: OpenAI's `json_schema`).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
}

impl SamplingArgs {
    pub fn options(&self, logprobs: Option<usize>) -> anyhow::Result<GenerateOptions> {
        anyhow::ensure!(self.temperature >= 0.0, "--temperature must be >= 0");
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]"
        );
        anyhow::ensure!(
            self.repetition_penalty > 0.0,
            "--repetition-penalty must be > 0"
        );
        Ok(GenerateOptions {
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            logprobs,
            constraint: self.constraint()?.map(std::sync::Arc::new),
        })
    }

    fn constraint(&self) -> anyhow::Result<Option<Grammar>> {
        if self.json {
            return Ok(Some(Grammar::json_object()));
        }
        let Some(path) = &self.json_schema else {
            return Ok(None);
        };
        let schema: serde_json::Value = crate::util::read_json(path)?;
        let g = Grammar::from_schema(&schema)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))?;
        Ok(Some(g))
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (several words are joined with spaces).
    #[arg(required = true)]
    prompt: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Send the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// A system message (chat mode only).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Top-N log-probabilities of each generated token (OpenAI `logprobs.content[].top_logprobs`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=20))]
    logprobs: Option<u8>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let device = a.model.device.name();
    let engine = a.model.load()?;
    let prompt = a.prompt.join(" ");
    let text = if a.raw {
        prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &prompt));
        engine.tokenizer.apply_chat_template(&messages, true)?
    };
    // The template already holds any BOS it wants; raw text gets the tokenizer's own specials.
    let ids = engine.tokenizer.encode(&text, a.raw)?;
    let opts = a.sampling.options(a.logprobs.map(usize::from))?;
    let stream = a.format == Format::Text;
    let mut out = std::io::stdout().lock();
    let (gens, timings) = engine.generate_batch(&[ids], &opts, |_, piece| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    })?;
    let g = gens.into_iter().next().expect("one prompt, one generation");
    if stream {
        writeln!(out)?;
        tracing::info!(
            "prefill {:.1} tok/s, decode {:.1} tok/s",
            timings.prefill_tok_s(),
            timings.decode_tok_s()
        );
    } else {
        let mut doc = json!({
            "text": g.text,
            "finish_reason": g.finish_reason,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.token_ids.len(),
                      "total_tokens": g.prompt_tokens + g.token_ids.len()},
            "token_ids": g.token_ids,
            "timings": {"prefill_tok_s": timings.prefill_tok_s(), "decode_tok_s": timings.decode_tok_s()},
            // Products decoded from quantised GGUF blocks (`--quantized`); 0 on f32 weights.
            "quantized_products": engine.model.quantized_products(),
            "device": device,
        });
        if let Some(lp) = g.logprobs {
            doc["logprobs"] = json!({"content": lp});
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
