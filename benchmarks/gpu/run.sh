#!/usr/bin/env bash
# One-shot run on a GPU machine (its own CUDA torch and nvcc, no internet): builds the extension in place
# with the CUDA kernels, runs the tests (CUDA ones included, slow ones not), runs the benchmarks, and
# prints a table of the benchmark means last.
#
#   bash benchmarks/gpu/run.sh            logs and bench.json in ${OUT:-/tmp/zk-gpu}
#
# Environment: PYTHON (default: python, else python3), CUDA_HOME (default: the root of the nvcc on PATH),
# TORCH_CUDA_ARCH_LIST (default: the compute capability nvidia-smi reports), MAX_JOBS (default: nproc),
# ZK_WHEELHOUSE (see below), ZK_GPU_RUN_NO_GPU_OK=1 (go on without a visible GPU: to test this script),
# ZK_GPU_TEST_TIMEOUT / ZK_GPU_BENCH_TIMEOUT (seconds, default 240 each), ZK_GPU_BENCH_K (a pytest -k filter).
# Exit status: non-zero if the build fails or if the tests or benchmarks fail (the later steps still run).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/zk-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
status=0
t0=$SECONDS

log() { echo "[gpu-run $((SECONDS - t0))s] $*"; }
die() { echo "[gpu-run] ERROR: $*" >&2; exit 1; }

# ---- environment ---------------------------------------------------------------------------------------
[[ -n $PY ]] || die "no python found (set PYTHON)"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: not a GPU machine?"
if [[ -z ${CUDA_HOME:-} ]]; then
  NVCC=$(command -v nvcc) || die "nvcc not on PATH and CUDA_HOME not set"
  NVCC=$(readlink -f "$NVCC")
  CUDA_HOME=$(dirname "$(dirname "$NVCC")")
fi
export CUDA_HOME
export PATH=$CUDA_HOME/bin:$PATH
if [[ -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
  TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd';' | tr -d ' ')
  [[ -n $TORCH_CUDA_ARCH_LIST ]] ||
    TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') ||
    die "could not determine the compute capability (set TORCH_CUDA_ARCH_LIST)"
fi
export TORCH_CUDA_ARCH_LIST
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  "$CUDA_HOME/bin/nvcc" --version | tail -n 2
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu available", torch.cuda.is_available(), "| torch threads", torch.get_num_threads())'
  echo "nproc $(nproc) | CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
} 2>&1 | tee "$OUT/env.txt"

# ---- Python packages: the machine has no internet, so only a local wheelhouse can fill gaps -------------
# Needed: tqdm (zoo_kernels), pytest; wanted: pytest-benchmark (benchmarks), ninja (parallel build),
# numpy and scipy (a few tests).
# Missing ones are installed from ZK_WHEELHOUSE (default benchmarks/gpu/wheels) when that folder exists,
# e.g. one filled elsewhere with `pip download -d benchmarks/gpu/wheels tqdm pytest pytest-benchmark`.
missing() {
  "$PY" - "$@" <<'PY'
import importlib.util, sys
print(" ".join(p for m, p in (a.split("=") for a in sys.argv[1:]) if importlib.util.find_spec(m) is None))
PY
}
PKGS=(tqdm=tqdm pytest=pytest pytest_benchmark=pytest-benchmark ninja=ninja numpy=numpy scipy=scipy)
WHEELS=${ZK_WHEELHOUSE:-$ROOT/benchmarks/gpu/wheels}
todo=$(missing "${PKGS[@]}")
if [[ -n $todo && -d $WHEELS ]]; then
  log "installing from $WHEELS: $todo"
  : >"$OUT/pip.log"
  for pkg in $todo; do  # one by one: a wheel missing from the folder must not block the others
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$pkg" >>"$OUT/pip.log" 2>&1 ||
      log "could not install $pkg from $WHEELS (log: $OUT/pip.log)"
  done
  todo=$(missing "${PKGS[@]}")
fi
[[ -z $todo ]] || log "missing Python packages: $todo"
for req in tqdm pytest; do
  [[ " $todo " != *" $req "* ]] || die "$req is required and not installed for $PY (no internet: put wheels in $WHEELS)"
done

# ---- build (in place; --no-deps semantics: nothing is downloaded) -------------------------------------
build() {  # $1: the C++ compiler (empty: setup.py's default)
  rm -rf build zoo_kernels/_C.*.so
  log "building zoo_kernels with CUDA, CXX=${1:-default} (log: $OUT/build.log)"
  if ! env ${1:+CXX=$1} ZOO_KERNELS_FORCE_CUDA=1 "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1; then
    tail -n 80 "$OUT/build.log" >&2
    return 1
  fi
}
# A C++ exception (bad input) must reach Python as a RuntimeError. A compiler whose libgcc/libstdc++ differs from
# the ones torch runs with can crash there instead (seen on the H200 image with /opt/gcc's g++, 2026-11-27).
throw_check() {
  "$PY" - <<'PY'
import torch, zoo_kernels.ops as o
for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
    try:
        o.project_dense(torch.ones(2, 3, device=dev), torch.ones(3, 4, device=dev), 8, 0)
    except RuntimeError as e:
        print(f"C++ error reached Python ({dev}):", str(e).splitlines()[0][:100])
    else:
        raise SystemExit(f"bad input to project_dense on {dev} raised nothing")
PY
}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
: >"$OUT/build.log"
for cxx in /usr/bin/g++ g++; do  # the system compiler first (the H200 image's default g++ fails the check)
  [[ $cxx == g++ ]] && cxx=""
  [[ -z $cxx || -x $cxx ]] || continue
  log "C++ compiler: $(${cxx:-g++} --version | head -n1) ($(command -v ${cxx:-g++}))"
  build "$cxx" || die "build failed (full log: $OUT/build.log)"
  throw_check 2>&1 | tee -a "$OUT/build.log"
  throw_rc=${PIPESTATUS[0]}
  [[ $throw_rc == 0 ]] && break
  log "C++ exceptions do not reach Python with this build (exit $throw_rc)"
done
[[ $throw_rc == 0 ]] || status=1
"$PY" -c '
import torch, zoo_kernels._build as b
info = b.build_info()
print("built:", info)
assert info["with_cuda"], "the extension was built without CUDA"
import os
assert torch.cuda.is_available() or os.environ.get("ZK_GPU_RUN_NO_GPU_OK") == "1", "torch sees no GPU"
' 2>&1 | tee -a "$OUT/build.log" || die "the built extension does not have working CUDA support"
# ---- tests ---------------------------------------------------------------------------------------------
log "tests (log: $OUT/tests.log)"
# with pytest-xdist: 8 workers, one test file per worker (a crashing test then fails alone, not the whole run)
XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 8 --dist loadfile")
# -v: each result is in tests.log as it comes (a time-out keeps them); the terminal gets failures and the summary
OMP_NUM_THREADS=2 timeout "${ZK_GPU_TEST_TIMEOUT:-240}" "$PY" -m pytest -v -rfE $XDIST tests -m "cuda or not slow" \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | grep -E "FAILED|ERROR|Error|passed|failed|Fatal"
rc=${PIPESTATUS[0]}
if [[ $rc != 0 ]]; then log "tests FAILED (exit $rc)"; status=1; fi

# ---- benchmarks ----------------------------------------------------------------------------------------
rm -f "$OUT/bench.json"
if [[ ! -f benchmarks/gpu/test_bench_cuda.py ]]; then
  log "no GPU benchmarks (benchmarks/gpu/test_bench_cuda.py): skipped"
elif ! "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
  log "pytest-benchmark is not installed for $PY: benchmarks skipped"
  status=1
else
  log "benchmarks (log: $OUT/bench.log)"
  # the GPU benchmarks only: the CPU suite's numbers come from the project's CPU machine
  timeout "${ZK_GPU_BENCH_TIMEOUT:-240}" "$PY" -m pytest benchmarks/gpu -q -p no:cacheprovider ${ZK_GPU_BENCH_K:+-k "$ZK_GPU_BENCH_K"} \
    --benchmark-json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc != 0 ]]; then log "benchmarks FAILED (exit $rc)"; status=1; fi
fi

# ---- summary table (last) ------------------------------------------------------------------------------
if [[ -s $OUT/bench.json ]]; then
  "$PY" - "$OUT/bench.json" <<'PY' | tee "$OUT/summary.txt"
import json, sys
data = json.load(open(sys.argv[1]))
rows = []
for b in data.get("benchmarks", []):
    ex = b.get("extra_info", {})
    rows.append((b.get("fullname") or b["name"], b["stats"]["mean"] * 1e3, b["stats"].get("stddev", 0.0) * 1e3,
                 ex.get("baseline", ""), ex.get("speedup"), ex.get("floor_fraction")))
if not rows:
    print("bench.json has no benchmarks")
    sys.exit(0)
ex0 = data["benchmarks"][0].get("extra_info", {})
print()
if "fp32_matmul_tflops" in ex0:
    print(f"{ex0.get('device_name')}: fp32 matmul {ex0['fp32_matmul_tflops']:.1f} TFLOP/s (TF32 off), "
          f"copy {ex0['copy_bandwidth_gbs']:.0f} GB/s (read + write)")
w = min(70, max(len(r[0].split("::")[-1]) for r in rows))
fmt = lambda v, f: "" if v is None else format(v, f)
print(f"{'benchmark':<{w}}  {'mean ms':>10}  {'sd ms':>8}  {'speedup':>8}  {'of floor':>8}  baseline")
for name, mean, sd, base, speed, floor in rows:
    name = name.split("::")[-1][-w:]
    print(f"{name:<{w}}  {mean:10.3f}  {sd:8.3f}  {fmt(speed, '8.2f'):>8}  {fmt(floor, '8.3f'):>8}  {base}")
PY
fi
log "done (status $status); logs in $OUT"
exit $status
