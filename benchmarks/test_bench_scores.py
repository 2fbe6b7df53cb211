"""Transferability scores on a zoo of 20 random feature sets (N = 1000 samples, D = 512, 10 classes), as rank()
would see them after feature extraction: each benchmark scores all 20 models with one score.

The issue's target: all feature-based scores on 20 models x 1,000 samples in seconds on 2 CPU cores.
extra_info: "seconds" for the 20 models, "per_model_ms". test_all_scores_20_models times every score once.
test_speedup_vs_reference times the library's linear probe, LogME and H-score against straightforward reference
implementations of the same formulas (below: autograd probe, LogME with explicit left singular vectors and a
per-class fixed-point loop, H-score with the explicit D x D between-class covariance), interleaved model by model
in the same run so that both see the same machine load; it checks that the values agree and records the
"speedup" (reference seconds / library seconds).

  ZK_BENCH_QUICK=1: 4 models, N = 200, D = 64.
"""
import math
import time

import pytest
import torch

from zoo_kernels import scores as S

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


@pytest.mark.parametrize("name", list(FEATURE_SCORES))
def test_feature_score(benchmark, zoo, record, name):
    feats, _, y = zoo
    fn = FEATURE_SCORES[name]
    out = benchmark.pedantic(lambda: [fn(f, y) for f in feats], rounds=2, warmup_rounds=0)
    assert len(out) == MODELS
    record(benchmark, models=MODELS, N=N, D=D, C=C, per_model_ms=common.mean_seconds(benchmark) / MODELS * 1e3)


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


def test_all_scores_20_models(benchmark, zoo, record):
    """Every feature-based score plus LEEP/NCE on every model, once: the time rank() spends scoring."""
    feats, probs, y = zoo
    per_score = {}

    def run():
        for name, fn in FEATURE_SCORES.items():
            t0 = time.perf_counter()
            for f in feats:
                fn(f, y)
            per_score[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in probs:
            S.leep(p, y)
            S.nce(p.argmax(1), y)
        per_score["leep+nce"] = time.perf_counter() - t0

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    record(benchmark, models=MODELS, N=N, D=D, C=C, **{f"{k}_s": v for k, v in per_score.items()})


# ------------------------------------------------------------------------------------------------ references

def _probe_reference(f, y, folds=5, seed=0):
    """The linear probe with an autograd closure (the library's implementation before the closed-form gradient)."""
    from zoo_kernels.scores.linear_probe import stratified_folds
    f = f.float()
    c = int(y.max()) + 1
    fold = stratified_folds(y, folds, seed)
    correct = 0
    for k in range(folds):
        te, tr = fold == k, fold != k
        x_tr, x_te = f[tr], f[te]
        mean, std = x_tr.mean(0, keepdim=True), x_tr.std(0, keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        w = torch.zeros(f.shape[1], c, requires_grad=True)
        b = torch.zeros(c, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=100, history_size=10, tolerance_grad=1e-6,
                                tolerance_change=1e-9, line_search_fn="strong_wolfe")
        lam = 1.0 / int(tr.sum())

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x_tr @ w + b, y[tr]) + 0.5 * lam * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            correct += int(((x_te @ w + b).argmax(1) == y[te]).sum())
    return correct / f.shape[0]


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
    worst = []

    def run():
        for f in feats:
            t0 = time.perf_counter()
            a = fast(f, y)
            t1 = time.perf_counter()
            b = ref(f, y)
            t2 = time.perf_counter()
            times["library"] += t1 - t0
            times["reference"] += t2 - t1
            worst.append(abs(a - b) / (1.0 if name == "linear_probe" else max(1.0, abs(b))))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    assert max(worst) <= tol, f"{name}: library and reference differ by {max(worst):.3g}"
    record(benchmark, models=MODELS, N=N, D=D, C=C, library_seconds=times["library"],
           reference_seconds=times["reference"], speedup=times["reference"] / times["library"],
           max_difference=max(worst))
