"""Prefill and decode speed of llama.cpp (llama-cpp-python) on the GGUF, on a workload file that
`switchyard bench generate` writes, so that both run exactly the same token ids.

Run (normally through `switchyard bench generate --peers llama.cpp`):
    python scripts/bench_llamacpp.py MODEL_GGUF WORKLOAD_JSON

WORKLOAD_JSON: see scripts/bench_transformers.py. Prefill: llama_eval over prefill_ids on a fresh
context (median of R after a warm-up). Decode: the prompt is evaluated, then N greedy steps with
one token each, EOS ignored; the rate counts only the N steps (median of R).
Prints one JSON object: {"peer", "versions", "prefill_tok_s", "decode_tok_s"}. Writes nothing.
"""

import json
import statistics
import sys
import time

import llama_cpp
import numpy as np


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    gguf, workload = sys.argv[1], json.load(open(sys.argv[2]))
    t = workload["threads"]
    n = workload["new_tokens"]
    # A context that holds the longest workload (at least llama.cpp's usual 1024).
    n_ctx = max(1024, len(workload["prefill_ids"]), len(workload["decode_prompt_ids"]) + n + 8)
    llm = llama_cpp.Llama(model_path=gguf, n_threads=t, n_threads_batch=t, n_ctx=n_ctx, n_batch=512, verbose=False)

    def run_prefill():
        llm.reset()
        start = time.perf_counter()
        llm.eval(workload["prefill_ids"])
        return time.perf_counter() - start

    def run_decode():
        llm.reset()
        llm.eval(workload["decode_prompt_ids"])
        start = time.perf_counter()
        for _ in range(n):
            # llm.scores is filled only with logits_all=True, which would slow prefill: read the last logits.
            last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            nxt = int(np.argmax(np.ctypeslib.as_array(last, shape=(llm.n_vocab(),))))
            llm.eval([nxt])
        return time.perf_counter() - start

    run_prefill()
    prefill_s = statistics.median(run_prefill() for _ in range(workload["repeats"]))
    run_decode()
    decode_s = statistics.median(run_decode() for _ in range(workload["repeats"]))
    print(json.dumps({
        "peer": "llama.cpp",
        "versions": f"llama-cpp-python {llama_cpp.__version__} (GGUF as shipped: Q4_1 linear weights, Q8_0 embedding)",
        "prefill_tok_s": len(workload["prefill_ids"]) / prefill_s,
        "decode_tok_s": n / decode_s,
    }))


if __name__ == "__main__":
    main()
