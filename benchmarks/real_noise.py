"""How noisy is the ground truth? Two real fine-tunings that differ only in their minibatch order.

    python -m benchmarks.real_noise --setting 0.01,64,0.9        # ~40 s per pair and seed on 1 thread

The validation (benchmarks/predict_long.py) scores a prediction against ONE real run, whose minibatch order is one
draw among many. The prediction estimates the expected curve, so even an exact one differs from a single run by
that run's own scatter. For every pair × setting of the saved recommended-mode results (--results), this script
fine-tunes the same model (the same head of seed 0) again with the minibatch orders of --seeds, and reports, over the
targets the seed-0 run reaches after step 100 (the ones the validation scores):
- real vs real: |T_s − T_0| / T_0, the scatter of the ground truth;
- the recommended prediction vs the seed-0 run (the validation's error) and vs the seed-s run.
Real runs are cached next to predict_long's (`-seed<s>` in the name).
Writes benchmarks/results/real-noise-cpu-<date>[-tag].{json,md}.
"""
import argparse
import datetime
import json
import os
import platform

import numpy as np
import torch

from benchmarks.predict_long import real_run, rel, targets, task_data
from zoo_kernels import zoo

SETS = {"development": "predict-long-cpu-2026-11-28-recommended-dev.json",
        "held-out": "predict-long-cpu-2026-11-28-recommended-heldout.json",
        "fresh": "predict-long-cpu-2026-11-28-recommended-fresh.json",
        "new": "predict-long-cpu-2026-11-28-recommended-new.json",
        "fifth (pre-registered)": "predict-long-cpu-2026-11-28-holdout-self-newest.json"}
METHOD = "head-aware[holdout-self]+warm100"  # method="recommended" in those files
WARMUP = 100


def seeded_run(cache, model_name, task, x, y, C, lr, batch, momentum, steps, seed):
    """predict_long.real_run with minibatch order `seed`, cached."""
    path = os.path.join(cache, f"{model_name}-{task}-{len(x)}-{lr}-{batch}-{momentum}-{steps}-seed{seed}.json")
    if os.path.exists(path):
        with open(path) as fh:
            r = json.load(fh)
        return np.asarray(r["t"]), np.asarray(r["loss"]), np.asarray(r["acc"])
    ts, ls, acc, wall = real_run(zoo.load_model(model_name, num_classes=C, seed=0), x, y, lr, batch, momentum, steps,
                                 seed=seed)
    os.makedirs(cache, exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"t": ts.tolist(), "loss": ls.tolist(), "acc": acc.tolist(), "wall": wall,
                   "torch": torch.__version__}, fh)
    return ts, ls, acc


def summary(errs):
    e = np.asarray([np.inf if v is None else v for v in errs], dtype=float)
    if not e.size:
        return "-"
    return f"{100 * quantile(e, 0.5):.0f} % (p90 {100 * quantile(e, 0.9):.0f} %, n {e.size})"


def quantile(values, q):
    """np.quantile's linear interpolation, with inf where it interpolates toward an inf (numpy gives NaN)."""
    e = np.sort(np.asarray(values, dtype=float))
    pos = (e.size - 1) * q
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    return float(e[lo]) if lo == hi else float(e[lo] + (e[hi] - e[lo]) * (pos - lo))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--setting", default=None, help="only this lr,batch,momentum (default: every setting)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--cache", default=".benchmarks/predict_long_real")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--rescore", metavar="JSON", help="rebuild the markdown of a saved result and exit")
    args = ap.parse_args(argv)
    if args.rescore:
        with open(args.rescore) as fh:
            saved = json.load(fh)
        with open(args.rescore.removesuffix(".json") + ".md", "w") as fh:
            fh.write(markdown(saved["rows"], saved["meta"]))
        return
    torch.set_num_threads(1)
    rows = []
    for set_name, fname in SETS.items():
        if set_name not in args.sets:
            continue
        with open(os.path.join(args.results, fname)) as fh:
            records = json.load(fh)["records"]
        for r in records:
            if args.setting and (r["lr"], r["batch"], r["momentum"]) != tuple(
                    t(v) for t, v in zip((float, int, float), args.setting.split(","))):
                continue
            C, x, y = task_data(r["task"])
            real0 = r["real"]
            pred = r["methods"][METHOD]["T"]
            for s in args.seeds:
                ts, ls, acc = seeded_run(args.cache, r["model"], r["task"], x, y, C, r["lr"], r["batch"],
                                         r["momentum"], r["steps"], s)
                real_s = targets(ts, ls, acc, 0.9)
                for k, t0 in real0.items():
                    if t0 is None or t0 <= WARMUP:
                        continue
                    rows.append({"set": set_name, "model": r["model"], "task": r["task"], "lr": r["lr"],
                                 "batch": r["batch"], "momentum": r["momentum"], "seed": s, "target": k,
                                 "real0": t0, "real_s": real_s[k], "pred": pred[k],
                                 "real_vs_real": rel(real_s[k], t0) if real_s[k] is not None else None,
                                 "pred_vs_real0": rel(pred[k], t0),
                                 "pred_vs_real_s": None if real_s[k] is None else rel(pred[k], real_s[k])})
                print(f"{set_name}: {r['model']} -> {r['task']} {r['lr']},{r['batch']},{r['momentum']} seed {s}: "
                      + ", ".join(f"{k} {real0[k] and round(real0[k])}/{real_s[k] and round(real_s[k])}"
                                  for k in real0), flush=True)
    stamp = datetime.date.today().isoformat()
    base = os.path.join(args.out, f"real-noise-cpu-{stamp}" + (f"-{args.tag}" if args.tag else ""))
    meta = {"date": stamp, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": 1, "argv": argv, "setting": args.setting, "seeds": args.seeds, "sets": args.sets}
    with open(base + ".json", "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(markdown(rows, meta))
    print("wrote", base + ".md")


def vs_mean(row):
    """The prediction's error against the mean of the two runs' steps (None where one run never reaches it)."""
    return None if row["real_s"] is None else rel(row["pred"], (row["real0"] + row["real_s"]) / 2)


def markdown(rows, meta):
    lines = [f"# The ground truth's own scatter: real runs with another minibatch order (CPU, {meta['date']})", "",
             f"`python -m benchmarks.real_noise` (torch {meta['torch']}, 1 thread; setting "
             f"{meta['setting'] or 'all'}; minibatch-order seeds {meta['seeds']} against the validation's seed 0; "
             "the same model and head). Targets: those the seed-0 run reaches after step 100 (L0/2, L0/4, L0/10, "
             "L0/30, 90 % accuracy). A target the other run never reaches counts as inf.", "",
             "| set | targets | real vs real | prediction vs seed-0 run (the validation's error) | "
             "prediction vs the other run | prediction vs the mean of both runs |", "|---|---|---|---|---|---|"]
    for name in list(dict.fromkeys(r["set"] for r in rows)) + ["pooled"]:
        sel = [r for r in rows if name in ("pooled", r["set"])]
        lines.append(f"| {name} | {len(sel)} | {summary([r['real_vs_real'] for r in sel])} | "
                     f"{summary([r['pred_vs_real0'] for r in sel])} | {summary([r['pred_vs_real_s'] for r in sel])} | "
                     f"{summary([vs_mean(r) for r in sel])} |")
    lines += ["", "Per target (steps: seed-0 run / other run / prediction):", "",
              "| set | pair | setting | seed | target | seed 0 | other | prediction |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "never" if v is None else f"{v:.0f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['set']} | {r['model']} -> {r['task']} | {r['lr']},{r['batch']},{r['momentum']} | "
                     f"{r['seed']} | {r['target']} | {fmt(r['real0'])} | {fmt(r['real_s'])} | {fmt(r['pred'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
