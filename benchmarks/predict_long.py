"""Training-time prediction at the paper's scale: long fine-tuning runs on thousands of samples, subset mode.

    python -m benchmarks.predict_long                       # 3 pairs x 5 settings, ~25 min on 1 thread
    python -m benchmarks.predict_long --pairs resnet_multi:pendigits_inverted --settings 0.003,64,0.9 --quick

MiniZoo's SGD grid (benchmarks/predict_validation.py) has 10-shot runs of 100 steps on N <= 260 samples: there a
prediction cannot be much cheaper than the run it predicts. Here the MiniZoo experts are fine-tuned with the
MiniZoo recipe (all parameters, new head of seed 0, CE, stream minibatches, no weight decay) on --per-class
samples per class of a target task (N = 3,900-4,000) for --epochs epochs, and the full-training-set loss is
measured at ~90 steps of each run (every step up to 10, then geometrically; crossings interpolated in log-loss).
The predictions use the subset mode the issue asks for: M = N/20 random samples.

  linear-sketch  Predictor(method="sketch", k=1024, subset=M): the paper's linearization around w0
  head-aware     HeadAwarePredictor(k=512, subset=M): linearized backbone, exact new head
  head-aware+calib  head-aware rescaled in time (calibrate_time) to the first --calib-steps real steps, their
                 losses measured on the same M samples (cost: those real steps + M-sample evaluations)

Errors: |T_pred - T_real| / T_real of the steps to L0/2, L0/4, L0/10, L0/30 and to --accuracy, over the pairs the
real run reaches. Cost: the prediction's seconds (setup shared by a pair's settings, plus the integration of one
setting) against the recorded optimization seconds of the real run (evaluation excluded), same process.
Writes benchmarks/results/predict-long-cpu-<date>.{json,md,png}.
"""
import argparse
import datetime
import json
import math
import os
import platform
import time
import warnings

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

from zoo_kernels import zoo
from zoo_kernels.calibrate import HeadAwarePredictor, calibrate_time
from zoo_kernels.predict import Predictor, auto_subset, subset_indices
from zoo_kernels.warmstart import predict_after_warmup
from zoo_kernels.zoo import data as D
from zoo_kernels.zoo.finetune import _batches, evaluate

FRACTIONS = (0.5, 0.25, 0.1, 1 / 30)
PAIRS = (("resnet_multi", "pendigits_inverted"), ("convnet_latin", "pendigits_inverted"),
         ("resnet_multi", "latin_heldout"))
SETTINGS = ((0.001, 64, 0.9), (0.003, 64, 0.9), (0.01, 32, 0.0), (0.03, 128, 0.0), (0.01, 64, 0.9))
METHODS = ("linear-sketch", "head-aware", "head-aware+calib")


def task_data(task, per_class=0):
    """(C, x, y): the task's training images, `per_class` per class (0: about 4,000 in all)."""
    C = D.TARGETS[task][0]
    x, y = D.make_target(task, "train", per_class or max(1, round(4000 / C)))
    return C, x, y


def predicted_targets(pred, accuracy):
    """(steps, targets) of a Prediction's curves (a diverged, NaN tail never reaches a target)."""
    L = np.where(np.isfinite(pred.loss_curve), pred.loss_curve, np.inf)
    tt = np.arange(len(L))
    return tt, targets(tt, np.minimum(L, 1e30), pred.accuracy_curve, accuracy)


def eval_steps(steps):
    """Every step up to 10, then geometric (x1.06), and the last step."""
    out, t = list(range(11)), 10
    while t < steps:
        t = min(steps, max(t + 1, round(t * 1.06)))
        out.append(t)
    return out


def sgd_run(model, x, y, lr, batch, momentum, steps, at, measure, seed=0):
    """The recipe's SGD steps (head already reset); `measure(model)` is recorded before training and after each
    step in `at` (stops at a non-finite loss). Returns (steps measured, records, optimization wall seconds)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order = _batches(len(x), batch, steps, torch.Generator().manual_seed(seed))
    ts, recs, wall = [0], [measure(model)], 0.0
    model.train()
    for s in range(steps):
        t0 = time.perf_counter()
        idx = order[s]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        wall += time.perf_counter() - t0
        if not math.isfinite(float(loss.detach())):
            break
        if s + 1 in at:
            ts.append(s + 1), recs.append(measure(model))
    return np.asarray(ts), recs, wall


def real_run(model, x, y, lr, batch, momentum, steps, seed=0):
    """(eval steps, full-training-set losses, accuracies, optimization wall seconds) of the recipe's SGD run."""
    ts, recs, wall = sgd_run(model.to(x.device), x, y, lr, batch, momentum, steps, set(eval_steps(steps)),
                             lambda m: evaluate(m, x, y, device=x.device), seed)
    ls, acc = zip(*recs)
    return ts, np.asarray(ls), np.asarray(acc), wall


def crossing(ts, values, threshold, below=True):
    """First (interpolated) step where values cross threshold (log-interpolated for losses); None if never."""
    v = np.asarray(values, dtype=np.float64)
    hit = v <= threshold if below else v >= threshold
    w = np.flatnonzero(hit)
    if not w.size:
        return None
    i = int(w[0])
    if i == 0:
        return float(ts[0])
    a, b = (np.log(v[i - 1]), np.log(v[i])) if below else (v[i - 1], v[i])
    c = np.log(threshold) if below else threshold
    frac = 0.0 if a == b else (a - c) / (a - b)
    return float(ts[i - 1] + frac * (ts[i] - ts[i - 1]))


def targets(ts, loss, acc, accuracy):
    out = {f"loss<={f:.3g}L0": crossing(ts, loss, f * loss[0]) for f in FRACTIONS}
    out[f"acc>={accuracy:g}"] = crossing(ts, acc, accuracy, below=False)
    return out


def run_pair(model_name, task, settings, args, log):
    C, x, y = task_data(task, args.per_class)
    N = len(x)
    M = auto_subset(N, C) if args.auto_subset else min(N, max(N // args.subset_div, args.min_per_class * C))
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    preds = {} if args.warm_only else {
        "linear-sketch": Predictor(model, (x, y), method="sketch", k=args.k, subset=M, seed=0),
        "head-aware": HeadAwarePredictor(model, (x, y), k=args.head_k, subset=M, seed=0)}
    for v in args.head_variants:  # the same head-aware model with another subset size / sketch width / rank
        mv, kv, *rv = (int(a) for a in v.split(":"))
        preds[variant_name(v)] = HeadAwarePredictor(model, (x, y), k=kv, subset=mv if mv < N else None, seed=0,
                                                    eval_batch_size=16, feature_rank=rv[0] if rv else None)
    if args.full_check:  # the same head-aware model on all N samples: the subset's approximation error
        preds["head-aware-full"] = HeadAwarePredictor(model, (x, y), k=args.full_k, seed=0, eval_batch_size=16)
    setup = {k: p.setup_seconds for k, p in preds.items()}
    log(f"{model_name} -> {task}: N={N}, C={C}, M={M}; setup " + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items()))
    sub_idx = subset_indices(N, M, 0)  # the head-aware predictions' subset (seed 0)
    sub_x, sub_y = x[sub_idx], y[sub_idx]
    records = []
    for lr, batch, momentum in settings:
        steps = int(round(args.epochs * N / batch))
        ts, ls, acc, wall = cached_real_run(args.cache, model_name, task, x, y, C, lr, batch, momentum, steps)
        rec = {"model": model_name, "task": task, "N": N, "C": C, "M": M, "lr": lr, "batch": batch,
               "momentum": momentum, "steps": steps, "epochs": args.epochs, "train_wall_s": wall,
               "real": targets(ts, ls, acc, args.accuracy), "real_t": ts.tolist(),
               "real_loss": [round(float(v), 5) for v in ls], "setup_s": setup, "methods": {}}
        horizon = int(steps * args.horizon)
        curves = {}
        for name, p in preds.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                pr = p.predict(lr=lr, batch_size=batch, momentum=momentum, max_steps=horizon, sampling="stream",
                               paths=args.paths, seed=1, measure_time=False, on_divergence="truncate",
                               stride=args.stride,
                               **({"feature_norm": args.feature_norm} if isinstance(p, HeadAwarePredictor) else {}))
            curves[name] = pr
            rec["methods"][name] = {"integrate_s": time.perf_counter() - t0, "diverged_at": pr.diverged_at}
        # calibration: K real steps of a copy, losses on the M subset samples
        K = args.calib_steps
        if "head-aware" in curves:
            m = zoo.load_model(model_name, num_classes=C, seed=0)
            t0 = time.perf_counter()
            cts, cls, _, cwall = real_run_subset_eval(m, x, y, sub_x, sub_y, lr, batch, momentum, K)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cal = calibrate_time(curves["head-aware"], cls)
            curves["head-aware+calib"] = cal
            rec["methods"]["head-aware+calib"] = {"integrate_s": rec["methods"]["head-aware"]["integrate_s"],
                                                  "calib_s": time.perf_counter() - t0, "scale": cal.calibration_scale,
                                                  "diverged_at": cal.diverged_at}
        for K in args.warmup:  # K real steps, then the head-aware model linearized at w_K (zoo_kernels.warmstart)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                pr = predict_after_warmup(zoo.load_model(model_name, num_classes=C, seed=0), (x, y), lr=lr,
                                          batch_size=batch, momentum=momentum, max_steps=horizon, warmup_steps=K,
                                          subset="auto" if args.auto_subset else M, k=args.head_k,
                                          seed=args.pred_seed,
                                          feature_norm=args.feature_norm,
                                          paths=args.paths, sampling="stream", on_divergence="truncate",
                                          feature_rank=args.warm_rank, eval_every=args.eval_every,
                                          eval_growth=args.eval_growth,
                                          sketch_method=args.warm_sketch, curvature=args.curvature,
                                          holdout=args.holdout, holdout_self=args.holdout_self)
            curves[f"head-aware+warm{K}"] = pr
            rec["methods"][f"head-aware+warm{K}"] = {"total_s": pr.cost_seconds, "diverged_at": pr.diverged_at}
            if args.holdout_self:  # the loss read off the holdout rows (their own block); accuracy: subset's or theirs
                for a, name in ((False, f"head-aware[holdout-self]+warm{K}"),
                                (True, f"head-aware[holdout-self,acc]+warm{K}")):
                    curves[name] = pr.from_holdout(accuracy=a)
                    rec["methods"][name] = {"total_s": pr.cost_seconds, "diverged_at": pr.diverged_at}
        for name in methods(args):
            out = rec["methods"].setdefault(name, {"diverged_at": 0})
            pr = curves.get(name)
            if pr is None:
                out["T"] = {k: None for k in rec["real"]}
                continue
            tt, out["T"] = predicted_targets(pr, args.accuracy)
            if pr.feature_shift is not None:  # how far the linearized features moved by each predicted target
                out["shift_at"] = {k: (None if v is None else float(np.interp(v, tt, pr.feature_shift)))
                                   for k, v in out["T"].items()}
            if pr.holdout_loss_curve is not None:  # holdout / subset loss at each predicted target
                held, sub = pr.gap_curves()
                gap = held / sub
                out["holdout_gap_at"] = {k: (None if v is None or not np.isfinite(np.interp(v, tt, gap))
                                             else float(np.interp(v, tt, gap))) for k, v in out["T"].items()}
                out["holdout_curve"] = [round(float(v), 5) if np.isfinite(v) else None
                                        for v in pr.holdout_loss_curve[::max(1, horizon // 300)]]
            out["cost_s"] = out["total_s"] if "total_s" in out else \
                setup[name.split("+")[0]] + out["integrate_s"] + out.get("calib_s", 0.0)
            out["loss_curve"] = [round(float(v), 5) if np.isfinite(v) else None
                                 for v in pr.loss_curve[::max(1, horizon // 300)]]
            out["curve_stride"] = max(1, horizon // 300)
        records.append(rec)
        log(f"  lr={lr} B={batch} m={momentum}: {steps} steps, train {wall:.1f}s | real "
            + str({k: None if v is None else round(v, 1) for k, v in rec["real"].items()}) + " | "
            + " ; ".join(f"{n} {[None if v is None else round(v) for v in rec['methods'][n]['T'].values()]}"
                         for n in methods(args)))
    return records


def variant_name(v):
    """"M:k" or "M:k:r" -> the method's name."""
    mv, kv, *rv = v.split(":")
    return f"head-aware[M={mv},k={kv}" + (f",r={rv[0]}]" if rv else "]")


def methods(args):
    variants = tuple(variant_name(v) for v in args.head_variants)
    return ((() if args.warm_only else METHODS) + (("head-aware-full",) if args.full_check else ()) + variants
            + tuple(f"head-aware+warm{K}" for K in args.warmup)
            + tuple(f"head-aware[holdout-self{a}]+warm{K}" for K in args.warmup if args.holdout_self
                    for a in ("", ",acc")))


def cached_real_run(cache, model_name, task, x, y, C, lr, batch, momentum, steps):
    """real_run of a fresh model (head of seed 0), stored under `cache` (runs are deterministic on one machine)."""
    path = os.path.join(cache, f"{model_name}-{task}-{len(x)}-{lr}-{batch}-{momentum}-{steps}.json") if cache else None
    if path and os.path.exists(path):
        with open(path) as fh:
            r = json.load(fh)
        return np.asarray(r["t"]), np.asarray(r["loss"]), np.asarray(r["acc"]), r["wall"]
    ts, ls, acc, wall = real_run(zoo.load_model(model_name, num_classes=C, seed=0), x, y, lr, batch, momentum, steps)
    if path:
        os.makedirs(cache, exist_ok=True)
        with open(path, "w") as fh:
            json.dump({"t": ts.tolist(), "loss": ls.tolist(), "acc": acc.tolist(), "wall": wall,
                       "torch": torch.__version__}, fh)
    return ts, ls, acc, wall


def cost_study(pairs, args, log):
    """Seconds of one real SGD step and of each prediction's setup and integrated step, measured back to back in
    one process; the ratio training / prediction for --epochs epochs and the epochs a 100x saving would need."""
    rows = []
    batch, lr, momentum = 64, 0.003, 0.9
    for model_name, task in pairs:
        C, x, y = task_data(task)
        N = len(x)
        m = zoo.load_model(model_name, num_classes=C, seed=0)
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
        order = _batches(N, batch, 60, torch.Generator().manual_seed(0))
        times = []
        for s in range(60):
            t0 = time.perf_counter()
            loss = F.cross_entropy(m(x[order[s]]), y[order[s]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step_s = float(np.median(times[10:]))
        steps = int(round(args.epochs * N / batch))
        model = zoo.load_model(model_name, num_classes=C, seed=0)
        for name, make in (("linear-sketch k=1024", lambda: Predictor(model, (x, y), k=1024, subset=N // 20)),
                           ("linear-sketch k=256", lambda: Predictor(model, (x, y), k=256, subset=N // 20)),
                           ("head-aware k=512", lambda: HeadAwarePredictor(model, (x, y), k=512, subset=N // 20)),
                           ("head-aware k=128", lambda: HeadAwarePredictor(model, (x, y), k=128, subset=N // 20))):
            p = make()
            t0 = time.perf_counter()
            p.predict(lr=lr, batch_size=batch, momentum=momentum, max_steps=200, sampling="stream",
                      paths=args.paths, measure_time=False)
            integ_step = (time.perf_counter() - t0) / 200  # one step of all paths (they run batched)
            pred_s = p.setup_seconds + int(steps * args.horizon) * integ_step
            train_s = steps * step_s
            per_epoch = N / batch * step_s
            per_epoch_pred = args.horizon * N / batch * integ_step
            rows.append({"model": model_name, "task": task, "N": N, "method": name, "step_s": step_s,
                         "train_s": train_s, "setup_s": p.setup_seconds, "integrate_step_s": integ_step,
                         "prediction_s": pred_s, "ratio": train_s / pred_s, "paths": args.paths,
                         # epochs E with E * per_epoch = 100 * (setup + E * per_epoch_pred)
                         "epochs_for_100x": (100 * p.setup_seconds / (per_epoch - 100 * per_epoch_pred)
                                             if per_epoch > 100 * per_epoch_pred else None)})
            log(f"  cost {model_name} -> {task} {name}: step {step_s * 1e3:.1f} ms, setup {p.setup_seconds:.1f} s, "
                f"integration {integ_step * 1e3:.2f} ms/step, training {train_s:.1f} s / prediction {pred_s:.1f} s")
    return rows


def shift_study(pairs, settings, args, log, at=(10, 30, 100, 300)):
    """How far the features of the M subset samples move, relative to their initial spread, in real training and
    in the head-aware prediction, ‖φ_t − φ_0‖ / ‖φ_0 − mean φ_0‖ (the real run is repeated: nothing cached)."""
    rows = []
    for model_name, task in pairs:
        C, x, y = task_data(task)
        N = len(x)
        model = zoo.load_model(model_name, num_classes=C, seed=0)
        pred = HeadAwarePredictor(model, (x, y), k=args.head_k, subset=N // args.subset_div, seed=0)
        sx = pred.x
        for lr, batch, momentum in settings:
            steps = int(round(args.epochs * N / batch))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                q = pred.predict(lr=lr, batch_size=batch, momentum=momentum, max_steps=steps, sampling="stream",
                                 paths=args.paths, seed=1, measure_time=False, on_divergence="truncate")
            real = zoo.load_model(model_name, num_classes=C, seed=0)

            def features(m):
                with torch.no_grad():
                    return m.eval().features(sx).double()
            phi0 = features(real)
            spread = float((phi0 - phi0.mean(0)).norm())
            ts, recs, _ = sgd_run(real, x, y, lr, batch, momentum, steps, set(at) | {steps},
                                  lambda m: float((features(m) - phi0).norm()) / spread)
            row = {"model": model_name, "task": task, "lr": lr, "batch": batch, "momentum": momentum,
                   "steps": ts[1:].tolist(), "real": recs[1:], "predicted": [float(q.feature_shift[t]) for t in ts[1:]]}
            rows.append(row)
            log(f"  shift {model_name} -> {task} lr={lr} B={batch} m={momentum}: " + ", ".join(
                f"t={t} real {r:.2f} predicted {p:.3g}"
                for t, r, p in zip(row["steps"], row["real"], row["predicted"])))
    return rows


def shift_markdown(rows):
    """The table of shift_study's rows."""
    lines = ["| model -> task | lr | B | m | feature shift, real / predicted, at steps " + ", ".join(
        str(t) for t in rows[0]["steps"][:-1]) + " and the last |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} -> {r['task']} | {r['lr']} | {r['batch']} | {r['momentum']} | " + ", ".join(
        f"{a:.2f} / " + (f"{b:.2f}" if b < 1e3 else "blown up") for a, b in zip(r["real"], r["predicted"]))
        + " |" for r in rows]
    return lines


def real_run_subset_eval(model, x, y, sx, sy, lr, batch, momentum, steps):
    """The first `steps` steps of the real run with the loss measured on the subset (sx, sy) after each."""
    ts, recs, wall = sgd_run(model, x, y, lr, batch, momentum, steps, set(range(1, steps + 1)),
                             lambda m: evaluate(m, sx, sy)[0])
    return ts, np.asarray(recs), None, wall


def p90(values):
    """90th percentile without interpolation (inverted CDF), so infinite errors (targets never reached) give
    inf instead of NaN."""
    return float(np.percentile(np.asarray(values, dtype=float), 90, method="inverted_cdf"))


def rel(p, r):
    return None if r is None else (abs((p if p is not None else math.inf) - r) / r)


def _amortized_cost(rec, name, records):
    """A method's seconds for one setting with its setup shared by the pair's settings (a warm start shares none)."""
    meth = rec["methods"][name]
    if "total_s" in meth:
        return meth["total_s"]
    settings = len([r for r in records if (r["model"], r["task"]) == (rec["model"], rec["task"])])
    return rec["setup_s"][name.split("+")[0]] / settings + meth["integrate_s"] + meth.get("calib_s", 0.0)


def summary_rows(records):
    rows = []
    keys = list(records[0]["real"])
    for name in [n for n in records[0]["methods"] if n in METHODS or n.startswith("head-aware")]:
        errs, per_key, signed, bounds = [], {k: [] for k in keys}, [], []
        warm = warmup_of(name)
        for rec in records:
            for k in keys:
                r, p = rec["real"][k], rec["methods"][name]["T"].get(k)
                if r is None and p is not None and warm < p <= rec["steps"]:
                    # predicted within the run, never reached by it: not in the medians; in the strict ones with
                    # its least error, since the real T is beyond the run's length L: (L − p)/L
                    bounds.append((rec["steps"] - p) / rec["steps"])
                if r is None or r < 1 or r <= warm:  # a target reached during a warm-up is measured, not predicted
                    continue
                e = rel(p, r)
                errs.append(e)
                per_key[k].append(e)
                if p is not None:
                    signed.append((p - r) / r)
        costs = [rec["methods"][name].get("cost_s") for rec in records if rec["methods"][name].get("cost_s")]
        ratio = [rec["train_wall_s"] / rec["methods"][name]["cost_s"] for rec in records
                 if rec["methods"][name].get("cost_s")]
        amort = [rec["train_wall_s"] / _amortized_cost(rec, name, records) for rec in records
                 if rec["methods"][name].get("cost_s")]
        e, strict = np.asarray(errs), np.asarray(errs + bounds)
        rows.append({"method": name, "pairs": len(errs), "median": float(np.median(e)) if e.size else None,
                     "p90": p90(e) if e.size else None,
                     "median_strict": float(np.median(strict)) if strict.size else None,
                     "p90_strict": p90(strict) if strict.size else None,
                     "within20": float(np.mean(e <= 0.2)) if e.size else None,
                     "within10": float(np.mean(e <= 0.1)) if e.size else None, "false_reach": len(bounds),
                     "median_signed": float(np.median(signed)) if signed else None,
                     "per_target": {k: (float(np.median(v)) if v else None) for k, v in per_key.items()},
                     "cost_s": float(np.median(costs)) if costs else None,
                     "train_over_pred": float(np.median(ratio)) if ratio else None,
                     "train_over_pred_amortized": float(np.median(amort)) if amort else None})
    return rows


def shift_rows(records, name="head-aware", edges=(0.25, 0.5, 1.0, 2.0)):
    """Errors of one method's predicted targets grouped by the predicted feature shift at the target (the
    prediction's own reliability signal), and their Spearman correlation."""
    pts = []
    for rec in records:
        meth = rec["methods"].get(name, {})
        for k, r in rec["real"].items():
            sh, p = meth.get("shift_at", {}).get(k), meth.get("T", {}).get(k)
            if r is not None and r >= 1 and sh is not None and p is not None:
                pts.append((sh, rel(p, r)))
    if len(pts) < 3:
        return [], float("nan")
    sh, err = np.asarray(pts).T
    rho = float(scipy.stats.spearmanr(sh, err).statistic)  # ties get average ranks
    bounds = (0.0,) + tuple(edges) + (math.inf,)
    rows = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sel = (sh >= lo) & (sh < hi)
        if sel.any():
            rows.append({"shift": f"[{lo:g}, {hi:g})", "n": int(sel.sum()), "median": float(np.median(err[sel])),
                         "within20": float(np.mean(err[sel] <= 0.2))})
    return rows, rho


def warmup_of(name):
    """The K of a method named "...+warmK" (0 for the others)."""
    return int(name.rpartition("+warm")[2]) if "+warm" in name else 0


def subset_vs_full(sub_records, full_records):
    """Markdown rows: per method, |T_M − T_N| / T_N of the predicted steps to each target, over the targets both
    predictions reach (and how many only one reaches), for two runs of the same pairs and settings that differ
    only in the subset (--subset-div 20 against --subset-div 1). As in the summary, a warm start's targets count
    only where the real run reaches them after its K real steps."""
    key = lambda r: (r["model"], r["task"], r["lr"], r["batch"], r["momentum"])  # noqa: E731
    full = {key(r): r for r in full_records}
    out = ["| method | pairs | median | p90 | within 20 % | reached by one only |", "|---|---|---|---|---|---|"]
    names = sorted({n for r in sub_records for n in r["methods"]})
    for name in names:
        errs, one_only = [], 0
        for r in sub_records:
            f = full.get(key(r))
            if f is None or name not in f["methods"] or name not in r["methods"]:
                continue
            K = warmup_of(name)
            for tgt, t_sub in r["methods"][name]["T"].items():
                if r["real"].get(tgt) is None or r["real"][tgt] <= K:
                    continue
                t_full = f["methods"][name]["T"].get(tgt)
                if (t_sub is None) != (t_full is None):
                    one_only += 1
                elif t_sub is not None and t_full > 0:
                    errs.append(abs(t_sub - t_full) / t_full)
        if errs:
            out.append(f"| {name} | {len(errs)} | {np.median(errs):.3f} | {p90(errs):.3f} | "
                       f"{np.mean(np.asarray(errs) <= 0.2):.2f} | {one_only} |")
    return "\n".join(out)


def with_preamble(old, md):
    """The rescored file: the hand-written text of the old one before its table (all of it when it has no table
    yet, e.g. a pre-registration), then the new tables."""
    if "| method |" in old:
        return old[:old.index("| method |")] + md + "\n"
    return (old.rstrip() + "\n\n" if old.strip() else "") + md + "\n"


def markdown(records, rows, meta):
    keys = list(records[0]["real"])
    names = [r["method"] for r in rows]
    f = lambda v, d=2: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    out = ["| method | pairs | median | p90 | within 10% | within 20% | median signed | reached by the prediction only | "
           "strict median / p90 (≥) | " + " | ".join(f"median {k}" for k in keys)
           + " | prediction s | train / prediction | amortized |",
           "|" + "---|" * (12 + len(keys))]
    for r in rows:
        out.append(f"| {r['method']} | {r['pairs']} | {f(r['median'])} | {f(r['p90'])} | {f(r['within10'])} | "
                   f"{f(r['within20'])} | {f(r['median_signed'])} | {f(r.get('false_reach'))} | "
                   f"{f(r.get('median_strict'))} / {f(r.get('p90_strict'))} | "
                   + " | ".join(f(r["per_target"][k]) for k in keys)
                   + f" | {f(r['cost_s'], 1)} | {f(r['train_over_pred'])} | {f(r['train_over_pred_amortized'])} |")
    if any("+warm" in n for n in names):
        out += ["", "head-aware+warmK: the first K steps run for real (zoo_kernels.warmstart), the rest predicted from "
                "the head-aware model linearized at w_K; its errors count only the targets the real run reaches after "
                "step K (hence fewer pairs), and its cost includes the K real steps (nothing is shared between "
                "settings, so amortized = train / prediction)."]
    out += ["", "Reached by the prediction only: targets the prediction reaches within the real run's length (after its "
            "warm-up) that the real run never reaches; they are not in the medians. The strict median and p90 count "
            "them too, each with the smallest error it can have, (L − T_pred) / L for a run of L steps (the real step "
            "is beyond L): lower bounds of the median and p90 over all those targets."]
    out += ["", "| model -> task | lr | B | m | steps | train s | " + " | ".join(f"real {k}" for k in keys)
            + " | " + " | ".join(f"{n} (steps per target)" for n in names) + " |",
            "|" + "---|" * (6 + len(keys) + len(names))]
    for rec in records:
        out.append(f"| {rec['model']} -> {rec['task']} | {rec['lr']} | {rec['batch']} | {rec['momentum']} | "
                   f"{rec['steps']} | {rec['train_wall_s']:.1f} | "
                   + " | ".join(f(rec["real"][k], 0) for k in keys) + " | "
                   + " | ".join("/".join(f(v, 0) for v in rec["methods"][n]["T"].values())
                                + (f" (diverged at {rec['methods'][n]['diverged_at']})"
                                   if rec["methods"][n].get("diverged_at") is not None else "") for n in names) + " |")
    srows, rho = shift_rows(records)
    if srows:
        out += ["", f"Head-aware error by the predicted feature shift ‖φ_t − φ_0‖ / ‖φ_0 − mean φ_0‖ at the predicted "
                f"target (targets the prediction reaches; Spearman ρ(shift, error) = {rho:.2f}):", "",
                "| shift | targets | median error | within 20% |", "|---|---|---|---|"]
        out += [f"| {r['shift']} | {r['n']} | {r['median']:.2f} | {r['within20']:.2f} |" for r in srows]
    if "head-aware-full" in names:  # the subset target: subset prediction against the full-data one
        dev = [abs(rec["methods"]["head-aware"]["T"][k] - rec["methods"]["head-aware-full"]["T"][k])
               / rec["methods"]["head-aware-full"]["T"][k] for rec in records for k in keys
               if rec["methods"]["head-aware"]["T"].get(k) and rec["methods"]["head-aware-full"]["T"].get(k)]
        if dev:
            out += ["", f"Subset M = N/20 against all N (head-aware, steps to target): {len(dev)} pairs, median "
                    f"{np.median(dev):.3f}, p90 {p90(dev):.3f}, max {max(dev):.3f}"]
    return "\n".join(out)


def plot(records, path):
    from zoo_kernels import plots as P  # noqa: PLC0415
    panels = []
    for rec in records:
        s = None
        pred = {}
        for n in rec["methods"]:
            o = rec["methods"][n]
            if "loss_curve" in o:
                s = o["curve_stride"]
                pred[n] = (np.arange(len(o["loss_curve"])) * s, np.asarray(o["loss_curve"], dtype=float))
        panels.append({"title": f"{rec['model']} -> {rec['task']}\nlr={rec['lr']} B={rec['batch']} "
                                f"m={rec['momentum']}", "real": (rec["real_t"], rec["real_loss"]), "predicted": pred})
    plt = P.require_matplotlib()
    cols = 5
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        ax.plot(*p["real"], color="k", lw=1.8, label="real")
        for n, (t, c) in p["predicted"].items():
            ax.plot(t, np.where(np.isfinite(c) & (c < 1e6), c, np.nan), lw=1, label=n)  # diverged: not drawn
        ax.set_yscale("log")
        real = np.asarray(p["real"][1], dtype=float)
        ax.set_ylim(real.min() / 5, real.max() * 5)
        ax.set_xlim(0, p["real"][0][-1] * 1.05)
        ax.set_title(p["title"], fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("Long fine-tuning runs (N ~ 4,000, 10 epochs): real vs predicted (subset M = N/20) training loss",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", default=[f"{m}:{t}" for m, t in PAIRS])
    ap.add_argument("--settings", nargs="+", default=[f"{a},{b},{c}" for a, b, c in SETTINGS])
    ap.add_argument("--per-class", type=int, default=0, help="samples per class (default: about 4,000 in all)")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--subset-div", type=int, default=20)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--head-k", type=int, default=512)
    ap.add_argument("--paths", type=int, default=2)
    ap.add_argument("--horizon", type=float, default=1.5, help="predicted steps, in units of the real run")
    ap.add_argument("--calib-steps", type=int, default=10)
    ap.add_argument("--stride", type=int, default=1, help="super-steps of the integration (dynamics.coarsen)")
    ap.add_argument("--full-check", action="store_true",
                    help="also the head-aware prediction on all N samples (minutes per pair)")
    ap.add_argument("--full-k", type=int, default=256, help="sketch width of --full-check")
    ap.add_argument("--head-variants", nargs="*", default=[], metavar="M:k[:r]",
                    help="extra head-aware predictions with subset M (N = all), sketch width k, feature rank r")
    ap.add_argument("--feature-norm", choices=("linear", "fixed"), default="linear",
                    help="the head-aware predictions' feature model (HeadAwarePredictor.predict's feature_norm)")
    ap.add_argument("--warmup", nargs="*", type=int, default=[], metavar="K",
                    help="also predict after K real steps (zoo_kernels.warmstart.predict_after_warmup), per K")
    ap.add_argument("--warm-rank", type=int, help="feature_rank of the --warmup predictions (default: all)")
    ap.add_argument("--eval-every", type=int, default=1, help="eval_every of the --warmup predictions")
    ap.add_argument("--eval-growth", type=float, default=0.0, help="eval_growth of the --warmup predictions")
    ap.add_argument("--auto-subset", action="store_true",
                    help="the --warmup predictions use subset='auto' (the library's rule)")
    ap.add_argument("--pred-seed", type=int, default=0,
                    help="seed of the --warmup predictions (subset, sketch, warm-up and path minibatches)")
    ap.add_argument("--min-per-class", type=int, default=0,
                    help="subset M = max(N / subset-div, this × the number of classes)")
    ap.add_argument("--warm-sketch", choices=("dense", "kronecker"), default="dense",
                    help="sketch_method of the --warmup predictions")
    ap.add_argument("--warm-only", action="store_true", help="only the --warmup predictions")
    ap.add_argument("--holdout", type=int, default=0, help="holdout samples of the --warmup predictions "
                    "(their loss / the subset's at each predicted target is saved as holdout_gap_at)")
    ap.add_argument("--holdout-self", action="store_true",
                    help="the holdout rows also get their own kernel block at weight 1/N (HeadAwarePredictor)")
    ap.add_argument("--curvature", choices=("along",), help="curvature of the --warmup predictions (second-order "
                    "term along the linearized displacement, zoo_kernels.curvature)")
    ap.add_argument("--accuracy", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 epochs, for a smoke test")
    ap.add_argument("--shift", action="store_true",
                    help="only the feature-shift study: real vs predicted movement of the subset's features")
    ap.add_argument("--cost", action="store_true", help="only the cost study (step, setup, integration seconds)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cache", default=".benchmarks/predict_long_real", help="real runs stored here ('' = none)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--compare-subset", nargs=2, metavar=("SUBSET_JSON", "FULL_JSON"),
                    help="print the subset predictions' step errors against full-data predictions of the same runs")
    ap.add_argument("--rescore", metavar="JSON", help="rebuild the summary, tables and plot of a saved result (no run)")
    args = ap.parse_args(argv)
    if args.compare_subset:
        sub, full = (json.load(open(f))["records"] for f in args.compare_subset)
        print(subset_vs_full(sub, full))
        return
    if args.rescore:
        with open(args.rescore) as fh:
            saved = json.load(fh)
        saved["summary"] = summary_rows(saved["records"])
        with open(args.rescore, "w") as fh:
            json.dump(saved, fh)
        md = markdown(saved["records"], saved["summary"], saved["meta"])
        path = args.rescore[:-len(".json")] + ".md"
        old = open(path).read() if os.path.exists(path) else ""
        with open(path, "w") as fh:
            fh.write(with_preamble(old, md))
        plot(saved["records"], args.rescore[:-len(".json")] + ".png")
        print(md)
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs = 2.0
    settings = [tuple(float(v) if i != 1 else int(v) for i, v in enumerate(s.split(","))) for s in args.settings]
    start = time.time()
    log = lambda s: print(f"[{time.time() - start:6.0f}s] {s}", flush=True)  # noqa: E731
    if args.shift:
        rows = shift_study([tuple(p.split(":")) for p in args.pairs], settings, args, log)
        lines = shift_markdown(rows)
        stamp = datetime.date.today().isoformat()
        with open(os.path.join(args.out, f"predict-long-shift-cpu-{stamp}{args.tag}.json"), "w") as fh:
            json.dump({"load_average": list(os.getloadavg()), "rows": rows, "args": vars(args)}, fh)
        print("\n".join(lines))
        log(f"done; load average {os.getloadavg()}")
        return
    if args.cost:
        rows = cost_study([tuple(p.split(":")) for p in args.pairs], args, log)
        stamp = datetime.date.today().isoformat()
        hdr = ("| model -> task | method | real step ms | training s (--epochs) | setup s | "
               "integration ms/step (all paths) | "
               "prediction s | training / prediction | epochs for 100x |\n|" + "---|" * 9)
        e100 = lambda r: "never" if r["epochs_for_100x"] is None else f"{r['epochs_for_100x']:.0f}"  # noqa: E731
        lines = [hdr] + [f"| {r['model']} -> {r['task']} | {r['method']} | {r['step_s'] * 1e3:.1f} | {r['train_s']:.1f} | "
                         f"{r['setup_s']:.1f} | {r['integrate_step_s'] * 1e3:.2f} | {r['prediction_s']:.1f} | "
                         f"{r['ratio']:.2f} | {e100(r)} |" for r in rows]
        with open(os.path.join(args.out, f"predict-long-cost-cpu-{stamp}{args.tag}.json"), "w") as fh:
            json.dump({"load_average": list(os.getloadavg()), "rows": rows, "args": vars(args)}, fh)
        print("\n".join(lines))
        log(f"done; load average {os.getloadavg()}")
        return
    records = []
    stamp = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"predict-long-cpu-{stamp}{args.tag}")
    for pair in args.pairs:
        model_name, task = pair.split(":")
        records += run_pair(model_name, task, settings, args, log)
        with open(base + ".json", "w") as fh:  # kept as it grows: --rescore rebuilds the rest
            json.dump({"meta": {"args": vars(args)}, "summary": [], "records": records}, fh)
    rows = summary_rows(records)
    meta = {"date": stamp, "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": args.threads, "load_average": list(os.getloadavg()), "wall_s": time.time() - start,
            "args": vars(args)}
    with open(base + ".json", "w") as fh:
        json.dump({"meta": meta, "summary": rows, "records": records}, fh)
    md = markdown(records, rows, meta)
    with open(base + ".md", "w") as fh:
        fh.write(md + "\n")
    try:
        plot(records, base + ".png")
    except ImportError as e:
        log(f"no plot: {e}")
    print(md)
    log(f"done; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
