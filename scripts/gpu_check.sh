#!/usr/bin/env bash
# The CUDA path of autoprune in one command, for a GPU machine without a package registry
# (README: "Checking the CUDA path on a GPU machine"). From the repository root:
#
#   bash scripts/gpu_check.sh              # on the GPU machine, with .whl/ from scripts/gpu_wheels.sh
#   bash scripts/gpu_check.sh --dry-run    # the same steps on the CPU with tiny settings (CI, any machine)
#
# Installs the carried wheels and autoprune (--no-deps) into a temporary folder, prints the GPU,
# driver, torch and CUDA versions, runs the CUDA-marked tests, autoprune bench (fp32/fp16/bf16, 2:4)
# and two short searches, each step under its own timeout, and writes gpu_check.md, gpu_check.json
# and steps.log into $OUT (else runs/gpu_check/). A failing step is recorded and the next one runs;
# the exit status is 0 only when every step passed. Other options: --deadline SECONDS (470; dry run 1500),
# --out DIR, --wheels DIR, --keep (see scripts/gpu_check.py, which does the work).
#
# PYTHON=...  the interpreter to check (default: python3; the checkout's .venv/bin/python when
#             python3 cannot import torch).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import torch" >/dev/null 2>&1; then
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
  fi
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: no Python interpreter '$PYTHON' (set PYTHON=...)" >&2
  exit 2
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
