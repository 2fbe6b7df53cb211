"""Validation of the training-time prediction against MiniZoo's measured SGD runs (real per-step curves).

    python -m benchmarks.predict_validation                 # everything, ~1 h on 1 thread of a shared 2-core CPU
    python -m benchmarks.predict_validation --quick         # 2 combos x 4 settings, no subset part (~1-2 min)
    python -m benchmarks.predict_validation --part grid --tasks latin_heldout --paths 2 --tag=-latin
    python -m benchmarks.predict_validation --merge a.json b.json c.json      # summarize several parts together

For every run of the SGD grid (zoo.sgd_runs(--tier), default "small": model x task x lr x batch x momentum,
10-shot, 100 steps, seed 0, full-training-set loss/accuracy after every step) the same model with the same head
initialization (load_model(..., seed=run seed)) is predicted by:

  linear-exact   Predictor(method="exact"): the paper's linearization, exact NTK, Monte-Carlo SGD paths in
                 function space with the recipe's minibatch sampling ("stream"); the exact linearized-SGD
                 simulation (its error against real training is the **linearization error**)
  linear-sketch  Predictor(method="sketch", k=1024 dense JL): its difference from linear-exact is the
                 **approximation error** of the sketch
  head-aware     calibrate.HeadAwarePredictor (k=512): linearized backbone, exact head
  *+calib        the curve above rescaled in time to fit the first --calib-steps real steps
                 (calibrate.calibrate_time); costs those real steps and their loss evaluations

Targets: the first step with L_t <= f * L_0 (f = 0.5, 0.25, 0.1) and with accuracy >= --accuracy. Relative error
|T_pred - T_real| / T_real over the runs where the real curve reaches the target within its 100 steps; a
prediction that does not reach it within --horizon steps counts as T_pred = horizon (a lower bound on its error;
counted as "censored"). Curve error: mean over steps 1..100 of |L_pred - L_real| / L_real per run.

Subset part (50-shot splits, N = 400..1300): Predictor on all N against subset=M for M = N/20 and N/5 (exact
kernels where N*C <= --subset-exact-max, else the sketch), the relative difference of the predicted steps-to-target.

Cost: the prediction's seconds (setup: f0 + NTK or sketch; plus the integration of one setting) against the
training's (the recorded optimization wall seconds up to the real step that reaches the target, and the whole
100-step run). The machine is shared: wall times carry its load.

Writes <out>/predict-cpu-<date>.json (all records), PNGs of predicted vs real curves, and prints markdown tables.
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo_kernels import zoo
from zoo_kernels.calibrate import HeadAwarePredictor, calibrate_time
from zoo_kernels.predict import Predictor
from zoo_kernels.zoo import finetune as FT

FRACTIONS = (0.5, 0.25, 0.1)
METHODS = ("linear-exact", "linear-sketch", "head-aware")
CALIBRATED = ("linear-exact+calib", "head-aware+calib")
SUBSET_SETTINGS = ((0.01, 64, 0.9), (0.03, 16, 0.9), (0.03, 64, 0.0), (0.1, 64, 0.0))
PLOT_SETTINGS = ((0.01, 64, 0.9), (0.03, 16, 0.0), (0.1, 64, 0.9))
PLOT_COMBOS = (("convnet_latin", "pendigits_inverted"), ("resnet_multi", "latin_heldout"))


def target_keys(acc):
    return [f"loss<={f:g}L0" for f in FRACTIONS] + [f"acc>={acc:g}"]


def steps_to(loss, acc, key):
    loss, acc = np.asarray(loss), np.asarray(acc)
    if key.startswith("loss"):
        f = float(key[len("loss<="):-2])
        hit = loss <= f * loss[0]
    else:
        hit = acc >= float(key[len("acc>="):])
    w = np.flatnonzero(hit)
    return int(w[0]) if w.size else None


def curve_error(pred, real):
    """Mean over steps 1..n of |L_pred - L_real| / L_real; a blown-up prediction is clipped at 10 L_0."""
    pred, real = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64)
    n = len(real)
    if len(pred) < n:
        return float("inf")
    p = np.nan_to_num(pred[:n], nan=10 * real[0], posinf=10 * real[0]).clip(max=10 * real[0])
    return float(np.mean(np.abs(p[1:] - real[1:]) / real[1:]))


def pct(values, q):
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return float(np.percentile(v, q)) if v.size else float("nan")


# ------------------------------------------------------------------------------------------------ grid part

def eval_seconds(model, x, y, repeats=3):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        FT.evaluate(model, x, y)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def run_combo(model_name, task, runs, args, log):
    """All grid runs of one (model, task): predictions by every method; one record per run."""
    C = zoo.task_info(task)["num_classes"]
    seed = runs[0]["seed"]
    model = zoo.load_model(model_name, num_classes=C, seed=seed)
    x, y, _, _ = zoo.load_task(task, shots=runs[0]["shots"])
    N = len(x)
    preds = {}
    t = time.perf_counter()
    preds["linear-exact"] = Predictor(model, (x, y), method="exact", seed=0)
    preds["linear-sketch"] = Predictor(model, (x, y), method="sketch", k=args.k, sketch_method="dense", seed=0)
    preds["head-aware"] = HeadAwarePredictor(model, (x, y), k=args.head_k, sketch_method="dense", seed=0)
    setup = {k: p.setup_seconds for k, p in preds.items()}
    K = preds["linear-exact"].op.K
    lam_max = float(torch.linalg.eigvalsh(K)[-1])
    ev = eval_seconds(model, x, y)
    log(f"  {model_name} on {task}: N={N}, C={C}, setup " + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items())
        + f" ({time.perf_counter() - t:.0f}s), lambda_max(NTK)/N={lam_max / N:.3g}, eval {ev * 1e3:.0f} ms")
    records = []
    for r in runs:
        real_L = np.asarray(r["steps"]["train_loss"])
        real_A = np.asarray(r["steps"]["train_acc"])
        wall = np.asarray(r["steps"]["wall"])
        rec = {"run": r["run"], "model": model_name, "task": task, "lr": r["lr"], "batch": r["batch"],
               "momentum": r["momentum"], "N": N, "C": C, "eta_eff": r["lr"] / (1 - r["momentum"]),
               "lambda_max_over_N": lam_max / N, "real_diverged": bool(r["diverged"]),
               "train_wall_s": float(wall[-1]), "eval_s": ev, "real": {}, "methods": {}, "setup_s": setup}
        for key in target_keys(args.accuracy):
            T = steps_to(real_L, real_A, key)
            rec["real"][key] = {"steps": T, "wall_s": None if T is None else float(wall[T])}
        curves = {}
        for name, p in preds.items():
            t = time.perf_counter()
            try:
                pr = p.predict(lr=r["lr"], batch_size=r["batch"], momentum=r["momentum"], max_steps=args.horizon,
                               sampling="stream", paths=args.paths, seed=1, measure_time=False)
                out = {"diverged": False}
                curves[name] = pr
            except FloatingPointError:
                pr, out = None, {"diverged": True}
            out["integrate_s"] = time.perf_counter() - t
            out["cost_s"] = setup[name] + out["integrate_s"]
            rec["methods"][name] = out
        kcal = args.calib_steps
        for base in ("linear-exact", "head-aware"):
            name = base + "+calib"
            if base in curves and len(real_L) > kcal:
                t = time.perf_counter()
                cal = calibrate_time(curves[base], real_L[:kcal + 1])
                curves[name] = cal
                rec["methods"][name] = {"diverged": False, "scale": cal.calibration_scale,
                                        "cost_s": rec["methods"][base]["cost_s"] + time.perf_counter() - t,
                                        "real_steps_s": float(wall[kcal]) + (kcal + 1) * ev}
            else:
                rec["methods"][name] = {"diverged": True, "cost_s": float("nan")}
        L0 = real_L[0]
        for name, out in rec["methods"].items():
            pr = curves.get(name)
            out["T"] = {}
            for key in target_keys(args.accuracy):
                if pr is None:
                    out["T"][key] = None
                    continue
                Lp, Ap = pr.loss_curve, pr.accuracy_curve
                bad = ~np.isfinite(Lp) | (Lp > 10 * L0)  # blown up: treat the rest of the curve as never reaching
                if bad.any():
                    first = int(np.flatnonzero(bad)[0])
                    Lp, Ap = Lp[:first], Ap[:first]
                    out["blew_up_at"] = first
                out["T"][key] = steps_to(Lp, Ap, key) if len(Lp) else None
            out["curve_err"] = curve_error(pr.loss_curve, real_L) if pr is not None else 9.0
            if pr is not None:
                out["loss_curve"] = [round(float(v), 5) for v in pr.loss_curve[: len(real_L) + 50]]
        rec["real_loss"] = [round(float(v), 5) for v in real_L]
        rec["paths"] = args.paths
        records.append(rec)
        log(f"    run {r['run']}: lr={r['lr']} B={r['batch']} m={r['momentum']}: "
            + ", ".join(f"{n} {o.get('integrate_s', 0):.1f}s" for n, o in rec["methods"].items() if "integrate_s" in o)
            + f" | real {[v['steps'] for v in rec['real'].values()]} exact "
            f"{list(rec['methods']['linear-exact']['T'].values())} "
            f"head {list(rec['methods']['head-aware']['T'].values())}")
    # sketch width study: linear-sketch at other k on a few settings, against linear-exact
    for kk in args.k_study:
        p = Predictor(model, (x, y), method="sketch", k=kk, sketch_method="dense", seed=0)
        for rec in records:
            if (rec["lr"], rec["batch"], rec["momentum"]) not in SUBSET_SETTINGS:
                continue
            try:
                pr = p.predict(lr=rec["lr"], batch_size=rec["batch"], momentum=rec["momentum"],
                               max_steps=args.horizon, sampling="stream", paths=args.paths, seed=1, measure_time=False)
                T = {k: steps_to(pr.loss_curve, pr.accuracy_curve, k) for k in target_keys(args.accuracy)}
                curve = [round(float(v), 5) for v in pr.loss_curve[:len(rec["real_loss"]) + 50]]
            except FloatingPointError:
                T, curve = None, None
            rec.setdefault("k_study", {})[str(kk)] = {"T": T, "setup_s": p.setup_seconds, "loss_curve": curve}
    return records


def summarize(records, args):
    keys = target_keys(args.accuracy)
    H = args.horizon
    names = list(METHODS) + list(CALIBRATED)
    rows = []
    for name in names:
        errs, cens, reach, false_reach, ce = [], 0, 0, 0, []
        by_key = {k: [] for k in keys}
        for rec in records:
            m = rec["methods"].get(name)
            if m is None:
                continue
            ce.append(m.get("curve_err", float("inf")))
            for k in keys:
                T = rec["real"][k]["steps"]
                Tp = m["T"].get(k)
                if T is None:
                    if Tp is not None and Tp <= 100:
                        false_reach += 1
                    continue
                if T == 0:
                    continue
                reach += 1
                if Tp is None:
                    cens += 1
                    Tp = H
                e = abs(Tp - T) / T
                errs.append(e)
                by_key[k].append(e)
        rows.append({"method": name, "pairs": reach, "median": pct(errs, 50), "p90": pct(errs, 90),
                     "within20": float(np.mean(np.asarray(errs) <= 0.2)) if errs else float("nan"),
                     "censored": cens, "false_reach": false_reach,
                     **{f"median {k}": pct(v, 50) for k, v in by_key.items()},
                     "curve_median": pct(ce, 50), "curve_p90": pct(ce, 90)})
    return rows


def approx_errors(records, args):
    """linear-sketch against linear-exact (both predictions): relative difference of steps-to-target and curves."""
    d, cd = [], []
    for rec in records:
        a, b = rec["methods"]["linear-exact"], rec["methods"]["linear-sketch"]
        if a["diverged"] or b["diverged"]:
            continue
        la, lb = np.asarray(a["loss_curve"]), np.asarray(b["loss_curve"])
        cd.append(float(np.mean(np.abs(lb[1:] - la[1:]) / la[1:])))
        for k in target_keys(args.accuracy):
            if a["T"][k] and b["T"][k] is not None:
                d.append(abs(b["T"][k] - a["T"][k]) / a["T"][k])
    return {"pairs": len(d), "median": pct(d, 50), "p90": pct(d, 90), "curve_median": pct(cd, 50),
            "curve_p90": pct(cd, 90)}


def k_study(records, args):
    """{group: (pairs, median, p90, curve median)}: |T_sketch(k) - T_exact| / T_exact over the targets both reach,
    and the mean relative difference of the loss curves, for linear-sketch at width k against linear-exact."""
    out, curves = {}, {}
    for rec in records:
        if "k_study" not in rec:
            continue
        ex = rec["methods"]["linear-exact"]
        if ex["diverged"]:
            continue
        cands = {str(args.k): rec["methods"]["linear-sketch"]}
        cands.update(rec["k_study"])
        for kk, v in cands.items():
            g = (rec["task"], rec["N"] * rec["C"], int(kk))
            if v.get("loss_curve") is None:
                continue
            a, b = np.asarray(ex["loss_curve"]), np.asarray(v["loss_curve"])
            curves.setdefault(g, []).append(float(np.mean(np.abs(b[1:] - a[1:]) / a[1:])))
            for key, Te in ex["T"].items():
                T = (v.get("T") or {}).get(key)
                if Te and T is not None:
                    out.setdefault(g, []).append(abs(T - Te) / Te)
    return {f"{t} (N*C={nc}), k={kk}": (len(out.get(g, [])), pct(out.get(g, []), 50), pct(out.get(g, []), 90),
                                        pct(c, 50)) for g, c in sorted(curves.items()) for t, nc, kk in [g]}


def calibration_budget(records, args, budgets=(5, 10, 20, 30)):
    """Cost and gain of the calibrated mode by the number K of real steps it spends, from the stored curves.

    Loss targets only (the stored predictions are loss curves), and only (run, target) pairs the real run reaches
    after step K (a target reached during calibration needs no prediction). Cost: K steps of the recorded
    optimization wall time plus K + 1 full-training-set loss evaluations, as a fraction of the whole 100-step run."""
    from zoo_kernels.calibrate import fit_time_scale, rescale_curve  # noqa: PLC0415

    rows = []
    for base in ("linear-exact", "head-aware"):
        for K in (0,) + tuple(budgets):
            errs, costs = [], []
            for rec in records:
                m = rec["methods"][base]
                if m.get("loss_curve") is None or m["diverged"]:
                    continue
                real = np.asarray(rec["real_loss"])
                pred = np.asarray(m["loss_curve"], dtype=np.float64)
                bad = ~np.isfinite(pred) | (pred > 10 * real[0])
                if bad.any():  # blown up: the curve ends there (the target counts as not reached)
                    pred = pred[:int(np.flatnonzero(bad)[0])]
                if len(pred) < 2:
                    pred = real[:1]
                if K:
                    sc = fit_time_scale(pred, real[:K + 1])
                    n = len(pred)
                    pred = rescale_curve(pred, sc, n)
                    if n <= args.horizon:  # a truncated curve stays truncated (no hold at its last value)
                        pred = pred[:max(1, int(n / sc))]
                    costs.append((K * rec["train_wall_s"] / (len(real) - 1) + (K + 1) * rec["eval_s"])
                                 / rec["train_wall_s"])
                for f in FRACTIONS:
                    T = steps_to(real, real, f"loss<={f:g}L0")
                    if not T or T <= K:
                        continue
                    Tp = steps_to(pred, pred, f"loss<={f:g}L0")
                    Tp = args.horizon if Tp is None else Tp
                    errs.append(abs(Tp - T) / T)
            rows.append({"method": base, "K": K, "pairs": len(errs), "median": pct(errs, 50), "p90": pct(errs, 90),
                         "cost_fraction_of_run": pct(costs, 50) if costs else 0.0})
    return rows


def by_group(records, args, name, group):
    keys = target_keys(args.accuracy)
    out = {}
    for rec in records:
        g = group(rec)
        m = rec["methods"][name]
        for k in keys:
            T = rec["real"][k]["steps"]
            if not T:
                continue
            Tp = m["T"].get(k)
            out.setdefault(g, []).append(abs((args.horizon if Tp is None else Tp) - T) / T)
    return {g: (len(v), pct(v, 50), pct(v, 90)) for g, v in sorted(out.items())}


def cost_table(records, args):
    """Prediction seconds against training seconds, per method (medians over the runs)."""
    rows = []
    key = f"loss<={0.25:g}L0"
    for name in METHODS + CALIBRATED:
        ratios_target, ratios_run, costs, amort = [], [], [], []
        for rec in records:
            m = rec["methods"][name]
            if not math.isfinite(m.get("cost_s", float("nan"))):
                continue
            c = m["cost_s"] + m.get("real_steps_s", 0.0)
            base = name.split("+")[0]
            n_settings = sum(1 for r in records if r["model"] == rec["model"] and r["task"] == rec["task"])
            a = rec["setup_s"][base] / n_settings + (c - rec["setup_s"][base])
            costs.append(c)
            amort.append(a)
            ratios_run.append(rec["train_wall_s"] / c)
            w = rec["real"][key]["wall_s"]
            if w:
                ratios_target.append(w / c)
        rows.append({"method": name, "cost_median_s": pct(costs, 50), "amortized_median_s": pct(amort, 50),
                     "train_run_over_pred": pct(ratios_run, 50), "train_to_target_over_pred": pct(ratios_target, 50)})
    return rows


# ----------------------------------------------------------------------------------------------- subset part

def run_subset(args, log):
    out = []
    for model_name in args.models:
        for task in args.tasks:
            C = zoo.task_info(task)["num_classes"]
            model = zoo.load_model(model_name, num_classes=C, seed=0)
            x, y, _, _ = zoo.load_task(task, shots=args.subset_shots)
            N = len(x)
            method = "exact" if N * C <= args.subset_exact_max else "sketch"  # a sketch with k < N*C is rank-limited
            full = Predictor(model, (x, y), method=method, k=args.k, sketch_method="dense", seed=0)
            subs = {}
            for div in (20, 5):
                M = max(2, N // div)
                subs[f"N/{div}"] = Predictor(model, (x, y), method=method, k=args.k, sketch_method="dense",
                                             seed=0, subset=M)
            log(f"  subset {model_name} on {task} ({method}): N={N}, setup full {full.setup_seconds:.1f}s, "
                + ", ".join(f"{k} (M={p.subset}) {p.setup_seconds:.1f}s" for k, p in subs.items()))
            for lr, B, mom in SUBSET_SETTINGS:
                rec = {"model": model_name, "task": task, "N": N, "C": C, "method": method, "lr": lr, "batch": B,
                       "momentum": mom,
                       "setup_s": {"full": full.setup_seconds, **{k: p.setup_seconds for k, p in subs.items()}},
                       "T": {}, "M": {k: p.subset for k, p in subs.items()}}
                for name, p in (("full", full), *subs.items()):
                    try:
                        pr = p.predict(lr=lr, batch_size=B, momentum=mom, max_steps=args.subset_horizon,
                                       sampling="stream", paths=args.paths, seed=1, measure_time=False)
                        rec["T"][name] = {f"loss<={f:g}L0": pr.steps_to(fraction=f) for f in FRACTIONS}
                        rec.setdefault("final_loss", {})[name] = float(pr.loss_curve[-1])
                    except FloatingPointError:
                        rec["T"][name] = None
                out.append(rec)
    return out


def subset_summary(recs):
    rows = []
    kernels = sorted({r.get("method", "sketch") for r in recs})
    groups = [("all", None)] + ([(k, k) for k in kernels] if len(kernels) > 1 else [])
    for (gname, kern), name in [(g, n) for g in groups for n in ("N/20", "N/5")]:
        d, cens, ratio = [], 0, []
        for rec in recs:
            if kern is not None and rec.get("method", "sketch") != kern:
                continue
            full, sub = rec["T"].get("full"), rec["T"].get(name)
            ratio.append(rec["setup_s"]["full"] / rec["setup_s"][name])
            if not full or not sub:
                continue
            for k, T in full.items():
                if not T:
                    continue
                Ts = sub[k]
                if Ts is None:
                    cens += 1
                    continue
                d.append(abs(Ts - T) / T)
        rows.append({"subset": name if gname == "all" else f"{name} ({gname} kernel)", "pairs": len(d),
                     "median": pct(d, 50), "p90": pct(d, 90),
                     "within20": float(np.mean(np.asarray(d) <= 0.2)) if d else float("nan"),
                     "not_reached": cens, "setup_speedup": pct(ratio, 50)})
    return rows


# -------------------------------------------------------------------------------------------------- output

def plots(records, out_dir, stamp, log):
    try:
        from zoo_kernels import plots as P  # noqa: PLC0415
        plt = P.require_matplotlib()
    except ImportError as e:
        log(f"no plots: {e}")
        return []
    panels = []
    have = {(r["model"], r["task"]) for r in records}
    combos = [c for c in PLOT_COMBOS if c in have] or sorted(have)[:2]
    for key in combos:
        for setting in PLOT_SETTINGS:
            rec = next((r for r in records if (r["model"], r["task"]) == key
                        and (r["lr"], r["batch"], r["momentum"]) == setting), None)
            if rec is None:
                continue
            L0 = rec["real_loss"][0]
            panels.append({"title": f"{rec['model']} -> {rec['task']}\nlr={rec['lr']} B={rec['batch']} "
                                    f"m={rec['momentum']}",
                           "real_loss": np.asarray(rec["real_loss"]),
                           "predicted": {n: rec["methods"][n].get("loss_curve") for n in
                                         ("linear-exact", "head-aware", "head-aware+calib")},
                           "targets": [(f * L0, f"{f:g}L0") for f in FRACTIONS]})
    paths = []
    if panels:
        p = os.path.join(out_dir, f"predict-curves-cpu-{stamp}.png")
        P.plot_runs(p, panels, cols=3, suptitle="MiniZoo SGD runs: real vs predicted full-training-set loss")
        paths.append(p)
    # scatter of predicted vs real steps-to-target
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, name in zip(axes, ("linear-exact", "head-aware", "head-aware+calib")):
        for k, mk in zip(target_keys(ACC[0]), "o^sD"):
            xs, ys = [], []
            for rec in records:
                T = rec["real"][k]["steps"]
                if not T:
                    continue
                Tp = rec["methods"][name]["T"].get(k)
                xs.append(T)
                ys.append(Tp if Tp is not None else ACC[1])
            ax.scatter(xs, ys, s=14, marker=mk, label=k, alpha=0.7)
        ax.plot([1, 300], [1, 300], color="grey", lw=0.8)
        ax.plot([1, 300], [1.2, 360], color="grey", lw=0.5, ls=":")
        ax.plot([1, 300], [0.8, 240], color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("real steps to target")
        ax.set_ylabel("predicted steps (horizon = not reached)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(out_dir, f"predict-scatter-cpu-{stamp}.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


ACC = [0.8, 300]  # (accuracy target, horizon) for the scatter plot, set in main


def fmt(v, d=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
        return f"{v:.{d}f}"
    return str(v)


def markdown(summary, approx, groups, costs, subset_rows, args):
    keys = target_keys(args.accuracy)
    lines = ["### Steps-to-target error against real SGD (relative, over (run, target) pairs the real run reaches)", "",
             "| method | pairs | median | p90 | within 20% | censored | false reach | " + " | ".join(
                 f"median {k}" for k in keys) + " | curve median | curve p90 |",
             "|---" * (9 + len(keys)) + "|"]
    for r in summary:
        lines.append(f"| {r['method']} | {r['pairs']} | {fmt(r['median'])} | {fmt(r['p90'])} | {fmt(r['within20'])} | "
                     f"{r['censored']} | {r['false_reach']} | " + " | ".join(fmt(r[f'median {k}']) for k in keys)
                     + f" | {fmt(r['curve_median'])} | {fmt(r['curve_p90'])} |")
    lines += ["", "### Approximation error: linear-sketch (k=%d) against linear-exact" % args.k, "",
              "| pairs | median | p90 | curve median | curve p90 |", "|---|---|---|---|---|",
              f"| {approx['pairs']} | {fmt(approx['median'], 3)} | {fmt(approx['p90'], 3)} | "
              f"{fmt(approx['curve_median'], 3)} | {fmt(approx['curve_p90'], 3)} |"]
    for title, g in groups.items():
        wide = any(len(v) > 3 for v in g.values())
        lines += ["", f"### {title}", "", "| group | pairs | median | p90 |" + (" curve median |" if wide else ""),
                  "|---|---|---|---|" + ("---|" if wide else "")]
        for k, v in g.items():
            lines.append(f"| {k} | {v[0]} | {fmt(v[1])} | {fmt(v[2])} |" + (f" {fmt(v[3], 3)} |" if wide else ""))
    lines += ["", "### Cost: prediction against training (seconds, medians over runs)", "",
              "| method | prediction s (one setting, incl. setup) | amortized s (setup shared by the grid) | "
              "training run / prediction | training to 0.25 L0 / prediction |", "|---|---|---|---|---|"]
    for r in costs:
        lines.append(f"| {r['method']} | {fmt(r['cost_median_s'])} | {fmt(r['amortized_median_s'])} | "
                     f"{fmt(r['train_run_over_pred'], 3)} | {fmt(r['train_to_target_over_pred'], 3)} |")
    if subset_rows:
        lines += ["", "### Subset mode against the full-N prediction (50-shot; exact kernels where N*C <= 5000, "
                  "else the sketch)", "",
                  "| subset | pairs | median | p90 | within 20% | not reached | setup speed-up |",
                  "|---|---|---|---|---|---|---|"]
        for r in subset_rows:
            lines.append(f"| {r['subset']} | {r['pairs']} | {fmt(r['median'])} | {fmt(r['p90'])} | "
                         f"{fmt(r['within20'])} | {r['not_reached']} | {fmt(r['setup_speedup'], 1)} |")
    return "\n".join(lines)


def report(records, subset_recs, args, log, meta):
    """Summaries, markdown (printed), JSON and PNGs of grid records and subset records."""
    summary = summarize(records, args) if records else []
    approx = approx_errors(records, args) if records else {}
    eta = lambda r: f"lr/(1-m) = {r['eta_eff']:.3g}"  # noqa: E731
    pair = lambda r: f"{r['model']} -> {r['task']}"  # noqa: E731
    groups = {}
    if records:
        for name in ("linear-exact", "head-aware", "head-aware+calib"):
            groups[f"{name} by effective learning rate lr/(1-m)"] = by_group(records, args, name, eta)
        for name in ("linear-exact", "linear-sketch", "head-aware", "head-aware+calib"):
            groups[f"{name} by model -> task"] = by_group(records, args, name, pair)
        for name in ("linear-exact", "head-aware", "head-aware+calib"):
            g = {}
            for k in target_keys(args.accuracy):
                vals = [abs((args.horizon if rec["methods"][name]["T"][k] is None else rec["methods"][name]["T"][k])
                            - rec["real"][k]["steps"]) / rec["real"][k]["steps"]
                        for rec in records if rec["real"][k]["steps"]]
                g[k] = (len(vals), pct(vals, 50), pct(vals, 90))
            groups[f"{name} by target"] = g
        groups[f"linear-sketch against linear-exact by sketch width k (settings {SUBSET_SETTINGS})"] = \
            k_study(records, args)
    costs = cost_table(records, args) if records else []
    budget = calibration_budget(records, args) if records else []
    subset_rows = subset_summary(subset_recs) if subset_recs else []
    md = markdown(summary, approx, groups, costs, subset_rows, args) if records else markdown_subset(subset_rows)
    if budget:
        md += ("\n\n### Calibrated mode: gain by the number K of real steps spent (loss targets reached after step K)"
               "\n\n| method | K real steps | pairs | median | p90 | cost (fraction of the 100-step run) |"
               "\n|---|---|---|---|---|---|\n" + "\n".join(
                   f"| {r['method']} | {r['K']} | {r['pairs']} | {fmt(r['median'])} | {fmt(r['p90'])} | "
                   f"{fmt(r['cost_fraction_of_run'], 3)} |" for r in budget))
    print(md)
    stamp = meta["date"]
    os.makedirs(args.out, exist_ok=True)
    tag = args.tag
    if not args.no_plots and records:  # before --compact strips the curves
        for p in plots(records, args.out, stamp + tag, log):
            log(f"wrote {p}")
    if args.compact:  # without the per-step curves (not mergeable again)
        records = [{k: v for k, v in r.items() if k not in ("real_loss", "k_study")}
                   | {"methods": {n: {k: v for k, v in m.items() if k != "loss_curve"}
                                  for n, m in r["methods"].items()}}
                   for r in records]
    with open(os.path.join(args.out, f"predict-cpu-{stamp}{tag}.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "approx": approx, "groups": groups, "costs": costs,
                   "calibration_budget": budget,
                   "subset_summary": subset_rows, "subset": subset_recs, "records": records}, f, indent=0)
    with open(os.path.join(args.out, f"predict-cpu-{stamp}{tag}-tables.md"), "w") as f:
        f.write(md + "\n")


def markdown_subset(subset_rows):
    lines = ["### Subset mode against the full-N prediction (50-shot; exact kernels where N*C <= 5000, "
             "else the sketch)", "", "| subset | pairs | median | p90 | within 20% | not reached | setup speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in subset_rows:
        lines.append(f"| {r['subset']} | {r['pairs']} | {fmt(r['median'])} | {fmt(r['p90'])} | "
                     f"{fmt(r['within20'])} | {r['not_reached']} | {fmt(r['setup_speedup'], 1)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="default: the models of the SGD grid")
    ap.add_argument("--tasks", nargs="*", help="default: the tasks of the SGD grid")
    ap.add_argument("--part", choices=("grid", "subset", "all"), default="all")
    ap.add_argument("--tier", choices=("small", "full"), default="small", help="MiniZoo SGD-grid tier")
    ap.add_argument("--horizon", type=int, default=150, help="predicted steps (the real runs have 100)")
    ap.add_argument("--paths", type=int, default=4, help="Monte-Carlo SGD paths per prediction")
    ap.add_argument("--k", type=int, default=1024, help="sketch width of linear-sketch and the subset part")
    ap.add_argument("--k-study", type=lambda v: [int(x) for x in v.split(",") if x], default=[256, 4096],
                    help="other sketch widths compared with linear-exact on 4 settings per combo (comma list)")
    ap.add_argument("--head-k", type=int, default=512, help="sketch width of head-aware")
    ap.add_argument("--accuracy", type=float, default=0.8, help="the accuracy target")
    ap.add_argument("--calib-steps", type=int, default=10, help="real steps used by the calibrated mode")
    ap.add_argument("--subset-shots", type=int, default=50)
    ap.add_argument("--subset-horizon", type=int, default=300)
    ap.add_argument("--subset-exact-max", type=int, default=5000,
                    help="subset part: exact kernels where N*C is at most this, else the sketch of width --k")
    ap.add_argument("--quick", action="store_true",
                    help="1 model x the 2 smallest tasks, 4 settings each, no k study, no subset part")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--merge", nargs="+", help="only summarize the records of these JSON outputs (no computation)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--compact", action="store_true", help="JSON without the per-step curves (not mergeable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ACC[:] = [args.accuracy, args.horizon]
    stamp = datetime.date.today().isoformat()
    t0 = time.time()
    if args.merge:
        records, subset_recs, metas = [], [], []
        for path in args.merge:
            with open(path) as f:
                d = json.load(f)
            records += d["records"]
            subset_recs += d["subset"]
            metas.append(d["meta"])
        meta = {"date": stamp, "merged": args.merge, "parts": metas, "shared_machine": True}
        report(records, subset_recs, args, log, meta)
        return
    runs = zoo.sgd_runs(args.tier)
    args.models = args.models or sorted({r["model"] for r in runs})
    args.tasks = args.tasks or sorted({r["task"] for r in runs})
    if args.quick:
        small = [t for t in ("pendigits_inverted", "texture_orient") if t in args.tasks] or args.tasks[:2]
        args.models, args.tasks, args.part, args.k_study = args.models[:1], small, "grid", []
        args.tag = args.tag or "-quick"
    records, subset_recs = [], []
    if args.part in ("grid", "all"):
        combos = [(m, t) for m in args.models for t in args.tasks]
        for m, t in tqdm(combos, desc="grid", unit="model x task"):
            rs = [r for r in runs if r["model"] == m and r["task"] == t]
            if args.quick:
                rs = [r for r in rs if (r["lr"], r["batch"], r["momentum"]) in PLOT_SETTINGS + ((0.03, 64, 0.9),)]
            if rs:
                records += run_combo(m, t, rs, args, log)
    grid_s = time.time() - t0
    if args.part in ("subset", "all"):
        t1 = time.time()
        subset_recs = run_subset(args, log)
        log(f"subset part: {time.time() - t1:.0f}s")
    meta = {"date": stamp, "host": platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "grid_seconds": grid_s, "total_seconds": time.time() - t0,
            "args": {k: v for k, v in vars(args).items()}, "shared_machine": True,
            "load_average": os.getloadavg()}
    report(records, subset_recs, args, log, meta)
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
