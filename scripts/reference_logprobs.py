"""Reference next-token log-probabilities from PyTorch transformers (float32, CPU).

Loads a causal LM with transformers and, for a fixed list of prompts, records
the input token ids and the top-10 next-token log-probabilities at the last 8
positions. For the chat prompt it also records the greedy 16-token
continuation. The output is what switchyard's numerics are compared against.

Run:
    python scripts/reference_logprobs.py MODEL_DIR OUT_JSON
    python scripts/reference_logprobs.py path/to/model.gguf OUT_JSON

MODEL_DIR is a Hugging Face folder (config.json, weights, tokenizer files).
A .gguf file is loaded with transformers' GGUF support
(from_pretrained(dir, gguf_file=name)), which dequantizes it to float32.

Writes OUT_JSON:
    {"model", "torch", "transformers", "dtype", "top_k", "positions",
     "prompts": [{"name", "text", "input_ids",
                  "last_positions": [{"position", "top_ids", "top_logprobs"}],
                  "greedy": {"new_token_ids", "text"}   # chat prompt only
                 }]}
Log-probabilities are rounded to 6 decimals.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

TOP_K = 10
LAST_POSITIONS = 8
GREEDY_TOKENS = 16
CHAT_MESSAGE = "What is the capital of France?"

RAW_PROMPTS = [
    ("raw", "The capital of France is"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +"),
    (
        "paragraph",
        "The river wound slowly through the valley, past fields of wheat and "
        "small stone farmhouses whose chimneys leaked thin grey smoke into the "
        "morning air. At the bend near the old mill, a heron stood motionless "
        "in the shallows, waiting, while children on the bridge above argued "
        "about whether it was",
    ),
    ("unicode", "Café crème, naïve façade — 日本語のテキスト 🚀🔥 Emoji: 😀 means"),
]


def load(path):
    kwargs = {"dtype": torch.float32}
    if path.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(path))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return tok, model.eval()


def top_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    out = []
    for pos in range(max(0, len(ids) - LAST_POSITIONS), len(ids)):
        vals, idx = torch.topk(logprobs[pos], TOP_K)
        out.append({
            "position": pos,
            "top_ids": idx.tolist(),
            "top_logprobs": [round(v, 6) for v in vals.tolist()],
        })
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_path, out_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    tok, model = load(model_path)

    chat_text = tok.apply_chat_template(
        [{"role": "user", "content": CHAT_MESSAGE}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompts = RAW_PROMPTS[:1] + [("chat", chat_text)] + RAW_PROMPTS[1:]

    results = []
    for name, text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        entry = {"name": name, "text": text, "input_ids": ids,
                 "last_positions": top_logprobs(model, ids)}
        if name == "chat":
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS,
                                     do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            new = gen[0, len(ids):].tolist()
            entry["greedy"] = {"new_token_ids": new,
                               "text": tok.decode(new, skip_special_tokens=False)}
        results.append(entry)

    report = {
        "model": os.path.basename(os.path.normpath(model_path)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32",
        "top_k": TOP_K,
        "positions": LAST_POSITIONS,
        "prompts": results,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
