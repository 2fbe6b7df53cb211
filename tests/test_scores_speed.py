"""The fast paths of the feature scores (issue 5, item 5) against the formulas they replace:

* the shared per-features cache (`feature_stats`): the same values with and without it, invalidated by in-place
  changes, keyed on the tensor itself (numpy input is not cached);
* the linear probe's batched-folds L-BFGS against the previous per-fold torch.optim.LBFGS probe and against the
  optimum solved tightly in float64;
* N-LEEP's fused E / M steps against the per-component Gaussian log-densities and weighted moments;
* the LDA score's within-class Gram (from the shared centered Gram) against a naive LDA;
* PCA and H-score from the shared eigendecomposition against direct eigendecompositions.
"""
import math

import numpy as np
import pytest
import torch

from zoo_kernels import scores as S
from zoo_kernels.scores import _common, probabilistic
from zoo_kernels.scores.linear_probe import batched_lbfgs, reference_per_fold_probe_accuracy



def clustered(gen, n=120, d=12, c=4, sep=1.0, dtype=torch.float64):
    """Features with class structure: class centers (scaled by sep) + unit noise, with an offset (as test_scores)."""
    y = torch.randint(c, (n,), generator=gen)
    y[:c] = torch.arange(c)  # every class present
    centers = torch.randn(c, d, generator=gen, dtype=torch.float64) * sep
    f = centers[y] + torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.3
    return f.to(dtype), y


FEATURE_SCORES = {
    "lfc": S.lfc, "lfc_double": lambda f, y: S.lfc(f, y, centering="double"), "logme": S.logme,
    "hscore": S.hscore, "hscore_shrinkage": S.hscore_shrinkage, "transrate": S.transrate, "gbc": S.gbc,
    "gbc_pca": lambda f, y: S.gbc(f, y, pca_dim=3), "nleep": S.nleep, "knn": S.knn_accuracy,
    "linear_probe": S.linear_probe_accuracy, "lda": S.lda_score,
}


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_cache():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    _common.clear_feature_cache()
    yield
    _common.clear_feature_cache()
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ cache


@pytest.mark.parametrize("shape", [(90, 7), (30, 45)])  # D <= N (shared Grams) and D > N (N x N paths)
def test_cache_gives_the_same_values_in_any_order(gen, shape):
    n, d = shape
    f, y = clustered(gen, n, d, 3, sep=1.0, dtype=torch.float32)
    old = _common.set_feature_cache(0)
    try:
        cold = {k: fn(f, y) for k, fn in FEATURE_SCORES.items()}
    finally:
        _common.set_feature_cache(old)
    for order in (list(FEATURE_SCORES), list(reversed(FEATURE_SCORES))):
        _common.clear_feature_cache()
        warm = {k: FEATURE_SCORES[k](f, y) for k in order}
        for k in FEATURE_SCORES:
            assert warm[k] == pytest.approx(cold[k], rel=1e-12, abs=1e-12), k
            assert warm[k] == cold[k] or k not in ("knn", "linear_probe", "nleep", "gbc"), k  # bitwise here


def test_cache_is_invalidated_by_in_place_changes_and_skips_numpy(gen):
    f, y = clustered(gen, 80, 6, 3, sep=1.0)
    a = S.logme(f, y)
    assert _common.feature_stats(f) is _common.feature_stats(f)   # cached while unchanged
    f.mul_(3.0).add_(torch.randn(80, 6, generator=gen, dtype=torch.float64))
    fresh = f.clone()
    assert S.logme(f, y) == pytest.approx(S.logme(fresh, y), rel=1e-12)
    assert S.logme(f, y) != pytest.approx(a, rel=1e-6)
    view = f[:, :]
    st = _common.feature_stats(f)
    view[0, 0] += 1.0                                                # a write through a view bumps the version too
    assert _common.feature_stats(f) is not st
    arr = f.numpy()
    assert _common.feature_stats(arr) is not _common.feature_stats(arr)
    assert S.hscore(arr, y.numpy()) == pytest.approx(S.hscore(f, y), rel=1e-12)


def test_cache_drops_dead_tensors_and_respects_the_bound(gen):
    for _ in range(5):
        f, y = clustered(gen, 60, 5, 3)
        S.logme(f, y)
    del f
    S.logme(*clustered(gen, 60, 5, 3))
    assert len(_common._CACHE) <= 2
    old = _common.set_feature_cache(1)          # 1 byte: only the most recent entry is kept
    try:
        keep = [clustered(gen, 60, 5, 3) for _ in range(3)]
        for f, y in keep:
            S.hscore(f, y)
        assert len(_common._CACHE) == 1
    finally:
        _common.set_feature_cache(old)


def test_shared_pca_and_hscore_match_direct_eigh(gen):
    f, y = clustered(gen, 150, 10, 4, sep=0.7)
    fc = f - f.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov(fc.T))
    evals, evecs = evals.flip(0), evecs.flip(1)
    keep = int((torch.cumsum(evals, 0) / evals.sum() < 0.8).sum()) + 1
    z = S.pca(f, 0.8)
    assert z.shape[1] == keep
    torch.testing.assert_close((z @ z.T), (fc @ evecs[:, :keep]) @ (fc @ evecs[:, :keep]).T, rtol=1e-10, atol=1e-10)
    mu = torch.stack([fc[y == c].mean(0) for c in range(4)])[y]
    naive = float(torch.trace(torch.linalg.pinv(torch.cov(fc.T)) @ (mu.T @ mu / (150 - 1))))
    S.nleep(f, y)                                                   # fills the shared eigendecomposition first
    assert S.hscore(f, y) == pytest.approx(naive, rel=1e-9)


# ------------------------------------------------------------------------------------------------ linear probe


def _previous_probe(f, y, folds=5, seed=0, dtype=torch.float32):
    return reference_per_fold_probe_accuracy(f, y, folds, seed, dtype)


@pytest.mark.parametrize("sep", [0.2, 0.4, 0.8, 2.0])
@pytest.mark.parametrize("shape", [(150, 12, 4), (200, 40, 5), (120, 150, 3)])
def test_batched_probe_equals_previous_and_tight_optimum(gen, sep, shape):
    n, d, c = shape
    f, y = clustered(gen, n, d, c, sep=sep)
    fast = S.linear_probe_accuracy(f, y)
    assert fast == pytest.approx(_previous_probe(f, y), abs=1.5 / n)                        # <= 1 sample
    assert fast == pytest.approx(_previous_probe(f, y, dtype=torch.float64), abs=1.5 / n)   # tight optimum
    assert S.linear_probe_accuracy(f, y, dtype=torch.float64) == pytest.approx(
        _previous_probe(f, y, dtype=torch.float64), abs=1.5 / n)


def test_batched_probe_options(gen):
    f, y = clustered(gen, 100, 6, 3, sep=1.0)
    for kw in ({"standardize": False}, {"l2": 0.1}, {"folds": 3, "seed": 2}, {"folds": 100}):
        a = S.linear_probe_accuracy(f, y, **kw)
        assert 0 <= a <= 1
        assert a == S.linear_probe_accuracy(f, y, **kw)
    # without standardization the bias absorbs any shift of the features: the same optimum
    assert S.linear_probe_accuracy(f + 5.0, y, standardize=False) == pytest.approx(
        S.linear_probe_accuracy(f, y, standardize=False), abs=1.5 / 100)


def test_batched_lbfgs_solves_independent_problems(gen):
    """K quadratics 1/2 p^T A_k p - b_k^T p of different conditioning: each reaches its own minimizer."""
    k, m = 4, 20
    q, _ = torch.linalg.qr(torch.randn(k, m, m, generator=gen, dtype=torch.float64))
    spec = torch.stack([torch.logspace(0, e, m, dtype=torch.float64) for e in (0, 1, 1.5, 2)])
    a = q @ torch.diag_embed(spec) @ q.transpose(1, 2)
    b = torch.randn(k, m, 1, generator=gen, dtype=torch.float64)

    def evaluate(p):
        ap = a @ p
        return (0.5 * (p * ap).sum((1, 2)) - (b * p).sum((1, 2))), ap - b, None

    p, loss, grad, _, iters = batched_lbfgs(evaluate, torch.zeros(k, m, 1, dtype=torch.float64), max_iter=2000,
                                            tolerance_grad=1e-8, tolerance_change=0.0)
    # (a line search on function values stalls once loss changes reach round-off, |g| ~ 1e-8 here)
    assert float(grad.abs().max()) <= 1e-6
    torch.testing.assert_close(p, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-6)
    assert int(iters[0]) < int(iters[3])          # the well-conditioned problem stops first


# ------------------------------------------------------------------------------------------------ N-LEEP, LDA


def test_fused_gmm_steps_match_naive(gen):
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    k = 4
    resp = torch.softmax(torch.randn(50, k, generator=gen, dtype=torch.float64), 1)
    weights, means, cov = probabilistic._gmm_m_step(x, resp, "diag", 1e-6)
    nk = resp.sum(0)
    for j in range(k):
        mu = (resp[:, j:j + 1] * x).sum(0) / nk[j]
        var = (resp[:, j:j + 1] * (x - mu) ** 2).sum(0) / nk[j] + 1e-6
        torch.testing.assert_close(means[j], mu, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cov[j], var, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(weights, nk / nk.sum(), rtol=1e-10, atol=1e-12)
    logp = probabilistic._gmm_log_prob(x, weights, means, cov, "diag")
    for j in range(k):
        dens = torch.distributions.Normal(means[j], cov[j].sqrt()).log_prob(x).sum(1) + math.log(weights[j])
        torch.testing.assert_close(logp[:, j], dens, rtol=1e-10, atol=1e-10)


def _lda_naive(f, y):
    f = torch.as_tensor(f).double()
    c = int(y.max()) + 1
    mu = torch.stack([f[y == k].mean(0) for k in range(c)])
    w = f - mu[y]
    w = w - w.mean(0)
    n, d = w.shape
    s = w.T @ w / n
    m = torch.trace(s) / d
    d2 = ((s - m * torch.eye(d, dtype=torch.float64)) ** 2).sum() / d
    b2 = sum(float(((torch.outer(r, r) - s) ** 2).sum()) for r in w) / n / n / d
    a = min(b2, float(d2)) / float(d2)
    cov = (1 - a) * s + a * m * torch.eye(d, dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    prior = torch.bincount(y, minlength=c).double() / n
    logits = torch.stack([f @ prec @ mu[k] - 0.5 * mu[k] @ prec @ mu[k] + torch.log(prior[k]) for k in range(c)], 1)
    return float(torch.softmax(logits, 1).gather(1, y[:, None]).mean())


@pytest.mark.parametrize("sep", [0.5, 3.0, 30.0])
def test_lda_from_shared_gram_matches_naive(gen, sep):
    f, y = clustered(gen, 80, 6, 3, sep=sep)
    S.lfc(f, y)                                                     # fills the shared Gram first
    assert S.lda_score(f, y) == pytest.approx(_lda_naive(f, y), rel=1e-9, abs=1e-12)
    assert S.lda_score(np.asarray(f), y) == pytest.approx(_lda_naive(f, y), rel=1e-9, abs=1e-12)
