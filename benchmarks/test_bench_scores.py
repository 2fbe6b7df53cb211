"""Transferability scores on a zoo of 20 random feature sets (N = 1000 samples, D = 512, 10 classes), as rank()
would see them after feature extraction.

The issue's target (issue 5, item 5): all feature-based scores on 20 models x 1,000 samples in seconds on 2 CPU
cores. extra_info: "seconds" (wall) for the 20 models, "cpu_seconds" (process user + system time, all threads),
"load_before" / "load_after" (1-minute load average), "per_model_ms".

* test_feature_score: one score on the 20 models, the shared per-features cache cleared before each model, so each
  score pays its own Gram / eigendecomposition (its cost when called alone).
* test_all_scores_20_models: every feature score plus LEEP/NCE, model by model as rank() calls them (the scores of
  one model share its float64 copy, centered Gram and eigendecompositions through the cache): the time rank()
  spends scoring; per-score seconds in extra_info.
* test_batch_vs_previous: the same batch, the library against the previous implementation (per-fold
  torch.optim.LBFGS probe, no sharing between scores: every score recomputes its Gram / eigendecomposition),
  interleaved model by model so that both see the same machine load; values checked equal; "speedup" recorded.
* test_speedup_vs_reference: single scores against straightforward reference implementations of the same formulas
  (autograd probe, per-fold torch L-BFGS probe, LogME with explicit left singular vectors and a per-class loop,
  H-score with the explicit D x D between-class covariance), interleaved model by model.

  ZK_BENCH_QUICK=1: 4 models, N = 200, D = 64.   ZK_BENCH_THREADS=1: one intra-op thread (default 2).
"""
import math
import os
import resource
import time

import pytest
import torch

from zoo_kernels import scores as S
from zoo_kernels.scores import _common
from zoo_kernels.scores.linear_probe import reference_per_fold_probe_accuracy

from . import common

MODELS = 4 if common.QUICK else 20
N, D, C, CS = (200, 64, 10, 100) if common.QUICK else (1000, 512, 10, 1000)


@pytest.fixture(scope="module")
def zoo():
    """20 feature sets with different amounts of class structure, source probabilities (Cs = 1000), labels."""
    g = torch.Generator().manual_seed(common.SEED)
    y = torch.randint(C, (N,), generator=g)
    feats, probs = [], []
    for m in range(MODELS):
        centers = torch.randn(C, D, generator=g) * (0.1 + 0.05 * m)
        feats.append(torch.relu(centers[y] + torch.randn(N, D, generator=g)))  # ReLU-like penultimate features
        probs.append(torch.softmax(torch.randn(N, CS, generator=g) * 3, 1))
    for fn in FEATURE_SCORES.values():  # warm up lazy imports (torch.optim for the probe) outside the timings
        fn(feats[0][:50, :8], y[:50])
    return feats, probs, y


FEATURE_SCORES = {
    "lfc": S.lfc,
    "logme": S.logme,
    "hscore": S.hscore,
    "hscore_shrinkage": S.hscore_shrinkage,
    "transrate": S.transrate,
    "gbc": S.gbc,
    "nleep": S.nleep,
    "knn": S.knn_accuracy,
    "linear_probe": S.linear_probe_accuracy,
    "lda": S.lda_score,
}


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load():
    return round(os.getloadavg()[0], 2)


def _cold(fn, f, y):
    _common.clear_feature_cache()
    return fn(f, y)


@pytest.mark.parametrize("name", list(FEATURE_SCORES))
def test_feature_score(benchmark, zoo, record, name):
    feats, _, y = zoo
    fn = FEATURE_SCORES[name]
    info = {"load_before": load()}
    c0 = cpu_seconds()
    out = benchmark.pedantic(lambda: [_cold(fn, f, y) for f in feats], rounds=2, warmup_rounds=0)
    info.update(cpu_seconds=(cpu_seconds() - c0) / 2, load_after=load())
    assert len(out) == MODELS
    record(benchmark, models=MODELS, N=N, D=D, C=C, per_model_ms=common.mean_seconds(benchmark) / MODELS * 1e3,
           **info)


@pytest.mark.parametrize("name", ["leep", "nce", "energy", "etran"])
def test_other_score(benchmark, zoo, record, name):
    feats, probs, y = zoo
    run = {
        "leep": lambda: [S.leep(p, y) for p in probs],
        "nce": lambda: [S.nce(p.argmax(1), y) for p in probs],
        "energy": lambda: [S.energy_score(f) for f in feats],
        "etran": lambda: S.etran({str(i): f for i, f in enumerate(feats)}, y),
    }[name]
    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    record(benchmark, models=MODELS, N=N, D=D, C=C, Cs=CS)


def _score_model(f, p, y, fns, times=None, cpu=None):
    """Every score of one model (features f, source probabilities p), as rank() calls them: {name: value}."""
    out = {}
    for name, fn in fns.items():
        t0, c0 = time.perf_counter(), cpu_seconds()
        out[name] = fn(f, y)
        if times is not None:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
            cpu[name] = cpu.get(name, 0.0) + cpu_seconds() - c0
    t0, c0 = time.perf_counter(), cpu_seconds()
    out["leep"], out["nce"] = S.leep(p, y), S.nce(p.argmax(1), y)
    if times is not None:
        times["leep+nce"] = times.get("leep+nce", 0.0) + time.perf_counter() - t0
        cpu["leep+nce"] = cpu.get("leep+nce", 0.0) + cpu_seconds() - c0
    return out


def test_all_scores_20_models(benchmark, zoo, record):
    """Every feature-based score plus LEEP/NCE on every model, once, model by model: the time rank() spends
    scoring."""
    feats, probs, y = zoo
    per_score, per_score_cpu, info = {}, {}, {}

    def run():
        _common.clear_feature_cache()
        info["load_before"] = load()
        c0 = cpu_seconds()
        for f, p in zip(feats, probs):
            _score_model(f, p, y, FEATURE_SCORES, per_score, per_score_cpu)
        info["cpu_seconds"] = cpu_seconds() - c0
        info["load_after"] = load()

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    record(benchmark, models=MODELS, N=N, D=D, C=C, threads=torch.get_num_threads(), **info,
           **{f"{k}_s": v for k, v in per_score.items()}, **{f"{k}_cpu_s": v for k, v in per_score_cpu.items()})


def _previous_probe(f, y, folds=5, seed=0):
    """The previous linear probe: one torch.optim.LBFGS per fold (closed-form gradient, float32)."""
    return reference_per_fold_probe_accuracy(f, y, folds, seed)


PREVIOUS_SCORES = dict(FEATURE_SCORES, linear_probe=_previous_probe)


def test_batch_vs_previous(benchmark, zoo, record):
    """The whole batch, library vs the previous implementation (per-fold probe, no sharing between the scores),
    model by model in the same run; the values must agree (probe: <= 1 sample; the others: 1e-9 relative)."""
    feats, probs, y = zoo
    wall = {"library": 0.0, "previous": 0.0}
    cpu = {"library": 0.0, "previous": 0.0}
    worst = {}
    info = {}

    def run():
        info["load_before"] = load()
        for f, p in zip(feats, probs):
            _common.clear_feature_cache()
            t0, c0 = time.perf_counter(), cpu_seconds()
            new = _score_model(f, p, y, FEATURE_SCORES)
            t1, c1 = time.perf_counter(), cpu_seconds()
            old_bound = _common.set_feature_cache(0)          # previous: every score computes its own Gram / eigh
            try:
                old = _score_model(f, p, y, PREVIOUS_SCORES)
            finally:
                _common.set_feature_cache(old_bound)
            t2, c2 = time.perf_counter(), cpu_seconds()
            wall["library"] += t1 - t0
            wall["previous"] += t2 - t1
            cpu["library"] += c1 - c0
            cpu["previous"] += c2 - c1
            for k in new:
                scale = 1.0 if k in ("linear_probe", "knn") else max(1.0, abs(old[k]))
                worst[k] = max(worst.get(k, 0.0), abs(new[k] - old[k]) / scale)
        info["load_after"] = load()

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    assert worst["linear_probe"] <= 1.5 / N, worst
    assert max(v for k, v in worst.items() if k != "linear_probe") <= 1e-9, worst
    record(benchmark, models=MODELS, N=N, D=D, C=C, threads=torch.get_num_threads(), **info,
           library_seconds=wall["library"], previous_seconds=wall["previous"],
           library_cpu_seconds=cpu["library"], previous_cpu_seconds=cpu["previous"],
           speedup=wall["previous"] / wall["library"], cpu_speedup=cpu["previous"] / cpu["library"],
           max_difference={k: float(v) for k, v in worst.items()})


# ------------------------------------------------------------------------------------------------ references

def _probe_reference(f, y, folds=5, seed=0):
    """The linear probe with an autograd closure (the library's implementation before the closed-form gradient)."""
    from zoo_kernels.scores.linear_probe import reference_linear_probe_accuracy
    return reference_linear_probe_accuracy(f, y, folds, seed)


def _logme_reference(f, y, max_iter=11, tol=1e-3):
    """LogME as the published algorithm is usually written: left singular vectors U = F V / sqrt(s) formed
    explicitly (O(N D^2)), then the fixed point run class by class in a Python loop."""
    f = f.double()
    n, d = f.shape
    s, v = torch.linalg.eigh(f.T @ f)
    keep = s > s.max() * 1e-12 * max(n, d)
    s, v = s[keep], v[:, keep]
    u = (f @ v) / s.sqrt()
    evid = []
    for c in range(int(y.max()) + 1):
        t = (y == c).double()
        z2 = (u.T @ t) ** 2
        out2 = float((t * t).sum() - z2.sum())
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            den = alpha + beta * s
            gamma = float((beta * s / den).sum())
            m2 = float((beta ** 2 * s * z2 / den ** 2).sum())
            res2 = float((alpha ** 2 * z2 / den ** 2).sum()) + max(out2, 0.0)
            new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            t_old, t_new = alpha / beta, new_alpha / new_beta
            alpha, beta = new_alpha, new_beta
            if abs(t_new - t_old) / t_old <= tol:
                break
        den = alpha + beta * s
        m2 = float((beta ** 2 * s * z2 / den ** 2).sum())
        res2 = float((alpha ** 2 * z2 / den ** 2).sum()) + max(out2, 0.0)
        logdet = float(torch.log(den).sum()) + (d - s.shape[0]) * math.log(alpha)
        ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - alpha / 2 * m2 - beta / 2 * res2 - logdet / 2
              - n / 2 * math.log(2 * math.pi))
        evid.append(ev / n)
    return sum(evid) / len(evid)


def _hscore_reference(f, y):
    """H-score with the explicit (D, D) between-class covariance and V^T B V (O(D^3) beyond the eigh)."""
    f = f.double()
    f = f - f.mean(0, keepdim=True)
    n, d = f.shape
    cov = f.T @ f / (n - 1)
    mu = torch.stack([f[y == c].mean(0) for c in range(int(y.max()) + 1)])
    g = mu[y]
    between = g.T @ g / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > d * torch.finfo(torch.float64).eps * evals.max()
    v = evecs[:, keep]
    return float(((v.T @ between @ v).diagonal() / evals[keep]).sum())


REFERENCES = {
    "linear_probe": (S.linear_probe_accuracy, _probe_reference, 1.5 / N),  # <= 1 sample (float32 rounding)
    "linear_probe_per_fold": (S.linear_probe_accuracy, _previous_probe, 1.5 / N),
    "logme": (S.logme, _logme_reference, 1e-8),
    "hscore": (S.hscore, _hscore_reference, 1e-7),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_speedup_vs_reference(benchmark, zoo, record, name):
    """Library vs reference on the same 20 models, interleaved model by model (same load for both)."""
    feats, _, y = zoo
    fast, ref, tol = REFERENCES[name]
    fast(feats[0][:50], y[:50]), ref(feats[0][:50], y[:50])  # warm up
    times = {"library": 0.0, "reference": 0.0}
    cpu = {"library": 0.0, "reference": 0.0}
    worst = []
    info = {}

    def run():
        info["load_before"] = load()
        for f in feats:
            _common.clear_feature_cache()                  # the library pays its own Gram / eigendecomposition
            t0, c0 = time.perf_counter(), cpu_seconds()
            a = fast(f, y)
            t1, c1 = time.perf_counter(), cpu_seconds()
            b = ref(f, y)
            t2, c2 = time.perf_counter(), cpu_seconds()
            times["library"] += t1 - t0
            times["reference"] += t2 - t1
            cpu["library"] += c1 - c0
            cpu["reference"] += c2 - c1
            worst.append(abs(a - b) / (1.0 if name.startswith("linear_probe") else max(1.0, abs(b))))
        info["load_after"] = load()

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    assert max(worst) <= tol, f"{name}: library and reference differ by {max(worst):.3g}"
    record(benchmark, models=MODELS, N=N, D=D, C=C, library_seconds=times["library"],
           reference_seconds=times["reference"], speedup=times["reference"] / times["library"],
           library_cpu_seconds=cpu["library"], reference_cpu_seconds=cpu["reference"],
           cpu_speedup=cpu["reference"] / cpu["library"], max_difference=max(worst), **info)
