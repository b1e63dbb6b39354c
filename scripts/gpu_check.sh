#!/usr/bin/env bash
# One-shot GPU check for the CUDA engine, run on the GPU machine from the repository root:
#   bash scripts/gpu_check.sh
# Builds the extension with CUDA for sm_90, runs the CUDA tests, the GPU benchmark, compute-sanitizer
# (memcheck and racecheck) on a tiny workload and the CPU engine tests (in order of importance), and leaves at most 8
# files under $OUT (default ./gpu_out): info.txt (nvidia-smi, build info), build.log, sanitize.log,
# test_cuda.log, test_cpu.log, bench.log, gpu_bench.md, summary.txt. Keeps going past failures so
# that one run collects as much as possible; every step has its own time limit, cut to what is left of
# a 230 s budget for the whole script (about 2 minutes when nothing hangs; later steps are skipped, not
# started, once the budget is spent). RASP_CUDA_KERNEL=old|new|auto and RASP_CUDA_MINBLOCKS=1|2|4 in
# the environment pass through to every step (default: automatic choice, see csrc/cuda/engine.cu).
set -x
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts run from $OUT must import the checkout
BUDGET="${GPU_CHECK_BUDGET:-230}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T_START=$SECONDS
step() {  # step NAME LIMIT_S LOG CMD...: run with a time limit, append output to LOG, record the status
  local name="$1" limit="$2" log="$3"
  shift 3
  local t0=$SECONDS
  local left=$((BUDGET - (SECONDS - T_START)))
  if [ "$left" -lt 10 ]; then
    echo "$name: skipped (time budget of ${BUDGET}s spent)" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s, ${t0}s elapsed)"
  echo "=== $name" >> "$log"
  timeout --kill-after=5 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0))s" | tee -a "$SUMMARY"
  tail -n 25 "$log"
  return 0
}

{ nvidia-smi; nvidia-smi -q | head -40; command -v nvcc && nvcc --version; "$PY" --version; } > "$OUT/info.txt" 2>&1
head -20 "$OUT/info.txt"

# Build in place for Hopper (sm_90); RASP_CUDA=1 fails the build if CMake finds no nvcc.
rm -f rasp_compiler/_engine*.so
step build 100 "$OUT/build.log" env RASP_CUDA=1 RASP_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  "$PY" setup.py build_ext --inplace

step info 30 "$OUT/info.txt" "$PY" -c "
from rasp_compiler import _engine
from rasp_compiler.engine import build_info, cuda_available
print(build_info()); print('cuda_available', cuda_available())
print('smoke_test', getattr(_engine, 'cuda_smoke_test', lambda: 'n/a')())
import torch; print('torch', torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))
"

XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
step test_cuda 80 "$OUT/test_cuda.log" "$PY" -m pytest tests/engine/test_cuda.py -q -rs $XDIST -p no:cacheprovider
step bench 110 "$OUT/bench.log" env OUT="$OUT" "$PY" benchmarks/gpu.py

# A tiny workload under compute-sanitizer: out-of-bounds accesses (memcheck) and shared-memory
# races between the threads of a block (racecheck), for the plain, recorded and patched kernels.
cat > "$OUT/.san.py" <<'PYEOF'
import numpy as np
from rasp_compiler import compiling
from rasp_compiler.engine import EdgePatch, Engine
from rasp_compiler.lib import LIBRARY
import os
for name, kernel, xskip in (("sort", "old", "1"), ("shuffle_dyck2", "old", "1"), ("shuffle_dyck2", "new", "1"),
                            ("second_largest", "new", "2")):
    e = LIBRARY[name]
    m = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len)
    os.environ["RASP_CUDA_KERNEL"] = kernel  # block mode and warp mode (read when the engine is made)
    os.environ["RASP_CUDA_XSKIP"] = xskip  # warp mode's row skipping: residual inputs (1) or every matmul (2)
    eng = Engine(m, device="cuda")
    rng = np.random.default_rng(0)
    toks = rng.integers(1, m.config.d_vocab, size=(2, m.config.n_ctx)); toks[:, 0] = 0
    src = rng.integers(1, m.config.d_vocab, size=(2, m.config.n_ctx)); src[:, 0] = 0
    eng.run(toks)
    eng.run_with_cache(toks)
    sets = [["L0.H0"], [("embed", "L1.MLP", "in")], [EdgePatch("L0.MLP", "output", "in", [0, 1])],
            [("pos_embed", "L1.H0", "k"), "L0.MLP"]]
    print(name, kernel, xskip, eng.sweep(toks, src, sets, "kl", per_example=True))
PYEOF
if command -v compute-sanitizer >/dev/null; then
  step memcheck 45 "$OUT/sanitize.log" compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" "$OUT/.san.py"
  step racecheck 60 "$OUT/sanitize.log" compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" "$OUT/.san.py"
else
  echo "compute-sanitizer not found" | tee -a "$SUMMARY"
fi
rm -f "$OUT/.san.py"

step test_cpu 60 "$OUT/test_cpu.log" "$PY" -m pytest tests/engine/test_engine.py tests/engine/test_engine_library.py \
  tests/engine/test_build.py -q -rs $XDIST -p no:cacheprovider
cat "$OUT/gpu_bench.md" 2>/dev/null
echo "--- summary ($((SECONDS - T_START))s)"; cat "$SUMMARY"
ls -la "$OUT"
