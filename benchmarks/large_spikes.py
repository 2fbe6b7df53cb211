"""Post hoc, on the N = 40,000 results of benchmarks/predict_large.py: loss spikes in the real runs and the direction
of the recommended mode's errors on the targets after its warm-up.

    python -m benchmarks.large_spikes benchmarks/results/predict-large-cpu-2026-11-28-halfepoch-dev.json ...

A spike: the real loss (on the run's fixed evaluation rows) above `--ratio` times its running minimum so far. The
linearized model's expected loss cannot spike, so a run that keeps spiking loses steps the prediction does not
count. Writes benchmarks/results/large-spikes-cpu-<date>.md.
"""
import argparse
import datetime
import json
import os

import numpy as np


def spikes(ts, loss, start, ratio, end=np.inf):
    """(largest loss / running minimum before it, number of evaluations above `ratio` times it) over the steps in
    (start, end]."""
    ts, loss = np.asarray(ts, float), np.asarray(loss, float)
    before = np.minimum.accumulate(np.concatenate([loss[:1], loss[:-1]]))
    r = (loss / before)[(ts > start) & (ts <= end)]
    return float(r.max(initial=1.0)), int((r > ratio).sum())


def late_errors(real, T, K):
    """Signed relative errors (T_pred - T_real) / T_real of the targets the real run reaches after step K: inf where
    the prediction never reaches it, -inf where the prediction reaches a target the real run never does."""
    out = []
    for k, v in real.items():
        if v is None and T.get(k) is not None:
            out.append(-np.inf)
        elif v is not None and v > K:
            out.append(np.inf if T.get(k) is None else (T[k] - v) / v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="predict_large result JSONs")
    ap.add_argument("--prediction", default="M=N/20")
    ap.add_argument("--ratio", type=float, default=2.0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    rows, early, total = [], 0, 0
    for path in args.files:
        with open(path) as f:
            records = json.load(f)["records"]
        for r in records:
            p = r["predictions"][args.prediction]
            K = p["K"]
            warm = spikes(r["real_t"], r["real_loss"], 100, args.ratio, end=K)
            after = spikes(r["real_t"], r["real_loss"], K, args.ratio)
            errs = late_errors(r["real"], p["T"], K)
            early += sum(e < 0 for e in errs)
            total += len(errs)
            signed = ", ".join(f"{e:+}" if np.isinf(e) else f"{100 * e:+.0f} %" for e in errs) or "-"
            rows.append(f"| {os.path.basename(path)} | {r['model']} -> {r['task']} | {warm[0]:.1f} ({warm[1]}) | "
                        f"{after[0]:.1f} ({after[1]}) | {signed} |")
    today = datetime.date.today()
    text = (f"# Loss spikes of the N = 40,000 real runs and the direction of the late errors "
            f"({today})\n\n`python -m benchmarks.large_spikes {' '.join(args.files)}` (post hoc). "
            f"Spike: the real loss above {args.ratio:g}x its running minimum. Prediction: {args.prediction}, K its "
            f"warm-up steps. Signed error: (predicted - real) / real steps; negative is too early.\n\n"
            "| file | model -> task | warm-up (steps 100..K): max ratio (spikes) | after K: max ratio (spikes) | "
            "targets after K: signed errors |\n|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\n{early} of {total} targets after the warm-up predicted too early.\n")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"large-spikes-cpu-{today}.md")
    with open(out, "w") as f:
        f.write(text)
    print(text)
    print("wrote", out)


if __name__ == "__main__":
    main()
