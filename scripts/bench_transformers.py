"""Prefill and decode speed of PyTorch transformers on CPU (float32), as a baseline.

Prefill: one forward pass over a 128-token prompt (median of 3 after a warm-up).
Decode: greedy generation of N_TOKENS new tokens from the chat prompt
("What is the capital of France?", chat template, generation prompt), with the
KV cache, end-of-sequence ignored so exactly N_TOKENS are produced; the rate
excludes the prefill of the prompt (time of generate(N) minus generate(1)).

Run:
    python scripts/bench_transformers.py MODEL_DIR_OR_GGUF [THREADS=2] [N_TOKENS=64]

Prints one JSON object to stdout:
    {"model", "threads", "torch", "transformers", "prefill_tokens",
     "prefill_tok_s", "decode_tokens", "decode_tok_s"}
Writes nothing.
"""

import json
import os
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PREFILL_TOKENS = 128


def load(path):
    if path.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(path))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return tok, model.eval()


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    n_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    torch.set_num_threads(threads)
    tok, model = load(path)

    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
    prefill_ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:PREFILL_TOKENS]])
    assert prefill_ids.shape[1] == PREFILL_TOKENS

    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    chat_ids = torch.tensor([tok(chat, add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(chat_ids)

    def generate(n):
        model.generate(chat_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, use_cache=True)

    with torch.inference_mode():
        model(prefill_ids)  # warm-up
        prefill_s = statistics.median(timed(lambda: model(prefill_ids)) for _ in range(3))
        generate(2)  # warm-up
        t_one = timed(lambda: generate(1))
        t_all = timed(lambda: generate(n_tokens))

    print(json.dumps({
        "model": os.path.basename(os.path.normpath(path)),
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prefill_tokens": PREFILL_TOKENS,
        "prefill_tok_s": round(PREFILL_TOKENS / prefill_s, 1),
        "decode_tokens": n_tokens,
        "decode_tok_s": round((n_tokens - 1) / (t_all - t_one), 1),
    }))


if __name__ == "__main__":
    main()
