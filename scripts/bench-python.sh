#!/usr/bin/env bash
# Installs the Python that `compare` measures Siren's ESU against: PyTorch and ONNX Runtime
# (with numpy, onnx and onnxscript for the export) in a venv at target/bench-python, every
# package pinned by version and sha256 in benches/bench-python.lock.
#
# Not part of setup.sh or CI: PyPI's Linux torch wheel brings its CUDA libraries (unused here,
# the comparison runs on the CPU), about 5 GB installed. Without it, `compare` prints why it
# skipped PyTorch and ONNX Runtime and goes on. `compare` finds this venv by itself
# (`--python` or SIREN_BENCH_PYTHON choose another one).
#
#   scripts/bench-python.sh             # the locked set (CPython 3.11, Linux x86_64)
#   scripts/bench-python.sh --unlocked  # the same top-level versions without hashes, for
#                                       # another Python or platform (pip resolves the rest)
#   cargo run --release -p siren-benches --bin compare -- --only esu
#
# Safe to run again: pip leaves what is installed alone.
set -euo pipefail

TORCH=2.15.0
ONNXRUNTIME=1.32.0
NUMPY=2.4.6
ONNX=1.23.2
ONNXSCRIPT=0.7.2

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/bench-python"
lock="$root/benches/bench-python.lock"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
if [ "${1:-}" = "--unlocked" ]; then
  "$venv/bin/pip" install --only-binary :all: "torch==$TORCH" "onnxruntime==$ONNXRUNTIME" \
    "numpy==$NUMPY" "onnx==$ONNX" "onnxscript==$ONNXSCRIPT"
else
  "$venv/bin/pip" install --require-hashes --only-binary :all: -r "$lock"
fi
"$venv/bin/python" - "$TORCH" "$ONNXRUNTIME" <<'PY'
import sys
import onnxruntime
import torch
want = (sys.argv[1], sys.argv[2])
got = (torch.__version__.split("+")[0], onnxruntime.__version__)
if got != want:
    sys.exit(f"bench-python: installed torch/onnxruntime {got}, expected {want}")
print(f"bench-python: torch {got[0]}, onnxruntime {got[1]} in {sys.prefix}")
PY
