"""Prove that switchyard's LoRA adapters are PEFT adapters, with the real peer.

Loads the base model with transformers, puts the adapter on it with peft
(PeftModel.from_pretrained), and records the top-10 next-token log-probabilities
at the last 8 positions of a few prompts: switchyard's test (tests/lora.rs)
compares its own adapter-on-base numbers with these. It also loads the folder
written by `switchyard merge` with transformers and records how far its logits
are from adapter-on-base (they should agree to float32 rounding), and how far
the base alone is (the adapter must matter, or the comparison proves nothing).

Run (not needed by CI; the output is committed):
    switchyard train recipes/smoke.toml
    cp -r runs/smoke/adapter tests/fixtures/lora/adapter
    switchyard merge tests/fixtures/lora/adapter /tmp/merged
    python scripts/peft_parity.py $SWITCHYARD_HOME/models/SmolLM2-135M-Instruct \
        tests/fixtures/lora/adapter /tmp/merged tests/fixtures/lora/peft_reference.json
"""

import json
import sys

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

TOP_K = 10
LAST = 8
PROMPTS = [
    [{"role": "user", "content": "Reverse the order of these words: river, stone, apple, quiet\nAnswer with only the reversed comma-separated list."}],
    [{"role": "user", "content": "What is the capital of France?"}],
]


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    base_dir, adapter_dir, merged_dir, out = sys.argv[1:]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in PROMPTS]
    texts.append("The capital of France is")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    base_logits = [logits_of(base, i) for i in ids]
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    prompts, merged_diff, base_diff = [], 0.0, 0.0
    for text, i, b in zip(texts, ids, base_logits):
        lg = logits_of(model, i)
        merged_diff = max(merged_diff, (logits_of(merged, i) - lg).abs().max().item())
        base_diff = max(base_diff, (b - lg).abs().max().item())
        lp = torch.log_softmax(lg, dim=-1)
        positions = []
        for pos in range(max(0, len(i) - LAST), len(i)):
            vals, idx = torch.topk(lp[pos], TOP_K)
            positions.append({"position": pos, "top_ids": idx.tolist(),
                              "top_logprobs": [round(v, 6) for v in vals.tolist()]})
        prompts.append({"text": text, "input_ids": i, "last_positions": positions})
    doc = {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "merged_vs_peft_max_abs_logit_diff": merged_diff,
        "base_vs_peft_max_abs_logit_diff": base_diff,
        "prompts": prompts,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"merged folder vs PEFT adapter-on-base: max |Δlogit| {merged_diff:.2e}; base vs adapter: {base_diff:.2f}")


if __name__ == "__main__":
    main()
