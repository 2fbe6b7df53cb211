"""Subset mode of the training-time predictor against the full-data prediction (issue 6 target: M = N/20
within 20%).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/predict_subset.py --n 10000 --json out.json

Problem: spectrum_validation's class clusters (separation, label noise) and MLP 32-128-128-C. One full-data
Predictor (sketch, all N samples) and one subset Predictor (M = N/20 random samples) share the model, data,
seed and k; both predict the same SGD settings for MSE and cross-entropy. Reported: the relative error of the
subset's predicted steps to reach fractions of the initial loss, against the full prediction's, and the
max relative error of the loss curves; the cost of both.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spectrum_validation import make_data, make_model  # noqa: E402

import zoo_kernels as zk  # noqa: E402

SETTINGS = ((0.1, 32, 0.0), (0.3, 128, 0.0), (0.02, 32, 0.9))
DATA = (("A (sep 1.5, 10% noise)", 1.5, 0.1), ("B (sep 1.5, no noise)", 1.5, 0.0), ("C (sep 4, no noise)", 4.0, 0.0))
FRACTIONS = (0.8, 0.6, 0.4)


def run(args, loss, setting_name, sep, noise, log):
    x, y = make_data(args.n, args.classes, seed=args.seed, label_noise=noise, separation=sep)
    model = make_model(args.classes, seed=args.seed)
    kw = dict(loss=loss, k=args.k, seed=args.seed)
    full = zk.Predictor(model, (x, y), **kw)
    sub = zk.Predictor(model, (x, y), subset=args.n // args.fraction, **kw)
    log(f"{setting_name} {loss}: setup full {full.setup_seconds:.1f} s, subset {sub.setup_seconds:.1f} s")
    rows = []
    for lr, B, m in SETTINGS:
        p = dict(lr=lr, batch_size=B, momentum=m, max_steps=args.steps, measure_time=False, paths=args.paths)
        try:
            t = time.perf_counter()
            pf = full.predict(**p)
            tf = time.perf_counter() - t
        except FloatingPointError:  # beyond the stability limit: the subset must say so too
            try:
                sub.predict(**p)
                agrees = False
            except FloatingPointError:
                agrees = True
            rows.append(dict(data=setting_name, loss=loss, lr=lr, batch=B, momentum=m, diverged=True,
                             subset_diverged_too=agrees))
            log(f"  lr={lr} B={B} m={m}: the full prediction diverges; the subset's too: {agrees}")
            continue
        t = time.perf_counter()
        ps = sub.predict(**p)
        ts = time.perf_counter() - t
        pu = sub.predict(**p, subset_correction=False)
        row = dict(data=setting_name, loss=loss, lr=lr, batch=B, momentum=m, full_seconds=full.setup_seconds + tf,
                   subset_seconds=sub.setup_seconds + ts,
                   curve_max_rel=float(np.max(np.abs(ps.loss_curve / pf.loss_curve - 1))),
                   curve_max_rel_uncorrected=float(np.max(np.abs(pu.loss_curve / pf.loss_curve - 1))))
        for fr in FRACTIONS:
            a, b, u = ps.steps_to(fraction=fr), pf.steps_to(fraction=fr), pu.steps_to(fraction=fr)
            row[f"steps_{fr}_full"], row[f"steps_{fr}_subset"], row[f"steps_{fr}_uncorrected"] = b, a, u
            row[f"steps_{fr}_rel"] = None if a is None or b is None else abs(a - b) / b
            row[f"steps_{fr}_rel_uncorrected"] = None if u is None or b is None else abs(u - b) / b
        rows.append(row)
        log(f"  lr={lr} B={B} m={m}: " + ", ".join(f"to {fr}: {row[f'steps_{fr}_subset']} vs {row[f'steps_{fr}_full']}"
                                                   for fr in FRACTIONS) + f"; curve {row['curve_max_rel']:.3f}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--fraction", type=int, default=20)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--paths", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default="mse,ce")
    ap.add_argument("--data", default="AC", help="data settings: letters of A, B, C")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = []
    for name, sep, noise in DATA:
        if name[0] in args.data:
            for loss in args.losses.split(","):
                rows += run(args, loss, name, sep, noise, log)
    diverged = [r for r in rows if r.get("diverged")]
    rows = [r for r in rows if not r.get("diverged")]
    errs = [r[f"steps_{fr}_rel"] for r in rows for fr in FRACTIONS if r[f"steps_{fr}_rel"] is not None]
    errs_u = [r[f"steps_{fr}_rel_uncorrected"] for r in rows for fr in FRACTIONS
              if r[f"steps_{fr}_rel_uncorrected"] is not None]
    print("| data | loss | lr | B | m | steps to 0.8/0.6/0.4 L0: subset vs full | rel. err | uncorrected subset: "
          "steps / rel. err | curve max rel. err (uncorrected) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['loss']} | {r['lr']} | {r['batch']} | {r['momentum']} | "
              + " / ".join(f"{r[f'steps_{fr}_subset']} vs {r[f'steps_{fr}_full']}" for fr in FRACTIONS) + " | "
              + " / ".join("n/a" if r[f"steps_{fr}_rel"] is None else f"{r[f'steps_{fr}_rel']:.2f}" for fr in FRACTIONS)
              + " | " + " / ".join(f"{r[f'steps_{fr}_uncorrected']}" for fr in FRACTIONS) + "; "
              + " / ".join("n/a" if r[f"steps_{fr}_rel_uncorrected"] is None else f"{r[f'steps_{fr}_rel_uncorrected']:.2f}"
                           for fr in FRACTIONS)
              + f" | {r['curve_max_rel']:.3f} ({r['curve_max_rel_uncorrected']:.3f}) |")
    print(f"\nmedian steps error {np.median(errs):.3f}, 90th percentile {np.percentile(errs, 90):.3f}, "
          f"n = {len(errs)}; uncorrected: median {np.median(errs_u):.3f}, 90th percentile {np.percentile(errs_u, 90):.3f}, "
          f"n = {len(errs_u)}; M = N/{args.fraction}, N = {args.n}, k = {args.k}")
    for r in diverged:
        print(f"- {r['data']}, {r['loss']}, lr={r['lr']} B={r['batch']} m={r['momentum']}: the full prediction "
              f"diverges (beyond 2N/λ_max); the subset's {'too' if r['subset_diverged_too'] else 'does NOT'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows, diverged=diverged), f, indent=1)


if __name__ == "__main__":
    main()
