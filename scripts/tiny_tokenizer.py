"""A byte-level tokenizer for the tiny fixture models (vocab 256), with SmolLM2's special tokens
and chat template, so that tests where the real model is not the point run on a tiny model and
render exactly what SmolLM2 renders.

Ids 0, 1, 2 are <|endoftext|>, <|im_start|>, <|im_end|> (as in SmolLM2, and as the tiny configs'
bos_token_id = 1 and eos_token_id = 2 say); ids 3..255 are the bytes 3..255 in GPT-2's byte-level
alphabet (bytes 0..2, which text never holds, have no token). No merges: one token per byte.
Standard library only.

Run:
    python scripts/tiny_tokenizer.py tests/fixtures/tiny/tokenizer

Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json.
"""

import json
import os
import sys

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-135M-Instruct's chat template (its tokenizer_config.json), verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def main(out):
    chars = bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for b in range(len(SPECIAL), 256):
        vocab[chars[b]] = b
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in enumerate(SPECIAL)
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    config = {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "model_max_length": 2048, "tokenizer_class": "GPT2Tokenizer",
    }
    os.makedirs(out, exist_ok=True)
    for name, doc in [("tokenizer.json", tokenizer), ("tokenizer_config.json", config)]:
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tiny/tokenizer")
