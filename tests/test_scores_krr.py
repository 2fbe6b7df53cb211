"""krr_loo_accuracy (zoo_kernels.scores.krr): the closed-form LOO against a naive refit without each sample (numpy
loops, explicit solves), both the primal (D + 1 <= N) and the dual (D + 1 > N) branch, invariances, a hand-made
case, rank() wiring, and bad inputs."""
import math

import numpy as np
import pytest
import torch

from zoo_kernels import rank
from zoo_kernels import scores as S
from zoo_kernels.scores import krr as krr_module


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: no OpenMP oversubscription


def naive_loo(features, labels, ridge):
    """For each i: ridge fit of the centered one-hot targets (centered over all N) on [F, 1] without row i,
    prediction of row i, argmax. Returns (accuracy, LOO predictions (N, C))."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n = f.shape[0]
    classes = sorted(set(y.tolist()))
    yi = np.array([classes.index(v) for v in y])
    t = np.zeros((n, len(classes)))
    for i in range(n):
        t[i, yi[i]] = 1.0
    t = t - t.mean(0)
    a = np.hstack([f, np.ones((n, 1))])
    lam = ridge * n
    preds = np.zeros_like(t)
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        ak, tk = a[keep], t[keep]
        w = np.linalg.solve(ak.T @ ak + lam * np.eye(a.shape[1]), ak.T @ tk)
        preds[i] = a[i] @ w
    return float(np.mean(preds.argmax(1) == yi)), preds


def clustered(gen, n=40, d=5, c=3, sep=1.0):
    y = torch.randint(c, (n,), generator=gen)
    y[:c] = torch.arange(c)
    centers = torch.randn(c, d, generator=gen, dtype=torch.float64) * sep
    return centers[y] + torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.3, y


@pytest.mark.parametrize("n,d,c", [(40, 5, 3), (30, 8, 4), (12, 30, 3), (9, 8, 2)])
@pytest.mark.parametrize("ridge", [krr_module.DEFAULT_RIDGE, 1e-3, 1.0])
def test_matches_naive_refit(n, d, c, ridge):
    gen = torch.Generator().manual_seed(n * 100 + d)
    f, y = clustered(gen, n, d, c, sep=0.8)
    acc, preds = naive_loo(f.numpy(), y.numpy(), ridge)
    assert S.krr_loo_accuracy(f, y, ridge=ridge) == pytest.approx(acc, abs=1e-12)
    # the LOO predictions themselves (primal or dual branch by shape)
    a = torch.cat([f, torch.ones(n, 1, dtype=torch.float64)], 1)
    t = torch.nn.functional.one_hot(y, c).double()
    t = t - t.mean(0, keepdim=True)
    loo = t - krr_module._loo_residuals(a, t, ridge * n)
    np.testing.assert_allclose(loo.numpy(), preds, rtol=1e-8, atol=1e-10)


def test_primal_and_dual_agree():
    gen = torch.Generator().manual_seed(3)
    f, y = clustered(gen, n=20, d=6, c=3)
    a = torch.cat([f, torch.ones(20, 1, dtype=torch.float64)], 1)
    t = torch.nn.functional.one_hot(y, 3).double()
    t = t - t.mean(0, keepdim=True)
    primal = krr_module._loo_residuals(a, t, 0.5)
    padded = torch.cat([a, torch.zeros(20, 30, dtype=torch.float64)], 1)  # p > N: dual branch, same kernel
    dual = krr_module._loo_residuals(padded, t, 0.5)
    torch.testing.assert_close(primal, dual, rtol=1e-9, atol=1e-11)


def test_default_ridge_is_the_recipe_time_scale():
    from zoo_kernels.zoo.finetune import RECIPE
    tau = RECIPE.lr / (1 - RECIPE.momentum) * RECIPE.steps
    assert krr_module.RECIPE_TAU == pytest.approx(tau)
    assert krr_module.DEFAULT_RIDGE == pytest.approx(0.1 / tau) == pytest.approx(1 / 45)


def test_hand_case_separated_and_one_outlier():
    # 1-D features: class 0 near 0, class 1 near 10; a tiny ridge gives the nearest-line fit: every LOO correct
    f = torch.tensor([[0.0], [0.2], [0.4], [10.0], [10.2], [10.4]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert S.krr_loo_accuracy(f, y, ridge=1e-6) == 1.0
    # a sample of class 0 placed among class 1: left out, the line through the others puts it in class 1 (the
    # only error: two classes, so argmax = sign of the class-1 column, a straight line rising with the feature)
    f2 = torch.cat([f, torch.tensor([[10.1]], dtype=torch.float64)])
    y2 = torch.cat([y, torch.tensor([0])])
    assert S.krr_loo_accuracy(f2, y2, ridge=1e-6) == pytest.approx(6 / 7)
    assert naive_loo(f2, y2, 1e-6)[0] == pytest.approx(6 / 7)


def test_invariances():
    gen = torch.Generator().manual_seed(7)
    f, y = clustered(gen, n=45, d=6, c=4, sep=0.7)
    base = S.krr_loo_accuracy(f, y)
    perm = torch.tensor([2, 0, 3, 1])
    assert S.krr_loo_accuracy(f, perm[y]) == base                      # class relabelling
    order = torch.randperm(45, generator=gen)
    assert S.krr_loo_accuracy(f[order], y[order]) == pytest.approx(base)  # sample order
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    assert S.krr_loo_accuracy(f @ q, y) == pytest.approx(base)          # rotation of the features
    assert S.krr_loo_accuracy(f.float(), y) == pytest.approx(base)      # float32 input
    assert S.krr_loo_accuracy(f.numpy(), y.numpy()) == pytest.approx(base)
    assert 0.0 <= base <= 1.0


def test_separation_orders_models():
    gen = torch.Generator().manual_seed(11)
    good, y = clustered(gen, n=60, d=6, c=3, sep=4.0)
    bad = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    assert S.krr_loo_accuracy(good, y) > S.krr_loo_accuracy(bad, y)


def test_rank_wiring():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 4, generator=gen)
    y = torch.arange(30) % 3
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    table = rank({"m": model}, (x, y), scores=["krr_loo"], progress=False)
    with torch.no_grad():
        feats = torch.tanh(model[0](x))
    assert table[0]["krr_loo"] == pytest.approx(S.krr_loo_accuracy(feats, y))


def test_bad_inputs():
    f = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    with pytest.raises(ValueError, match="only one class"):
        S.krr_loo_accuracy(f, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 samples"):
        S.krr_loo_accuracy(f[:1], y[:1])
    bad = f.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="features.*NaN"):
        S.krr_loo_accuracy(bad, y)
    with pytest.raises(ValueError, match="N=6"):
        S.krr_loo_accuracy(f, y[:5])
    with pytest.raises(ValueError, match="integers"):
        S.krr_loo_accuracy(f, y.double() + 0.5)
    with pytest.raises(ValueError, match="negative"):
        S.krr_loo_accuracy(f, y - 1)
    with pytest.raises(ValueError, match="2-D"):
        S.krr_loo_accuracy(f[:, 0], y)
    for r in (0.0, -1.0, float("nan"), math.inf, True, "1"):
        with pytest.raises(ValueError, match="ridge"):
            S.krr_loo_accuracy(f, y, ridge=r)
