#!/usr/bin/env bash
# Configures and builds the CMake library (CPU only) in build-cmake/ against the torch of .venv, then
# loads it with torch.ops.load_library in a fresh Python process that never imports the zoo_kernels
# package (whose _C registers the same TORCH_LIBRARY) and checks project_dense on a small input.
# Idempotent (incremental build). Prints one OK line on success; VERBOSE=1 shows the build output.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=$ROOT/build-cmake
LOG=$BUILD/check.log
mkdir -p "$BUILD"
: >"$LOG"
start=$SECONDS

run() {
  if [[ ${VERBOSE:-0} == 1 ]]; then "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; fi
  if ! "$@" >>"$LOG" 2>&1; then
    echo "check_cmake_build: FAILED: $*" >&2
    tail -n 60 "$LOG" >&2
    echo "check_cmake_build: full log in $LOG" >&2
    return 1
  fi
}

[[ -x $PY ]] || { echo "check_cmake_build: no python at $PY (create .venv or set PYTHON)" >&2; exit 1; }
PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
GEN=()
command -v ninja >/dev/null && [[ ! -f $BUILD/Makefile ]] && GEN=(-G Ninja)
run cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DWITH_CUDA=OFF \
  -DCMAKE_PREFIX_PATH="$PREFIX"
run cmake --build "$BUILD" -j "${MAX_JOBS:-2}"

LIB=$BUILD/libzoo_kernels.so
[[ -f $LIB ]] || { echo "check_cmake_build: $LIB was not built" >&2; exit 1; }

# Run from an empty directory so that `zoo_kernels` (the package in the repo root) cannot be imported.
out=$(cd "$BUILD" && env -u PYTHONPATH "$PY" - "$LIB" <<'PY' 2>&1
import math, sys
import torch
torch.ops.load_library(sys.argv[1])
assert "zoo_kernels" not in sys.modules, "the zoo_kernels package must not be imported here"
ops = torch.ops.zoo_kernels
torch.manual_seed(0)
N, T, n, o, k, seed = 3, 5, 7, 4, 200, 12345
acts, grads = torch.randn(N, T, n, dtype=torch.float64), torch.randn(N, T, o, dtype=torch.float64)
S = ops.project_dense(acts, grads, k, seed, "rademacher", 3)
assert S.shape == (N, k) and S.dtype == torch.float64, (S.shape, S.dtype)
# Reference: R from fill_random, G_i = sum_t grads[i,t] (x) acts[i,t] flattened row-major (o, n).
R = torch.empty(3 + o * n, k, dtype=torch.float64)
ops.fill_random(R, 0, 0, seed, "rademacher")
assert R.abs().eq(1).all()
G = torch.einsum("ntp,ntq->npq", grads, acts).reshape(N, o * n)
ref = G @ R[3:] / math.sqrt(k)
err = (S - ref).abs().max().item()
assert err < 1e-10, err
Sk = ops.project_kron(acts.float(), grads.float(), 8, 6, seed, "gaussian")
assert Sk.shape == (N, 48) and torch.isfinite(Sk).all()
print(f"project_dense max err {err:.1e}, cuda_version={ops.cuda_version()}")
PY
) || { echo "check_cmake_build: loading/using $LIB failed:" >&2; echo "$out" >&2; exit 1; }

echo "check_cmake_build: OK: $LIB ($out) in $((SECONDS - start))s"
