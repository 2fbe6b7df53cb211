"""A prediction for a training set kept on disk: read through a Dataset, against loading it whole.

    python -m benchmarks.large_dataset [--n 1000000] [--task latin_heldout] [--model convnet_multi]

Writes N MiniZoo images to a raw float32 file (40,000 generated images of the task, each copy shifted by a
few pixels), then runs one prediction per fresh process and reads its wall time and peak RSS (VmHWM):
- "dataset": a map-style Dataset reading one row per pread; zoo_kernels reads the rows it needs (zoo_kernels.samples);
- "tensors": what a user would do otherwise, and what zoo_kernels did before: the whole file loaded into tensors.
The prediction: the recommended mode's settings with K = 100 real steps and M = 2,000 subset rows (the half-epoch
warm-up and M = N/20 of the recommended mode would read half of a 1,000,000-row set and integrate 50,000 rows:
hours on this machine), so the time is the data's plus a fixed prediction. Both must give the same curves.
Results: benchmarks/results/large-dataset-cpu-<date>-n<N>.{md,json}.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

from benchmarks.common import cpu_model
from benchmarks.peak_rss import peak_rss_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTING = dict(lr=0.01, batch_size=64, momentum=0.9, max_steps=2000, paths=2, sampling="stream", seed=0)
WARMUP, SUBSET, HOLDOUT = 100, 2000, 200
RECOMMENDED_STEPS = 20000  # --recommended: the horizon of the N = 40,000 validation runs


class FileImages(torch.utils.data.Dataset):
    """Rows of a float32 image file on disk, each read with its own pread (counted in `reads`), as a Dataset of
    image files does; labels in `targets`. (Not a np.memmap: here, reading 10,600 random rows of a cached 3.8 GiB
    file through a mapping raised the RSS by 3.9 GB, pages mapped far beyond the rows read.)"""

    def __init__(self, path, shape, labels):
        self.path, self.shape, self.targets, self.reads, self.fd = path, shape, labels, 0, None
        self.row_bytes = int(np.prod(shape[1:])) * 4

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        self.reads += 1
        buf = os.pread(self.fd, self.row_bytes, int(i) * self.row_bytes)
        return torch.frombuffer(bytearray(buf), dtype=torch.float32).reshape(self.shape[1:]), int(self.targets[i])

    def read_all(self):
        """The whole file as one tensor (what loading the data set whole costs)."""
        return torch.from_numpy(np.fromfile(self.path, dtype=np.float32).reshape(self.shape))


def write_file(path, task, n):
    """N images of `task` into `path` (copies of 40,000 generated ones, copy c shifted by (c % 5 − 2, c // 5 % 5 − 2)
    pixels); returns (shape, labels, num_classes)."""
    from zoo_kernels.zoo import data as D  # noqa: PLC0415
    C = D.TARGETS[task][0]
    x, y = D.make_target(task, "train", -(-40000 // C))
    base = x.numpy().astype(np.float32)
    shape = (n,) + base.shape[1:]
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
    labels = np.empty(n, dtype=np.int64)
    for c, s in enumerate(range(0, n, len(base))):
        rows = min(len(base), n - s)
        mm[s:s + rows] = np.roll(base[:rows], (c % 5 - 2, c // 5 % 5 - 2), axis=(-2, -1))
        labels[s:s + rows] = y.numpy()[:rows]
    mm.flush()
    return shape, labels, C


def child(case, path, shape, labels_path, model_name, threads):
    """One prediction in this fresh process; prints a JSON line."""
    import zoo_kernels as zk  # noqa: PLC0415
    from zoo_kernels import zoo  # noqa: PLC0415
    from zoo_kernels.predict import RECOMMENDED  # noqa: PLC0415
    torch.set_num_threads(threads)
    labels = np.load(labels_path)
    C = int(labels.max()) + 1
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    ds = FileImages(path, shape, labels)
    data = (ds.read_all(), torch.from_numpy(labels)) if case == "tensors" else ds
    load_s = time.perf_counter() - t0
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    t1 = time.perf_counter()
    if case == "recommended":  # the mode itself: K = N/2B, M = N/20, H = 200, over RECOMMENDED_STEPS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "tested on up to 40,000 samples": known here
            p = zk.predict_training_time(model, data, method="recommended", progress=True,
                                         **{**SETTING, "max_steps": RECOMMENDED_STEPS})
    else:
        settings = {**RECOMMENDED, "warmup_steps": WARMUP, "subset": SUBSET}
        p = zk.predict_training_time(model, data, method="head-aware", holdout=HOLDOUT, holdout_self=True,
                                     **settings, **SETTING)
    predict_s = time.perf_counter() - t1
    print(json.dumps({"case": case, "load_s": load_s, "predict_s": predict_s,
                      "rows_read": None if case == "tensors" else ds.reads, "base_rss_gb": base / 2**30,
                      "peak_rss_gb": peak_rss_bytes() / 2**30, "K": p.warmup_steps, "step_s": p.step_seconds,
                      "cost_s": p.cost_seconds, "max_steps": len(p.loss_curve) - 1,
                      "steps_to": {f: p.steps_to(fraction=f) for f in (0.5, 0.25, 0.1)},
                      "loss_curve": p.loss_curve[::100].tolist()}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--task", default="latin_heldout")
    ap.add_argument("--model", default="convnet_multi")
    ap.add_argument("--dir", default="/tmp/zk_large_dataset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--recommended", action="store_true", help="instead: method='recommended' itself through the "
                    "Dataset (K = N/2B real steps, M = N/20), its rows read, memory and cost against the training's")
    ap.add_argument("--child", nargs=4, metavar=("CASE", "PATH", "SHAPE", "LABELS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        case, path, shape, labels_path = args.child
        return child(case, path, tuple(int(v) for v in shape.split(",")), labels_path, args.model, args.threads)
    os.makedirs(args.dir, exist_ok=True)
    path, labels_path = os.path.join(args.dir, "images.f32"), os.path.join(args.dir, "labels.npy")
    t0 = time.perf_counter()
    shape, labels, C = write_file(path, args.task, args.n)
    np.save(labels_path, labels)
    print(f"wrote {args.n} images {shape[1:]} ({os.path.getsize(path) / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for case in ("recommended",) if args.recommended else ("dataset", "tensors"):
        cmd = [sys.executable, "-m", "benchmarks.large_dataset", "--model", args.model, "--threads",
               str(args.threads), "--child", case, path, ",".join(map(str, shape)), labels_path]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            results[case] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[case]["wall_s"] = time.perf_counter() - t
        print(case, json.dumps({k: v for k, v in results[case].items() if k != "loss_curve"}), flush=True)
    for f in (path, labels_path):
        os.remove(f)
    if args.recommended:
        report_recommended(args, shape, C, results["recommended"])
        return 0 if "error" not in results["recommended"] else 1
    a, b = (results[c].get("loss_curve") for c in ("dataset", "tensors"))
    same = a is not None and b is not None and np.allclose(a, b, rtol=1e-9, atol=0)
    report(args, shape, C, results, same)
    return 0 if same else 1


def write_results(args, name, record, lines):
    """benchmarks/results-style <name>-cpu-<date>-n<N>.json (`record`) and .md (`lines`)."""
    stem = os.path.join(args.out, f"{name}-cpu-{record['date']}-n{args.n}")
    with open(stem + ".json", "w") as fh:
        json.dump(record, fh, indent=1)
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_facts(args, shape, C):
    """The facts every results file of this script starts with."""
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads": args.threads, "n": args.n,
            "shape": shape, "classes": C, "task": args.task, "model": args.model}


def report_recommended(args, shape, C, r):
    facts = run_facts(args, shape, C)
    lines = [f"# The recommended mode on a training set on disk ({facts['date']})", "",
             f"`python -m benchmarks.large_dataset --recommended --n {args.n}`: {facts['cpu']}, {args.threads} torch "
             f"thread(s). {args.model} → {args.task} ({C} classes), N = {args.n:,} images {shape[1:]} read by row from "
             f"a raw float32 file through a Dataset. `method=\"recommended\"`, lr 0.01, B 64, m 0.9, "
             f"{RECOMMENDED_STEPS} steps. No real run to compare with: this measures what the mode reads and costs.",
             ""]
    if "error" in r:
        lines.append(f"Failed: {r['error']}")
    else:
        train_s = r["step_s"] * RECOMMENDED_STEPS
        lines += ["| K (real steps) | rows read | peak RSS (GiB) | prediction (s) | real step (s) | training "
                  f"({RECOMMENDED_STEPS} steps, s) | training / prediction |", "|---|---|---|---|---|---|---|",
                  f"| {r['K']} | {r['rows_read']:,} | {r['peak_rss_gb']:.2f} | {r['cost_s']:.0f} | {r['step_s']:.4f} | "
                  f"{train_s:.0f} | {train_s / r['cost_s']:.1f}× |", "",
                  f"Steps to L₀/2, L₀/4, L₀/10: {r['steps_to']}. The training's time is the measured median warm-up "
                  "step times the steps (compute only, no data loading)."]
    write_results(args, "large-dataset-recommended",
                  {**facts, "setting": {**SETTING, "max_steps": RECOMMENDED_STEPS}, "result": r}, lines)


def report(args, shape, C, results, same):
    facts = run_facts(args, shape, C)
    gib = args.n * int(np.prod(shape[1:])) * 4 / 2**30
    lines = [f"# A prediction for a training set on disk ({facts['date']})", "",
             f"`python -m benchmarks.large_dataset --n {args.n}`: {facts['cpu']}, {args.threads} torch thread(s), each "
             f"case in a fresh process. {args.model} → {args.task} ({C} classes): N = {args.n:,} images {shape[1:]} in "
             f"a raw float32 file ({gib:.2f} GiB), read by row (pread). The prediction: head-aware with the "
             f"recommended settings, K = {WARMUP} real steps, M = {SUBSET} subset rows, H = {HOLDOUT} holdout rows, "
             f"lr 0.01, B 64, m 0.9, {SETTING['max_steps']} steps.", "",
             "| data passed | load (s) | prediction (s) | total wall (s) | rows read | peak RSS (GiB) |",
             "|---|---|---|---|---|---|"]
    for case, label in (("dataset", "a Dataset reading rows from the file (read where needed)"),
                        ("tensors", "the file loaded whole into tensors")):
        r = results[case]
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | |")
            continue
        rows = "all" if r["rows_read"] is None else f"{r['rows_read']:,}"
        lines.append(f"| {label} | {r['load_s']:.1f} | {r['predict_s']:.0f} | {r['wall_s']:.0f} | {rows} | "
                     f"{r['peak_rss_gb']:.2f} |")
    lines += ["", f"Same curves from both (rtol 1e-9): **{same}**. Steps to L₀/2, L₀/4, L₀/10: "
              + ", ".join(f"{c}: {results[c].get('steps_to')}" for c in results) + "."]
    write_results(args, "large-dataset", {**facts, "setting": SETTING, "warmup": WARMUP, "subset": SUBSET,
                                          "holdout": HOLDOUT, "same_curves": same, "results": results}, lines)


if __name__ == "__main__":
    sys.exit(main())
