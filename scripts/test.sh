#!/usr/bin/env bash
# The test suite, as CI runs it (the README's test command). On a fresh Debian it first installs
# what the tests use and the system may lack: Python 3 with venv and pip (the default model and
# the pinned Python peers are fetched through them) and Chromium (the report is checked as a
# person sees it), and Mesa's lavapipe Vulkan driver (burn's GPU kernels run on the CPU through it).
# Then `cargo test --locked`, the GPU path's test built with `--features wgpu`, and the GPU
# bundle's build and CPU run; extra arguments go to cargo test (and skip the rest).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3 python3-venv python3-pip)
else
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The GPU bundle strips and xz-compresses the CUDA binary.
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v strip >/dev/null 2>&1 || need+=(binutils)
# lavapipe: the Vulkan loader and Mesa's CPU driver, for the wgpu test.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || need+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need+=(libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "the tests need: ${need[*]}; install them with your package manager" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing what the tests need: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
fi

if [ $# -gt 0 ]; then
  exec cargo test --locked "$@"
fi
cargo test --locked
# The GPU code path (cubecl kernels through wgpu) on lavapipe: LoRA training and generation match
# the CPU's (tests/it/wgpu.rs).
cargo test --locked --features wgpu --test it wgpu::

# The GPU bundle: the offline CUDA build links (gpu/), the bundle fits in 60 MiB, and its driver
# passes on the CPU with tiny shapes against PyTorch, transformers and PEFT (pinned in
# tests/fixtures/gpu/requirements.txt, installed once under $SWITCHYARD_HOME/peers/torch).
home="${SWITCHYARD_HOME:-$HOME/.cache/switchyard}"
venv="$home/peers/torch"
if ! cmp -s tests/fixtures/gpu/requirements.txt "$venv/.installed"; then
  echo "installing PyTorch, transformers and PEFT into $venv (about 5 GB, once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-deps -r tests/fixtures/gpu/requirements.txt
  cp tests/fixtures/gpu/requirements.txt "$venv/.installed"
fi
bundle="$(mktemp -d)"
trap 'rm -rf "$bundle"' EXIT
scripts/gpu_bundle.sh "$bundle/gpu-bundle"
# Without a GPU, the bundle's binary must reach CUDA's driver library (it was built with CUDA),
# and say it cannot load it.
if ! command -v nvidia-smi >/dev/null 2>&1; then
  xz -dc "$bundle/gpu-bundle/switchyard-cuda.xz" > "$bundle/switchyard-cuda"
  chmod +x "$bundle/switchyard-cuda"
  said="$("$bundle/switchyard-cuda" generate --device cuda --max-tokens 1 hi 2>&1 || true)"
  if grep -q 'Unable to dynamically load the "cuda" shared library' <<<"$said"; then
    echo "the CUDA binary reaches for libcuda, as it should without a GPU"
  else
    echo "the CUDA binary did not try to load libcuda" >&2
    exit 1
  fi
fi
"$venv/bin/python" "$bundle/gpu-bundle/driver.py" --device cpu --shapes tiny --out "$bundle/results"
