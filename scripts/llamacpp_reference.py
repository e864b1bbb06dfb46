"""Reference greedy decoding from llama.cpp (llama-cpp-python) on a quantised GGUF.

switchyard's quantised decode (`--quantized`) multiplies the GGUF's blocks as llama.cpp does
(activations quantised to 8 bits per 32-value block), so its numbers follow llama.cpp's, not
transformers'. This script records, for the prompts of the transformers fixture
(tests/fixtures/smollm2_reference.json), the token ids llama.cpp reads and a greedy continuation
of STEPS tokens with the top-5 log-probabilities at each step.

Run (a Python with llama-cpp-python, e.g. the venv of scripts/README.md):
    python scripts/llamacpp_reference.py MODEL.gguf tests/fixtures/smollm2_reference.json OUT_JSON

Writes OUT_JSON:
    {"model", "llama_cpp_python", "steps",
     "prompts": [{"name", "input_ids", "greedy": [{"top_ids", "top_logprobs"}, ...]}]}
Log-probabilities are rounded to 6 decimals.
"""

import hashlib
import json
import sys

import llama_cpp
import numpy as np

STEPS = 8


def main():
    gguf, prompts_file, out = sys.argv[1:4]
    prompts = json.load(open(prompts_file))["prompts"]
    llm = llama_cpp.Llama(model_path=gguf, n_threads=2, n_ctx=512, logits_all=True, verbose=False)
    result = []
    for p in prompts:
        # The transformers fixture's ids: both engines then start from the same tokens.
        ids = [int(t) for t in p["input_ids"]]
        llm.reset()
        llm.eval(ids)
        steps = []
        for _ in range(STEPS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            lp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
            top = np.argsort(-lp)[:5]
            steps.append({"top_ids": [int(t) for t in top],
                          "top_logprobs": [round(float(lp[t]), 6) for t in top]})
            llm.eval([int(top[0])])
        result.append({"name": p["name"], "input_ids": ids, "greedy": steps})
    sha = hashlib.sha256(open(gguf, "rb").read()).hexdigest()
    doc = {"model": {"file": gguf.split("/")[-1], "sha256": sha},
           "llama_cpp_python": llama_cpp.__version__, "steps": STEPS, "prompts": result}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
