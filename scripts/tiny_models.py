"""Tiny random-weight Hugging Face models with reference logits from transformers.

Builds small float32 models from fixed configs (hidden 64, vocab 256), with
weights drawn from a fixed seed, and writes what transformers computes for them.

Dense models (2 layers, 4 heads, 2 kv heads, head_dim 16, intermediate 128):
    mistral      MistralForCausalLM, sliding_window=4, eager attention (window honored)
    qwen2        Qwen2ForCausalLM (q/k/v projections with bias)
    llama3       LlamaForCausalLM with llama3 rope scaling, tied embeddings

Mistral 3 family (added later; dimensions shrunk where needed to keep each
folder under 400 KB, see the per-model comments at NEW_MODELS):
    ministral3       Ministral3ForCausalLM: Mistral attention + YaRN rope + Llama-4
                     query scaling (1 + 0.1 log(1 + floor(pos / 4))), intermediate 80.
    mixtral          MixtralForCausalLM: 4 experts, 2 per token (softmax router),
                     intermediate 20. Saved by transformers in the original layout
                     model.layers.L.block_sparse_moe.{gate,experts.N.w1/w2/w3}.weight.
    deepseek_v3      DeepseekV3ForCausalLM, 2 layers: layer 0 dense (intermediate 64),
                     layer 1 MoE (4 routed experts of 16, top 2, 1 shared, sigmoid
                     router with a random e_score_correction_bias, n_group 1,
                     norm_topk_prob, routed_scaling_factor 2.5); MLA with q_lora_rank 32,
                     kv_lora_rank 16, qk_nope 16, qk_rope 8 (interleaved), v_head 12,
                     4 heads; YaRN (factor 40, mscale = mscale_all_dim = 1).
    mistral4         Mistral4ForCausalLM, same shapes as deepseek_v3 (own seed, so other
                     weights) with Mistral Large 3's choices (params.json: softmax router,
                     1 shared expert, routed_scale 1.0, 1 expert group, llama_4_scaling beta
                     0.1). Differs from deepseek_v3 in: the router is a plain softmax
                     over all experts (no sigmoid, no e_score_correction_bias, groups
                     masked with 0 not -inf), routed_scaling_factor 1.0, head_dim is
                     qk_nope + qk_rope with partial_rotary_factor = qk_rope / head_dim,
                     it has the Llama-4 query scaling (deepseek_v3 has none), applied to
                     the whole query (nope and rope parts) after RoPE, YaRN factor 36 / rope_theta 10000 as in
                     Mistral Large 3's params.json, routed experts saved fused
                     (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]).
    deepseek_v3_fp8  the deepseek_v3 weights stored as DeepSeek FP8: every attention / MLP /
                     expert linear as float8_e4m3fn [out, in] plus a float32
                     weight_scale_inv [ceil(out/16), ceil(in/16)] (block 16x16 instead of
                     128x128 so the tiny matrices hold several blocks; kv_a_proj_with_mqa
                     has 24 rows = 1.5 blocks, a partial last block like DeepSeek-V3's
                     576 = 4.5 x 128). Embeddings, lm_head, norms, router gate and
                     e_score_correction_bias stay float32. Its logits are those of the
                     dequantised model (see fp8_reference below for how, and why
                     from_pretrained on the FP8 folder is not used directly: transformers
                     5.25 mis-dequantises partial blocks).
    mixtral_native   the mixtral weights in Mistral's native layout: params.json +
                     consolidated.safetensors (tok_embeddings, norm, output,
                     layers.L.attention.wq/wk/wv/wo, attention_norm, ffn_norm,
                     feed_forward.gate, feed_forward.experts.N.w1/w2/w3), with wq / wk rows
                     in Mistral's interleaved-pair RoPE order (see to_native_rope_rows).
                     Same reference.json content as mixtral.
    deepseek_v3_ct   deepseek_v3_fp8's FP8 tensors in the compressed-tensors layout (Mistral
                     Large 3's release format): `<name>.weight_scale` instead of
                     `weight_scale_inv` (the same dequantisation multiplier), and a
                     compressed-tensors quantization_config (block strategy, block_structure
                     [16, 16]); config.json and model.safetensors only, its logits are
                     deepseek_v3_fp8's (tests use that reference.json).
    mistral4_native  the mistral4 weights in Mistral's own layout, as Mistral Large 3 ships:
                     params.json (MLA widths at the top level, `moe`, `yarn` with
                     apply_scale false, `llama_4_scaling`) + consolidated.safetensors
                     (layers.L.attention.wq_a / q_a_norm / wq_b / wkv_a_with_mqa / kv_a_norm
                     / wkv_b / wo, feed_forward.w1-3 for the dense layer, gate,
                     experts.N.w1-3, shared_experts.w1-3; names as vLLM's
                     MistralLarge3ForCausalLM remaps them). MLA q/k rows are not permuted.
                     No reference.json: its logits are mistral4's.
    mistral3         the ministral3 weights as the text part of a multimodal
                     Mistral3ForConditionalGeneration (what Ministral 3 checkpoints are), beside
                     a tiny random Pixtral vision tower and projector; config.json and
                     model.safetensors only: on text its logits are ministral3's (asserted),
                     so tests use ministral3/reference.json.

Weights are re-drawn after construction (non-zero biases, non-unit norms,
larger scales) so every feature visibly changes the logits; the script checks
that it does (check_feature_matters).

Run:
    python scripts/tiny_models.py OUT_DIR [NAME ...]   # e.g. tests/fixtures/tiny ministral3
With no NAME every model is written. Rerunning the first three with another
transformers version changes only the recorded version strings.

Writes OUT_DIR/NAME/:
    config.json          as written by transformers' save_pretrained (deepseek_v3_fp8: plus
                         quantization_config; mixtral_native: params.json instead)
    model.safetensors    float32 (deepseek_v3_fp8: float8_e4m3fn weights + float32 scales
                         and the unquantised tensors; mixtral_native: consolidated.safetensors)
    reference.json       {"model", "torch", "transformers", "input_ids", "logits": [seq][vocab]}
                         and, for the Mistral 3 family, also
                         "greedy": {"prompt", "new_tokens", "margins"} (generate(do_sample=False,
                         max_new_tokens=8) with and without the KV cache, and a full
                         recompute per step, all agree; margins = top1 - top2 logit per step),
                         "routing" (per MoE layer and input token: chosen experts, weight
                         descending, and their weights) and "facts" (parameter counts,
                         rope inv_freq / attention_factor, softmax scale, Llama-4 scales;
                         deepseek_v3_fp8 adds "fp8": block size, partial-block tensors, the
                         dequantisation rule and what from_pretrained on the folder gives).
Logits (every position, full vocab) are rounded to 6 decimals. No tokenizer.
"""

import json
import math
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig,
                          LlamaForCausalLM, Ministral3Config,
                          Ministral3ForCausalLM, MistralConfig,
                          MistralForCausalLM, Mistral4Config,
                          Mistral4ForCausalLM, MixtralConfig,
                          MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

SEED = 1234
INPUT_IDS = [1, 17, 42, 99, 3, 250, 128, 64, 7, 200, 33, 5]  # 12 > sliding window 4
GREEDY_PROMPT = INPUT_IDS[:5]
GREEDY_NEW_TOKENS = 8

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

# ---------------------------------------------------------------------------------------------
# Mistral 3 family.
#
# YaRN: the real configs use original_max_position_embeddings 16384 (Ministral 3) / 8192
# (Mistral Large 3, Small 4) / 4096 (DeepSeek-V3). Here it is 4, so the Llama-4 query scale
# 1 + beta * log(1 + floor(pos / 4)) is 1 for positions 0-3 and > 1 from position 4 on. With so
# small an original length the real beta_fast 32 / beta_slow 1 put the whole YaRN ramp below
# dimension 0 (every frequency but the first would just be divided by factor), so beta_fast /
# beta_slow are chosen to put the ramp inside the rotary dimensions: some frequencies are kept,
# some divided by factor, some blended (check_feature_matters asserts all three occur).
# mscale = mscale_all_dim = 1.0 as in the real configs (and as transformers' Mistral converters
# write them), so YaRN's attention_factor on cos/sin is exactly 1.0; for the MLA models the
# softmax scale is still multiplied by (0.1 * mscale_all_dim * ln(factor) + 1)^2.
#
# Sizes: vocab 256 x hidden 64 embeddings and lm_head alone are 128 KiB of float32 and
# reference.json ~30 KB, so the layers get ~55k parameters to stay under 400 KB. Hence
# intermediate 80 (ministral3), 20 (mixtral, 4 experts) and, for the MLA models, 2 layers
# (layer 0 dense, layer 1 MoE) with kv_lora_rank 16, v_head_dim 12 and moe_intermediate 16.
# v_head_dim differs from qk_nope_head_dim and q_lora_rank from kv_lora_rank so that a
# swapped split or shape is caught.
# ---------------------------------------------------------------------------------------------
NEW_COMMON = dict(vocab_size=256, hidden_size=64, bos_token_id=1, eos_token_id=2)
GQA = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
YARN_ORIG = 4

MINISTRAL3_ROPE = {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                   "original_max_position_embeddings": YARN_ORIG,
                   "beta_fast": 0.1, "beta_slow": 0.0002,       # ramp over dims 1..5 of 8
                   "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}

MLA = dict(num_hidden_layers=2, first_k_dense_replace=1, intermediate_size=64,
           num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
           qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
           n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
           moe_intermediate_size=16, n_group=1, topk_group=1, norm_topk_prob=True,
           rope_interleave=True, rms_norm_eps=1e-6)

DEEPSEEK_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                 "original_max_position_embeddings": YARN_ORIG,
                 "beta_fast": 0.05, "beta_slow": 0.002,         # ramp over dims 1..3 of 4
                 "mscale": 1.0, "mscale_all_dim": 1.0}

MISTRAL4_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 36.0,
                 "original_max_position_embeddings": YARN_ORIG,
                 "beta_fast": 0.05, "beta_slow": 0.002,
                 "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}

NEW_MODELS = {
    "ministral3": (Ministral3ForCausalLM, Ministral3Config(
        **NEW_COMMON, **GQA, intermediate_size=80, num_hidden_layers=2, rms_norm_eps=1e-5,
        max_position_embeddings=YARN_ORIG * 16, rope_parameters=MINISTRAL3_ROPE)),
    "mixtral": (MixtralForCausalLM, MixtralConfig(
        **NEW_COMMON, **GQA, intermediate_size=20, num_hidden_layers=2, rms_norm_eps=1e-5,
        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "deepseek_v3": (DeepseekV3ForCausalLM, DeepseekV3Config(
        **NEW_COMMON, **MLA, routed_scaling_factor=2.5, max_position_embeddings=YARN_ORIG * 40,
        rope_parameters=DEEPSEEK_ROPE)),
    "mistral4": (Mistral4ForCausalLM, Mistral4Config(
        **NEW_COMMON, **MLA, routed_scaling_factor=1.0, max_position_embeddings=YARN_ORIG * 36,
        rope_parameters=MISTRAL4_ROPE)),
}

# Written from another model's weights: NAME -> base NAME.
DERIVED = {"deepseek_v3_fp8": "deepseek_v3", "deepseek_v3_ct": "deepseek_v3",
           "mistral4_native": "mistral4",
           "mixtral_native": "mixtral", "mistral3": "ministral3"}

ALL_NAMES = list(MODELS) + list(NEW_MODELS) + list(DERIVED)

FP8_BLOCK = [16, 16]
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
# DeepSeek-V3 quantises every nn.Linear of attention and MLPs (routed and shared experts);
# embed_tokens, lm_head, all norms, the router gate and e_score_correction_bias stay unquantised.
FP8_LINEARS = ("self_attn.q_a_proj.", "self_attn.q_b_proj.", "self_attn.kv_a_proj_with_mqa.",
               "self_attn.kv_b_proj.", "self_attn.o_proj.",
               "mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj.",
               "mlp.experts.", "mlp.shared_experts.")


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
            else:  # fan_in is the last dim (also for the 3-D fused expert tensors)
                p.copy_(noise / math.sqrt(p.shape[-1]))
        # DeepSeek's router bias is a buffer, not a parameter; draw it too (0.2 N, of the
        # order of the sigmoid scores it is added to, so it changes some choices).
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# mistral4 has exactly deepseek_v3's parameter shapes; its own seed keeps their weights apart.
SEEDS = {"mistral4": SEED + 4}


def build(name):
    cls, config = MODELS[name] if name in MODELS else NEW_MODELS[name]
    seed = SEEDS.get(name, SEED)
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float32)
    randomize(model, torch.Generator().manual_seed(seed))
    model.eval()
    return cls, model


def routers(model):
    """(layer index, router module) for every MoE layer."""
    out = []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "top_k"):
            out.append((i, gate))
    return out


def routing_of(model, ids):
    """Per MoE layer and token: chosen experts (weight descending) and their final weights."""
    seen = {}
    hooks = [gate.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i, gate in routers(model)]
    logits = logits_of(model, ids)
    for h in hooks:
        h.remove()
    routing = []
    for i in sorted(seen):
        _, weights, indices = seen[i]
        order = torch.argsort(weights, dim=-1, descending=True)
        weights, indices = weights.gather(-1, order), indices.gather(-1, order)
        routing.append({"layer": i, "experts": indices.tolist(),
                        "weights": [[round(w, 6) for w in row] for row in weights.tolist()]})
    return logits, routing


def llama4_scales(beta, orig, n):
    return [1 + beta * math.log(1 + math.floor(p / orig)) for p in range(n)]


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
    if name in ("ministral3", "mistral4"):
        # Llama-4 query scaling: a no-op before position 4, visible after.
        rp = model.config.rope_parameters
        rp["llama_4_scaling_beta"] = 0.0
        other = logits_of(model, INPUT_IDS)
        rp["llama_4_scaling_beta"] = 0.1
        assert torch.equal(logits_of(model, INPUT_IDS), logits)
        assert torch.allclose(other[:YARN_ORIG], logits[:YARN_ORIG], atol=1e-5)
        assert not torch.allclose(other[YARN_ORIG:], logits[YARN_ORIG:], atol=1e-3)
    if name in ("ministral3", "deepseek_v3", "mistral4"):
        # YaRN: frequencies in all three bands, and the logits differ from plain RoPE.
        emb = model.model.rotary_emb
        factor = model.config.rope_parameters["factor"]
        base = model.config.rope_parameters["rope_theta"]
        dim = 2 * emb.inv_freq.numel()
        plain_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        kept = torch.isclose(emb.inv_freq, plain_freq, rtol=1e-6)
        divided = torch.isclose(emb.inv_freq, plain_freq / factor, rtol=1e-6)
        assert kept.any() and divided.any() and (~kept & ~divided).any(), emb.inv_freq
        saved = emb.inv_freq.clone()
        emb.inv_freq.copy_(plain_freq)
        other = logits_of(model, INPUT_IDS)
        emb.inv_freq.copy_(saved)
        assert not torch.allclose(other[1:], logits[1:], atol=1e-3)
    if name in ("mixtral", "deepseek_v3", "mistral4"):
        # Routing varies: in every MoE layer, tokens pick different expert sets.
        _, routing = routing_of(model, INPUT_IDS)
        for r in routing:
            sets = {frozenset(e) for e in r["experts"]}
            assert len(sets) > 1, (name, r)
    if name == "deepseek_v3":
        # The selection bias changes which experts some token picks.
        (_, gate), = routers(model)
        _, with_bias = routing_of(model, INPUT_IDS)
        saved = gate.e_score_correction_bias.clone()
        gate.e_score_correction_bias.zero_()
        _, without = routing_of(model, INPUT_IDS)
        gate.e_score_correction_bias.copy_(saved)
        assert [sorted(e) for e in with_bias[0]["experts"]] != [sorted(e) for e in without[0]["experts"]]
        # YaRN mscale reaches the softmax scale.
        attn = model.model.layers[0].self_attn
        assert attn.scaling > attn.qk_head_dim ** -0.5 * 1.1


def greedy_of(model):
    """8 greedy tokens after GREEDY_PROMPT: generate with and without the KV cache, and a full
    recompute per step; all three must agree. Also the top1 - top2 logit margin per step."""
    prompt = torch.tensor([GREEDY_PROMPT])
    model.generation_config.eos_token_id = None  # never stop early
    runs = []
    for use_cache in (True, False):
        with torch.no_grad():
            out = model.generate(prompt, do_sample=False, max_new_tokens=GREEDY_NEW_TOKENS,
                                 use_cache=use_cache, pad_token_id=0)
        runs.append(out[0, len(GREEDY_PROMPT):].tolist())
    ids, margins = list(GREEDY_PROMPT), []
    for _ in range(GREEDY_NEW_TOKENS):
        last = logits_of(model, ids)[-1]
        top = torch.topk(last, 2).values
        margins.append(round((top[0] - top[1]).item(), 6))
        ids.append(int(last.argmax()))
    runs.append(ids[len(GREEDY_PROMPT):])
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == GREEDY_NEW_TOKENS, runs
    return {"prompt": GREEDY_PROMPT, "new_tokens": runs[0], "margins": margins}


def param_counts(model):
    """Counts over the saved state dict (every float tensor written, incl. the router bias)."""
    sd = model.state_dict()
    total = sum(t.numel() for t in sd.values())
    embed = sum(t.numel() for k, t in sd.items() if k in ("model.embed_tokens.weight", "lm_head.weight"))
    inactive = 0
    for i, gate in routers(model):
        n, k = gate.num_experts, gate.top_k
        experts = [t for key, t in sd.items() if key.startswith(f"model.layers.{i}.mlp.experts.")]
        inactive += sum(t.numel() for t in experts) * (n - k) // n
    return {"params_total": total,
            "params_embed_tokens_and_lm_head": embed,
            "active_params_per_token": total - inactive,
            "active_params_per_token_excluding_embed_tokens_and_lm_head": total - inactive - embed,
            "active_params_note": "state-dict element counts; active = total minus the routed experts a "
                                  "token does not use (num_experts - experts_per_token of them in each MoE "
                                  "layer); router gate, its bias and shared experts count as active; the "
                                  "first figure counts the whole embed_tokens and lm_head matrices"}


def facts_of(name, model):
    cfg = model.config
    facts = {"num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
             "vocab_size": cfg.vocab_size}
    facts.update(param_counts(model))
    moe = [i for i, _ in routers(model)]
    if moe:
        (_, gate), = routers(model)[:1]
        facts.update({"moe_layers": moe,
                      "dense_layers": [i for i in range(cfg.num_hidden_layers) if i not in moe],
                      "num_experts": gate.num_experts, "experts_per_token": gate.top_k})
        if hasattr(cfg, "n_shared_experts"):
            facts.update({"n_shared_experts": cfg.n_shared_experts,
                          "routed_scaling_factor": cfg.routed_scaling_factor,
                          "router": "sigmoid + e_score_correction_bias for choice" if name.startswith("deepseek")
                          else "softmax"})
        else:
            facts["router"] = "softmax over all experts, top-k, renormalised"
    emb = model.model.rotary_emb
    facts["rope"] = {"inv_freq": [float(f) for f in emb.inv_freq.tolist()],
                     "attention_factor": float(emb.attention_scaling),
                     "rotary_dims": 2 * emb.inv_freq.numel()}
    attn = model.model.layers[0].self_attn
    facts["softmax_scale"] = float(attn.scaling)
    beta = cfg.rope_parameters.get("llama_4_scaling_beta")
    if beta is not None:
        orig = cfg.rope_parameters["original_max_position_embeddings"]
        facts["llama_4_query_scale"] = {
            "beta": beta, "original_max_position_embeddings": orig,
            "per_position_0_to_19": [round(s, 9) for s in llama4_scales(beta, orig, 20)]}
    return facts


# ------------------------------------------------------------------- FP8 (DeepSeek block layout)

def fp8_quantize(w, block):
    """DeepSeek / transformers block FP8: per [b0 x b1] block s = 448 / amax, q = e4m3(w * s),
    weight_scale_inv = 1 / s. Same arithmetic as transformers' Fp8Quantize._quantize_one
    (integrations/finegrained_fp8.py), extended to a ceil grid: a partial last block's amax is
    taken over the elements that exist (zero padding does not change it)."""
    rows, cols = w.shape
    gr, gc = -(-rows // block[0]), -(-cols // block[1])
    pad = torch.zeros(gr * block[0], gc * block[1], dtype=torch.float32)
    pad[:rows, :cols] = w
    tiles = pad.reshape(gr, block[0], gc, block[1])
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, FP8_MAX / torch.where(amax > 0, amax, torch.ones_like(amax)),
                        torch.ones_like(amax))
    q = torch.clamp(tiles * scale[:, None, :, None], -FP8_MAX, FP8_MAX)
    q = q.reshape(gr * block[0], gc * block[1])[:rows, :cols].contiguous().to(torch.float8_e4m3fn)
    return q, (1.0 / scale).to(torch.float32)


def fp8_dequantize(q, scale_inv, block):
    """transformers' own dequantisation for block FP8 with a ceil grid (float32 result):
    w[i, j] = float(q[i, j]) * weight_scale_inv[i // b0, j // b1]."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    return _dequantize_fp8_weight(q, scale_inv, list(block), torch.float32)


def fp8_state_dict(sd, block):
    out, partial = {}, []
    for k, t in sd.items():
        if k.endswith(".weight") and t.ndim == 2 and any(s in k for s in FP8_LINEARS):
            q, s = fp8_quantize(t, block)
            out[k], out[k[:-len("weight")] + "weight_scale_inv"] = q, s
            if t.shape[0] % block[0] or t.shape[1] % block[1]:
                partial.append(k)
        else:
            out[k] = t.contiguous()
    return out, partial


def fp8_reference(fp8_sd, base_folder, fp8_folder, partial):
    """Logits of the dequantised FP8 model, as transformers computes them.

    transformers 5.25 on CPU turns an FP8 checkpoint into a dequantising load
    (quantizer_finegrained_fp8.py: no GPU -> dequantize=True -> Fp8Dequantize). Fp8Dequantize does
    not read weight_block_size: it derives the block as weight.shape // scale.shape
    (finegrained_fp8.py, Fp8Dequantize._dequantize_one). That is right for whole blocks only. With a
    partial last block (ceil grid) it either raises ("not divisible by scale grid", e.g. DeepSeek-V3's
    kv_a_proj_with_mqa: 576 rows, 5 scale rows) or, as here (24 rows, 2 scale rows -> a 12-row
    "block"), silently applies the second row-block's scales to rows 12-15. So from_pretrained on
    this folder is not used for the reference; instead:
      1. every FP8 tensor is dequantised with transformers' _dequantize_fp8_weight (the ceil-grid
         dequantiser in the same file, taking the block size explicitly) to float32 and the
         dequantised tensors are loaded with from_pretrained(dtype=float32, eager): the reference;
      2. check: for every full-block tensor Fp8Dequantize._dequantize_one gives the identical
         tensor, and from_pretrained on a copy of the FP8 folder in which only the partial-block
         tensors are stored dequantised (so transformers' own FP8 load path dequantises all the
         others) gives identical logits.
    Also returns what from_pretrained on the FP8 folder itself gives (recorded, not asserted)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    deq = {}
    for k, t in fp8_sd.items():
        if k.endswith("weight_scale_inv"):
            continue
        s = fp8_sd.get(k[:-len("weight")] + "weight_scale_inv")
        deq[k] = t if s is None else fp8_dequantize(t, s, FP8_BLOCK)
        if s is not None and k not in partial:
            assert torch.equal(Fp8Dequantize(None)._dequantize_one(t, s, torch.float32), deq[k]), k

    def load(folder_config, tensors):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(folder_config, "config.json"), tmp)
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            return DeepseekV3ForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                         attn_implementation="eager").eval()

    model = load(base_folder, deq)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    logits, routing = routing_of(model, INPUT_IDS)
    mixed = {k: t for k, t in fp8_sd.items()
             if not any(k.startswith(p[:-len("weight")]) for p in partial) or k in partial}
    mixed.update({k: deq[k] for k in partial})
    assert torch.equal(logits_of(load(fp8_folder, mixed), INPUT_IDS), logits)
    try:
        direct = DeepseekV3ForCausalLM.from_pretrained(fp8_folder, dtype=torch.float32,
                                                       attn_implementation="eager").eval()
        sd = direct.state_dict()
        direct = {"loads": True,
                  "partial_block_tensors_match": all(torch.equal(sd[k], deq[k]) for k in partial),
                  "max_abs_logit_diff": round((logits_of(direct, INPUT_IDS) - logits).abs().max().item(), 6)}
    except Exception as e:  # noqa: BLE001 - recorded, whatever it is
        direct = {"loads": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    return model, logits, routing, direct


# ------------------------------------------------------------------- Mistral native layout

def to_native_rope_rows(w, n_heads):
    """HF q_proj / k_proj rows -> Mistral native wq / wk rows.

    transformers' converters (convert_mistral_weights_to_hf.py, convert_mixtral_weights_to_hf.py,
    convert_ministral3_weights_to_hf.py: permute_for_rope) build HF rows from native ones with
        hf = native.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)
    because native RoPE rotates interleaved pairs (2i, 2i+1) (mistral_inference/rope.py:
    view_as_complex on reshape(..., -1, 2)) while HF rotates halves (i, i + head_dim/2)
    (rotate_half). Within each head, native row 2i + j = HF row j * head_dim/2 + i (j in {0, 1}),
    i.e. native rows are HF rows 0, hd/2, 1, hd/2+1, ..., hd/2-1, hd-1. This is the inverse."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, dim).transpose(1, 2).reshape(rows, dim).contiguous()


def native_mixtral(model):
    cfg = model.config
    sd = model.state_dict()
    nat = {"tok_embeddings.weight": sd["model.embed_tokens.weight"],
           "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        nat[n + "attention.wq.weight"] = to_native_rope_rows(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        nat[n + "attention.wk.weight"] = to_native_rope_rows(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        nat[n + "attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        nat[n + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        nat[n + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        nat[n + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        nat[n + "feed_forward.gate.weight"] = sd[p + "mlp.gate.weight"]
        gate_up, down = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.down_proj"]
        inter = cfg.intermediate_size
        for e in range(cfg.num_local_experts):
            nat[n + f"feed_forward.experts.{e}.w1.weight"] = gate_up[e, :inter]   # gate
            nat[n + f"feed_forward.experts.{e}.w3.weight"] = gate_up[e, inter:]   # up
            nat[n + f"feed_forward.experts.{e}.w2.weight"] = down[e]              # down
    nat = {k: v.contiguous() for k, v in nat.items()}
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "head_dim": cfg.head_dim,
              "hidden_dim": cfg.intermediate_size, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps,
              "vocab_size": cfg.vocab_size, "rope_theta": cfg.rope_parameters["rope_theta"],
              "moe": {"num_experts": cfg.num_local_experts, "num_experts_per_tok": cfg.num_experts_per_tok}}
    return nat, params


def native_mistral4(model):
    """Mistral Large 3's own layout for a Mistral4ForCausalLM (see the docstring)."""
    cfg = model.config
    sd = model.state_dict()
    nat = {"tok_embeddings.weight": sd["model.embed_tokens.weight"],
           "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    attn = {"q_a_proj": "wq_a", "q_a_layernorm": "q_a_norm", "q_b_proj": "wq_b",
            "kv_a_proj_with_mqa": "wkv_a_with_mqa", "kv_a_layernorm": "kv_a_norm",
            "kv_b_proj": "wkv_b", "o_proj": "wo"}
    mlp = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    inter = cfg.moe_intermediate_size
    for i in range(cfg.num_hidden_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        for hf, native in attn.items():
            nat[n + f"attention.{native}.weight"] = sd[p + f"self_attn.{hf}.weight"]
        nat[n + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        nat[n + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        if i < cfg.first_k_dense_replace:
            for hf, native in mlp.items():
                nat[n + f"feed_forward.{native}.weight"] = sd[p + f"mlp.{hf}.weight"]
            continue
        nat[n + "gate.weight"] = sd[p + "mlp.gate.weight"]
        for hf, native in mlp.items():
            nat[n + f"shared_experts.{native}.weight"] = sd[p + f"mlp.shared_experts.{hf}.weight"]
        gate_up, down = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.down_proj"]
        for e in range(cfg.n_routed_experts):
            nat[n + f"experts.{e}.w1.weight"] = gate_up[e, :inter]
            nat[n + f"experts.{e}.w3.weight"] = gate_up[e, inter:]
            nat[n + f"experts.{e}.w2.weight"] = down[e]
    nat = {k: v.contiguous() for k, v in nat.items()}
    rope = cfg.rope_parameters
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "hidden_dim": cfg.intermediate_size,
              "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads,
              "norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size, "rope_theta": rope["rope_theta"],
              "max_position_embeddings": cfg.max_position_embeddings,
              "q_lora_rank": cfg.q_lora_rank, "kv_lora_rank": cfg.kv_lora_rank,
              "qk_nope_head_dim": cfg.qk_nope_head_dim, "qk_rope_head_dim": cfg.qk_rope_head_dim,
              "v_head_dim": cfg.v_head_dim,
              "moe": {"num_experts": cfg.n_routed_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
                      "expert_hidden_dim": inter, "num_shared_experts": cfg.n_shared_experts,
                      "first_k_dense_replace": cfg.first_k_dense_replace, "route_every_n": 1,
                      "routed_scale": cfg.routed_scaling_factor, "num_expert_groups": cfg.n_group,
                      "num_expert_groups_per_tok": cfg.topk_group},
              "yarn": {"factor": rope["factor"], "original_max_position_embeddings":
                       rope["original_max_position_embeddings"], "beta": rope["beta_fast"],
                       "alpha": rope["beta_slow"], "apply_scale": False},
              "llama_4_scaling": {"beta": rope["llama_4_scaling_beta"],
                                  "original_max_position_embeddings": rope["original_max_position_embeddings"]}}
    return nat, params


def native_forward(nat, params, ids):
    """Mistral's reference forward (mistral_inference transformer.py / transformer_layers.py /
    moe.py / rope.py) on the native tensors: interleaved complex RoPE, gate top-k on the logits
    then softmax over the k."""
    T, hd, nh, nkv = len(ids), params["head_dim"], params["n_heads"], params["n_kv_heads"]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + params["norm_eps"]) * w

    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def rope(x):
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * cis[:, None, :]).flatten(-2)

    h = nat["tok_embeddings.weight"][torch.tensor(ids)]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(params["n_layers"]):
        n = f"layers.{i}."
        x = rms(h, nat[n + "attention_norm.weight"])
        q = rope((x @ nat[n + "attention.wq.weight"].T).view(T, nh, hd))
        k = rope((x @ nat[n + "attention.wk.weight"].T).view(T, nkv, hd))
        v = (x @ nat[n + "attention.wv.weight"].T).view(T, nkv, hd)
        k, v = (t.repeat_interleave(nh // nkv, dim=1) for t in (k, v))
        att = torch.einsum("qhd,khd->hqk", q, k) * hd ** -0.5 + mask
        o = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(T, nh * hd)
        h = h + o @ nat[n + "attention.wo.weight"].T
        x = rms(h, nat[n + "ffn_norm.weight"])
        w, sel = torch.topk(x @ nat[n + "feed_forward.gate.weight"].T, params["moe"]["num_experts_per_tok"])
        w = w.softmax(-1)
        moe = torch.zeros_like(x)
        for e in range(params["moe"]["num_experts"]):
            tok, nth = torch.where(sel == e)
            y = x[tok]
            f = n + f"feed_forward.experts.{e}."
            y = (torch.nn.functional.silu(y @ nat[f + "w1.weight"].T) * (y @ nat[f + "w3.weight"].T)) @ nat[f + "w2.weight"].T
            moe[tok] += w[tok, nth, None] * y
        h = h + moe
    return rms(h, nat["norm.weight"]) @ nat["output.weight"].T


# ------------------------------------------------------------------- writing

def write_reference(folder, cls_name, logits, extra=None):
    ref = {
        "model": cls_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "input_ids": INPUT_IDS,
        "logits": [[round(v, 6) for v in row] for row in logits.tolist()],
    }
    if extra:
        ref.update(extra)
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))


def report_size(folder):
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"{folder}: {size} bytes")
    return size


def save_hf(model, folder):
    model.save_pretrained(folder)
    gen_cfg = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)


def mistral3_of(text_model):
    """`text_model` (Ministral3ForCausalLM) inside a Mistral3ForConditionalGeneration with a tiny
    random Pixtral vision tower, as Ministral 3 checkpoints ship."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, head_dim=8, image_size=32, patch_size=16)
    cfg = Mistral3Config(text_config=text_model.config, vision_config=vision,
                         image_token_index=10, spatial_merge_size=1, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED)
    m = Mistral3ForConditionalGeneration(cfg).to(torch.float32).eval()
    m.model.language_model.load_state_dict(text_model.model.state_dict())
    m.lm_head.load_state_dict(text_model.lm_head.state_dict())
    return m


def main():
    if len(sys.argv) < 2 or any(n not in ALL_NAMES for n in sys.argv[2:]):
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    wanted = sys.argv[2:] or ALL_NAMES

    for name in MODELS:
        if name not in wanted:
            continue
        cls, model = build(name)
        logits = logits_of(model, INPUT_IDS)
        check_feature_matters(name, model, logits)
        folder = os.path.join(out_dir, name)
        save_hf(model, folder)
        write_reference(folder, cls.__name__, logits)
        report_size(folder)

    for name in NEW_MODELS:
        derived = [d for d, base in DERIVED.items() if base == name and d in wanted]
        if name not in wanted and not derived:
            continue
        cls, model = build(name)
        logits, routing = routing_of(model, INPUT_IDS)
        check_feature_matters(name, model, logits)
        extra = {"greedy": greedy_of(model), "routing": routing, "facts": facts_of(name, model)}
        # Write the base folder to a scratch dir when only a derived one is wanted.
        tmp = tempfile.mkdtemp() if name not in wanted else None
        folder = os.path.join(tmp or out_dir, name)
        save_hf(model, folder)
        reloaded = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        assert torch.equal(logits_of(reloaded, INPUT_IDS), logits)  # the saved layout loads back
        write_reference(folder, cls.__name__, logits, extra)
        if tmp is None:
            report_size(folder)

        if "mixtral_native" in derived:
            nat, params = native_mixtral(model)
            assert torch.allclose(native_forward(nat, params, INPUT_IDS), logits, atol=1e-4)
            nfolder = os.path.join(out_dir, "mixtral_native")
            os.makedirs(nfolder, exist_ok=True)
            with open(os.path.join(nfolder, "params.json"), "w") as f:
                json.dump(params, f, indent=2)
                f.write("\n")
            save_file(nat, os.path.join(nfolder, "consolidated.safetensors"))
            native_extra = dict(extra)
            native_extra["facts"] = dict(extra["facts"], layout="mistral native (params.json + "
                                         "consolidated.safetensors), same weights and logits as mixtral; "
                                         "wq/wk rows in interleaved-pair RoPE order")
            write_reference(nfolder, cls.__name__, logits, native_extra)
            report_size(nfolder)

        if "deepseek_v3_ct" in derived:
            cfolder = os.path.join(out_dir, "deepseek_v3_ct")
            os.makedirs(cfolder, exist_ok=True)
            fp8_sd, _ = fp8_state_dict(load_file(os.path.join(folder, "model.safetensors")), FP8_BLOCK)
            ct_sd = {k.replace(".weight_scale_inv", ".weight_scale"): v for k, v in fp8_sd.items()}
            save_file(ct_sd, os.path.join(cfolder, "model.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(folder, "config.json")) as f:
                cfg = json.load(f)
            cfg["quantization_config"] = {
                "quant_method": "compressed-tensors", "format": "float-quantized",
                "quantization_status": "compressed",
                "config_groups": {"group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                                "block_structure": FP8_BLOCK, "symmetric": True, "dynamic": False},
                    "input_activations": {"num_bits": 8, "type": "float", "strategy": "group",
                                          "group_size": FP8_BLOCK[1], "dynamic": True}}},
                "ignore": ["lm_head", "re:.*mlp.gate$"]}
            with open(os.path.join(cfolder, "config.json"), "w") as f:
                f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            report_size(cfolder)

        if "deepseek_v3_fp8" in derived:
            ffolder = os.path.join(out_dir, "deepseek_v3_fp8")
            os.makedirs(ffolder, exist_ok=True)
            # From the saved checkpoint (per-expert tensors), not the in-memory fused experts.
            fp8_sd, partial = fp8_state_dict(load_file(os.path.join(folder, "model.safetensors")), FP8_BLOCK)
            save_file(fp8_sd, os.path.join(ffolder, "model.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(folder, "config.json")) as f:
                cfg = json.load(f)
            cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3",
                                          "quant_method": "fp8", "weight_block_size": FP8_BLOCK}
            with open(os.path.join(ffolder, "config.json"), "w") as f:
                f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            qmodel, qlogits, qrouting, direct = fp8_reference(fp8_sd, folder, ffolder, partial)
            diff = (qlogits - logits).abs().max().item()
            assert 1e-4 < diff < 0.5, diff  # quantisation visibly changes, but does not wreck, the logits
            facts = facts_of("deepseek_v3_fp8", qmodel)
            facts["fp8"] = {
                "weight_block_size": FP8_BLOCK,
                "quantized_tensors": sum(t.dtype == torch.float8_e4m3fn for t in fp8_sd.values()),
                "partial_block_tensors": partial,
                "dequant": "w[i,j] = float32(q[i,j]) * weight_scale_inv[i // 16, j // 16]",
                "reference_from": "every FP8 tensor dequantised to float32 by transformers' "
                                  "_dequantize_fp8_weight, then from_pretrained(dtype=float32); "
                                  "from_pretrained on the FP8 folder itself mis-dequantises the partial blocks",
                "transformers_from_pretrained_on_this_folder": direct,
                "max_abs_logit_diff_vs_deepseek_v3": round(diff, 6)}
            write_reference(ffolder, "DeepseekV3ForCausalLM", qlogits,
                            {"greedy": greedy_of(qmodel), "routing": qrouting, "facts": facts})
            report_size(ffolder)

        if "mistral4_native" in derived:
            nat, params = native_mistral4(model)
            nfolder = os.path.join(out_dir, "mistral4_native")
            os.makedirs(nfolder, exist_ok=True)
            with open(os.path.join(nfolder, "params.json"), "w") as f:
                json.dump(params, f, indent=2)
                f.write("\n")
            save_file(nat, os.path.join(nfolder, "consolidated.safetensors"))
            report_size(nfolder)

        if "mistral3" in derived:
            mfolder = os.path.join(out_dir, "mistral3")
            multimodal = mistral3_of(model)
            with torch.no_grad():
                got = multimodal(input_ids=torch.tensor([INPUT_IDS])).logits[0]
            assert torch.allclose(got, logits, atol=1e-5), (got - logits).abs().max()
            save_hf(multimodal, mfolder)
            report_size(mfolder)

        if tmp is not None:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
