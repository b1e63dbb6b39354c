#!/usr/bin/env bash
# Logic check of the CUDA kernels without a GPU: compiles csrc/cuda/engine.cu as plain C++ against
# csrc/cuda/emulate/cuda_runtime.h (one thread per block, blocks in sequence), links it with the
# rest of the engine into a throwaway rasp_compiler package under $WORK (default /tmp/rasp_cuda_emu),
# and runs tests/engine/test_cuda.py against it. Finds indexing and logic errors; with EMU_THREADS=N (N > 1
# threads per block, meeting at real barriers) and TSAN=1 (ThreadSanitizer) also shared-memory races. The
# test suite runs it once as it is (tests/engine/test_cuda_emulated.py).
#   bash scripts/cuda_emulate_check.sh [pytest args...]
#   EMU_THREADS=4 TSAN=1 bash scripts/cuda_emulate_check.sh -k "sort or random_model"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/rasp_cuda_emu}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r "$ROOT/rasp_compiler" "$WORK/"
rm -f "$WORK"/rasp_compiler/_engine*.so
EXT="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
INC="$("$PY" -m pybind11 --includes)"
CXX="${CXX:-g++}"
EMU_THREADS="${EMU_THREADS:-1}"
FLAGS=(-std=c++20 -O1 -g -fPIC -DRASP_EMU_THREADS="$EMU_THREADS")
LDFLAGS=()
PRELOAD=""
if [ "${TSAN:-0}" = 1 ]; then  # std::thread instead of OpenMP, whose runtime TSan cannot see into
  FLAGS+=(-fsanitize=thread)
  LDFLAGS+=(-fsanitize=thread)
  PRELOAD="$("$CXX" -print-file-name=libtsan.so)"
else
  FLAGS+=(-fopenmp -DRASP_HAVE_OPENMP=1)
  LDFLAGS+=(-fopenmp)
fi
objs=()
for src in "$ROOT"/csrc/engine/*.cpp "$ROOT"/csrc/bindings.cpp \
           "$ROOT"/csrc/cuda/cuda_bindings.cpp "$ROOT"/csrc/cuda/engine.cu; do
  obj="$WORK/$(basename "$src").o"
  # shellcheck disable=SC2086
  "$CXX" -x c++ "${FLAGS[@]}" -I"$ROOT/csrc" $INC -DRASP_HAVE_CUDA=1 -DRASP_CUDA_EMULATE_HOST \
    -DRASP_VERSION='"emu"' -DRASP_BUILD_TYPE='"emulated"' -DRASP_THREADS='"emu"' -DRASP_NATIVE_BUILD=0 \
    -DRASP_SANITIZE_BUILD=0 -DRASP_CXX_COMPILER='"emu"' -c "$src" -o "$obj" &
  objs+=("$obj")
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do sleep 0.2; done
done
wait
"$CXX" -shared "${LDFLAGS[@]}" "${objs[@]}" -o "$WORK/rasp_compiler/_engine$EXT"
cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$WORK/"
cd "$WORK"  # so that `import rasp_compiler` finds the emulated build, not the checkout's
OMP_NUM_THREADS=1 LD_PRELOAD="$PRELOAD" TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 report_signal_unsafe=0}" \
  PYTHONPATH="$WORK" "$PY" -m pytest tests/engine/test_cuda.py -p no:cacheprovider -q "$@"
