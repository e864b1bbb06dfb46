"""PEFT reference logits for LoRA on a mixture of experts (tiny Mixtral, tiny Mistral Large 3
design `mistral4`: MLA attention, dense first layer, routed and shared experts).

transformers 5 fuses Mixtral's experts into 3-D parameters, which PEFT adapts through
`target_parameters`. This script checks switchyard's adapter files against PEFT:

  1. ADAPTER (trained by `switchyard train` on the tiny Mixtral, attention and experts): PEFT
     loads it on the base; its logits (and those of PEFT's merged model) are recorded.
  2. A PEFT-made adapter (random A and B, the same targets at PEFT's own rank, no rank_pattern):
     saved beside, with its logits, so switchyard is checked on a layout it did not write.

Run:
    python scripts/peft_moe_parity.py BASE_DIR ADAPTER_DIR OUT_DIR
    # e.g. tests/fixtures/tiny/mixtral  /tmp/run/out/adapter  tests/fixtures/lora/mixtral
    #      tests/fixtures/tiny/mistral4 /tmp/run/out/adapter  tests/fixtures/lora/mistral4
    #      tests/fixtures/tiny/deepseek_v3 /tmp/run/out/adapter tests/fixtures/lora/deepseek_v3
    # (for deepseek_v3, an adapter on attention and the experts named one by one: PEFT 0.21 turns
    # gate_proj/up_proj/down_proj targets into the fused experts, so it cannot load adapters on
    # the dense and shared MLPs, which have the same names)

Writes OUT_DIR/adapter (a copy of ADAPTER_DIR), OUT_DIR/peft_made, OUT_DIR/reference.json
{"input_ids", "base_logits", "adapter_logits", "adapter_merged_max_abs_diff",
 "peft_made_logits", "peft", "transformers", "torch"}.
"""

import json
import os
import shutil
import sys

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

INPUT_IDS = [1, 17, 42, 99, 3, 250, 128, 64, 7, 200, 33, 5]


def base(path):
    with open(os.path.join(path, "config.json")) as f:
        arch = json.load(f)["architectures"][0]
    # AutoModelForCausalLM does not map every architecture (mistral4); the config names its class.
    cls = getattr(transformers, arch, AutoModelForCausalLM)
    m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def logits(model):
    with torch.no_grad():
        return model(torch.tensor([INPUT_IDS])).logits[0]


def rows(t):
    return [[round(v, 6) for v in r] for r in t.tolist()]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    base_dir, adapter_dir, out_dir = sys.argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    ref = {"torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "input_ids": INPUT_IDS}

    plain = logits(base(base_dir))
    ref["base_logits"] = rows(plain)

    model = PeftModel.from_pretrained(base(base_dir), adapter_dir).eval()
    tuned = logits(model)
    assert (tuned - plain).abs().max() > 0.05, "the adapter must change the logits"
    merged = logits(model.merge_and_unload())
    ref["adapter_logits"] = rows(tuned)
    ref["adapter_merged_max_abs_diff"] = float((merged - tuned).abs().max())
    dst = os.path.join(out_dir, "adapter")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(adapter_dir, dst)

    torch.manual_seed(7)
    with open(os.path.join(base_dir, "config.json")) as f:
        model_type = json.load(f)["model_type"]
    # PEFT turns every gate_proj/up_proj/down_proj target of a deepseek_v3 model into its fused
    # experts, so the PEFT-made adapter there names attention only beside the experts.
    attention = {"mistral4": ["q_b_proj", "kv_b_proj", "o_proj", "shared_experts.up_proj"],
                 "deepseek_v3": ["q_b_proj", "kv_b_proj", "o_proj"]}.get(model_type, ["q_proj", "o_proj"])
    cfg = LoraConfig(r=2, lora_alpha=6, target_modules=attention,
                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                     init_lora_weights=False)
    made = get_peft_model(base(base_dir), cfg).eval()
    ref["peft_made_logits"] = rows(logits(made))
    assert (logits(made) - plain).abs().max() > 0.05
    made.save_pretrained(os.path.join(out_dir, "peft_made"))

    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print(f"adapter moves logits by {(tuned - plain).abs().max():.3f}; merged vs PEFT "
          f"{ref['adapter_merged_max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
