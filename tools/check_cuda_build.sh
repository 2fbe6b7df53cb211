#!/usr/bin/env bash
# Compile check of the CUDA kernels without a GPU: builds the extension with CUDA forced against
# torch 2.14.1 (CUDA 13.0) in .venv-cuda, into build/cuda-check-lib (the in-place CPU build is untouched).
# Idempotent: the venv is created once, and the build is incremental. Prints one OK line on success.
#   CUDA_HOME     CUDA toolkit root (default /usr/local/cuda-13.0)
#   TORCH_CUDA_ARCH_LIST  (default "9.0")
#   VERBOSE=1     show pip and compiler output
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv-cuda
TORCH_VERSION=2.14.1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
LOG=$ROOT/build/cuda-check.log
mkdir -p "$ROOT/build"
: >"$LOG"
start=$SECONDS

run() {  # run quietly into the log; on failure show its tail
  if [[ ${VERBOSE:-0} == 1 ]]; then "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; fi
  if ! "$@" >>"$LOG" 2>&1; then
    echo "check_cuda_build: FAILED: $*" >&2
    tail -n 60 "$LOG" >&2
    echo "check_cuda_build: full log in $LOG" >&2
    return 1
  fi
}

[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2; exit 1; }

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or torch.version.cuda is None)" >/dev/null 2>&1; then
  [[ -x $VENV/bin/python ]] || run python3 -m venv "$VENV"
  run "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy pybind11 ninja setuptools wheel
fi
PY=$VENV/bin/python
export PATH=$VENV/bin:$CUDA_HOME/bin:$PATH   # ninja of the venv, the real nvcc

run env ZOO_KERNELS_FORCE_CUDA=1 "$PY" setup.py -q build_ext \
  --build-temp build/cuda-check --build-lib build/cuda-check-lib

SO=$(ls build/cuda-check-lib/zoo_kernels/_C*.so 2>/dev/null | head -n1)
[[ -n $SO ]] || { echo "check_cuda_build: no _C*.so under build/cuda-check-lib" >&2; exit 1; }
# Every .cu must have been compiled in, with device code for the requested arch.
for cu in csrc/cuda/*.cu; do
  obj=build/cuda-check/${cu%.cu}.o
  [[ -f $obj ]] || { echo "check_cuda_build: missing object $obj" >&2; exit 1; }
done
arch=${TORCH_CUDA_ARCH_LIST%%[;+ ]*}; arch=${arch/./}
# (the toolkit here has no cuobjdump: look for the fat binary section and its sm_XX tag instead; the section
# list is captured first: `readelf | grep -q` under pipefail fails at random when grep exits early, SIGPIPE)
sections=$(readelf -S "$SO")
{ [[ $sections == *.nv_fatbin* ]] && grep -qa "sm_$arch" "$SO"; } \
  || { echo "check_cuda_build: no sm_$arch device code in $SO" >&2; exit 1; }

# Load it. Without a GPU driver (libcuda.so.1) the load may fail; only that cause is tolerated.
load=$("$PY" - "$SO" <<'PY' 2>&1
import sys, torch
try:
    torch.ops.load_library(sys.argv[1])
except OSError as e:
    msg = str(e)
    if "libcuda.so" in msg:
        print("load skipped (no GPU driver: " + msg.splitlines()[0][:120] + ")")
        sys.exit(0)
    raise
ops = torch.ops.zoo_kernels
assert ops.cuda_version() >= 13000, ops.cuda_version()
out = torch.empty(3, 200)
ops.fill_random(out, 1, 5, 7, "rademacher")
assert out.abs().eq(1).all()
for op in ("fill_random", "project_dense", "project_kron", "ntk_block", "gram_accumulate_", "jacobian_t_matmul",
           "jacobian_matmul"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("zoo_kernels::" + op, key), (op, key)
print("loaded, CPU+CUDA kernels registered, cuda_version=%d, GPU available=%s" % (ops.cuda_version(), torch.cuda.is_available()))
PY
) || { echo "check_cuda_build: loading $SO failed:" >&2; echo "$load" >&2; exit 1; }

echo "check_cuda_build: OK: $SO ($(du -h "$SO" | cut -f1), torch $TORCH_VERSION, sm ${TORCH_CUDA_ARCH_LIST}; $load) in $((SECONDS - start))s"
