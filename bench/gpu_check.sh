#!/usr/bin/env bash
# The GPU check: tests marked `cuda`, then bench/gpu_check.py (the shipped and official configs on
# synthetic:vegas on CUDA and on the CPU, a GPU checkpoint resumed on the CPU); one table, written
# to BENCHMARKS.md. Under 8 minutes on one modern GPU; needs torch, numpy, scipy, pyyaml,
# scikit-learn, pandas, pyarrow (pytest for the tests, if the image has it); no Ray, no Optuna.
#
#   bench/gpu_check.sh                    # on a GPU machine, from any folder
#   bench/gpu_check.sh --cpu-only --quick # the same path without a GPU, at a reduced size
#   (further flags go to bench/gpu_check.py: --epochs N, --no-write)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

"$PY" - <<'PYEOF' || exit 2
import importlib, sys
need = ["torch", "numpy", "scipy", "yaml", "sklearn", "pandas", "pyarrow"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    print(f"error: gpu_check needs {', '.join(missing)} (pip install them)", file=sys.stderr)
    sys.exit(1)
import torch
print(f"[gpu_check] torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PYEOF

if "$PY" -c "import pytest" 2>/dev/null; then
  # only this file: the rest of tests/ imports Ray and Optuna, which a CUDA image may lack
  out=$("$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1)
  rc=$?
  echo "$out" | tail -n 30
  summary=$(echo "$out" | grep -E "passed|failed|skipped|error" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
  [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && summary="FAILED (pytest exit $rc): $summary"
else
  summary="not run: pytest is not installed"
fi
echo "[gpu_check] cuda tests: $summary"

"$PY" bench/gpu_check.py --cuda-tests "$summary" "$@"
