"""The head-aware prediction's SGD steps: the compiled ops.head_aware_sgd_steps (predict(fused=True)) against the
torch loop a user would otherwise run (predict(fused=False), the same dynamics step by step).

Case: resnet_multi on pendigits_inverted (N = 2,000; quick: 400), the recommended mode's predictor settings
(subset 200 + 200 holdout rows with their own block, feature rank 8, Kronecker sketch k = 512; quick: k = 128),
lr 0.01, B 64, momentum 0.9, 2 paths, 300 steps, evaluations every 10 steps. The predictor is built once (not timed).
Floor: the multiply-adds of the steps (2 passes over the batch rows of the sketch, B·r·k each, per path and step)
and of the evaluations (all rows, per path) at the measured matmul rate, against the bytes of those sketch rows at
the measured bandwidth (the larger counts).
"""
import numpy as np
import pytest

from zoo_kernels import zoo
from zoo_kernels.calibrate import HeadAwarePredictor
from zoo_kernels.predict import evaluation_steps, subset_batch_size
from zoo_kernels.zoo import data as D

from . import common

STEPS, PATHS, EVERY = 300, 2, 10
SETTING = dict(lr=0.01, batch_size=64, momentum=0.9, max_steps=STEPS, paths=PATHS, eval_every=EVERY,
               feature_norm="fixed", sampling="stream", measure_time=False, holdout_self=True, seed=1)


@pytest.fixture(scope="module")
def predictor():
    per_class = 40 if common.QUICK else 200
    x, y = D.make_target("pendigits_inverted", "train", per_class)
    model = zoo.load_model("resnet_multi", num_classes=10, seed=0)
    k = 128 if common.QUICK else 512
    return HeadAwarePredictor(model, (x, y), k=k, subset=200, holdout=200, feature_rank=8,
                              sketch_method="kronecker", seed=0)


def _work(p):
    """(multiply-adds, sketch bytes read) of one prediction with SETTING."""
    n, r, k = p.S_r.shape
    B = subset_batch_size(SETTING["batch_size"], p.n_samples, p.n_train)
    evals = len(evaluation_steps(STEPS, EVERY))
    fma = PATHS * (STEPS * 2 * B * r * k + evals * n * r * k)
    nbytes = p.S_r.element_size() * PATHS * (STEPS * 2 * B * r * k + evals * n * r * k)
    return fma, nbytes


def test_baseline_torch_loop(benchmark, predictor, baselines, record):
    benchmark.group = "head-aware prediction steps"
    q = baselines.measure(("head-aware torch loop",), lambda: predictor.predict(fused=False, **SETTING), benchmark,
                          rounds=3, warmup_rounds=1)
    assert np.isfinite(q.loss_curve).all()
    fma, nbytes = _work(predictor)
    record(benchmark, flops=2 * fma, nbytes=nbytes, method="torch loop (fused=False)", steps=STEPS, paths=PATHS)


def test_fused_steps(benchmark, predictor, baselines, record):
    benchmark.group = "head-aware prediction steps"
    base = baselines.seconds(("head-aware torch loop",), lambda: lambda: predictor.predict(fused=False, **SETTING))
    q = benchmark.pedantic(lambda: predictor.predict(fused=True, **SETTING), rounds=3, iterations=1, warmup_rounds=1)
    ref = baselines.result_of.get(("head-aware torch loop",))
    if ref is not None:  # float32 sketch: the two differ by rounding only
        np.testing.assert_allclose(q.loss_curve, ref.loss_curve, rtol=1e-4)
    fma, nbytes = _work(predictor)
    record(benchmark, flops=2 * fma, nbytes=nbytes, baseline="torch loop (fused=False)", baseline_seconds=base,
           method="ops.head_aware_sgd_steps (fused=True)", steps=STEPS, paths=PATHS)
