"""Where the recommended warm start's sketch + subset error comes from: three variants measured on the long runs.

    python -m benchmarks.subset_kernel_variants exact <predict_long JSON> [--only 0 1 ...]
    python -m benchmarks.subset_kernel_variants exact-own <predict_long JSON>
    python -m benchmarks.subset_kernel_variants extrapolate <JSON at M> <JSON at M2>     (offline)

Each run repeats the recommended prediction of a saved predict_long record (K = 100, fixed norm, rank 8, subset
"auto", 2 paths) with one change:
  exact        the subset's feature kernel exactly (zoo_kernels.ntk on the rank-8 features, M·8 × M·8) instead
               of the k = 512 Kronecker sketch, factored as V Λ^½
  exact-own    the same kernel with each subset sample's own block scaled from 1/M to 1/N (Θ − (1 − M/N) ·
               blockdiag Θ_ii, the unbiased estimate of the full set's drift), negative eigenvalues clipped to 0
  extrapolate  no new run: the loss curves at two subset sizes (saved) extrapolated linearly in 1/M to M = N
The library's HeadAwarePredictor is swapped inside zoo_kernels.warmstart for the run, so the warm-up, the momentum
state (feature_velocity) and the integration are the library's own. Prints the steps per target next to the real run's.
"""
import argparse
import json
import time
import warnings

import numpy as np
import torch

import zoo_kernels.warmstart as ws
from benchmarks.predict_long import predicted_targets, rel, targets, task_data
from zoo_kernels import zoo
from zoo_kernels.calibrate import HeadAwarePredictor, feature_model, projected_features
from zoo_kernels.ntk import ntk


def exact_factor(pred, model, own):
    """Replace pred's sketch by an exact factor of its subset's rank-r feature kernel."""
    feats = projected_features(feature_model(model).eval(), pred.U)
    r = pred.U.shape[1]
    M = pred.x.shape[0]
    T = ntk(feats, pred.x, mode="full").double().permute(0, 2, 1, 3).reshape(M * r, M * r)
    if own:  # own blocks weigh 1/N instead of 1/M
        T = T - (1 - M / pred.n_samples) * torch.block_diag(*[T[i * r:(i + 1) * r, i * r:(i + 1) * r]
                                                                for i in range(M)])
    lam, V = torch.linalg.eigh(T)
    pred.S_r = (V * lam.clamp_min(0).sqrt()).reshape(M, r, M * r).to(pred.S_r.dtype).contiguous()
    pred.k = M * r


def run_variant(mode, rec):
    """The recommended prediction of one saved record, with the exact (or own-corrected) subset kernel."""

    class Variant(HeadAwarePredictor):
        def __init__(self, model, data, **kw):
            super().__init__(model, data, **kw)
            exact_factor(self, model, own=mode == "exact-own")

    C, x, y = task_data(rec["task"])
    ws.HeadAwarePredictor = Variant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return ws.predict_after_warmup(
                zoo.load_model(rec["model"], num_classes=C, seed=0), (x, y), lr=rec["lr"], batch_size=rec["batch"],
                momentum=rec["momentum"], max_steps=int(rec["steps"] * 1.5), warmup_steps=100, subset="auto", k=512,
                seed=0, feature_norm="fixed", paths=2, sampling="stream", on_divergence="truncate", feature_rank=8,
                eval_every=10, sketch_method="kronecker")
    finally:
        ws.HeadAwarePredictor = HeadAwarePredictor


def extrapolate(path_a, path_b, K=100):
    """Errors of the loss targets at M, at M2, and linearly extrapolated in 1/M to N (saved curves only)."""
    A, B = (json.load(open(p))["records"] for p in (path_a, path_b))
    errs = {"M": [], "M2": [], "extrapolated": []}
    for ra, rb in zip(A, B):
        ma, mb = ra["methods"][f"head-aware+warm{K}"], rb["methods"][f"head-aware+warm{K}"]
        la, lb = (np.asarray(m["loss_curve"], dtype=float) for m in (ma, mb))
        n = min(len(la), len(lb))
        w = 0.0 if rb["M"] == ra["M"] else (1 / ra["M"] - 1 / ra["N"]) / (1 / ra["M"] - 1 / rb["M"])
        le = la[:n] + w * (lb[:n] - la[:n])
        le = np.where(np.isfinite(le) & (le > 0), le, np.inf)
        T = {"M": ma["T"], "M2": mb["T"],
             "extrapolated": targets(np.arange(n) * ma["curve_stride"], le, np.zeros(n), 2.0)}
        for key, r in ra["real"].items():
            if r is not None and r > K and key.startswith("loss"):
                for name in errs:
                    errs[name].append(rel(T[name].get(key), r))
    for name, e in errs.items():
        print(f"{name}: {len(e)} loss targets, median error {np.median(e):.3f}, within 20 % {np.mean(np.asarray(e) <= 0.2):.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("exact", "exact-own", "extrapolate"))
    ap.add_argument("json", nargs="+", help="the predict_long JSON (two for extrapolate: at M, at a larger M)")
    ap.add_argument("--only", type=int, nargs="*", help="indices of the records to run (default: all)")
    ap.add_argument("--out", help="write {record index: steps per target} here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode == "extrapolate":
        extrapolate(*args.json[:2])
        return
    out = {}
    for i, rec in enumerate(json.load(open(args.json[0]))["records"]):
        if args.only and i not in args.only:
            continue
        t0 = time.perf_counter()
        _, out[i] = predicted_targets(run_variant(args.mode, rec), 0.9)
        print(f"{args.mode} {i} {rec['model']} -> {rec['task']} lr={rec['lr']} B={rec['batch']} m={rec['momentum']} "
              f"{time.perf_counter() - t0:.1f}s | real "
              + "/".join("-" if v is None else f"{v:.0f}" for v in rec["real"].values()) + " | variant "
              + "/".join("-" if v is None else f"{v:.0f}" for v in out[i].values()), flush=True)
    if args.out:
        json.dump(out, open(args.out, "w"))


if __name__ == "__main__":
    main()
