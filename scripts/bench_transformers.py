"""Prefill and decode speed of PyTorch transformers (float32, or bfloat16 weights when the workload
says "dtype": "bf16"; CPU, or CUDA when the workload says so) on a workload file that
`switchyard bench generate` writes, so that both run exactly the same token ids.

Run (normally through `switchyard bench generate --peers transformers`):
    python scripts/bench_transformers.py MODEL_DIR WORKLOAD_JSON

WORKLOAD_JSON: {"prefill_ids": [...], "decode_prompt_ids": [...], "new_tokens": N,
                "threads": T, "repeats": R, "device": "cpu" | "cuda", "dtype": "f32" | "bf16"}
Prefill: one forward pass over prefill_ids (median of R after a warm-up).
Decode: the prompt is prefilled, then N greedy steps with the KV cache, EOS ignored; the rate
counts only the N steps (median of R).
Prints one JSON object: {"peer", "versions", "prefill_tok_s", "decode_tok_s"}. Writes nothing.
"""

import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, workload = sys.argv[1], json.load(open(sys.argv[2]))
    torch.set_num_threads(workload["threads"])
    device = workload.get("device", "cpu")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[workload.get("dtype", "f32")]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    prefill = torch.tensor([workload["prefill_ids"]], device=device)
    prompt = torch.tensor([workload["decode_prompt_ids"]], device=device)
    n = workload["new_tokens"]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def run_prefill():
        sync()
        start = time.perf_counter()
        model(prefill, use_cache=False)
        sync()
        return time.perf_counter() - start

    def run_decode():
        out = model(prompt, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        sync()
        start = time.perf_counter()
        for _ in range(n):
            nxt = logits.argmax(-1, keepdim=True)
            out = model(nxt, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        run_prefill()
        prefill_s = statistics.median(run_prefill() for _ in range(workload["repeats"]))
        run_decode()
        decode_s = statistics.median(run_decode() for _ in range(workload["repeats"]))
    print(json.dumps({
        "peer": "transformers",
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, {dtype}",
        "prefill_tok_s": len(workload["prefill_ids"]) / prefill_s,
        "decode_tok_s": n / decode_s,
    }))


if __name__ == "__main__":
    main()
