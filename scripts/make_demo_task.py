#!/usr/bin/env python3
"""Generate the LoRA demonstration task `word_reversal` for SmolLM2-135M-Instruct.

Source: reasoning-gym (PyPI `reasoning-gym==0.1.25`, Apache-2.0), generator
`word_sequence_reversal` with min_words=3, max_words=5. The generator's words and
gold answers are used as-is; only the prompt is re-worded to be short.

    pip install reasoning-gym==0.1.25
    python scripts/make_demo_task.py            # writes datasets/word_reversal/{train,test}.jsonl

Train: seed 1, 2000 rows. Test: seed 10000, 200 rows, with any prompt that also
occurs in train removed (then topped up from the same seed stream).
"""
import json
import os
import sys

import reasoning_gym as rg

TASK = "word_reversal"
TRAIN_SEED, TRAIN_N = 1, 2000
TEST_SEED, TEST_N = 10_000, 200
CFG = dict(min_words=3, max_words=5)
EXPECTED_RG_VERSION = "0.1.25"


def prompt(words):
    return ("Reverse the order of these words: " + ", ".join(words)
            + "\nAnswer with only the reversed comma-separated list.")


def rows(seed, n):
    ds = rg.create_dataset("word_sequence_reversal", seed=seed, size=n, **CFG)
    for e in ds:
        words = e["metadata"]["words"]
        answer = e["answer"]
        assert answer == ", ".join(reversed(words)), (words, answer)
        yield {
            "messages": [
                {"role": "user", "content": prompt(words)},
                {"role": "assistant", "content": answer},
            ],
            "answer": answer,
        }


def write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    try:
        from importlib.metadata import version
        v = version("reasoning-gym")
        if v != EXPECTED_RG_VERSION:
            print(f"warning: reasoning-gym {v} != {EXPECTED_RG_VERSION}; rows may differ", file=sys.stderr)
    except Exception:
        pass
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets", TASK)
    os.makedirs(root, exist_ok=True)

    train = list(rows(TRAIN_SEED, TRAIN_N))
    seen = {r["messages"][0]["content"] for r in train}
    test = [r for r in rows(TEST_SEED, TEST_N * 2) if r["messages"][0]["content"] not in seen]
    # de-duplicate within test as well, keep generator order
    uniq, tseen = [], set()
    for r in test:
        p = r["messages"][0]["content"]
        if p not in tseen:
            tseen.add(p)
            uniq.append(r)
    test = uniq[:TEST_N]
    assert len(test) == TEST_N

    write(os.path.join(root, "train.jsonl"), train)
    write(os.path.join(root, "test.jsonl"), test)
    print(f"wrote {len(train)} train / {len(test)} test rows to {os.path.normpath(root)}")


if __name__ == "__main__":
    main()
