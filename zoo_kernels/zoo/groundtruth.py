"""Regenerate the MiniZoo ground-truth files (zoo_kernels/zoo/data/).

    python -m zoo_kernels.zoo.groundtruth --tier small              # fine-tuning accuracies + SGD grid
    python -m zoo_kernels.zoo.groundtruth --tier full --part finetune --resume
    python -m zoo_kernels.zoo.groundtruth --tier full --part sgd --models convnet_latin --resume
    python -m zoo_kernels.zoo.groundtruth --tier small --part finetune --seeds 0 --verify   # recompute, compare

``--verify`` recomputes the selected runs, writes nothing, compares each with its stored row (test accuracy
within ``--acc-samples`` test samples, default 1; SGD runs: every per-step full-train loss within relative
``--rtol``, default 1e-3, and the same number of steps and divergence), prints a table, and exits with status 1
on any mismatch or missing row. It also compares each selected task's image fingerprints with the meta file.
``--lrs/--batches/--momenta`` restrict the SGD grid (generation and verification).

Files (per tier, CSV, one header row; ``GT_VERSION`` in ``meta_<tier>.json``):

* ``finetune_<tier>.csv``  one row per model x task x shots (``api.SHOTS``: 10, 50; the full tier also the held-out
  levels ``api.HELDOUT_SHOTS``: 15, 25) x seed (0, 1): test accuracy/loss, final full-train loss/accuracy, optimization
  wall seconds, the recipe (``finetune.RECIPE``), sizes. ``--report`` shows ``api.SHOTS`` only; ``--blind`` keeps
  accuracies out of the progress log (how the held-out level was generated).
* ``sgd_runs_<tier>.csv``  one row per SGD-grid run (lr x batch x momentum, ``finetune.SGD_GRID``) on the
  10-shot split: config, final train loss/accuracy, test accuracy, wall seconds, divergence.
* ``sgd_steps_<tier>.csv``  per step of every grid run: full-training-set loss and accuracy, cumulative
  optimization wall seconds.
* ``meta_<tier>.json``  what was computed, with which versions, threads, device, and how long it took.

Rows are appended as they finish, so ``--resume`` continues an interrupted run. Fine-tuning rows already in the
other tier's file with the same recipe are reused (a run is deterministic given its seed, device and
thread count).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import os
import math
import platform
import sys
import time

import torch

from . import api
from . import data as D
from .finetune import RECIPE, SEEDS, SGD_GRID, SGD_GRID_SHOTS, SGD_GRID_STEPS, finetune

GT_VERSION = 1
FT_COLS = ["model", "task", "shots", "seed", "test_acc", "test_loss", "train_acc", "train_loss", "wall_seconds",
           "lr", "momentum", "batch", "steps", "weight_decay", "n_train", "n_test", "num_classes", "diverged"]
RUN_COLS = ["run", "model", "task", "shots", "seed", "lr", "batch", "momentum", "steps", "n_train", "num_classes",
            "train_loss", "train_acc", "test_acc", "wall_seconds", "diverged"]
STEP_COLS = ["run", "step", "train_loss", "train_acc", "wall"]
# The SGD grid is measured on these models of each tier (every task of the tier).
SGD_MODELS = {"small": ("convnet_latin", "resnet_multi"),
              "full": ("convnet_latin", "resnet_multi", "mobilenet_textures", "convnet_random")}


def _fmt(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class _Appender:
    def __init__(self, path: str, cols: list[str], resume: bool):
        self.path, self.cols = path, cols
        fresh = not (resume and os.path.exists(path))
        if fresh:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(cols)

    def write(self, rows: list[dict]):
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for r in rows:
                w.writerow([_fmt(r[c]) for c in self.cols])


def _existing(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return api._read_csv(path)


def _recipe_match(r: dict) -> bool:
    return (abs(r["lr"] - RECIPE.lr) < 1e-12 and abs(r["momentum"] - RECIPE.momentum) < 1e-12
            and r["steps"] == RECIPE.steps and abs(r["weight_decay"] - RECIPE.weight_decay) < 1e-12)


def finetune_one(model: str, task: str, shots: int, seed: int, device: str = "cpu") -> dict:
    """One ground-truth fine-tuning run of the recipe (a row of ``finetune_<tier>.csv``, unrounded)."""
    xtr, ytr, xte, yte = api.load_task(task, shots=shots)
    c = D.TARGETS[task][0]
    net = api.load_model(model, num_classes=c, seed=seed)
    r = finetune(net, xtr, ytr, xte, yte, num_classes=c, seed=seed, device=device, **RECIPE.as_dict())
    r.update(model=model, task=task, shots=shots, weight_decay=RECIPE.weight_decay)
    return r


def sgd_one(model: str, task: str, lr: float, batch: int, momentum: float, device: str = "cpu") -> dict:
    """One SGD-grid run (seed 0, ``SGD_GRID_SHOTS``, ``SGD_GRID_STEPS``) with its per-step trace ``steps_trace``."""
    xtr, ytr, xte, yte = api.load_task(task, shots=SGD_GRID_SHOTS)
    c = D.TARGETS[task][0]
    net = api.load_model(model, num_classes=c, seed=0)
    r = finetune(net, xtr, ytr, xte, yte, num_classes=c, lr=lr, batch=batch, momentum=momentum,
                 steps=SGD_GRID_STEPS, seed=0, record=True, device=device)
    r.update(model=model, task=task, shots=SGD_GRID_SHOTS)
    return r


def sgd_grid(lrs=None, batches=None, momenta=None) -> list[tuple[float, int, float]]:
    """The (lr, batch, momentum) configurations of ``SGD_GRID``, optionally restricted to the given values."""
    pick = lambda vals, sel: [v for v in vals if sel is None or any(abs(v - x) < 1e-12 for x in sel)]  # noqa: E731
    return list(itertools.product(pick(SGD_GRID["lr"], lrs), pick(SGD_GRID["batch"], batches),
                                  pick(SGD_GRID["momentum"], momenta)))


def run_finetune(tier, models, tasks, shots, seeds, resume, device, log, blind=False):
    path = api.gt_path("finetune", tier)
    old = _existing(path) if resume else []
    out = _Appender(path, FT_COLS, resume)
    done = {(r["model"], r["task"], r["shots"], r["seed"]) for r in old}
    other = "small" if tier == "full" else "full"
    if os.path.exists(api.gt_path("finetune", other)):
        reuse = [r for r in _existing(api.gt_path("finetune", other))
                 if _recipe_match(r) and (r["model"], r["task"], r["shots"], r["seed"]) not in done
                 and r["model"] in models and r["task"] in tasks and r["shots"] in shots and r["seed"] in seeds]
        out.write(reuse)
        done |= {(r["model"], r["task"], r["shots"], r["seed"]) for r in reuse}
        if reuse:
            log(f"reused {len(reuse)} rows of the {other} tier")
    todo = [k for k in itertools.product(models, tasks, shots, seeds) if k not in done]
    log(f"finetune: {len(todo)} runs to do ({len(done)} done)")
    t0 = time.time()
    for i, (m, t, s, seed) in enumerate(todo):
        r = finetune_one(m, t, s, seed, device)
        out.write([r])
        if (i + 1) % 10 == 0 or i + 1 == len(todo):
            el = time.time() - t0
            acc = "" if blind else f": acc {r['test_acc']:.3f}"
            log(f"  {i + 1}/{len(todo)} runs, {el:.0f}s elapsed, ~{el / (i + 1) * (len(todo) - i - 1):.0f}s left "
                f"(last: {m} {t} {s}-shot seed {seed}{acc})")
    return time.time() - t0, len(todo)


def run_sgd(tier, models, tasks, resume, device, log, grid=None):
    runs_path, steps_path = api.gt_path("sgd_runs", tier), api.gt_path("sgd_steps", tier)
    old = _existing(runs_path) if resume else []
    runs_out = _Appender(runs_path, RUN_COLS, resume)
    steps_out = _Appender(steps_path, STEP_COLS, resume)
    key = lambda m, t, lr, b, mo: (m, t, float(lr), int(b), float(mo))  # noqa: E731
    done = {key(r["model"], r["task"], r["lr"], r["batch"], r["momentum"]) for r in old}
    next_id = max((r["run"] for r in old), default=-1) + 1
    grid = sgd_grid() if grid is None else grid
    other = "small" if tier == "full" else "full"
    if os.path.exists(api.gt_path("sgd_runs", other)) and os.path.exists(api.gt_path("sgd_steps", other)):
        in_grid = {(float(lr), min(int(b), SGD_GRID_SHOTS * D.TARGETS[t][0]), float(mo), t)
                   for lr, b, mo in grid for t in tasks}
        reuse = [r for r in _existing(api.gt_path("sgd_runs", other)) if r["model"] in models and r["task"] in tasks
                 and (r["lr"], r["batch"], r["momentum"], r["task"]) in in_grid and r["steps"] == SGD_GRID_STEPS and r["shots"] == SGD_GRID_SHOTS
                 and key(r["model"], r["task"], r["lr"], r["batch"], r["momentum"]) not in done]
        if reuse:
            steps = {}
            for st in _existing(api.gt_path("sgd_steps", other)):
                steps.setdefault(st["run"], []).append(st)
            for r in reuse:
                old_id, r = r["run"], dict(r, run=next_id)
                runs_out.write([r])
                steps_out.write([dict(st, run=next_id) for st in steps[old_id]])
                done.add(key(r["model"], r["task"], r["lr"], r["batch"], r["momentum"]))
                next_id += 1
            log(f"reused {len(reuse)} SGD runs of the {other} tier")
    n_train = {t: SGD_GRID_SHOTS * D.TARGETS[t][0] for t in tasks}  # files hold the effective batch min(b, N)
    todo = [(m, t, lr, b, mo) for m in models for t in tasks for lr, b, mo in grid
            if key(m, t, lr, min(b, n_train[t]), mo) not in done]
    log(f"sgd grid: {len(todo)} runs to do ({len(done)} done), {SGD_GRID_STEPS} steps, {SGD_GRID_SHOTS}-shot")
    t0 = time.time()
    for i, (m, t, lr, b, mo) in enumerate(todo):
        r = sgd_one(m, t, lr, b, mo, device)
        tr = r.pop("steps_trace")
        r["run"] = next_id
        runs_out.write([r])
        steps_out.write([{"run": next_id, "step": st, "train_loss": lo, "train_acc": ac, "wall": wa}
                         for st, lo, ac, wa in zip(tr["step"], tr["train_loss"], tr["train_acc"], tr["wall"])])
        next_id += 1
        if (i + 1) % 16 == 0 or i + 1 == len(todo):
            el = time.time() - t0
            log(f"  {i + 1}/{len(todo)} runs, {el:.0f}s elapsed, ~{el / (i + 1) * (len(todo) - i - 1):.0f}s left")
    return time.time() - t0, len(todo)


# ------------------------------------------------------------------------------------------------ verification


def _rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare_finetune(stored: dict, new: dict, acc_samples: int = 1) -> dict:
    """Compare a recomputed fine-tuning run with its stored row: test accuracy within ``acc_samples`` test samples
    (the files keep 6 significant digits, so accuracies are compared as counts of correct test samples)."""
    n = new["n_test"]
    want, got = round(stored["test_acc"] * n), round(new["test_acc"] * n)
    ok = abs(want - got) <= acc_samples and stored["n_test"] == n and stored["n_train"] == new["n_train"]
    return {"ok": ok, "stored": stored["test_acc"], "new": new["test_acc"], "diff": f"{got - want:+d}/{n} samples",
            "loss_rel": _rel(stored["test_loss"], new["test_loss"])}


def compare_sgd(stored: dict, stored_steps: dict, new: dict, rtol: float = 1e-3) -> dict:
    """Compare a recomputed SGD-grid run with its stored row and per-step records: the same number of steps and
    divergence, and every per-step full-train loss within relative ``rtol`` (plus the files' 6-digit rounding)."""
    a, b = stored_steps["train_loss"], new["steps_trace"]["train_loss"]
    worst = max((_rel(x, y) for x, y in zip(a, b)), default=0.0)
    ok = len(a) == len(b) and bool(stored["diverged"]) == bool(new["diverged"]) and worst <= rtol + 1e-5
    return {"ok": ok, "stored": stored["train_loss"], "new": new["train_loss"],
            "diff": f"{len(b)}/{len(a)} steps, max rel {worst:.1e}", "loss_rel": worst}


def check_task_data(tier: str, tasks) -> list[dict]:
    """Each task's image fingerprints against those recorded in ``meta_<tier>.json`` when the files were made."""
    path = os.path.join(api.DATA_DIR, f"meta_{tier}.json")
    stats = json.load(open(path)).get("task_stats", {}) if os.path.exists(path) else {}
    out = []
    for t in tasks:
        xtr, _, xte, _ = api.load_task(t)
        got = (D.fingerprint(xtr), D.fingerprint(xte))
        want = (stats[t]["train_sha"], stats[t]["test_sha"]) if t in stats else None
        out.append({"task": t, "ok": want == got, "stored": "/".join(want) if want else "(none)",
                    "new": "/".join(got)})
    return out


def verify(tier: str, part: str = "all", models=None, tasks=None, shots=api.SHOTS, seeds=SEEDS, grid=None,
           device: str = "cpu", acc_samples: int = 1, rtol: float = 1e-3, log=print) -> bool:
    """Recompute the selected runs of ``tier`` (nothing is written) and compare them with the stored files; log a
    table; return whether every run matched. Selection as in generation: ``models`` defaults to the tier's
    models (fine-tuning) and to ``SGD_MODELS[tier]`` (SGD grid), ``tasks`` to the tier's tasks."""
    tasks = list(tasks or api.tasks(tier))
    bad, n, t0 = 0, 0, time.time()
    log(f"{'part':8} {'model':20} {'task':18} {'run':26} {'stored':>9} {'new':>9}  {'difference':30} ok")
    for r in check_task_data(tier, tasks):
        log(f"{'data':8} {'':20} {r['task']:18} {'train/test sha256':26} {'':>9} {'':>9}  "
            f"{'same' if r['ok'] else 'stored ' + r['stored'] + ' now ' + r['new']:30} {'ok' if r['ok'] else 'FAIL'}")
        bad += not r["ok"]
    if part in ("finetune", "all"):
        ms = list(models or api.models(tier))
        stored = {(r["model"], r["task"], r["shots"], r["seed"]): r for r in api.finetune_runs(tier)}
        for m, t, s, seed in itertools.product(ms, tasks, shots, seeds):
            n += 1
            row = stored.get((m, t, s, seed))
            if row is None:
                log(f"{'finetune':8} {m:20} {t:18} {f'{s}-shot seed {seed}':26} {'(none)':>9} {'':>9}  "
                    f"{'no stored row':30} FAIL")
                bad += 1
                continue
            c = compare_finetune(row, finetune_one(m, t, s, seed, device), acc_samples)
            bad += not c["ok"]
            log(f"{'finetune':8} {m:20} {t:18} {f'{s}-shot seed {seed}':26} {c['stored']:9.4f} {c['new']:9.4f}  "
                f"{c['diff']:30} {'ok' if c['ok'] else 'FAIL'}")
    if part in ("sgd", "all"):
        ms = list(models or SGD_MODELS[tier])
        runs = api.sgd_runs(tier)
        key = lambda m, t, lr, b, mo: (m, t, round(float(lr), 12), int(b), round(float(mo), 12))  # noqa: E731
        stored = {key(r["model"], r["task"], r["lr"], r["batch"], r["momentum"]): r for r in runs}
        for m, t, (lr, b, mo) in itertools.product(ms, tasks, grid or sgd_grid()):
            n += 1
            eff = min(b, SGD_GRID_SHOTS * D.TARGETS[t][0])
            name = f"lr {lr:g} batch {eff} mom {mo:g}"
            row = stored.get(key(m, t, lr, eff, mo))
            if row is None:
                log(f"{'sgd':8} {m:20} {t:18} {name:26} {'(none)':>9} {'':>9}  {'no stored run':30} FAIL")
                bad += 1
                continue
            c = compare_sgd(row, row["steps"], sgd_one(m, t, lr, b, mo, device), rtol)
            bad += not c["ok"]
            log(f"{'sgd':8} {m:20} {t:18} {name:26} {c['stored']:9.4f} {c['new']:9.4f}  {c['diff']:30} "
                f"{'ok' if c['ok'] else 'FAIL'}")
    log(f"verify {tier}: {n} runs recomputed in {time.time() - t0:.0f}s, {bad} mismatch(es) "
        f"(accuracy within {acc_samples} test sample(s), per-step loss within rel {rtol:g})")
    return bad == 0


def describe() -> str:
    """Markdown tables of the zoo's experts (source accuracy, size, training time) and target tasks."""
    man = api.manifest()["models"]
    lines = ["| expert | arch | source | params | source val acc % | train s |", "|---|---|---|---|---|---|"]
    for m in api.models(include_random=False):
        i = man[m]
        lines.append(f"| {m} | {i['arch']} | {i['domain']} | {i['params']:,} | {100 * i['source_val_acc']:.1f} "
                     f"| {i['train_seconds']:.0f} |")
    lines += ["", "| task | classes | train pool / test per class | holds out |", "|---|---|---|---|"]
    for t in api.tasks():
        i = api.task_info(t)
        lines.append(f"| {t} | {i['num_classes']} | {i['train_pool_per_class']} / {i['test_per_class']} "
                     f"| {i['description']} |")
    return "\n".join(lines)


def best_table(tier: str) -> str:
    """Per task and shot level: the best model, its accuracy, the runner-up, and the best of each source."""
    rows = api.ground_truth(tier)
    lines = ["| task | shots | best model | acc % | runner-up | acc % | best random control % | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for t in api.tasks(tier):
        for s in api.SHOTS:
            sub = sorted((r for r in rows if r["task"] == t and r["shots"] == s), key=lambda r: -r["accuracy"])
            if not sub:
                continue
            ctrl = max((r["accuracy"] for r in sub if r["model"].endswith("_random")), default=float("nan"))
            ru = sub[1] if len(sub) > 1 else None
            lines.append(f"| {t} | {s} | {sub[0]['model']} | {100 * sub[0]['accuracy']:.1f} | "
                         f"{ru['model'] if ru else ''} | {100 * ru['accuracy']:.1f} | {100 * ctrl:.1f} | "
                         f"{min(r['seeds'] for r in sub)} |" if ru else f"| {t} | {s} | {sub[0]['model']} | "
                         f"{100 * sub[0]['accuracy']:.1f} | | | | |")
    return "\n".join(lines)


def report(tier: str) -> str:
    """Markdown tables of the tier's ground truth: accuracy per task x model (mean over seeds), best expert."""
    rows = api.ground_truth(tier)
    if not rows:
        return f"(no {tier} ground truth)"
    models = [m for m in api.models(tier) if any(r["model"] == m for r in rows)]
    lines = []
    for shots in api.SHOTS:
        sub = {(r["task"], r["model"]): r for r in rows if r["shots"] == shots}
        tasks = [t for t in api.tasks(tier) if any((t, m) in sub for m in models)]
        if not tasks:
            continue
        lines.append(f"\n**{shots} shots per class** (test accuracy %, mean over seeds; * = best, n = seeds)\n")
        lines.append("| task | " + " | ".join(m.replace("_", " ") for m in models) + " | best | n |")
        lines.append("|---" * (len(models) + 3) + "|")
        for t in tasks:
            accs = {m: sub[(t, m)]["accuracy"] for m in models if (t, m) in sub}
            best = max(accs, key=accs.get)
            cells = [("*" if m == best else "") + f"{100 * accs[m]:.1f}" if m in accs else "" for m in models]
            seeds = min(sub[(t, m)]["seeds"] for m in accs)
            lines.append(f"| {t} | " + " | ".join(cells) + f" | {best} | {seeds} |")
    return "\n".join(lines)


def _account(p: dict, secs: float, n: int, proc_secs: float, argv, path: str):
    """Add one invocation's time and runs to a part of the meta file. Keeps what earlier invocations recorded:
    ``seconds``/``runs`` accumulate where present (or start here), ``invocations`` gets one record, and the
    hand-kept totals of the full tier's fine-tuning part (``process_seconds``, ``wall_clock_seconds``,
    ``runs_in_file``, ``optimization_seconds_sum``) are updated where present."""
    if "seconds" in p or "invocations" not in p:  # parts kept as running totals (a fresh part starts one)
        p["seconds"] = round(p.get("seconds", 0.0) + secs, 1)
        p["runs"] = p.get("runs", 0) + n
    if "invocations" in p:
        args = " ".join(a for a in (sys.argv[1:] if argv is None else argv))
        p["invocations"].append({"args": args, "seconds": round(proc_secs), "runs": n})
    for k in ("process_seconds", "wall_clock_seconds"):  # (invocations after the first run one after another)
        if k in p:
            p[k] = round(p[k] + proc_secs)
    rows = _existing(path)
    if "runs_in_file" in p:
        p["runs_in_file"] = len(rows)
    if "optimization_seconds_sum" in p:
        p["optimization_seconds_sum"] = round(sum(r["wall_seconds"] for r in rows), 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=api.TIERS, default="small")
    ap.add_argument("--part", choices=("finetune", "sgd", "all"), default="all")
    ap.add_argument("--models", nargs="*", help="subset of the tier's models")
    ap.add_argument("--tasks", nargs="*", help="subset of the tier's tasks")
    ap.add_argument("--shots", nargs="*", type=int, default=list(api.SHOTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--resume", action="store_true", help="append to the existing files, skipping done runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (the stored files were made on cpu)")
    ap.add_argument("--report", action="store_true", help="print markdown tables of the stored ground truth and exit")
    ap.add_argument("--blind", action="store_true",
                    help="do not print test accuracies in the progress log (for held-out levels nobody may look at)")
    ap.add_argument("--lrs", nargs="*", type=float, help="restrict the SGD grid's learning rates")
    ap.add_argument("--batches", nargs="*", type=int, help="restrict the SGD grid's batch sizes")
    ap.add_argument("--momenta", nargs="*", type=float, help="restrict the SGD grid's momenta")
    ap.add_argument("--verify", action="store_true",
                    help="recompute the selected runs, compare with the stored files (nothing is written); "
                         "exit status 1 on a mismatch")
    ap.add_argument("--acc-samples", type=int, default=1, help="--verify: allowed test-accuracy difference, in samples")
    ap.add_argument("--rtol", type=float, default=1e-3, help="--verify: allowed relative per-step loss difference")
    args = ap.parse_args(argv)
    if args.report:
        print(describe() + "\n\n" + best_table(args.tier) + "\n" + report(args.tier))
        return 0
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    log = lambda s: print(s, flush=True)  # noqa: E731
    grid = sgd_grid(args.lrs, args.batches, args.momenta)
    if not grid:
        ap.error("--lrs/--batches/--momenta select no configuration of the SGD grid")
    if args.verify:
        ok = verify(args.tier, args.part, args.models, args.tasks, args.shots, args.seeds, grid, device,
                    args.acc_samples, args.rtol, log)
        return 0 if ok else 1
    os.makedirs(api.DATA_DIR, exist_ok=True)
    models = args.models or api.models(args.tier)
    tasks = args.tasks or api.tasks(args.tier)
    meta_path = os.path.join(api.DATA_DIR, f"meta_{args.tier}.json")
    meta = json.load(open(meta_path)) if (args.resume and os.path.exists(meta_path)) else {"parts": {}}
    info = {"gt_version": GT_VERSION, "data_version": D.DATA_VERSION, "tier": args.tier,
            "recipe": RECIPE.as_dict(), "seeds": args.seeds, "shots": args.shots,
            "sgd_grid": {**{k: list(v) for k, v in SGD_GRID.items()}, "steps": SGD_GRID_STEPS,
                         "shots": SGD_GRID_SHOTS, "seed": 0},
            "torch": str(torch.__version__), "freetype": D.freetype_version(), "device": device,
            "threads": args.threads, "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_count": os.cpu_count()}
    if args.resume:  # coverage accumulates over resumed invocations
        info["seeds"] = sorted(set(meta.get("seeds", [])) | set(args.seeds))
        info["shots"] = sorted(set(meta.get("shots", [])) | set(args.shots))
    meta.update(info)
    stats = meta.setdefault("task_stats", {})
    for t in tasks:  # what the data looked like when the ground truth was measured (tests compare the means)
        xtr, _, xte, _ = api.load_task(t)
        stats[t] = {"train_mean": round(float(xtr.mean()), 6), "test_mean": round(float(xte.mean()), 6),
                    "train_sha": D.fingerprint(xtr), "test_sha": D.fingerprint(xte)}
    if args.part in ("finetune", "all"):
        t_proc = time.time()
        secs, n = run_finetune(args.tier, models, tasks, args.shots, args.seeds, args.resume, device, log,
                               args.blind)
        if not args.resume:
            meta["parts"].pop("finetune", None)
        p = meta["parts"].setdefault("finetune", {})
        _account(p, secs, n, time.time() - t_proc, argv, api.gt_path("finetune", args.tier))
        p["models"], p["tasks"] = sorted(set(p.get("models", [])) | set(models)), sorted(set(p.get("tasks", [])) | set(tasks))
        p["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        json.dump(meta, open(meta_path, "w"), indent=1, sort_keys=True)
    if args.part in ("sgd", "all"):
        sgd_models = args.models or [m for m in SGD_MODELS[args.tier]]
        t_proc = time.time()
        secs, n = run_sgd(args.tier, sgd_models, tasks, args.resume, device, log, grid)
        if not args.resume:
            meta["parts"].pop("sgd", None)
        p = meta["parts"].setdefault("sgd", {})
        _account(p, secs, n, time.time() - t_proc, argv, api.gt_path("sgd_runs", args.tier))
        p["models"], p["tasks"] = sorted(set(p.get("models", [])) | set(sgd_models)), sorted(set(p.get("tasks", [])) | set(tasks))
        p["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        json.dump(meta, open(meta_path, "w"), indent=1, sort_keys=True)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
