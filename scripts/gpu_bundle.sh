#!/usr/bin/env bash
# scripts/gpu_bundle.sh OUT: the GPU bundle (issue 13), one folder of at most 60 MiB to copy to a
# machine with one NVIDIA GPU, python3 with torch, transformers and peft, and the CUDA toolkit
# (NVRTC and its headers); no network and no Rust needed there. Then, on that machine:
#
#     python3 OUT/driver.py --out results      # about 5-8 minutes on an H200
#
# OUT holds: switchyard-cuda.xz (the offline CUDA build from gpu/, stripped, xz-compressed;
# the driver unpacks it), driver.py (scripts/gpu_proof.py), scripts/ (the PyTorch peers'
# benchmark scripts), tokenizer/ (SmolLM2-135M-Instruct's tokenizer, chat template and config),
# train.jsonl (400 rows of the word-reversal set) and README.txt.
#
# Building the CUDA binary takes a while the first time (it compiles burn's CUDA backend); it is
# cached in the target directory after that (CARGO_TARGET_DIR, as .ci/run chooses it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_bundle.sh OUT}
limit_mib=60

if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -d /work/target ]; then export CARGO_TARGET_DIR=/work/target
  else export CARGO_TARGET_DIR="$PWD/target"; fi
fi
echo "building the offline CUDA binary (gpu/, NVRTC kernels, CUDA 13.0 driver API)"
# No --offline: on a fresh machine the CUDA crates (cudarc, cubecl-cuda, burn-cuda) are fetched
# from crates.io like any other; nothing is fetched from GitHub (the stub replaces the LLVM
# download). With every crate cached, cargo needs no network at all.
(cd gpu && CUDARC_CUDA_VERSION=13000 cargo build --locked --release)
bin="$CARGO_TARGET_DIR/release/switchyard-cuda"

# SmolLM2's tokenizer and config, from the default model's folder (fetched if missing).
"$bin" models fetch >/dev/null
model_dir="${SWITCHYARD_HOME:-$HOME/.cache/switchyard}/models/SmolLM2-135M-Instruct"

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/scripts" "$tmp/tokenizer"
strip -o "$tmp/switchyard" "$bin"
xz -9 -T0 -c "$tmp/switchyard" > "$tmp/switchyard-cuda.xz"
rm "$tmp/switchyard"
for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json config.json; do
  if [ -f "$model_dir/$f" ]; then cp "$model_dir/$f" "$tmp/tokenizer/"; fi
done
head -n 400 datasets/word_reversal/train.jsonl > "$tmp/train.jsonl"
cp scripts/gpu_proof.py "$tmp/driver.py"
cp scripts/bench_peft_train.py scripts/bench_transformers.py "$tmp/scripts/"
cat > "$tmp/README.txt" <<EOF
switchyard GPU bundle, built $(date -u +%Y-%m-%dT%H:%MZ) from $(git rev-parse --short HEAD 2>/dev/null || echo "a source tree").

Needs: one NVIDIA GPU with a CUDA 13 driver, the CUDA toolkit's NVRTC and headers (CUDA_PATH,
else nvcc's folder, /usr/local/cuda or /opt/cuda), python3 with torch, transformers and peft.

    python3 driver.py --out results

writes results/gpu_proof.json and results/gpu_proof.md; exit status 1 if a correctness check
fails. python3 driver.py --help lists the options.
EOF

size=$(du -sm "$tmp" | cut -f1)
bytes=$(du -sb "$tmp" | cut -f1)
if [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "the bundle is ${size} MiB, over the ${limit_mib} MiB limit" >&2
  exit 1
fi
rm -rf "$out"
mv "$tmp" "$out"
echo "wrote $out ($(du -sh "$out" | cut -f1)):"
ls -l "$out"
