"""The baseline a user would otherwise pick: run the first K steps, fit a curve to their losses, extrapolate.

    python -m benchmarks.curve_extrapolation      # seconds: no training, it reads the saved long runs

The recommended prediction (method="recommended") spends K = 100 real steps and then integrates the head-aware
model linearized at w_100. The cheapest alternative spends the same K steps and extrapolates their loss curve
(learning-curve extrapolation). This script fits three such curves to the real run's own full-training-set losses
at its measured steps t ≤ K (every step up to 10, then about every 6 %): a setting that favours the baseline,
which in practice sees noisy minibatch losses. Each curve is fitted in log-loss to all those steps (1 ≤ t ≤ K) and,
as a second variant, to the recent ones only (K/2 ≤ t ≤ K):

  power law   L(t) = c + a (t + t0)^-b     (a > 0, 0 < b ≤ 5, 0 ≤ c < min L, 0 ≤ t0 ≤ K)
  exponential L(t) = c + a exp(-t / τ)      (a > 0, τ > 0, 0 ≤ c < min L)
  log-log     log L = α − b log t                (a straight line in log-log: no floor)

Errors as in predict_long's summary, over the loss targets (L0/2 ... L0/30) the real run reaches after step K, on
the saved recommended-mode runs (development, held-out and fresh pairs); "strict" also counts the targets a
method reaches within the run that the real run never does, each with its least error (L − T)/L. The recommended
prediction's errors are taken from the same records and targets. Writes
benchmarks/results/curve-extrapolation-cpu-<date>.{json,md}.
"""
import argparse
import datetime
import json
import os

import numpy as np
import scipy.optimize

from benchmarks.predict_long import crossing, p90, rel

RESULTS = "benchmarks/results"
SETS = (("development (seed 0)", "predict-long-cpu-2026-11-27-warmup-auto-r8-seed0.json"),
        ("held-out", "predict-long-cpu-2026-11-27-warmup-pc20-kron-heldout-r8.json"),
        ("fresh", "predict-long-cpu-2026-11-27-recommended-fresh-r8.json"))
RECOMMENDED = "head-aware+warm100"


def fit_power(t, L, K):
    """L(t) = c + a (t + t0)^-b, least squares in log L."""
    def res(p):
        a, b, c, t0 = p
        return np.log(c + a * (t + t0) ** -b) - np.log(L)
    lo, hi = [1e-12, 1e-3, 0.0, 0.0], [np.inf, 5.0, 0.999 * L.min(), float(K)]
    best = None
    for b0 in (0.3, 1.0, 2.0):
        for t00 in (1.0, 10.0, 50.0):
            p0 = [max(L[0] - 0.5 * L.min(), 1e-6) * (1 + t00) ** b0, b0, 0.5 * L.min(), t00]
            p0 = np.clip(p0, lo, [1e12, 5.0, 0.999 * L.min(), float(K)])
            r = scipy.optimize.least_squares(res, p0, bounds=(lo, hi))
            if best is None or r.cost < best.cost:
                best = r
    a, b, c, t0 = best.x
    return lambda s: c + a * (s + t0) ** -b


def fit_exponential(t, L, K):
    """L(t) = c + a exp(-t / τ), least squares in log L."""
    def res(p):
        a, tau, c = p
        return np.log(c + a * np.exp(-t / tau)) - np.log(L)
    lo, hi = [1e-12, 1e-3, 0.0], [np.inf, np.inf, 0.999 * L.min()]
    best = None
    for tau0 in (K / 4, K, 4 * K):
        r = scipy.optimize.least_squares(res, [max(L[0] - 0.5 * L.min(), 1e-6), tau0, 0.5 * L.min()],
                                         bounds=(lo, hi))
        if best is None or r.cost < best.cost:
            best = r
    a, tau, c = best.x
    return lambda s: c + a * np.exp(-s / tau)


def fit_loglog(t, L, K):
    """log L = α − b log t."""
    b, alpha = np.polyfit(np.log(t), np.log(L), 1)
    return lambda s: np.exp(alpha + b * np.log(np.maximum(s, 1)))


FITS = {"power law": fit_power, "exponential": fit_exponential, "log-log": fit_loglog}


def extrapolated_targets(rec, fit, K, start=1, horizon=1.5):
    """Steps to each loss target of the real curve up to K joined with the fit (to start ≤ t ≤ K) beyond it."""
    t, L = np.asarray(rec["real_t"], float), np.asarray(rec["real_loss"], float)
    win = (t >= start) & (t <= K)
    f = fit(t[win], L[win], K)
    grid = np.arange(K, int(rec["steps"] * horizon) + 1, dtype=float)
    ts = np.concatenate([t[t < K], grid])
    ls = np.concatenate([L[t < K], f(grid)])
    return {k: crossing(ts, ls, float(k.split("<=")[1][:-2]) * L[0]) for k in rec["real"] if k.startswith("loss")}


def errors(records, Ts, K):
    """(errors over the targets reached after K, the strict list with the least errors of the false reaches), for
    the steps per target Ts[i] of records[i]."""
    errs, bounds = [], []
    for rec, T in zip(records, Ts):
        for k, p in T.items():
            r = rec["real"][k]
            if r is None:
                if p is not None and K < p <= rec["steps"]:
                    bounds.append((rec["steps"] - p) / rec["steps"])
            elif r > K:
                errs.append(rel(p, r))
    return errs, errs + bounds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    K, rows = args.warmup, []
    for label, fname in SETS:
        records = json.load(open(os.path.join(RESULTS, fname)))["records"]
        methods = {f"{name}, fit on {lo}-{K}": [extrapolated_targets(rec, fit, K, lo) for rec in records]
                   for lo in (1, K // 2) for name, fit in FITS.items()}
        methods["recommended (saved)"] = [{k: v for k, v in rec["methods"][RECOMMENDED]["T"].items()
                                           if k.startswith("loss")} for rec in records]
        for name, Ts in methods.items():
            e, strict = errors(records, Ts, K)
            signed = [(T[k] - r["real"][k]) / r["real"][k] for r, T in zip(records, Ts) for k in T
                      if r["real"][k] is not None and r["real"][k] > K and T[k] is not None]
            rows.append({"set": label, "method": name, "targets": len(e), "median": float(np.median(e)),
                         "p90": p90(e), "within20": float(np.mean(np.asarray(e) <= 0.2)),
                         "median_signed": float(np.median(signed)) if signed else None,
                         "false_reach": len(strict) - len(e), "median_strict": float(np.median(strict)),
                         "p90_strict": p90(strict)})
    md = ["| set | method | targets | median | p90 | within 20 % | median signed | reached by it only | "
          "strict median / p90 (≥) |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    md += [f"| {r['set']} | {r['method']} | {r['targets']} | {f(r['median'])} | {f(r['p90'])} | {f(r['within20'])} | "
           f"{f(r['median_signed'])} | {r['false_reach']} | {f(r['median_strict'])} / {f(r['p90_strict'])} |"
           for r in rows]
    md = "\n".join(md)
    stamp = datetime.date.today().isoformat()
    base = os.path.join(args.out, f"curve-extrapolation-cpu-{stamp}")
    with open(base + ".json", "w") as fh:
        json.dump({"meta": {"date": stamp, "K": K, "sets": SETS}, "rows": rows}, fh)
    with open(base + ".md", "w") as fh:
        fh.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
