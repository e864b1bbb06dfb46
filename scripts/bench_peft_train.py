"""LoRA training speed and peak memory of PyTorch + PEFT (float32; CPU, or CUDA when the workload
says so) on the batches that `switchyard bench train` writes, so both train on exactly the same
token ids.

Run (normally through `switchyard bench train`):
    python scripts/bench_peft_train.py MODEL_DIR WORKLOAD_JSON CONFIG

WORKLOAD_JSON: {"rows": [[ids]...], "rank": R, "steps": N, "threads": T, "device": "cpu" | "cuda",
"dtype": "float32" | "bfloat16" (the frozen base; the adapters and AdamW stay float32)}; CONFIG: qv | all.
Every token is trained (labels = inputs); LoRA alpha = 2r, no dropout; torch.optim.AdamW
(fp32, weight decay 0); clip_grad_norm_(1.0). One warm-up step, then N timed steps.
Prints one JSON object: {"tokens_per_s", "peak_rss_mib", "versions"}, and on CUDA
"peak_gpu_mib" (torch.cuda.max_memory_allocated).
"""

import json
import resource
import sys
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    model_dir, wl, config = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
    torch.set_num_threads(wl["threads"])
    torch.manual_seed(0)
    targets = ["q_proj", "v_proj"] if config == "qv" else "all-linear"
    device = wl.get("device", "cpu")
    dtype = getattr(torch, wl.get("dtype", "float32"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    r = wl["rank"]
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    ids = torch.tensor(wl["rows"], device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    start = time.perf_counter()
    for _ in range(wl["steps"]):
        step()
    sync()
    elapsed = time.perf_counter() - start
    result = {
        "tokens_per_s": wl["steps"] * ids.numel() / elapsed,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
    }
    if device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


if __name__ == "__main__":
    main()
