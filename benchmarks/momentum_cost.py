"""Momentum: exact (the velocity in function/feature space) against the effective-learning-rate approximation.

    python -m benchmarks.momentum_cost        # ~5 min on 1 thread; real runs from predict_long's cache

Issue 6 asks to say how momentum enters the prediction and to measure what it costs. The predictors handle it
exactly (torch.optim.SGD's buffer, kept as an output/feature-space velocity). The common shortcut replaces
(lr, m) by plain SGD at lr / (1 - m). For the momentum-0.9 runs of benchmarks/predict_long.py (3 model/task pairs x
lr 0.001, 0.003, 0.01, B 64, N ~ 4,000, 10 epochs; head-aware, subset M = N/20, k = 512, 2 paths) this measures
  * the seconds per integrated step with the exact buffer and with the shortcut (momentum 0), same batches;
  * the steps to L0/2, L0/4, L0/10, L0/30 and 90 % accuracy of both, against the real run.
Writes benchmarks/results/momentum-cost-cpu-<date>.md.
"""
import argparse
import datetime
import os
import time
import warnings

import numpy as np
import torch

from benchmarks.predict_long import PAIRS, cached_real_run, p90, predicted_targets, rel, targets, task_data
from zoo_kernels import zoo
from zoo_kernels.calibrate import HeadAwarePredictor

SETTINGS = ((0.001, 64, 0.9), (0.003, 64, 0.9), (0.01, 64, 0.9))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=".benchmarks/predict_long_real")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--paths", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows, errs = [], {"exact": [], "lr/(1-m)": []}
    for model_name, task in PAIRS:
        C, x, y = task_data(task)
        N = len(x)
        pred = HeadAwarePredictor(zoo.load_model(model_name, num_classes=C, seed=0), (x, y), k=512,
                                  subset=N // 20, seed=0)
        for lr, batch, m in SETTINGS:
            steps = int(round(10 * N / batch))
            ts, ls, acc, _ = cached_real_run(args.cache, model_name, task, x, y, C, lr, batch, m, steps)
            real = targets(ts, ls, acc, 0.9)
            row = {"pair": f"{model_name} -> {task}", "lr": lr, "real": real}
            for name, kw in (("exact", dict(lr=lr, momentum=m)), ("lr/(1-m)", dict(lr=lr / (1 - m), momentum=0.0))):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    q = pred.predict(batch_size=batch, max_steps=int(1.5 * steps), sampling="stream",
                                     paths=args.paths, seed=1, measure_time=False, on_divergence="truncate", **kw)
                row[name + " ms/step"] = (time.perf_counter() - t0) / int(1.5 * steps) * 1e3
                row[name] = predicted_targets(q, 0.9)[1]
                errs[name] += [rel(row[name][k], r) for k, r in real.items() if r is not None and r >= 1]
            rows.append(row)
            print(row, flush=True)
    keys = list(rows[0]["real"])
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [f"# Momentum in the prediction: exact against lr / (1 - m), CPU, {datetime.date.today()}", "",
             f"`python -m benchmarks.momentum_cost` (2-core shared CPU, 1 thread, load {os.getloadavg()[0]:.1f}). "
             "Head-aware, subset M = N/20, k = 512, "
             f"{args.paths} paths, momentum 0.9, B 64; steps to " + ", ".join(keys) + " (real / exact / shortcut).",
             "", "| method | median error | p90 | within 20 % | median ms per integrated step |",
             "|---|---|---|---|---|"]
    for name, e in errs.items():
        e = np.asarray(e)
        lines.append(f"| {name} | {np.median(e):.2f} | {p90(e):.2f} | {np.mean(e <= 0.2):.2f} | "
                     f"{np.median([r[name + ' ms/step'] for r in rows]):.2f} |")
    lines += ["", "| model -> task | lr | real | exact momentum | lr / (1 - m), no momentum |", "|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['lr']} | " + " | ".join("/".join(f(r[n][k]) for k in keys)
                                                          for n in ("real", "exact", "lr/(1-m)")) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, f"momentum-cost-cpu-{datetime.date.today()}.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
