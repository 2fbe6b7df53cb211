"""Training-time prediction for a large training set and a long run: where the >= 100x saving can exist.

    python -m benchmarks.predict_large --real-only            # the real runs only (cached), ~15 min each on 1 thread
    python -m benchmarks.predict_large                        # real runs (cached) + predictions + cost, one table

The 10-epoch runs of benchmarks/predict_long.py (N ~ 4,000, 300-1,250 steps) cannot be predicted 100x cheaper by any
method that spends real steps: the recommended mode's 100 warm-up steps alone are 8-30 % of them. Here a MiniZoo
expert is fine-tuned with the recipe on --per-class samples per class (N = 40,000 by default) for --steps steps
(20,000: 32 epochs at B = 64). The full-training-set loss is estimated on --eval-rows fixed random training rows
(seed 0) at the geometric steps of predict_long.eval_steps; the prediction is the recommended mode
(predict_training_time(method="recommended"): K = --warmup real steps, then the head-aware model linearized at w_K
on a subset, its loss read off 200 holdout rows) with the subset M = N/20 (the mode's own rule) and with a fixed
M = --small-subset. Errors: |T_pred - T_real| / T_real of the steps to L0/2 ... L0/1000, 90 % and 99 % accuracy
(targets) that the real run reaches after step 100; those before step K are read off the warm-up's real run. Cost: the prediction's wall seconds (warm-up, setup, integration of --steps steps, same
process) against --steps x the median real step measured just before them (evaluation excluded).
Writes benchmarks/results/predict-large-cpu-<date>[-tag].{json,md}.
"""
import argparse
import datetime
import json
import os
import time
import warnings

import numpy as np
import torch

from benchmarks.common import cpu_model
from benchmarks.predict_long import crossing, eval_steps, rel, sgd_run
from zoo_kernels import zoo
from zoo_kernels.predict import RECOMMENDED, auto_subset, recommended_warmup
from zoo_kernels.warmstart import predict_after_warmup
from zoo_kernels.zoo import data as D
from zoo_kernels.zoo.finetune import evaluate

PAIRS = (("convnet_pendigits", "texture_orient"), ("resnet_shapes", "greek_upper"))
SETTING = (0.01, 64, 0.9)
EARLY = (0.5, 0.25, 0.1, 1 / 30)  # predict_long's loss targets (fractions of L0)
LATE = (0.01, 1 / 300, 0.001)  # late convergence: reached after thousands of steps on N = 40,000
ACCURACIES = (0.9, 0.99)
WARMUP = RECOMMENDED["warmup_steps"]  # targets reached before step 100 are left out (the least warm-up)


def targets(ts, loss, acc):
    """Steps to each loss fraction of L0 and each accuracy (interpolated crossings; None: never)."""
    out = {f"loss<={f:.3g}L0": crossing(ts, loss, f * loss[0]) for f in EARLY + LATE}
    out.update({f"acc>={a:g}": crossing(ts, acc, a, below=False) for a in ACCURACIES})
    return out


def is_late(name):
    return any(name == f"loss<={f:.3g}L0" for f in LATE) or name == "acc>=0.99"


def large_data(task, per_class, cache=".benchmarks/predict_large_data"):
    """(C, x, y): per_class training images per class of the task, kept in `cache` (rendering 200,000 pen digits
    takes ~12 minutes on one core; a real run and its predictions run in separate processes)."""
    C = D.TARGETS[task][0]
    path = os.path.join(cache, f"{task}-{per_class}-v{D.DATA_VERSION}.pt")
    if os.path.exists(path):
        x, y = torch.load(path, weights_only=True)
        return C, x, y
    x, y = D.make_target(task, "train", per_class)
    os.makedirs(cache, exist_ok=True)
    torch.save((x, y), path + ".part")
    os.replace(path + ".part", path)  # whole or absent, for a process started beside this one
    return C, x, y


def eval_rows(N, rows):
    """The fixed random training rows (seed 0) on which the real run's full-training-set loss is estimated."""
    return torch.randperm(N, generator=torch.Generator().manual_seed(0))[:min(N, rows)]


def cached_long_run(cache, model_name, task, x, y, C, lr, batch, momentum, steps, rows):
    """The recipe's run of a fresh model (head of seed 0), its loss/accuracy estimated on `rows` training rows."""
    path = os.path.join(cache, f"{model_name}-{task}-{len(x)}-{lr}-{batch}-{momentum}-{steps}-e{rows}.json")
    if os.path.exists(path):
        with open(path) as fh:
            r = json.load(fh)
        return np.asarray(r["t"]), np.asarray(r["loss"]), np.asarray(r["acc"]), r["wall"]
    idx = eval_rows(len(x), rows)
    ex, ey = x[idx], y[idx]
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    ts, recs, wall = sgd_run(model, x, y, lr, batch, momentum, steps, set(eval_steps(steps)),
                             lambda m: evaluate(m, ex, ey))
    ls, acc = (np.asarray(v) for v in zip(*recs))
    os.makedirs(cache, exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"t": ts.tolist(), "loss": ls.tolist(), "acc": acc.tolist(), "wall": wall,
                   "torch": torch.__version__, "cpu": cpu_model()}, fh)
    return ts, ls, acc, wall


def step_seconds(model_name, C, x, y, lr, batch, momentum, steps=50):
    """Median seconds of one real SGD step of the recipe (after 10 untimed), measured next to the predictions: the
    training's cost is steps x this (the long run's own wall time carries the machine's load while it ran)."""
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    gen = torch.Generator().manual_seed(1)
    times = []
    sgd_run(model, x, y, lr, batch, momentum, 10, set(), lambda m: None)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def warmup_length(rule, N, batch):
    """--warmup: an int (real steps), or "half-epoch": the recommended mode's max(100, ceil(N / 2B))."""
    if rule == "half-epoch":
        return recommended_warmup(N, batch)
    return int(rule)


def predict_one(model_name, C, x, y, lr, batch, momentum, steps, subset, seed, fused=True, warmup=WARMUP):
    """The recommended mode (its settings, holdout-read loss) with the given subset and warm-up length;
    (Prediction, wall seconds)."""
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    M = subset if subset != "auto" else None
    settings = {key: v for key, v in RECOMMENDED.items() if key not in ("subset",)}
    settings["warmup_steps"] = warmup
    holdout = min(200, len(x) - (M or max(len(x) // 20, 20 * C)))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = predict_after_warmup(model, (x, y), lr=lr, batch_size=batch, momentum=momentum, max_steps=steps,
                                 subset=subset, seed=seed, paths=2, sampling="stream", on_divergence="truncate",
                                 holdout=holdout, holdout_self=True, fused=fused, **settings)
    wall = time.perf_counter() - t0
    return p.from_holdout(), wall


def _small_subset(text):
    """--small-subset: 'floor' or an int >= 2."""
    if text == "floor":
        return text
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected 'floor' or an int >= 2, got {text!r}")
    return int(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=[f"{m}:{t}" for m, t in PAIRS])
    ap.add_argument("--setting", default=",".join(map(str, SETTING)), help="lr,batch,momentum")
    ap.add_argument("--per-class", type=int, default=0, help="samples per class (default: N = 40,000 in all)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--eval-rows", type=int, default=4000)
    ap.add_argument("--small-subset", type=_small_subset, default=200, help="an int, or 'floor': max(200, 20 per "
                    "class), the mode's M at N ~ 4,000, which does not grow with N")
    ap.add_argument("--seed", type=int, default=0, help="the prediction's seed")
    ap.add_argument("--warmup", default="half-epoch", help="real warm-up steps: an int (100: the mode before "
                    "2026-11-28's second test), or half-epoch (max(100, ceil(N / 2B)), the recommended mode's rule)")
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--only", choices=("auto", "small"), help="only the M = N/20 or only the M = --small-subset runs")
    ap.add_argument("--unfused", action="store_true", help="also the M = --small-subset prediction without the "
                    "compiled steps (HeadAwarePredictor.predict(fused=False)), for the cost")
    ap.add_argument("--cache", default=".benchmarks/predict_large_real")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lr, batch, momentum = (float(v) for v in args.setting.split(","))
    batch = int(batch)
    records = []
    for pair in args.pairs:
        model_name, task = pair.split(":")
        C, x, y = large_data(task, args.per_class or round(40000 / D.TARGETS[task][0]))
        N = len(x)
        ts, ls, acc, wall = cached_long_run(args.cache, model_name, task, x, y, C, lr, batch, momentum, args.steps,
                                            args.eval_rows)
        real = targets(ts, ls, acc)
        print(f"{model_name} -> {task}: N={N}, real run {wall:.0f} s ({args.steps} steps), targets "
              + str({k: None if v is None else round(v) for k, v in real.items()}), flush=True)
        if args.real_only:
            continue
        step_s = step_seconds(model_name, C, x, y, lr, batch, momentum)
        train_s = step_s * args.steps
        rec = {"model": model_name, "task": task, "N": N, "C": C, "lr": lr, "batch": batch, "momentum": momentum,
               "steps": args.steps, "run_wall_s": wall, "step_s": step_s, "train_s": train_s, "real": real,
               "real_t": ts.tolist(), "real_loss": [round(float(v), 6) for v in ls], "predictions": {}}
        floor = min(N, auto_subset(4000, C))  # the mode's M at N ~ 4,000: max(200, 20 C)
        small = floor if args.small_subset == "floor" else args.small_subset
        runs = [("auto", True), (small, True)] + ([(small, False)] if args.unfused else [])
        runs = [rs for rs in runs if args.only is None or (rs[0] == "auto") == (args.only == "auto")]
        K = warmup_length(args.warmup, N, batch)
        for subset, fused in runs:
            p, cost = predict_one(model_name, C, x, y, lr, batch, momentum, args.steps, subset, args.seed, fused, K)
            L = np.where(np.isfinite(p.loss_curve), p.loss_curve, np.inf)
            tt = np.arange(len(L))
            T = targets(tt, np.minimum(L, 1e30), p.accuracy_curve)
            held, sub = p.gap_curves()
            gap = held / sub
            name = ("M=N/20" if subset == "auto" else f"M={subset}") + ("" if fused else " (torch loop)")
            rec["predictions"][name] = {
                "M": auto_subset(N, C) if subset == "auto" else subset, "K": K, "fused": fused, "cost_s": cost,
                "ratio": train_s / cost, "T": T, "errors": {k: rel(T[k], real[k]) for k in real},
                "gap_at": {k: (None if v is None or not np.isfinite(np.interp(v, tt, gap)) else
                               float(np.interp(v, tt, gap))) for k, v in T.items()},
                "loss_curve": [round(float(v), 6) if np.isfinite(v) else None for v in p.loss_curve[::50]]}
            S = np.where(np.isfinite(p.subset_loss_curve), p.subset_loss_curve, np.inf)  # post hoc: the subset's
            Ts = targets(tt, np.minimum(S, 1e30), p.accuracy_curve)
            rec["predictions"][name].update(T_subset=Ts, errors_subset={k: rel(Ts[k], real[k]) for k in real},
                                            ratio_run_wall=wall / cost)
            print(f"  {name}: {cost:.1f} s ({train_s / cost:.1f}x cheaper), targets "
                  + str({k: None if v is None else round(v) for k, v in T.items()}), flush=True)
        records.append(rec)
    if args.real_only:
        return
    stamp = datetime.date.today().isoformat()
    base = os.path.join(args.out, f"predict-large-cpu-{stamp}" + (f"-{args.tag}" if args.tag else ""))
    meta = {"argv": argv, "torch": torch.__version__, "cpu": cpu_model(),
            "threads": args.threads, "date": stamp}
    with open(base + ".json", "w") as fh:
        json.dump({"records": records, **meta}, fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(markdown(records, meta))
    print("wrote", base + ".json", base + ".md")


def markdown(records, meta):
    """Per pair and prediction: cost, ratio, errors of the early and late targets; then every target."""
    sizes = " and ".join(sorted({f"{r['N']:,}" for r in records}))
    lines = [f"# Training-time prediction on N = {sizes}, long runs (CPU, {meta['date']})", "",
             f"`python -m benchmarks.predict_large` (torch {meta['torch']}, {meta['threads']} thread). Real runs: "
             "the MiniZoo recipe, loss estimated on 4,000 fixed training rows. Training s: steps x the median of 50 real "
             "steps, measured in the process of the predictions. Predictions: the recommended mode "
             "(K real steps, head-aware at w_K, loss read off 200 holdout rows), 2 paths, horizon = the run. Targets "
             "the real run reaches between step 100 and K count with the warm-up's measured subset curve.",
             "", "| model -> task | prediction | M | K | cost s | training s | training / prediction (run's own wall / "
             "prediction) | early median (n, after step 100) | late median (n) | all after step K: median (n) | "
             "false reaches | post hoc: subset curve, early / late median |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        for name, q in r["predictions"].items():
            row = []
            for late in (False, True):  # targets the real run reaches after the warm-up's 100 real steps
                errs = [e for k, e in q["errors"].items()
                        if e is not None and is_late(k) == late and r["real"][k] > WARMUP]
                row.append(f"{100 * np.median(errs):.0f} % ({len(errs)})" if errs else "-")
            K = q.get("K", WARMUP)
            after = [e for k, e in q["errors"].items() if e is not None and r["real"][k] > K]
            row.append(f"{100 * np.median(after):.0f} % ({len(after)})" if after else "-")
            false = sum(1 for k in r["real"] if r["real"][k] is None and q["T"][k] is not None)
            sub = []
            for late in (False, True):
                errs = [e for k, e in q.get("errors_subset", {}).items()
                        if e is not None and is_late(k) == late and r["real"][k] > WARMUP]
                sub.append(f"{100 * np.median(errs):.0f} %" if errs else "-")
            lines.append(f"| {r['model']} -> {r['task']} | {name} | {q['M']} | {K} | {q['cost_s']:.1f} | "
                         f"{r['train_s']:.0f} | {q['ratio']:.1f} ({q.get('ratio_run_wall', float('nan')):.1f}) | "
                         f"{row[0]} | {row[1]} | {row[2]} | {false} | {sub[0]} / {sub[1]} |")
    lines += ["", "Steps to each target (real / predicted, relative error; gap: holdout/subset loss at the predicted "
              "step, >= 1.5 flags a target that leans on memorizing the subset):", ""]
    for r in records:
        names = list(r["predictions"])
        lines += [f"**{r['model']} -> {r['task']}** (N = {r['N']}, lr {r['lr']}, B {r['batch']}, momentum "
                  f"{r['momentum']}, {r['steps']} steps, real step {1e3 * r['step_s']:.1f} ms)", "",
                  "| target | real | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for k, v in r["real"].items():
            cells = []
            for n in names:
                q = r["predictions"][n]
                t, e, g = q["T"][k], q["errors"][k], q["gap_at"][k]
                cells.append("never" if t is None else f"{t:.0f}" + ("" if e is None else f" ({100 * e:.0f} %)")
                             + ("" if g is None else f", gap {g:.2f}"))
            lines.append(f"| {k} | {'never' if v is None else f'{v:.0f}'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
