#!/usr/bin/env bash
# Download into .whl/ (ignored by git) the Python 3.12 wheels that scripts/gpu_check.sh needs on
# the GPU machine and that machine lacks. It has Python 3.12 with torch (CUDA), torchvision, numpy,
# onnx, onnxruntime, pyyaml, rich and scikit-learn, and no package registry (see
# ../shared/ENVIRONMENT.md, "CUDA machines"). Carried:
#   optuna and its dependencies (alembic, SQLAlchemy, Mako, colorlog, tqdm), torch-pruning,
#   plotly + narwhals (the study's HTML files are written even with --no-tracking),
#   pytest + pluggy + iniconfig (the CUDA-marked tests), and three small pure-Python wheels whose
#   version floors what the machine has may not meet: typing_extensions (alembic needs >= 4.12,
#   torch only guarantees >= 4.10), packaging (pytest needs >= 24), Pygments (pytest needs >= 2.15,
#   rich only >= 2.13). gpu_check.sh installs a carried wheel only where the machine lacks it or
#   has an older version.
# Not carried: mlflow (with pyarrow, pandas and its servers it is far over the 64 MiB limit; the
# check runs the search with --no-tracking), optuna-integration, optuna-dashboard, psycopg2.
# One version each: pinned to constraints-cpu.txt where it pins the package, else below (the
# versions that resolved with it in the CPU environment). Usage: bash scripts/gpu_wheels.sh
# Re-running replaces .whl/ with exactly this set; it fails when the set is over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.whl
LIMIT=$((64 * 1024 * 1024))
WHEELS=(
  optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0 tqdm==4.70.1
  torch-pruning==1.6.1 plotly==7.1.0 narwhals==2.29.0
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
  typing_extensions==4.16.0 packaging==26.4 Pygments==2.21.0
)
# what the GPU machine has (with the dependencies those bring): a carried wheel may require these
PRESENT="torch torchvision numpy onnx onnxruntime pyyaml rich scikit-learn markupsafe jinja2 sympy"

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

pin() {  # NAME==VERSION -> the version constraints-cpu.txt pins for NAME, else the one given
  local name=${1%%==*} version=${1#*==} line
  line=$(grep -i -E "^${name//[-_]/[-_]}==" constraints-cpu.txt 2>/dev/null | head -n 1 || true)
  [ -n "$line" ] && version=${line#*==}
  echo "$name==$version"
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-wheels.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
for spec in "${WHEELS[@]}"; do
  spec=$(pin "$spec")
  echo "fetching $spec"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$TMP" "$spec" 2>"$TMP/pip.err" || { grep -v "is ignored: it is neither" "$TMP/pip.err" >&2; exit 1; }
done
rm -f "$TMP/pip.err"

# every requirement of a carried wheel (for Python 3.12 on Linux) is carried or on the machine
"$PY" - "$TMP" "$PRESENT" <<'EOF'
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement

folder, present = Path(sys.argv[1]), set(sys.argv[2].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
carried, missing = {}, []
for whl in folder.glob("*.whl"):
    carried[norm(whl.name.split("-")[0])] = whl
for name, whl in carried.items():
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if norm(req.name) not in carried and norm(req.name) not in present:
            missing.append(f"{whl.name} requires {req}")
if missing:
    sys.exit("not carried and not on the GPU machine:\n  " + "\n  ".join(missing))
EOF

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$TMP"/*.whl "$DEST"/
total=0
for f in "$DEST"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '%10d  %s\n' "$size" "${f#"$DEST"/}"
done
count=$(ls "$DEST"/*.whl | wc -l)
awk -v t="$total" -v n="$count" -v d="$DEST" 'BEGIN { printf "total: %d bytes (%.1f MiB) in %d wheels, in %s/\n", t, t / 1048576, n, d }'
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: over the 64 MiB that may travel to the GPU machine" >&2
  exit 1
fi
