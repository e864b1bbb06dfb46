#!/usr/bin/env python3
"""switchyard on a GPU, held to PyTorch on the same GPU, in one command (issue 13).

The driver of the GPU bundle (`scripts/gpu_bundle.sh OUT` builds the bundle; this file is its
`driver.py`). It needs python3 with torch, transformers and peft, and for `--device cuda` one
NVIDIA GPU with its driver and the CUDA toolkit's NVRTC and headers (switchyard compiles its
kernels at run time); no network, no Rust.

    python3 driver.py                      # on the GPU: SmolLM2-135M's and Llama-3.2-1B's shapes
    python3 driver.py --device cpu --shapes tiny --bin target/debug/switchyard   # CI, on the CPU

For each shape it makes a random-weight Llama with transformers (seed 0) and saves it as a
Hugging Face folder with SmolLM2's tokenizer, then:

- correctness: switchyard (`serve`, OpenAI chat completions with `top_logprobs`) against
  transformers on the same device and folder: the top-10 next-token log-probabilities on fixed
  prompts (within 1e-3 in f32) and 8 greedy tokens (equal);
- a LoRA adapter trained by switchyard (`train`, rank 16 on every linear projection) and loaded
  by PEFT gives switchyard's log-probabilities (within 1e-3);
- speed, each engine in its own process on the same token ids: LoRA training tokens/s and peak
  memory (`bench train-worker` against PyTorch + PEFT: rank 16, every linear projection, AdamW,
  f32), prefill and decode tokens/s (`bench generate` against transformers).

It writes OUT/gpu_proof.json and OUT/gpu_proof.md, and exits 1 when a correctness check fails.
"""

import argparse
import json
import lzma
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The peers' scripts: scripts/ in the bundle, this file's own folder in the source tree.
SCRIPTS = HERE / "scripts" if (HERE / "scripts").is_dir() else HERE

# Llama shapes. Vocabulary sizes are the real models'; SmolLM2's tokenizer ids fit both.
SHAPES = {
    "full": [
        dict(name="smollm2-135m-shape", hidden_size=576, intermediate_size=1536,
             num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
             vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
             tie_word_embeddings=True, rms_norm_eps=1e-5),
        dict(name="llama-3.2-1b-shape", hidden_size=2048, intermediate_size=8192,
             num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
             vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
             tie_word_embeddings=True, rms_norm_eps=1e-5,
             rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position_embeddings=8192)),
    ],
    "tiny": [
        dict(name="tiny-a", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
             max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True,
             rms_norm_eps=1e-5),
        dict(name="tiny-b", hidden_size=96, intermediate_size=192, num_hidden_layers=2,
             num_attention_heads=6, num_key_value_heads=3, vocab_size=49152,
             max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=False,
             rms_norm_eps=1e-5),
    ],
}

# Workload sizes: (train micro batch, train sequence length, timed steps, adapter training
# steps, prefill tokens, decode tokens, repeats).
SIZES = {"full": (8, 512, 5, 10, 512, 64, 3), "tiny": (2, 32, 2, 3, 32, 8, 1)}

PROMPTS = [
    "What is the capital of France?",
    "Reverse the order of these words: river, stone, lantern",
    "Write one sentence about the sea.",
]
TOL_F32 = 1e-3
# switchyard with bf16 weights (products in bf16, f32 between them) against transformers in f32.
# PyTorch's own bf16 SmolLM2 moves its top-10 log-probabilities by up to 0.45 from its f32 ones.
TOL_BF16 = 0.5
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "special_tokens_map.json"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Gpu:
    """Peak GPU memory of one process, from nvidia-smi, sampled every 50 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = str(pid), 0.0, False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done:
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                     "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                for line in out.stdout.splitlines():
                    pid, mib = [x.strip() for x in line.split(",")]
                    if pid == self.pid:
                        self.peak = max(self.peak, float(mib))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.peak


def run_json(cmd, env, device, timeout, parse=True):
    """Runs a command that prints one JSON object last; returns it (None when `parse` is off)
    and the process's peak GPU memory in MiB (None off CUDA)."""
    log("$ " + " ".join(str(c) for c in cmd))
    p = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    gpu = Gpu(p.pid) if device == "cuda" else None
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"timed out after {timeout} s: {cmd[0]} … {err[-2000:]}")
    peak = gpu.stop() if gpu else None
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {err[-3000:]}")
    if not parse:
        return None, peak
    last = [line for line in out.splitlines() if line.strip()][-1]
    return json.loads(last), peak


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Serve:
    """`switchyard serve` on a free port, for one model (and adapter)."""

    def __init__(self, binary, folder, device, env, log_path, adapter=None, dtype="f32"):
        self.port = free_port()
        cmd = [binary, "serve", "--model", folder, "--device", device, "--port", str(self.port),
               "--dtype", dtype]
        if adapter:
            cmd += ["--adapter", adapter]
        log("$ " + " ".join(str(c) for c in cmd))
        self.log = open(log_path, "w")
        self.p = subprocess.Popen([str(c) for c in cmd], env=env, stdout=self.log,
                                  stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"serve exited: {Path(log_path).read_text()[-3000:]}")
            try:
                self.name = http(self.port, "/v1/models", timeout=5)["data"][0]["id"]
                return
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("serve did not answer within 300 s")
                time.sleep(0.5)

    def chat(self, prompt, n_tokens):
        return http(self.port, "/v1/chat/completions", {
            "model": self.name, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": n_tokens, "temperature": 0, "logprobs": True, "top_logprobs": 10})

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


def byte_ids(tok):
    """Token bytes -> id, for a byte-level BPE tokenizer (GPT-2's byte-to-character table)."""
    table = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    chars, n = table[:], 0
    for b in range(256):
        if b not in table:
            table.append(b)
            chars.append(256 + n)
            n += 1
    decode = {chr(c): b for b, c in zip(table, chars)}
    special = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values()}
    out = {}
    for piece, i in tok.get_vocab().items():
        if piece in special:
            key = piece.encode()
        else:
            try:
                key = bytes(decode[c] for c in piece)
            except KeyError:
                key = piece.encode()
        out.setdefault(key, i)
    return out


def compare(torch, model, tok, ids_of, serve, device, n_tokens):
    """switchyard's chat completions against transformers' forward and greedy generation."""
    rows = []
    for prompt in PROMPTS:
        resp = serve.chat(prompt, n_tokens)
        content = resp["choices"][0]["logprobs"]["content"]
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        row = {"prompt": prompt, "prompt_tokens": len(ids),
               "switchyard_prompt_tokens": resp["usage"]["prompt_tokens"]}
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            ref = model(x).logits[0, -1].float().log_softmax(-1).cpu()
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_tokens,
                                 do_sample=False)[0, len(ids):].tolist()
        tops = content[0]["top_logprobs"]
        ours = [(ids_of.get(bytes(t["bytes"])), t["logprob"]) for t in tops]
        if any(i is None for i, _ in ours):
            raise RuntimeError(f"a top-logprob token's bytes are not in the vocabulary: {tops}")
        ref_top = ref.topk(len(ours)).indices.tolist()
        row["top10_same_ids"] = sorted(i for i, _ in ours) == sorted(ref_top)
        row["max_abs_diff"] = max(abs(lp - float(ref[i])) for i, lp in ours)
        greedy = [ids_of.get(bytes(t["bytes"])) for t in content]
        n = min(len(greedy), len(gen))
        row["greedy_equal"] = greedy[:n] == gen[:n] and n > 0
        row["greedy_tokens"] = n
        rows.append(row)
    return rows


def make_model(torch, transformers, shape, tokenizer_dir, out):
    folder = out / "models" / shape["name"]
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return folder
    cfg = {k: v for k, v in shape.items() if k != "name"}
    conf = transformers.LlamaConfig(**cfg, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(conf).float()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, tmp / f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def train_adapter(binary, folder, device, data, env, out, steps, seq):
    run = out / "runs" / folder.name
    recipe = out / f"{folder.name}.recipe.toml"
    write_atomic(recipe, "\n".join([
        f'base_model = "{folder}"',
        f'output_dir = "{run}"',
        f'device = "{device}"',
        "lora_r = 16", "lora_alpha = 32", 'lora_target_modules = "all-linear"',
        f"sequence_len = {seq}", "sample_packing = true", "micro_batch_size = 4",
        f"max_steps = {steps}", "learning_rate = 2e-3", "warmup_steps = 1",
        "", "[[datasets]]", f'path = "{data}"', 'type = "chat"', ""]))
    cmd = [binary, "train", recipe, "--overwrite"]
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], env=env, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    return run / "adapter", json.loads((run / "summary.json").read_text())


def speed(binary, folder, device, env, tok, out, python, sizes, dtype):
    batch, seq, steps, _, prefill, new, repeats = sizes
    text = ("The quick brown fox jumps over the lazy dog while the farmer watches from the "
            "porch. A heron stood in the shallows near the old mill. ") * (batch * seq // 8 + 8)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = [ids[i * seq:(i + 1) * seq] for i in range(batch)]
    wl = out / f"{folder.name}.train-workload.json"
    torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    write_atomic(wl, json.dumps({"rows": rows, "rank": 16, "steps": steps, "threads":
                                 os.cpu_count(), "device": device, "dtype": torch_dtype}))
    res = {"micro_batch": batch, "seq_len": seq, "rank": 16, "targets": "all linear",
           "steps": steps, "base_dtype": dtype}
    ours, ours_gpu = run_json([binary, "bench", "train-worker", "--device", device, "--dtype",
                               dtype, "--model", folder, wl, "all"], env, device, 900)
    peft, peft_gpu = run_json([python, SCRIPTS / "bench_peft_train.py", folder, wl, "all"],
                              env, device, 900)
    res["switchyard"] = dict(ours, peak_gpu_mib=ours_gpu)
    res["peft"] = dict(peft, peak_gpu_nvidia_smi_mib=peft_gpu)
    res["ratio"] = ours["tokens_per_s"] / peft["tokens_per_s"]
    gen_out = out / f"{folder.name}.generate.json"
    run_json([binary, "bench", "generate", "--model", folder, "--device", device, "--peers",
              "transformers", "--python", python, "--prompt-tokens", prefill, "--new-tokens",
              new, "--repeats", repeats, "--out", gen_out], env, device, 900, parse=False)
    gen = json.loads(gen_out.read_text())
    if gen["skipped"]:
        raise RuntimeError(f"bench generate skipped a peer: {gen['skipped']}")
    res["generate"] = gen
    return res


def markdown(report):
    lines = [f"# switchyard on {report['device_name']} against PyTorch", "",
             f"{report['date']} · device `{report['device']}` · {report['versions']}", "",
             "## Correctness", "",
             "| model | check | max \\|Δ log-prob\\| (top-10) | top-10 ids equal | greedy equal |",
             "|---|---|---:|---|---|"]
    for m in report["models"]:
        for check, label in (("base", "f32 vs transformers"), ("adapter", "f32 adapter vs PEFT"),
                             ("base_bf16", "bf16 weights vs transformers f32")):
            rows = m[check]
            lines.append(f"| {m['name']} | {label} "
                         f"| {max(r['max_abs_diff'] for r in rows):.2e} "
                         f"| {sum(r['top10_same_ids'] for r in rows)}/{len(rows)} "
                         f"| {sum(r['greedy_equal'] for r in rows)}/{len(rows)} |")
    lines += ["", f"Tolerance on every top-10 log-probability: {TOL_F32} in f32, {TOL_BF16} with bf16 "
              "weights (greedy reported, not required, there); greedy: 8 tokens.", ""]
    if any("speed" in m for m in report["models"]):
        lines += ["## Speed", "",
                  "| model | LoRA train tok/s switchyard / PEFT | × | peak memory MiB switchyard / PEFT "
                  "| prefill × | decode × |", "|---|---:|---:|---:|---:|---:|"]
        for m in report["models"]:
            s = m.get("speed")
            if not s:
                continue
            key = "peak_gpu_mib" if report["device"] == "cuda" else "peak_rss_mib"
            ratio = {r["engine"]: r for r in s["generate"]["ratios"]}
            tf = ratio.get("transformers", {})
            lines.append(
                f"| {m['name']} | {s['switchyard']['tokens_per_s']:.0f} / {s['peft']['tokens_per_s']:.0f} "
                f"| {s['ratio']:.2f} | {s['switchyard'].get(key) or float('nan'):.0f} / "
                f"{s['peft'].get(key) or float('nan'):.0f} "
                f"| {tf.get('prefill_ratio', float('nan')):.2f} "
                f"| {tf.get('decode_ratio', float('nan')):.2f} |")
        lines += ["", "× = switchyard's rate ÷ the peer's (above 1: switchyard is faster). Training: "
                  f"rank 16 on every linear projection, {report['models'][0]['speed']['base_dtype']} "
                  "base weights, f32 adapters and AdamW, each engine in its own process on "
                  "the same token ids. Peak memory: " + (
                      "GPU memory, switchyard's from nvidia-smi, PEFT's from "
                      "torch.cuda.max_memory_allocated" if report["device"] == "cuda" else
                      "each process's peak resident memory") +
                  ". Prefill and decode: f32, against transformers.", ""]
    return "\n".join(lines)


def setup_cuda(env):
    root = env.get("CUDA_PATH") or env.get("CUDA_HOME")
    if not root:
        nvcc = shutil.which("nvcc")
        for cand in ([str(Path(nvcc).resolve().parent.parent)] if nvcc else []) + \
                ["/usr/local/cuda", "/opt/cuda"]:
            if Path(cand, "include", "cuda_fp16.h").is_file():
                root = cand
                break
    if not root:
        raise RuntimeError("no CUDA toolkit found (NVRTC and its headers): set CUDA_PATH")
    env["CUDA_PATH"] = root
    lib = str(Path(root) / "lib64")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--shapes", choices=list(SHAPES), default=None,
                    help="full (default on cuda) or tiny (default on cpu)")
    ap.add_argument("--bin", help="the switchyard binary (default: the bundle's)")
    ap.add_argument("--tokenizer", help="SmolLM2's tokenizer folder (default: the bundle's)")
    ap.add_argument("--data", help="chat JSONL to train on (default: the bundle's)")
    ap.add_argument("--out", default="gpu-proof-out")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--train-dtype", choices=["bf16", "f32"], default="bf16",
                    help="the frozen base weights' dtype in the training speed test (adapters, "
                         "AdamW and the loss are f32 either way)")
    args = ap.parse_args()
    shapes = args.shapes or ("full" if args.device == "cuda" else "tiny")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    env = dict(os.environ)
    env["SWITCHYARD_HOME"] = str(out / "home")
    env.setdefault("RUST_LOG", "warn")
    env["SWITCHYARD_SCRIPTS"] = str(SCRIPTS)
    cuda_root = setup_cuda(env) if args.device == "cuda" else None
    if args.bin:
        binary = Path(args.bin).resolve()
    else:
        binary = out / "bin" / "switchyard"
        if not binary.is_file():
            binary.parent.mkdir(parents=True, exist_ok=True)
            with lzma.open(HERE / "switchyard-cuda.xz") as src, open(str(binary) + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(str(binary) + ".tmp", 0o755)
            os.replace(str(binary) + ".tmp", binary)
    tokenizer_dir = Path(args.tokenizer or HERE / "tokenizer").resolve()
    data = Path(args.data or HERE / "train.jsonl").resolve()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    log(f"{version} · device {args.device} · shapes {shapes}" +
        (f" · CUDA_PATH {cuda_root}" if cuda_root else ""))

    import peft
    import torch
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else \
        (platform.processor() or platform.machine())
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device,
              "device_name": device_name, "shapes": shapes, "switchyard": version,
              "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                          f"peft {peft.__version__}", "tolerance": TOL_F32, "models": []}
    sizes = SIZES[shapes]
    failures = []
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    ids_of = byte_ids(tok)
    for shape in SHAPES[shapes]:
        log(f"== {shape['name']}")
        folder = make_model(torch, transformers, shape, tokenizer_dir, out)
        m = {"name": shape["name"], "config": shape}
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32).to(args.device).eval()
        m["parameters"] = sum(p.numel() for p in model.parameters())
        serve = Serve(binary, folder, args.device, env, out / f"{shape['name']}.serve.log")
        try:
            m["base"] = compare(torch, model, tok, ids_of, serve, args.device, 8)
        finally:
            serve.close()
        serve = Serve(binary, folder, args.device, env, out / f"{shape['name']}.serve-bf16.log",
                      dtype="bf16")
        try:
            m["base_bf16"] = compare(torch, model, tok, ids_of, serve, args.device, 8)
        finally:
            serve.close()
        adapter, summary = train_adapter(binary, folder, args.device, data, env, out,
                                         sizes[3], 128)
        outcome = summary["outcome"]
        m["adapter_training"] = {"device": summary["device"], "steps": outcome["steps"],
                                 "final_loss": outcome["final_loss"],
                                 "tokens_per_s": outcome["tokens_per_s"]}
        if summary["device"] != args.device:
            failures.append(f"{shape['name']}: training ran on {summary['device']}")
        tuned = peft.PeftModel.from_pretrained(model, adapter).to(args.device).eval()
        serve = Serve(binary, folder, args.device, env, out / f"{shape['name']}.serve-adapter.log",
                      adapter=adapter)
        try:
            m["adapter"] = compare(torch, tuned, tok, ids_of, serve, args.device, 8)
        finally:
            serve.close()
        del model, tuned
        if args.device == "cuda":
            torch.cuda.empty_cache()
        for check in ("base", "adapter", "base_bf16"):
            tol = TOL_BF16 if check == "base_bf16" else TOL_F32
            for r in m[check]:
                bad = [k for k, ok in (("prompt tokens", r["prompt_tokens"] == r["switchyard_prompt_tokens"]),
                                       ("log-probs", r["max_abs_diff"] <= tol),
                                       # bf16 may pick another token at a near tie; reported only.
                                       ("greedy", r["greedy_equal"] or check == "base_bf16")) if not ok]
                if bad:
                    failures.append(f"{shape['name']} {check} {r['prompt']!r}: {', '.join(bad)}")
        if not args.skip_speed:
            m["speed"] = speed(binary, folder, args.device, env, tok, out, sys.executable, sizes,
                               args.train_dtype)
        report["models"].append(m)
        # What is done so far survives a run cut short by the machine's time limit.
        write_atomic(out / "gpu_proof.json", json.dumps(report, indent=2))
        write_atomic(out / "gpu_proof.md", markdown(report))
    report["failures"] = failures
    report["seconds"] = round(time.time() - started, 1)
    write_atomic(out / "gpu_proof.json", json.dumps(report, indent=2))
    write_atomic(out / "gpu_proof.md", markdown(report))
    print(markdown(report))
    log(f"done in {report['seconds']} s; {out / 'gpu_proof.json'}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
