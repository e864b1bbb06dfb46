#!/usr/bin/env python3
"""Compare a `switchyard eval evals/mmlu-loglikelihood.toml` run with lm-evaluation-harness's
reference on the same weights (tests/fixtures/lm_eval/mmlu_reference.json).

usage: compare_lm_eval.py RUN/results.jsonl REFERENCE.json [--json OUT.json]
"""
import json
import sys


def pick(v):
    return max(range(len(v)), key=lambda i: v[i])


def main():
    args = sys.argv[1:]
    out = None
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i : i + 2]
    rows_path, ref_path = args
    ref = json.load(open(ref_path))
    want = {c["id"]: c for c in ref["cases"]}
    rows = [json.loads(l) for l in open(rows_path) if l.strip()]
    n = agree = 0
    acc = acc_ref = norm = norm_ref = 0.0
    same_acc = same_norm = 0
    worst = 0.0
    worst_id = None
    deltas = []
    missing = []
    disagree = []
    for r in rows:
        cid = r["case_id"]
        if cid not in want:
            missing.append(cid)
            continue
        w = want[cid]
        got, lm = r["loglikelihoods"], w["loglikelihoods"]
        n += 1
        if pick(got) == pick(lm):
            agree += 1
        else:
            disagree.append(cid)
        for a, b in zip(got, lm):
            d = abs(a - b)
            deltas.append(d)
            if d > worst:
                worst, worst_id = d, cid
        acc += r["score"]
        norm += r["acc_norm"]
        acc_ref += w["acc"]
        norm_ref += w["acc_norm"]
        same_acc += r["score"] == w["acc"]
        same_norm += r["acc_norm"] == w["acc_norm"]
    deltas.sort()
    res = {
        "questions": n,
        "reference_questions": len(want),
        "not_in_reference": missing,
        "same_chosen_answer": agree,
        "different_chosen_answer": disagree,
        "same_acc_per_question": same_acc,
        "same_acc_norm_per_question": same_norm,
        "switchyard_acc": acc / n,
        "switchyard_acc_norm": norm / n,
        "lm_eval_acc": acc_ref / n,
        "lm_eval_acc_norm": norm_ref / n,
        "lm_eval_acc_all_200": ref["acc"],
        "lm_eval_acc_norm_all_200": ref["acc_norm"],
        "max_abs_delta_loglikelihood": worst,
        "max_abs_delta_at": worst_id,
        "median_abs_delta_loglikelihood": deltas[len(deltas) // 2],
        "reference": {k: v for k, v in ref.items() if k != "cases"},
    }
    print(
        f"{n} questions: same chosen answer on {agree}/{n}; "
        f"acc {acc / n:.3f} (lm-eval {acc_ref / n:.3f}), acc_norm {norm / n:.3f} (lm-eval {norm_ref / n:.3f}); "
        f"max |Δ loglikelihood| {worst:.2e} ({worst_id}), median {deltas[len(deltas) // 2]:.2e}"
    )
    if disagree:
        print("different choice:", ", ".join(disagree))
    if out:
        json.dump(res, open(out, "w"), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
