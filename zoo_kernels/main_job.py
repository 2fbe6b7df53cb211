"""`make demo`: which MiniZoo expert to fine-tune on a bundled target task, and how long fine-tuning will take.

    python -m zoo_kernels.main_job                 # rank + predict (30-90 s on the shared 2-core CPU)
    python -m zoo_kernels.main_job --verify        # + fine-tune for real and plot predicted vs actual (+ ~5 s)
    python -m zoo_kernels.main_job --task latin_heldout --score lfc --json summary.json

1. Ranks the 18 MiniZoo experts for the target task (default pendigits_inverted, 10 images per class) with
   transferability scores (zoo_kernels.ranking.rank) and picks the best by --score (default knn_krr, the
   rank-average of kNN and krr_loo); the stored MiniZoo fine-tuning ground truth says how good the choice and each
   score's ranking are.
2. Predicts, without training, how many SGD steps / epochs / seconds fine-tuning the chosen expert with the
   MiniZoo recipe (zoo.finetune.RECIPE: SGD with momentum, batch 32, new head of seed 0) takes to reach 1/2, 1/4, 1/10
   of the initial training loss and an accuracy target (head-aware linearization, zoo_kernels.calibrate; the
   paper's full linearization alongside), and recommends a learning rate and batch size from a small grid.
3. With --verify, fine-tunes the chosen expert for real with the recipe (full-training-set loss after every
   step), reports the error of each prediction, and plots predicted against actual curves to a PNG.

Running time (1 thread on the project's shared 2-core CPU; the "total" line at the end prints it): 27 s by
default and 31 s with --verify on a nearly idle machine, 86 s / 95 s at load average 4-5; peak memory 1.6 GB.
See docs/PREDICT.md.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from . import build_info, zoo
from .calibrate import HeadAwarePredictor
from .cli import table
from .predict import Predictor
from .ranking import rank
from .zoo.finetune import RECIPE, finetune

SCORES = ("knn_krr", "knn", "logme", "lfc", "leep", "linear_probe")  # knn_krr: the selection strategy
FRACTIONS = (0.5, 0.25, 0.1)


def _log(msg=""):
    print(msg, flush=True)


def _steps_real(L, A, kind, v):
    hit = (np.asarray(L) <= v * L[0]) if kind == "fraction" else (np.asarray(A) >= v)
    w = np.flatnonzero(hit)
    return int(w[0]) if w.size else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pendigits_inverted", help="MiniZoo target task (default pendigits_inverted)")
    ap.add_argument("--shots", type=int, default=10, help="training images per class (default 10)")
    ap.add_argument("--score", default="knn_krr", choices=SCORES, help="the score that picks the model")
    ap.add_argument("--lr", type=float, default=RECIPE.lr)
    ap.add_argument("--batch-size", type=int, default=RECIPE.batch)
    ap.add_argument("--momentum", type=float, default=RECIPE.momentum)
    ap.add_argument("--steps", type=int, default=RECIPE.steps, help="fine-tuning steps of --verify (recipe: 150)")
    ap.add_argument("--horizon", type=int, default=300, help="predicted steps")
    ap.add_argument("--accuracy", type=float, default=0.9, help="the accuracy target")
    ap.add_argument("--no-recommend", action="store_true", help="skip the learning-rate / batch-size grid")
    ap.add_argument("--verify", action="store_true", help="also fine-tune for real and plot predicted vs actual")
    ap.add_argument("--plot", default="main_job_verify.png", help="PNG of --verify (default main_job_verify.png)")
    ap.add_argument("--json", help="write the summary as JSON to this file")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these models are tiny, and on a shared CPU more threads than "
                         "free cores slow every step down)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    summary = {"task": args.task, "shots": args.shots}
    _log(f"zoo_kernels {build_info()['version']} | torch {torch.__version__} | {torch.get_num_threads()} threads, "
         f"{os.cpu_count()} CPUs")
    x, y, _, _ = zoo.load_task(args.task, shots=args.shots)
    info = zoo.task_info(args.task)
    C = info["num_classes"]
    _log(f"target task: {args.task} - {info['description']} ({C} classes, {args.shots} shots: N={len(x)})")

    # 1. rank the experts ------------------------------------------------------------------------------------
    _log("\n[1/3] ranking the MiniZoo experts")
    names = zoo.models("full", include_random=False)
    t = time.perf_counter()
    tab = rank({n: (lambda n=n: zoo.load_model(n)) for n in names}, (x, y), scores=SCORES, progress=True)
    rank_s = time.perf_counter() - t
    order = tab.ranking(args.score)
    chosen = order[0]
    gt = {}
    try:
        gt = {r["model"]: r["accuracy"] for r in zoo.ground_truth("full")
              if r["task"] == args.task and r["shots"] == args.shots}
    except FileNotFoundError:
        pass
    rows = [{"rank": i, "model": m, **{s: tab[m][s] for s in SCORES}, "finetuned_acc": gt.get(m)}
            for i, m in enumerate(order[:6], 1)]
    _log(table(rows, ["rank", "model", *SCORES, "finetuned_acc"]) + f"\n({len(order)} experts, top 6 shown; "
         f"ranked in {rank_s:.1f} s)")
    summary["ranking"] = {"by": args.score, "order": order, "seconds": rank_s}
    common = [m for m in order if m in gt]
    if len(common) >= 3:
        from .evaluation import weighted_tau  # noqa: PLC0415

        taus = {s: weighted_tau({m: tab[m][s] for m in common}, {m: gt[m] for m in common}) for s in SCORES}
        best = max(common, key=gt.get)
        _log(f"ground truth (measured fine-tuning, {len(common)} experts): best {best} ({100 * gt[best]:.1f}%); "
             f"chosen {chosen} ({100 * gt.get(chosen, float('nan')):.1f}%); weighted tau: "
             + ", ".join(f"{s} {v:.2f}" for s, v in taus.items()))
        summary["ranking"].update(ground_truth_best=best, weighted_tau=taus, chosen_accuracy=gt.get(chosen),
                                  best_accuracy=gt[best])
    _log(f"chosen by {args.score}: {chosen}")
    summary["chosen"] = chosen

    # 2. predict the fine-tuning time ------------------------------------------------------------------------
    _log(f"\n[2/3] predicting fine-tuning time of {chosen}: SGD lr={args.lr} momentum={args.momentum} "
         f"batch={args.batch_size}, new head (seed 0), up to {args.horizon} steps")
    model = zoo.load_model(chosen, num_classes=C, seed=0)
    preds, results = {}, {}
    targets = [("fraction", f) for f in FRACTIONS] + [("accuracy", args.accuracy)]
    for name, make in (("head-aware", lambda: HeadAwarePredictor(model, (x, y), k=512)),
                       ("linear (paper)", lambda: Predictor(model, (x, y), method="sketch", k=1024))):
        p = make()
        try:
            pr = p.predict(lr=args.lr, batch_size=args.batch_size, momentum=args.momentum, max_steps=args.horizon,
                           sampling="stream")
        except FloatingPointError as e:
            _log(f"  {name}: the linearized dynamics diverge ({e}); outside the linear regime")
            continue
        preds[name], results[name] = p, pr
    if not results:
        _log("no prediction: lower the learning rate")
        return 1
    lead = "head-aware" if "head-aware" in results else next(iter(results))
    pr = results[lead]
    L0 = float(pr.loss_curve[0])
    rows = []
    for kind, v in targets:
        label = f"loss <= {v:g} L0 ({v * L0:.3g})" if kind == "fraction" else f"accuracy >= {v:g}"
        row = {"target": label}
        for name, r in results.items():
            tt = r.time_to(**{kind: v})
            row[f"{name} steps"] = tt["steps"]
            if name == lead:
                row["epochs"], row["seconds"] = tt["epochs"], tt["seconds"]
        rows.append(row)
    cols = ["target"] + [f"{n} steps" for n in results] + ["epochs", "seconds"]
    _log(table(rows, cols))
    _log(f"units: steps = SGD updates; epochs = steps x {args.batch_size} / {len(x)}; seconds = steps x "
         f"{pr.step_seconds * 1e3:.1f} ms, one real SGD step measured now on this machine ({lead})")
    cost = {n: r.cost_seconds for n, r in results.items()}
    _log("prediction cost: " + ", ".join(f"{n} {c:.1f} s" for n, c in cost.items())
         + " (NTK/sketch setup + integration; the real run would take "
         + f"{args.steps} steps x {pr.step_seconds * 1e3:.1f} ms = {args.steps * pr.step_seconds:.1f} s)")
    summary["prediction"] = {"method": lead, "step_seconds": pr.step_seconds, "cost_seconds": cost,
                             "targets": rows, "initial_loss": L0}

    if not args.no_recommend:
        p = preds[lead]
        t = time.perf_counter()
        rec = []
        for lr in (0.003, 0.01, 0.03):
            for bs in (16, 64):
                try:
                    q = p.predict(lr=lr, batch_size=bs, max_steps=200, momentum=args.momentum, paths=2,
                                  sampling="stream")
                    rec.append({"lr": lr, "batch_size": bs, **q.time_to(fraction=0.25)})
                except FloatingPointError:
                    rec.append({"lr": lr, "batch_size": bs, "steps": None, "epochs": None, "seconds": None})
        rec.sort(key=lambda r: (r["seconds"] is None, r["seconds"] or 0.0))
        _log(f"\nrecommended (predicted seconds to 0.25 L0 within 200 steps, {lead}, 2 SGD paths, momentum "
             f"{args.momentum}; "
             f"{time.perf_counter() - t:.1f} s):")
        _log(table(rec[:5], ["lr", "batch_size", "steps", "epochs", "seconds"]))
        summary["recommend"] = rec

    # 3. verify ------------------------------------------------------------------------------------------------
    if args.verify:
        _log(f"\n[3/3] fine-tuning {chosen} for real: MiniZoo recipe, {args.steps} steps")
        m = zoo.load_model(chosen, num_classes=C, seed=0)
        r = finetune(m, x, y, num_classes=C, lr=args.lr, momentum=args.momentum, batch=args.batch_size,
                     steps=args.steps, seed=0, record=True)
        tr = r["steps_trace"]
        L, A, W = np.asarray(tr["train_loss"]), np.asarray(tr["train_acc"]), np.asarray(tr["wall"])
        vrows = []
        for (kind, v), row in zip(targets, rows):
            real = _steps_real(L, A, kind, v)
            vr = {"target": row["target"], "real steps": real,
                  "real seconds": None if real is None else float(W[real])}
            for name, res in results.items():
                s = res.steps_to(**{kind: v})
                vr[f"{name} steps"] = s
                vr[f"{name} error"] = None if (s is None or not real) else abs(s - real) / real
            vrows.append(vr)
        _log(table(vrows, ["target", "real steps", "real seconds"] + [f"{n} {c}" for n in results
                                                                      for c in ("steps", "error")]))
        _log(f"real fine-tuning: {r['wall_seconds']:.2f} s of optimization ({args.steps} steps); final loss "
             f"{L[-1]:.4g}, accuracy {A[-1]:.3f}")
        summary["verify"] = {"targets": vrows, "train_seconds": r["wall_seconds"]}
        try:
            from . import plots  # noqa: PLC0415

            others = {f"{n}": res for n, res in results.items() if n != lead}
            plots.plot_prediction(args.plot, pr, real_loss=L, real_accuracy=A, others=others,
                                  label=f"predicted, {lead}",
                                  title=f"{chosen} -> {args.task}: predicted ({lead}, others dashed) vs real SGD",
                                  max_steps=max(args.steps, 1))
            _log(f"plot: {args.plot}")
            summary["verify"]["plot"] = args.plot
        except ImportError as e:
            _log(f"no plot: {e}")

    total = time.perf_counter() - t_start
    summary["total_seconds"] = total
    _log(f"\nsummary: fine-tune {chosen} on {args.task}. " + "; ".join(
        f"{row['target']}: {row[lead + ' steps'] if row[lead + ' steps'] is not None else f'> {args.horizon}'} steps"
        for row in rows) + f" (predicted, {lead}).")
    _log(f"total: {total:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
