#!/usr/bin/env bash
# One prepared check of the CUDA kernels on a machine with a real GPU whose Python image
# lacks some of the project's dependencies. Run there from the
# repository root with the wheels the image lacks in .whl/ (git-ignored through
# .git/info/exclude), for CPython 3.12 manylinux x86_64, downloaded here with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform ...`:
# pydantic, pydantic-core, annotated-types, typing-inspection, orjson, structlog, greenlet at
# the versions of .venv, and numpy 2.4.x (the image's numba-cuda fails on numpy 2.5, which
# dropped np.row_stack). Then, with .whl carried:
#   bash tools/gpu_check.sh OUT_DIR
# 1. every CUDA kernel against the contract's NumPy expressions, on awkward small shapes and
#    on large ones (tests/worker/cuda_sim_cases.py without the simulator);
# 2. bench/kernels.py --device cuda: each kernel's rate against the card's copy bandwidth and
#    cuBLAS dgemm, and against CuPy running the contract's expression on the same arrays.
set -uo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
unset NUMBA_ENABLE_CUDASIM
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import numba, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)" | tee -a "$out/gpu.txt"
python3 -c "from numba import cuda; print('cuda available', cuda.is_available()); cuda.detect()" 2>&1 | tee -a "$out/gpu.txt"
echo "== correctness"
time python3 -m tests.worker.cuda_sim_cases >"$out/cases.json" 2>"$out/cases.err"
rc=$?
python3 - "$out/cases.json" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().strip().splitlines()
res = json.loads(lines[-1]) if lines else {}
for name, (ok, detail) in res.items():
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {str(detail)[:300]}")
print(f"{sum(ok for ok, _ in res.values())}/{len(res)} cases passed")
PY
[ $rc -ne 0 ] && tail -40 "$out/cases.err"
echo "== bench"
time python3 bench/kernels.py --device cuda 2>&1 | tee "$out/bench.txt"
cp bench/results/kernels-cuda.json "$out/" 2>/dev/null
