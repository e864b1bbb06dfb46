#!/usr/bin/env bash
# The test suite, as CI runs it (the README's test command). On a fresh Debian it first installs
# what the tests use and the system may lack: Python 3 with venv and pip (the default model and
# the pinned Python peers are fetched through them) and Chromium (the report is checked as a
# person sees it). Then `cargo test --locked`; extra arguments go to cargo test.
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

exec cargo test --locked "$@"
