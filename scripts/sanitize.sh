#!/usr/bin/env bash
# Build the engine with AddressSanitizer + UndefinedBehaviorSanitizer and run the engine tests under it.
#   scripts/sanitize.sh [pytest args...]      (default: the build and engine tests)
# The sanitized module is built into build/sanitize/overlay (a copy of the package and tests), so the
# regular in-tree build is left alone. A Python extension cannot be the first library loaded, so the
# sanitizer runtimes are LD_PRELOADed; leak checking is off (CPython's own allocations are not leaks).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BUILD="$ROOT/build/sanitize"
OVERLAY="$BUILD/overlay"
VERSION="$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open("rasp_compiler/__init__.py").read()).group(1))')"
CMAKE="$("$PY" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null || command -v cmake)"
GEN=()
if command -v ninja >/dev/null 2>&1 || [[ -x "$(dirname "$PY")/ninja" ]]; then
  GEN=(-G Ninja)
  export PATH="$(dirname "$PY"):$PATH"
fi
[[ -f "$BUILD/CMakeCache.txt" ]] && GEN=()

rm -rf "$OVERLAY"
mkdir -p "$OVERLAY"
# copy the pure-Python package and the tests, without any built module
tar --exclude='*.so' --exclude='__pycache__' -cf - rasp_compiler verify tests | tar -xf - -C "$OVERLAY"

"$CMAKE" -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRASP_SANITIZE=ON -DRASP_CUDA=0 \
  -DPython_EXECUTABLE="$PY" -DRASP_VERSION="$VERSION" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$OVERLAY/rasp_compiler" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY_RELWITHDEBINFO="$OVERLAY/rasp_compiler" >/dev/null
"$CMAKE" --build "$BUILD" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

CXX_BIN="${CXX:-g++}"
LIBASAN="$("$CXX_BIN" -print-file-name=libasan.so)"
LIBUBSAN="$("$CXX_BIN" -print-file-name=libubsan.so)"
export LD_PRELOAD="$LIBASAN $LIBUBSAN"
# Reports go to files too: pytest captures stderr, and a process the sanitizer stops prints nothing more.
LOGS="$BUILD/reports"
rm -rf "$LOGS"
mkdir -p "$LOGS"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$LOGS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$LOGS/ubsan"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

cd "$OVERLAY"
"$PY" -c 'import rasp_compiler._engine as e, sys; i = e.build_info(); print("[sanitize] engine:", i); sys.exit(0 if i["sanitize"] else 1)'
if [[ $# -eq 0 ]]; then
  set -- tests/engine/test_build.py tests/engine/test_engine.py tests/engine/test_engine_library.py
fi
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if compgen -G "$LOGS/*" >/dev/null; then
  echo "[sanitize] sanitizer reports:" >&2
  for f in "$LOGS"/*; do echo "== $f" >&2; head -60 "$f" >&2; done
  exit 1
fi
echo "[sanitize] no sanitizer reports (pytest exit $rc)"
exit $rc
