"""How the penultimate features of MiniZoo experts change during real fine-tuning (the measurement behind
HeadAwarePredictor.predict(feature_norm="fixed")): per-sample norm ‖φ_t(x)‖ / ‖φ_0(x)‖ (mean over 200 samples),
the centered part ‖φ_t(x) − mean φ_t‖ likewise, and the head's norm, along the long runs of predict_long.

    python -m benchmarks.feature_norms [--out benchmarks/results]
"""
import argparse
import datetime
import os

import torch

from benchmarks.predict_long import PAIRS, sgd_run, task_data
from zoo_kernels import zoo

SETTINGS = ((0.003, 64, 0.9), (0.03, 128, 0.0))
AT = (10, 30, 100, 300)


def measure(model_name, task, lr, batch, momentum, epochs=10):
    C, x, y = task_data(task)
    sx = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:200]]
    model = zoo.load_model(model_name, num_classes=C, seed=0)

    def stats(m):
        with torch.no_grad():
            f = m.eval().features(sx).double()
            m.train()
            return (float(f.norm(dim=1).mean()), float((f - f.mean(0)).norm(dim=1).mean()),
                    float(m.head.weight.norm()))
    steps = int(round(epochs * len(x) / batch))
    ts, recs, _ = sgd_run(model, x, y, lr, batch, momentum, steps, set(AT) | {steps}, stats)
    return [(int(t), r[0] / recs[0][0], r[1] / recs[0][1], r[2]) for t, r in zip(ts, recs)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["| model -> task | lr | B | m | step: ‖φ‖ ratio / centered ratio / ‖W_head‖ |", "|---|---|---|---|---|"]
    for model_name, task in PAIRS:
        for lr, batch, momentum in SETTINGS:
            rows = measure(model_name, task, lr, batch, momentum)
            cells = "; ".join(f"{t}: {a:.2f} / {b:.2f} / {w:.2f}" for t, a, b, w in rows)
            lines.append(f"| {model_name} -> {task} | {lr} | {batch} | {momentum} | {cells} |")
            print(lines[-1], flush=True)
    stamp = datetime.date.today().isoformat()
    with open(os.path.join(args.out, f"feature-norms-cpu-{stamp}.md"), "w") as fh:
        fh.write(f"# Penultimate feature norms during real fine-tuning, CPU, {stamp}\n\n"
                 "`python -m benchmarks.feature_norms` (10 epochs, N ≈ 4,000, 200 fixed samples; ratios to step 0).\n\n"
                 + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
