"""lm-evaluation-harness's MMLU scores on SmolLM2, for tests/it/eval.rs to hold switchyard's
log-likelihood suite (evals/mmlu-loglikelihood.toml) to.

lm-eval (pip `lm_eval[hf]`, version below) runs its Hugging Face backend, in float32 on the CPU,
on the same 200 questions (datasets/mmlu/test.jsonl) through a task with the prompt of its own
`mmlu` task (zero-shot, no description), and logs every sample.

Run:
    python scripts/lm_eval_reference.py MODEL_DIR tests/fixtures/lm_eval/mmlu_reference.json

MODEL_DIR is SmolLM2-135M-Instruct as a Hugging Face folder (`switchyard models fetch` writes
one to ~/.cache/switchyard/models/SmolLM2-135M-Instruct). Writes one JSON file: versions, the
per-question log-likelihoods of A-D, acc and acc_norm, and their means.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK = """task: switchyard_mmlu
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def main(model_dir, out):
    import lm_eval
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        tasks = os.path.join(tmp, "tasks")
        os.makedirs(tasks)
        with open(os.path.join(tasks, "switchyard_mmlu.yaml"), "w") as f:
            f.write(TASK.format(data=os.path.join(ROOT, "datasets/mmlu/test.jsonl")))
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "hf",
             "--model_args", f"pretrained={model_dir},dtype=float32",
             "--device", "cpu", "--batch_size", "1", "--tasks", "switchyard_mmlu",
             "--include_path", tasks, "--log_samples", "--output_path", os.path.join(tmp, "out")],
            check=True, env=env)
        samples = glob.glob(os.path.join(tmp, "out", "**", "samples_switchyard_mmlu_*.jsonl"), recursive=True)
        rows = [json.loads(l) for l in open(samples[0])]
    cases = []
    for r in sorted(rows, key=lambda r: r["doc_id"]):
        lls = [float(x[0][0]) if isinstance(x[0], list) else float(x[0]) for x in r["resps"]]
        cases.append({"id": r["doc"]["id"], "loglikelihoods": lls,
                      "acc": float(r["acc"]), "acc_norm": float(r["acc_norm"])})
    doc = {
        "lm_eval": lm_eval.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "model": os.path.basename(model_dir.rstrip("/")),
        "task": "mmlu prompt (zero-shot, no description), datasets/mmlu/test.jsonl",
        "acc": sum(c["acc"] for c in cases) / len(cases),
        "acc_norm": sum(c["acc_norm"] for c in cases) / len(cases),
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} questions: acc {doc['acc']:.4f}, acc_norm {doc['acc_norm']:.4f} -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
