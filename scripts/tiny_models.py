"""Tiny random-weight Hugging Face models with reference logits from transformers.

Builds three small float32 models from fixed configs (hidden 64, 2 layers,
4 heads, 2 kv heads, head_dim 16, intermediate 128, vocab 256), with weights
drawn from a fixed seed:
    mistral  MistralForCausalLM, sliding_window=4, eager attention (window honored)
    qwen2    Qwen2ForCausalLM (q/k/v projections with bias)
    llama3   LlamaForCausalLM with llama3 rope scaling, tied embeddings
Weights are re-drawn after construction (non-zero biases, non-unit norms,
larger scales) so every feature visibly changes the logits; the script checks
that it does.

Run:
    python scripts/tiny_models.py OUT_DIR      # e.g. tests/fixtures/tiny

Writes, for NAME in mistral, qwen2, llama3:
    OUT_DIR/NAME/config.json          as written by transformers' save_pretrained
    OUT_DIR/NAME/model.safetensors    float32
    OUT_DIR/NAME/reference.json       {"model", "torch", "transformers",
                                       "input_ids", "logits": [seq][vocab]}
Logits (every position, full vocab) are rounded to 6 decimals. No tokenizer.
"""

import json
import math
import os
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

SEED = 1234
INPUT_IDS = [1, 17, 42, 99, 3, 250, 128, 64, 7, 200, 33, 5]  # 12 > sliding window 4

COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)

# llama3 scaling chosen so the 8 rope frequencies fall in all three bands
# (unchanged, smoothed, divided by factor) for head_dim 16 and theta 10000.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}

MODELS = {
    "mistral": (MistralForCausalLM, MistralConfig(
        **COMMON, sliding_window=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(
        **COMMON, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "llama3": (LlamaForCausalLM, LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
}


def randomize(model, gen):
    """Redraw every parameter: norms ~ 1 + 0.1 N, biases ~ 0.5 N, matrices ~ N / sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.5 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def check_feature_matters(name, model, logits):
    """Assert the distinguishing feature changes the output (guards against a vacuous fixture)."""
    if name == "mistral":
        model.config.sliding_window = None
        other = logits_of(model, INPUT_IDS)
        model.config.sliding_window = 4
        assert torch.allclose(other[:4], logits[:4], atol=1e-5) and not torch.allclose(other[4:], logits[4:])
    elif name == "qwen2":
        assert all(model.model.layers[0].self_attn.q_proj.bias.abs() > 0)
    elif name == "llama3":
        plain = LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(logits_of(plain.eval(), INPUT_IDS), logits, atol=1e-4)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    for name, (cls, config) in MODELS.items():
        torch.manual_seed(SEED)
        config._attn_implementation = "eager"
        model = cls(config).to(torch.float32)
        randomize(model, torch.Generator().manual_seed(SEED))
        model.eval()
        logits = logits_of(model, INPUT_IDS)
        check_feature_matters(name, model, logits)

        folder = os.path.join(out_dir, name)
        model.save_pretrained(folder)
        gen_cfg = os.path.join(folder, "generation_config.json")
        if os.path.exists(gen_cfg):
            os.remove(gen_cfg)
        ref = {
            "model": cls.__name__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "input_ids": INPUT_IDS,
            "logits": [[round(v, 6) for v in row] for row in logits.tolist()],
        }
        with open(os.path.join(folder, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"{folder}: {size} bytes")


if __name__ == "__main__":
    main()
