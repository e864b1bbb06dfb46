"""A LoRA adapter made by PEFT itself (not by switchyard), for tests/lora.rs: switchyard must load
adapters trained elsewhere and apply them as PEFT does, rsLoRA scaling included.

The adapter is rank 2 on q_proj and o_proj with use_rslora=True (scale alpha/sqrt(r)), and
init_lora_weights=False so that B is random, not zero, and the adapter changes the logits.
Records PEFT's top-10 log-probabilities at the last 8 positions of a chat prompt.

Run (not needed by CI; the output is committed):
    python scripts/peft_foreign_adapter.py $SWITCHYARD_HOME/models/SmolLM2-135M-Instruct tests/fixtures/lora/peft_made
"""

import json
import os
import sys

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    base_dir, out = sys.argv[1:]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], use_rslora=True,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg).eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(os.path.join(out, "adapter"))
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    positions = []
    for pos in range(len(ids) - 8, len(ids)):
        vals, idx = torch.topk(lp[pos], 10)
        positions.append({"position": pos, "top_ids": idx.tolist(),
                          "top_logprobs": [round(v, 6) for v in vals.tolist()]})
    doc = {"peft": peft.__version__, "torch": torch.__version__,
           "prompts": [{"text": text, "input_ids": ids, "last_positions": positions}]}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
