#!/usr/bin/env bash
# One-command setup on a CPU-only machine: a virtual environment in .venv with
# torch 2.13.0 (CPU build), torchvision 0.28.0 and every other dependency, pinned by
# constraints-cpu.txt so that nothing pulls a CUDA build. GPU users: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing autoprune and its dependencies (CPU build of torch)"
# pip warns about every package it looks up in this machine's extra local indexes; keep the log readable
quiet() {
  local rc=0
  "$@" > .venv/install.log 2>&1 || rc=$?
  grep -vE "is ignored: it is neither a file nor a directory|^\s*$" .venv/install.log || true
  return "$rc"
}
quiet .venv/bin/python -m pip install --quiet -c constraints-cpu.txt "torch==2.13.0" -e ".[test]"
# the optional extra "timm" (--model timm:NAME; its tests), as pip install -e ".[timm]" would, but timm itself
# without its dependencies: they are torch and torchvision, which must stay the CPU build installed above
echo "[setup] installing timm (optional extra, for --model timm:NAME)"
quiet .venv/bin/python -m pip install --quiet -c constraints-cpu.txt --no-deps timm
quiet .venv/bin/python -m pip install --quiet -c constraints-cpu.txt huggingface_hub safetensors
if .venv/bin/python -m pip list 2>/dev/null | grep -qiE '^nvidia-|^cuda-'; then
  echo "[setup] error: a CUDA package was pulled in; check constraints-cpu.txt" >&2
  exit 1
fi
.venv/bin/python -c "import autoprune, torch; from autoprune._torchvision import import_torchvision; from autoprune.models._timm_models import import_timm; tv = import_torchvision(); timm = import_timm(); print(f'[setup] ok: autoprune {autoprune.__version__}, torch {torch.__version__}, torchvision {tv.__version__}, timm {timm.__version__}')"
echo "[setup] done. Activate with: source .venv/bin/activate"
