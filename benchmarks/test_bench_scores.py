"""Transferability scores on a zoo of 20 random feature sets (N = 1000 samples, D = 512, 10 classes), as rank()
would see them after feature extraction: each benchmark scores all 20 models with one score.

The issue's target: all feature-based scores on 20 models x 1,000 samples in seconds on 2 CPU cores.
extra_info: "seconds" for the 20 models, "per_model_ms". test_all_scores_20_models times every score once.

  ZK_BENCH_QUICK=1: 4 models, N = 200, D = 64.
"""
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
