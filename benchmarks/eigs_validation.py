"""Top eigenpairs of the exact NTK: zoo_kernels.ntk_eigh (randomized subspace iteration, Nyström) against a full
eigh of the exact NTK, and against the eigenvalues of the sketch Gram (SketchGram) at several k.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/eigs_validation.py --problem mlp [--json out.json]
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/eigs_validation.py --problem cnn
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/eigs_validation.py --problem mlp --scale-n 20000

Problems (float32 models in eval mode, C outputs, Θ is N·C × N·C):
  mlp: 32-128-128-3 Tanh MLP on Gaussian class clusters (benchmarks/spectrum_validation.py's data), N = 1500.
  cnn: benchmarks.models.cnn_small (35K parameters, C = 10) on 3x32x32 Gaussian images, N = 300.

Reference: torch.linalg.eigh (float64) of zk.ntk of the same model in float64 (exact to rounding).
Baseline time: zk.ntk of the float32 model + eigh of its N·C × N·C matrix in float64 (what a user would run).
ntk_eigh: every (method, rank, iters) with oversample 10; time, and per rank r: max / median relative error of
the top-r eigenvalues, max relative error of the top 10, and the largest principal angle between the top-10
eigenvector spans (degrees).
Sketch: sketch_jacobian(k, method "dense" (estimate_spectrum's default) and "kronecker" (sketch_jacobian's
default), Rademacher, seed 0) streamed into SketchGram, eigenvalues of the k × k Gram; the same
errors against the reference (the eigenvectors are not formed by SketchGram: no angle).
--scale-n N: ntk_eigh alone at an N where the exact NTK does not fit (time, peak RSS).
"""
import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: no spin-waits (set before torch loads)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import zoo_kernels as zk  # noqa: E402
from zoo_kernels.spectrum import SketchGram  # noqa: E402

from benchmarks.models import cnn_small  # noqa: E402


def make_problem(name, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        C, dim = 3, 32
        scales = torch.arange(1, dim + 1, dtype=torch.float32) ** -0.5  # power-law covariance
        centers = torch.randn(C, dim, generator=g) * 1.5
        y = torch.randint(0, C, (n,), generator=g)
        x = centers[y] * scales + torch.randn(n, dim, generator=g) * scales
        model = nn.Sequential(nn.Linear(dim, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, C))
    elif name == "cnn":
        x = torch.randn(n, 3, 32, 32, generator=g)
        model = cnn_small(10)
    else:
        raise ValueError(name)
    return model.eval(), x


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def errors(est, lam, U=None, V=None):
    r = len(est)
    rel = ((est - lam[:r]).abs() / lam[:r])
    row = {"max": float(rel.max()), "median": float(rel.median()), "top10_max": float(rel[:10].max())}
    if U is not None:
        m = min(10, r)
        cos = torch.linalg.svdvals(U[:, :m].T @ V[:, :m]).min().clamp(max=1.0)
        row["angle10_deg"] = float(torch.rad2deg(torch.arccos(cos)))
    return row


def run(args):
    torch.set_num_threads(args.threads)
    model, x = make_problem(args.problem, args.n)
    bs = args.batch_size
    out = {"problem": args.problem, "n": args.n, "threads": args.threads, "torch": torch.__version__,
           "params": sum(p.numel() for p in model.parameters())}

    # reference: float64 exact NTK, full eigh
    m64 = make_problem(args.problem, args.n)[0].double()
    K, t_ref = timed(lambda: zk.ntk(m64, x.double(), batch_size=bs))
    N, _, C, _ = K.shape
    lam, U = torch.linalg.eigh(K.permute(0, 2, 1, 3).reshape(N * C, N * C))
    lam, U = lam.flip(0), U.flip(1)
    del K
    out.update(C=C, rows=N * C, lam_top=[float(v) for v in lam[:10]],
               lam_ratio_50=float(lam[49] / lam[0]) if len(lam) > 49 else None)
    print(f"{args.problem}: N={N}, C={C}, P={out['params']}, Θ is {N*C} x {N*C}; λ1={lam[0]:.4g}, "
          f"λ10/λ1={lam[9]/lam[0]:.3g}, λ50/λ1={lam[49]/lam[0]:.3g}", flush=True)

    # baseline: float32 exact NTK + float64 eigh
    K32, t_ntk = timed(lambda: zk.ntk(model, x, batch_size=bs))
    t = time.perf_counter()
    lam32 = torch.linalg.eigh(K32.permute(0, 2, 1, 3).reshape(N * C, N * C).double())[0].flip(0)
    t_eigh = time.perf_counter() - t
    del K32
    out["exact"] = {"ntk_s": t_ntk, "eigh_s": t_eigh, "total_s": t_ntk + t_eigh,
                    "err50": errors(lam32[:50], lam)}
    print(f"exact fp32 NTK {t_ntk:.2f}s + eigh {t_eigh:.2f}s = {t_ntk + t_eigh:.2f}s; "
          f"its top-50 max rel err {out['exact']['err50']['max']:.2e}", flush=True)

    rows = []
    for method in args.methods:
        for rank in args.ranks:
            for iters in args.iters:
                res, t = timed(lambda: zk.ntk_eigh(model, x, rank, method=method, oversample=args.oversample,
                                                   iters=iters, seed=0, batch_size=bs))
                e = errors(res.eigenvalues, lam, U, res.eigenvectors.reshape(N * C, rank))
                passes = 2 * (iters + 1) + (1 if method == "subspace" else 0)
                rows.append({"method": method, "rank": rank, "iters": iters, "passes": passes, "seconds": t, **e})
                print(f"  ntk_eigh {method:8s} r={rank:3d} iters={iters} ({passes:2d} passes): {t:6.2f}s  "
                      f"max {e['max']:.2e}  median {e['median']:.2e}  top10 {e['top10_max']:.2e}  "
                      f"angle10 {e['angle10_deg']:.2e} deg", flush=True)
    out["ntk_eigh"] = rows

    sk = []
    for sketch_method in args.sketch_methods:
        for k in args.ks:
            def sketch():
                acc = SketchGram(k)
                for s in range(0, N, 1024):
                    S = zk.sketch_jacobian(model, x[s:s + 1024], k, method=sketch_method, seed=0, batch_size=bs)
                    acc.update(S.flatten(0, 1), torch.zeros(S.shape[0] * S.shape[1]))
                return acc.eigh()[0]
            lk, t = timed(sketch)
            r = min(50, k)
            e = errors(lk[:r], lam)
            sk.append({"sketch_method": sketch_method, "k": k, "seconds": t, "top": r, **e})
            print(f"  sketch {sketch_method:9s} k={k:5d}: {t:6.2f}s  top-{r} max {e['max']:.2e}  "
                  f"median {e['median']:.2e}  top10 {e['top10_max']:.2e}", flush=True)
    out["sketch"] = sk
    return out


def scale(args):
    torch.set_num_threads(args.threads)
    model, x = make_problem(args.problem, args.scale_n)
    res = {}
    for method in args.methods:
        r, t = timed(lambda: zk.ntk_eigh(model, x, args.ranks[0], method=method, oversample=args.oversample,
                                         iters=args.iters[-1], batch_size=args.batch_size))
        res[method] = {"seconds": t, "lam_top5": [float(v) for v in r.eigenvalues[:5]]}
        print(f"scale N={args.scale_n}: ntk_eigh {method} r={args.ranks[0]} iters={args.iters[-1]}: {t:.2f}s, "
              f"top-5 {[f'{v:.4g}' for v in r.eigenvalues[:5].tolist()]}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.2f} GiB", flush=True)
    return {"problem": args.problem, "scale_n": args.scale_n, "results": res, "peak_rss_gib": rss}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--n", type=int, default=None, help="samples (default: mlp 1500, cnn 300)")
    ap.add_argument("--ranks", default="10,50")
    ap.add_argument("--iters", default="0,1,2,4")
    ap.add_argument("--methods", default="subspace,nystrom")
    ap.add_argument("--oversample", type=int, default=10)
    ap.add_argument("--ks", default="256,1024,4096")
    ap.add_argument("--sketch-methods", default="dense,kronecker")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale-n", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.n = args.n or {"mlp": 1500, "cnn": 300}[args.problem]
    args.ranks = [int(v) for v in args.ranks.split(",")]
    args.iters = [int(v) for v in args.iters.split(",")]
    args.methods = args.methods.split(",")
    args.sketch_methods = [v for v in args.sketch_methods.split(",") if v]
    args.ks = [int(v) for v in args.ks.split(",") if v]
    result = scale(args) if args.scale_n else run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
