#!/usr/bin/env bash
# The second-order study of benchmarks/linearized_long.py on a GPU machine, all runs at once: for four far-domain
# runs (texture_orient lr 0.003 and 0.01, greek_upper and digits_fonts lr 0.003), the linearized model at w_100,
# the full second-order model, and the second-order term along one direction: the real run's (an oracle), the
# linearized model's, and that one refined twice (--along linear:2). Each process computes its own real run on
# the GPU (deterministic kernels, no TF32), so every column comes from that machine.
#
#   OUT=/tmp/zk-along bash benchmarks/gpu/linearized_along.sh     -> $OUT/along-runs.tgz, $OUT/summary.txt
#
# The runs write outside $OUT (the device tool returns at most 8 files) and are packed into $OUT/along-runs.tgz
# every 20 s, so a call cut at its limit still returns what finished. Give the device call a limit of at least
# ZK_ALONG_LIMIT + 200 s for the build and the start (not measured). On 2026-11-27 the 20 processes sharing
# one H200 took 121 s (linearized) and 172 s (second order) per run; the --along runs needed more than 360 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/zk-along}
RUNS=${ZK_ALONG_RUNS:-/tmp/zk-along-runs}
mkdir -p "$OUT" "$RUNS"
PY=${PYTHON:-$(command -v python || command -v python3)}
export CUBLAS_WORKSPACE_CONFIG=:4096:8 OMP_NUM_THREADS=1 PYTHONPATH=$PWD
LIMIT=${ZK_ALONG_LIMIT:-600}  # seconds per process
t0=$SECONDS
# the study needs the extension only for imports: a CPU-only build is enough and quick
CXX=$( [[ -x /usr/bin/g++ ]] && echo /usr/bin/g++ || echo g++ ) ZOO_KERNELS_FORCE_CPU=1 MAX_JOBS=$(nproc) \
  "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -n 40 "$OUT/build.log"; exit 1; }
echo "[$((SECONDS - t0))s] built; $(nvidia-smi --query-gpu=name --format=csv,noheader); $(nproc) cores"
run() {  # name compare-set index [linearized_long args]
  local name=$1 set=$2 idx=$3
  shift 3
  timeout -k 15 "$LIMIT" "$PY" -m benchmarks.linearized_long --device cuda --only "$idx" --cache "/tmp/zk-cache-$name" \
    --compare "benchmarks/results/predict-long-cpu-2026-11-27-velfix-$set.json" --out "$RUNS" --tag="-$name" \
    "$@" >"$RUNS/$name.log" 2>&1 &
}
for r in fresh:6:t6 fresh:9:t9 heldout:6:h6 heldout:11:h11; do
  IFS=: read -r set idx run <<<"$r"
  run "$run-o1" "$set" "$idx"
  run "$run-o2" "$set" "$idx" --order 2
  run "$run-real" "$set" "$idx" --order 2 --along real
  run "$run-lin" "$set" "$idx" --order 2 --along linear
  run "$run-lin2" "$set" "$idx" --order 2 --along linear:2
done
pack() { tar czf "$OUT/along-runs.tgz.part" -C "$(dirname "$RUNS")" "$(basename "$RUNS")" && mv "$OUT/along-runs.tgz.part" "$OUT/along-runs.tgz"; }
while [[ -n $(jobs -rp) ]]; do sleep 20; pack; done
echo "[$((SECONDS - t0))s] runs done"
pack
"$PY" - "$RUNS" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, sys
rows = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    tag = f.rsplit("-", 2)[-2] + "-" + f.rsplit("-", 1)[-1][:-5]
    r = json.load(open(f))["rows"][0]
    rows[tag] = r
fmt = lambda T: "/".join("-" if v is None else f"{v:.0f}" for v in T.values())
for run in ("t6", "t9", "h6", "h11"):
    have = {k.split("-")[1]: v for k, v in rows.items() if k.split("-")[0] == run}
    if not have:
        continue
    any_row = next(iter(have.values()))
    print(f"{run}: {any_row['model']} -> {any_row['task']} lr {any_row['lr']} | real {fmt(any_row['real'])}")
    for v in ("o1", "o2", "real", "lin", "lin2"):
        if v in have:
            print(f"  {v:5s} {fmt(have[v]['linearized'])}  ({have[v]['seconds']:.0f} s, replay {have[v]['check']['replayed']:.4f} vs {have[v]['check']['real']:.4f})")
PY
grep -l -E "Error|Traceback" "$RUNS"/*.log | head -n 3 | while read -r f; do echo "== $f"; tail -n 8 "$f"; done
echo "[$((SECONDS - t0))s] done"
