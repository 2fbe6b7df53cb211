"""The recommended prediction's validation band: where the real step lay, relative to the predicted one.

For every target that method="recommended" predicts after its warm-up (T_pred > K) on the long-run validation
(predict_long.py's records), the ratio ρ = T_real / T_pred. A target the real run never reaches within its L steps
counts with its least ratio, L / T_pred (censored: the real step lies beyond L), so the upper quantiles are lower
bounds. Targets the real run reaches during the warm-up are measured, not predicted, and are left out.

Printed: the quantiles of ρ per set and pooled, and a leave-one-set-out check: the band (q10-q90) of two sets and
the share of the third set's ρ inside it. A band worth showing users next to a prediction would cover about 80 %
of a set it was not made from; docs/PREDICT.md reports whether it does.

    python -m benchmarks.validation_band
"""
import argparse
import json

import numpy as np

RESULTS = "benchmarks/results/predict-long-cpu-2026-11-27-velfix-{}.json"
SETS = ("dev", "heldout", "fresh")
QUANTILES = (0.1, 0.5, 0.9)


def ratios(records, method="head-aware+warm100"):
    """(ρ values, censored flags) of one result file's records."""
    K = int(method.rsplit("warm", 1)[1])
    out, censored = [], []
    for rec in records:
        for key, real in rec["real"].items():
            pred = rec["methods"][method]["T"].get(key)
            if pred is None or pred <= K or (real is not None and real <= K):
                continue
            if real is None:
                if pred <= rec["steps"]:  # beyond the horizon the bound says nothing (ρ ≥ L/T_pred < 1)
                    out.append(rec["steps"] / pred)
                    censored.append(True)
                continue
            out.append(real / pred)
            censored.append(False)
    return np.asarray(out), np.asarray(censored, dtype=bool)


def quantiles(values):
    """The QUANTILES of ρ (inverted CDF: no interpolation between targets)."""
    return tuple(float(np.quantile(values, q, method="inverted_cdf")) for q in QUANTILES)


def load(sets=SETS, pattern=RESULTS):
    return {s: ratios(json.load(open(pattern.format(s)))["records"]) for s in sets}


def band(data):
    """The pooled (q10, median, q90) of ρ over all sets, rounded to 2 decimals."""
    pooled = np.concatenate([v for v, _ in data.values()])
    return tuple(round(q, 2) for q in quantiles(pooled))


def leave_one_out(data):
    """{set: (band of the other sets, the share of this set's ρ inside it)}."""
    out = {}
    for s in data:
        lo, _, hi = band({t: v for t, v in data.items() if t != s})
        rho = data[s][0]
        out[s] = ((lo, hi), float(np.mean((rho >= lo) & (rho <= hi))))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default=RESULTS, help="result files, {} = the set's name")
    args = ap.parse_args(argv)
    data = load(pattern=args.pattern)
    print("| set | targets | of which censored | q10 | median | q90 |\n|---|---|---|---|---|---|")
    for s, (rho, cen) in data.items():
        q = quantiles(rho)
        print(f"| {s} | {len(rho)} | {int(cen.sum())} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")
    pooled = np.concatenate([v for v, _ in data.values()])
    q = band(data)
    print(f"| pooled | {len(pooled)} | {sum(int(c.sum()) for _, c in data.values())} | {q[0]:.2f} | {q[1]:.2f} | "
          f"{q[2]:.2f} |\n")
    print("| left out | band of the other sets | share of the left-out set's targets inside |\n|---|---|---|")
    for s, ((lo, hi), share) in leave_one_out(data).items():
        print(f"| {s} | {lo:.2f}-{hi:.2f} | {share:.2f} |")


if __name__ == "__main__":
    main()
