"""Scaling of the streaming NTK sketch: time and peak memory against N (1k ... 1M samples).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sketch_scaling.py --ns 1000,10000,100000,1000000 --k 256 \
        [--json out.json]

Model: MLP 32-128-10 (ReLU, eval, P = 5,514), inputs from Gaussian class clusters generated chunk by chunk
(never all held), 10 classes, MSE residuals. Per chunk of --chunk samples: sketch_jacobian(method="kronecker",
k) -> (chunk, C, k), initial_residual, SketchGram.update (the float64 k x k Gram S^T S and S^T δ, op
gram_accumulate_) and the chunk is dropped; at the end SketchGram.eigh(). This is estimate_spectrum's sketch
path, without ever storing S or the inputs: memory O(k^2 + chunk).

Each N runs in a FRESH subprocess (this file with --child), which reports its wall time (sketch + Gram +
eigh, after imports and model build), peak RSS (VmHWM, and resource.getrusage ru_maxrss) and the RSS
before the run (after import + model build). A run longer than --max-seconds is stopped by the parent
(reported as such); the largest N that finished gives the extrapolation.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM, HIDDEN, CLASSES = 32, 128, 10


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(n, k, chunk, threads, seed=0):
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    import zoo_kernels as zk  # noqa: PLC0415
    from zoo_kernels.spectrum import SketchGram, initial_residual  # noqa: PLC0415

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)).eval()
    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(CLASSES, DIM, generator=g) * 1.5
    # warm-up on a few samples (lazy initializations), not counted
    zk.sketch_jacobian(model, torch.randn(8, DIM), k, method="kronecker")
    base = peak_rss_bytes()
    acc = SketchGram(k)
    t0 = time.perf_counter()
    t_sketch = t_gram = 0.0
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        y = torch.randint(CLASSES, (m,), generator=g)
        x = means[y] + torch.randn(m, DIM, generator=g)
        t = time.perf_counter()
        S = zk.sketch_jacobian(model, x, k, method="kronecker", seed=seed, batch_size=chunk)
        delta = initial_residual(model, x, y, "mse", chunk)
        t_sketch += time.perf_counter() - t
        t = time.perf_counter()
        acc.update(S.flatten(0, 1), delta.reshape(-1))
        t_gram += time.perf_counter() - t
        del S, delta, x, y
    t = time.perf_counter()
    lam, energies = acc.eigh()
    t_eigh = time.perf_counter() - t
    wall = time.perf_counter() - t0
    peak = peak_rss_bytes()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert int(acc.rows) == n * CLASSES
    print(json.dumps(dict(
        n=n, k=k, chunk=chunk, threads=torch.get_num_threads(), P=P, C=CLASSES, wall_s=wall, sketch_s=t_sketch,
        gram_s=t_gram, eigh_s=t_eigh, us_per_sample=wall / n * 1e6, peak_rss_gb=peak / 1e9,
        ru_maxrss_gb=maxrss / 1e9, base_rss_gb=base / 1e9, increment_gb=(peak - base) / 1e9,
        gram_mb=k * k * 8 / 1e6, chunk_sketch_mb=chunk * CLASSES * k * 4 / 1e6,
        top_eigenvalue=float(lam[0]), energy_captured=float(energies.sum() / acc.residual_norm2))))


def run_one(n, args):
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--k", str(args.k),
           "--chunk", str(args.chunk), "--threads", str(args.threads)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.max_seconds)
    except subprocess.TimeoutExpired:
        return {"n": n, "k": args.k, "error": f"stopped after {args.max_seconds} s (--max-seconds)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"n": n, "k": args.k, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    out = json.loads(lines[-1])
    out["process_s"] = time.perf_counter() - t
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="1000,10000,100000,1000000")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ZK_BENCH_THREADS", "2")))
    ap.add_argument("--max-seconds", type=int, default=1200)
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args.child, args.k, args.chunk, args.threads)
        return
    rows = []
    for n in [int(s) for s in args.ns.split(",")]:
        r = run_one(n, args)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    done = [r for r in rows if "error" not in r]
    lines = [f"Streaming sketch (kronecker, k={args.k}, chunk={args.chunk}, MLP {DIM}-{HIDDEN}-{CLASSES}, "
             f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE (child)')}), "
             "one fresh process per N", "",
             "| N | wall s | µs / sample | sketch s | Gram s | eigh s | peak RSS GB | RSS before run GB | "
             "increment GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['n']:,} | {r['wall_s']:.2f} | {r['us_per_sample']:.1f} | {r['sketch_s']:.2f} | "
                     f"{r['gram_s']:.2f} | {r['eigh_s']:.3f} | {r['peak_rss_gb']:.3f} | {r['base_rss_gb']:.3f} | "
                     f"{r['increment_gb']:.3f} |")
    if len(done) >= 2:
        import numpy as np  # noqa: PLC0415

        big = [r for r in done if r["n"] >= 10000]
        big, label = (big, "N >= 10k") if len(big) >= 2 else (done, "all N")
        slope = np.polyfit(np.log([r["n"] for r in big]), np.log([r["wall_s"] for r in big]), 1)[0]
        lines += ["", f"log-log slope of wall time vs N ({label}): {slope:.3f} (1 = linear)"]
        last = done[-1]
        if last["n"] < 1_000_000:
            est = last["wall_s"] / last["n"] * 1_000_000
            lines.append(f"EXTRAPOLATED (not measured): N = 1M from N = {last['n']:,} at "
                         f"{last['us_per_sample']:.1f} µs/sample: {est:.0f} s; memory stays at the measured "
                         f"{last['peak_rss_gb']:.2f} GB (O(k^2 + chunk), independent of N)")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
