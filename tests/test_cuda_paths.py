"""The model-level paths on a GPU agree with the same calls on the CPU (MiniZoo experts, TF32 off).

Projections depend only on (seed, indices), and the SDE noise comes from a CPU generator, so the two devices
must give the same numbers up to float32 rounding. ZK_TEST_OTHER_DEVICE=cpu runs this file without a GPU
(CPU against CPU), to check the tests themselves.
"""
import math
import os

import numpy as np
import pytest
import torch

import zoo_kernels as zk
from zoo_kernels import zoo
from zoo_kernels.ranking import rank
from zoo_kernels.warmstart import predict_after_warmup

OTHER = os.environ.get("ZK_TEST_OTHER_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(OTHER == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]
RTOL = 2e-3  # float32 sums in another order, on a 30K-parameter CNN


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def task():
    x, y, _, _ = zoo.load_task("pendigits_inverted", shots=6)
    return x, y


def expert(name="convnet_pendigits", seed=0):
    return zoo.load_model(name, num_classes=10, seed=seed).eval()


def rel(a, b):
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("method", ["kronecker", "dense"])
def test_sketch_jacobian(task, method):
    x = task[0][:24]
    S_cpu = zk.sketch_jacobian(expert(), x, 256, method=method, seed=5, batch_size=8)
    S_dev = zk.sketch_jacobian(expert().to(OTHER), x.to(OTHER), 256, method=method, seed=5, batch_size=16)
    assert S_dev.device.type == torch.device(OTHER).type and torch.isfinite(S_dev).all()
    assert rel(S_dev, S_cpu) < RTOL


def test_ntk_exact_and_eigh(task):
    x = task[0][:20]
    K_cpu = zk.ntk(expert(), x, mode="full")
    K_dev = zk.ntk(expert().to(OTHER), x.to(OTHER), mode="full")
    assert K_dev.device.type == torch.device(OTHER).type
    assert rel(K_dev, K_cpu) < RTOL
    e_cpu = zk.ntk_eigh(expert(), x, 6, seed=1).eigenvalues
    e_dev = zk.ntk_eigh(expert().to(OTHER), x.to(OTHER), 6, seed=1).eigenvalues
    np.testing.assert_allclose(e_dev.cpu().numpy(), e_cpu.numpy(), rtol=RTOL)


def test_rank(task):
    models = {"pendigits": lambda: expert(), "latin": lambda: expert("convnet_latin"),
              "multi": lambda: expert("resnet_multi")}
    scores = ["lfc", "logme", "hscore", "leep", "knn", "krr_loo", "lgc", "knn_krr"]
    t_cpu = rank(models, task, scores=scores, device="cpu", progress=False, batch_size=16)
    t_dev = rank(models, task, scores=scores, device=OTHER, progress=False, batch_size=32)
    for s in scores:
        a, b = t_dev.column(s), t_cpu.column(s)
        for m in t_cpu.models:
            assert math.isfinite(a[m]), (s, m)
            assert a[m] == pytest.approx(b[m], rel=1e-2, abs=1e-4), (s, m)


@pytest.mark.parametrize("method", ["sketch", "exact", "head-aware"])
def test_predict_training_time(task, method):
    x, y = task
    args = dict(lr=0.05, batch_size=10, max_steps=30, momentum=0.9, k=128, method=method, seed=3)
    p_cpu = zk.predict_training_time(expert(), (x, y), **args)
    p_dev = zk.predict_training_time(expert().to(OTHER), (x.to(OTHER), y.to(OTHER)), **args)
    assert np.isfinite(p_dev.loss_curve).all() and np.isfinite(p_dev.accuracy_curve).all()
    np.testing.assert_allclose(p_dev.loss_curve, p_cpu.loss_curve, rtol=1e-2)
    assert np.abs(p_dev.accuracy_curve - p_cpu.accuracy_curve).max() <= 0.05
    assert p_dev.step_seconds > 0 and math.isfinite(p_dev.step_seconds)


def test_predict_after_warmup(task):
    x, y = task
    args = dict(lr=0.05, batch_size=10, max_steps=30, warmup_steps=5, momentum=0.9, k=128, seed=3, subset=40,
                feature_rank=8)
    p_cpu = predict_after_warmup(expert(), (x, y), **args)
    p_dev = predict_after_warmup(expert().to(OTHER), (x.to(OTHER), y.to(OTHER)), **args)
    assert np.isfinite(p_dev.loss_curve).all()
    np.testing.assert_allclose(p_dev.loss_curve, p_cpu.loss_curve, rtol=1e-2)
