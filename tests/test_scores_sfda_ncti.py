"""SFDA and NCTI (zoo_kernels.scores.sfda / .ncti): against naive numpy references written from the formulas
(loops, full-space LDA with an explicit inverse, scipy's generalized eigensolver), invariances, a separation
sanity check, and bad inputs."""
import importlib
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from zoo_kernels import scores as S

# the package's `sfda` / `ncti` attributes are the functions, which shadow the submodules of the same name
sfda_module = importlib.import_module("zoo_kernels.scores.sfda")
ncti_module = importlib.import_module("zoo_kernels.scores.ncti")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: no OpenMP oversubscription


def clustered(gen, n=90, d=8, c=3, sep=1.0, scale=0.5):
    """Class centers (scaled by sep) + noise (scaled by `scale`, so that the adaptive shrinkage is not ~0)."""
    y = torch.randint(c, (n,), generator=gen)
    y[:c] = torch.arange(c)
    centers = torch.randn(c, d, generator=gen, dtype=torch.float64) * sep * scale
    f = centers[y] + scale * torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.7
    return f, y


def random_rotation(d, gen):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None]


# ------------------------------------------------------------------------------------------------ naive references


def naive_lda_posteriors(x, y, lam=None, rate=5.0):
    """Full-space shrinkage LDA written with loops and an explicit inverse: (posteriors (N, C), lam)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    n, d = x.shape
    classes = sorted(set(y.tolist()))
    c = len(classes)
    yi = np.array([classes.index(v) for v in y])
    means = np.zeros((c, d))
    counts = np.zeros(c)
    for i in range(n):
        means[yi[i]] += x[i]
        counts[yi[i]] += 1
    means /= counts[:, None]
    sw = np.zeros((d, d))
    for i in range(n):
        r = x[i] - means[yi[i]]
        sw += np.outer(r, r)
    sw /= n  # = sum_c pi_c cov_c (population covariances)
    if lam is None:
        lam = math.exp(-rate * max(np.linalg.eigvalsh(sw).max(), 0.0))
    swr = (1 - lam) * sw + lam * np.eye(d)
    inv = np.linalg.inv(swr)
    post = np.zeros((n, c))
    for i in range(n):
        logits = np.array([x[i] @ inv @ means[k] - 0.5 * means[k] @ inv @ means[k] + math.log(counts[k] / n)
                           for k in range(c)])
        e = np.exp(logits - logits.max())
        post[i] = e / e.sum()
    return post, lam, yi


def naive_sfda(x, y, shrinkage=None, soften=True, reduction="mean"):
    x = np.asarray(x, dtype=np.float64).copy()
    post, lam, yi = naive_lda_posteriors(x, y, shrinkage)
    n = len(yi)
    mixed = np.zeros_like(x)
    for i in range(n):
        p = post[i]
        if soften:
            p = np.exp(p) / np.exp(p).sum()
        q = p[yi[i]]
        others = [x[j] for j in range(n) if yi[j] != yi[i]]
        mixed[i] = q * x[i] + (1 - q) * np.mean(others, axis=0)
    post2, _, _ = naive_lda_posteriors(mixed, yi, lam)
    p_true = np.array([post2[i, yi[i]] for i in range(n)])
    return float(np.log(p_true).mean()) if reduction == "log" else float(p_true.mean())


def naive_ncti_terms(x, y, pca_dim=64, shrinkage=None):
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(pca_dim, int((s > s[0] * 1e-6).sum()))
    g = xc @ vt[:k].T
    post, lam, yi = naive_lda_posteriors(g, y, shrinkage)
    n, d = g.shape
    c = post.shape[1]
    # Fisher directions from scipy's generalized eigensolver: S_b v = w S_w(lam) v, v^T S_w(lam) v = 1
    means = np.array([g[yi == j].mean(0) for j in range(c)])
    pis = np.array([np.mean(yi == j) for j in range(c)])
    mu = g.mean(0)
    sb = sum(pis[j] * np.outer(means[j] - mu, means[j] - mu) for j in range(c))
    sw = sum(np.outer(g[i] - means[yi[i]], g[i] - means[yi[i]]) for i in range(n)) / n
    swr = (1 - lam) * sw + lam * np.eye(d)
    w_vals, w_vecs = scipy.linalg.eigh(sb, swr)
    w = w_vecs[:, np.argsort(w_vals)[::-1][:min(c - 1, d)]]
    z = g @ w
    etf = float(np.linalg.svd(z - z.mean(0), compute_uv=False).sum())
    ncc = float(np.mean([post[i, yi[i]] for i in range(n)]))
    vc = math.log(sum(np.linalg.norm(post[yi == j], "nuc") for j in range(c)))
    return {"etf": etf, "ncc": ncc, "vc": vc}


def naive_ncti(feats, y, **kw):
    terms = {m: naive_ncti_terms(f, y, **kw) for m, f in feats.items()}
    out = {m: 0.0 for m in feats}
    for key, sign in (("etf", 1), ("ncc", 1), ("vc", -1)):
        vals = [terms[m][key] for m in feats]
        lo, hi = min(vals), max(vals)
        for m in feats:
            out[m] += sign * ((terms[m][key] - lo) / (hi - lo) if hi > lo else 0.5)
    return out


# ------------------------------------------------------------------------------------------------ SFDA


@pytest.mark.parametrize("n,d,c", [(90, 8, 3), (60, 20, 5), (24, 40, 4)])  # D < N, D ~ N / 3, D > N
@pytest.mark.parametrize("soften", [True, False])
def test_sfda_matches_naive(gen, n, d, c, soften):
    f, y = clustered(gen, n, d, c)
    ref = naive_sfda(f.numpy(), y.numpy(), soften=soften)
    assert S.sfda(f, y, soften=soften) == pytest.approx(ref, rel=1e-8, abs=1e-10)
    ref_log = naive_sfda(f.numpy(), y.numpy(), soften=soften, reduction="log")
    assert S.sfda(f, y, soften=soften, reduction="log") == pytest.approx(ref_log, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, 1.0])
def test_sfda_fixed_shrinkage_matches_naive(gen, shrinkage):
    f, y = clustered(gen, 80, 6, 4)
    assert S.sfda(f, y, shrinkage=shrinkage) == pytest.approx(
        naive_sfda(f.numpy(), y.numpy(), shrinkage=shrinkage), rel=1e-8)


def test_fisher_lda_projection(gen):
    """W^T S_w(lam) W = I, the adaptive lam, and the projected-space posteriors equal the full-space LDA's."""
    f, y = clustered(gen, 100, 10, 5)
    fit = S.fisher_lda(f, y)
    post, lam, _ = naive_lda_posteriors(f.numpy(), y.numpy())
    assert fit["lam"] == pytest.approx(lam, rel=1e-10)
    assert fit["W"].shape == (10, 4)
    np.testing.assert_allclose(fit["posteriors"].numpy(), post, rtol=1e-8, atol=1e-12)
    mu = torch.stack([f[y == k].mean(0) for k in range(5)])
    sw = ((f - mu[y]).T @ (f - mu[y])) / f.shape[0]
    swr = (1 - lam) * sw + lam * torch.eye(10, dtype=torch.float64)
    np.testing.assert_allclose((fit["W"].T @ swr @ fit["W"]).numpy(), np.eye(4), atol=1e-9)


def test_sfda_invariances(gen):
    f, y = clustered(gen, 90, 8, 4)
    base = S.sfda(f, y)
    perm = torch.randperm(4, generator=gen)
    assert S.sfda(f, perm[y]) == pytest.approx(base, rel=1e-10)               # label permutation
    order = torch.randperm(90, generator=gen)
    assert S.sfda(f[order], y[order]) == pytest.approx(base, rel=1e-10)       # sample order
    assert S.sfda(f + 5.0, y) == pytest.approx(base, rel=1e-7)                # translation
    q = random_rotation(8, gen)
    assert S.sfda(f @ q, y) == pytest.approx(base, rel=1e-8)                  # rotation
    assert S.sfda(f.numpy(), y.numpy()) == pytest.approx(base, rel=1e-12)     # numpy input
    assert S.sfda(f.float(), y) == pytest.approx(S.sfda(f.float().double(), y), rel=1e-12)
    labels_gap = torch.where(y == 3, torch.tensor(7), y)                       # absent classes are left out
    assert S.sfda(f, labels_gap) == pytest.approx(base, rel=1e-10)


def test_sfda_scaling(gen):
    """With a fixed shrinkage of 0 (N > D) SFDA is scale invariant; the adaptive lam = exp(-5 lambda_max(S_w))
    is not (lambda_max scales with the square of the features' scale)."""
    f, y = clustered(gen, 120, 6, 3)
    assert S.sfda(3.0 * f, y, shrinkage=0.0) == pytest.approx(S.sfda(f, y, shrinkage=0.0), rel=1e-8)
    lam1, lam3 = S.fisher_lda(f, y)["lam"], S.fisher_lda(3.0 * f, y)["lam"]
    assert math.log(lam3) == pytest.approx(9.0 * math.log(lam1), rel=1e-8)


def test_sfda_separation_sanity(gen):
    y = torch.arange(150) % 5
    noise = 0.5 * torch.randn(150, 10, generator=gen, dtype=torch.float64)
    centers = 0.5 * torch.randn(5, 10, generator=gen, dtype=torch.float64)
    vals = [S.sfda(sep * centers[y] + noise, y) for sep in (0.0, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    assert 0 < vals[0] < 0.5 and vals[-1] > 0.9


def test_sfda_cache_independent(gen):
    """The value does not depend on whether other scores filled the shared feature cache first."""
    f, y = clustered(gen, 80, 12, 4)
    S.clear_feature_cache()
    first = S.sfda(f, y)
    S.clear_feature_cache()
    S.hscore(f, y)
    S.lda_score(f, y)
    assert S.sfda(f, y) == first
    old = S.set_feature_cache(0)
    try:
        assert S.sfda(f, y) == pytest.approx(first, rel=1e-12)
    finally:
        S.set_feature_cache(old)


# ------------------------------------------------------------------------------------------------ NCTI


@pytest.mark.parametrize("n,d,c,pca_dim", [(90, 8, 3, 64), (60, 30, 5, 10), (30, 50, 3, 64)])
def test_ncti_terms_match_naive(gen, n, d, c, pca_dim):
    f, y = clustered(gen, n, d, c)
    got = S.ncti_terms(f, y, pca_dim=pca_dim)
    ref = naive_ncti_terms(f.numpy(), y.numpy(), pca_dim=pca_dim)
    for k in ("etf", "ncc", "vc"):
        assert got[k] == pytest.approx(ref[k], rel=1e-7), k


def test_ncti_zoo_matches_naive(gen):
    y = torch.randint(4, (80,), generator=gen)
    y[:4] = torch.arange(4)
    feats = {}
    for i, (d, sep) in enumerate([(6, 0.5), (10, 1.0), (16, 2.0), (8, 3.0)]):
        centers = torch.randn(4, d, generator=gen, dtype=torch.float64) * sep
        feats[f"m{i}"] = 0.5 * (centers[y] + torch.randn(80, d, generator=gen, dtype=torch.float64))
    got = S.ncti(feats, y)
    ref = naive_ncti({m: f.numpy() for m, f in feats.items()}, y.numpy())
    assert set(got) == set(feats)
    for m in feats:
        assert got[m] == pytest.approx(ref[m], rel=1e-7, abs=1e-9), m
    assert S.ncti_combine({m: S.ncti_terms(f, y) for m, f in feats.items()}) == pytest.approx(got)
    assert S.ncti({"only": feats["m0"]}, y) == {"only": 0.5}


def test_ncti_invariances(gen):
    f, y = clustered(gen, 90, 12, 4)
    base = S.ncti_terms(f, y)
    perm = torch.randperm(4, generator=gen)
    order = torch.randperm(90, generator=gen)
    q = random_rotation(12, gen)
    for other in (S.ncti_terms(f, perm[y]), S.ncti_terms(f[order], y[order]), S.ncti_terms(f - 2.0, y),
                  S.ncti_terms(f @ q, y)):
        for k in base:
            assert other[k] == pytest.approx(base[k], rel=1e-7), k
    # PCA to fewer axes than D is rotation invariant too
    small = S.ncti_terms(f, y, pca_dim=5)
    rot = S.ncti_terms(f @ q, y, pca_dim=5)
    for k in small:
        assert rot[k] == pytest.approx(small[k], rel=1e-7), k
    # scale: invariant with a fixed shrinkage of 0 (N > D)
    s0, s3 = S.ncti_terms(f, y, shrinkage=0.0), S.ncti_terms(3.0 * f, y, shrinkage=0.0)
    for k in s0:
        assert s3[k] == pytest.approx(s0[k], rel=1e-7), k
    # zoo: label permutation and the order of the models do not change any model's score
    feats = {"a": f, "b": f[:, :6], "c": f @ q[:, :9] * 0.7}
    z = S.ncti(feats, y)
    z2 = S.ncti(dict(reversed(list(feats.items()))), perm[y])
    assert z2 == pytest.approx(z, rel=1e-7)


def test_ncti_separation_sanity(gen):
    y = torch.arange(120) % 4
    centers = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    noise = 0.5 * torch.randn(120, 10, generator=gen, dtype=torch.float64)
    feats = {sep: 0.5 * sep * centers[y] + noise for sep in (0.25, 1.0, 2.0, 4.0)}
    terms = {s: S.ncti_terms(f, y) for s, f in feats.items()}
    seps = sorted(feats)
    assert all(terms[a]["ncc"] < terms[b]["ncc"] for a, b in zip(seps, seps[1:]))
    assert all(terms[a]["etf"] < terms[b]["etf"] for a, b in zip(seps, seps[1:]))
    z = S.ncti(feats, y)
    # the best-separated model ranks first, then the next; (the vc term favours uniformly unsure posteriors, so
    # the two weakest models are not ordered reliably: a documented property of the nuclear-norm term)
    assert z[4.0] > z[2.0] > max(z[1.0], z[0.25])


# ------------------------------------------------------------------------------------------------ bad inputs


def _per_model_calls():
    return [("sfda", lambda f, y: S.sfda(f, y)), ("ncti_terms", lambda f, y: S.ncti_terms(f, y)),
            ("ncti", lambda f, y: S.ncti({"m": f}, y)), ("fisher_lda", lambda f, y: S.fisher_lda(f, y))]


@pytest.mark.parametrize("name,fn", _per_model_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs(gen, name, fn):
    f, y = clustered(gen, 30, 5, 3)
    with pytest.raises(ValueError, match="only one class"):
        fn(f, torch.zeros(30, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(f[:1], y[:1])
    bad = f.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="`features` contains NaN or Inf"):
        fn(bad, y)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn(bad, y)
    with pytest.raises(ValueError, match="`labels` has 29 entries"):
        fn(f, y[:29])
    with pytest.raises(ValueError, match="negative label"):
        fn(f, y - 1)
    with pytest.raises(ValueError, match="integers in \\[0, C\\)"):
        fn(f, y.double() + 0.5)
    with pytest.raises(ValueError, match="`features` must be 2-D"):
        fn(f[:, 0], y)


def test_bad_options(gen):
    f, y = clustered(gen, 30, 5, 3)
    for bad in (-0.1, 1.5, "auto", True):
        with pytest.raises(ValueError, match="`shrinkage`"):
            S.sfda(f, y, shrinkage=bad)
    with pytest.raises(ValueError, match="`shrink_rate`"):
        S.sfda(f, y, shrink_rate=-1)
    with pytest.raises(ValueError, match="`reduction`"):
        S.sfda(f, y, reduction="sum")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="`pca_dim`"):
            S.ncti_terms(f, y, pca_dim=bad)
    with pytest.raises(TypeError, match="`features` must be a non-empty dict"):
        S.ncti(f, y)
    with pytest.raises(TypeError, match="`features` must be a non-empty dict"):
        S.ncti({}, y)
    with pytest.raises(ValueError, match="model 'b'.*NaN"):
        S.ncti({"a": f, "b": f * float("nan")}, y)
    with pytest.raises(ValueError, match="model 'b'.*`labels` has 30 entries"):
        S.ncti({"a": f, "b": f[:20]}, y)
    with pytest.raises(ValueError, match="`weights`"):
        S.ncti({"a": f}, y, weights=(1, 1))
    with pytest.raises(ValueError, match="`weights`"):
        S.ncti_combine({"a": {"etf": 1.0, "ncc": 0.5, "vc": 1.0}}, weights=(1, -1, 1))
    with pytest.raises(ValueError, match="`terms\\['a'\\]`"):
        S.ncti_combine({"a": {"etf": 1.0}})
    with pytest.raises(ValueError, match="non-finite"):
        S.ncti_combine({"a": {"etf": 1.0, "ncc": float("nan"), "vc": 1.0}, "b": {"etf": 2.0, "ncc": 0.5, "vc": 1.0}})


def test_module_exports():
    assert S.sfda is sfda_module.sfda and S.ncti is ncti_module.ncti
    for name in ("sfda", "fisher_lda", "ncti", "ncti_terms", "ncti_combine"):
        assert name in S.__all__


def test_selection_eval_combines_cached_ncti_terms(gen):
    """benchmarks/selection_eval.py caches NCTI's per-model terms and min-max combines them over the ranked models:
    the same values as the whole-zoo call; SFDA is passed through."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "selection_eval.py")
    spec = importlib.util.spec_from_file_location("selection_eval_sfda", path)
    se = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(se)
    names = ["convnet_latin", "resnet_shapes", "mobilenet_multi", "convnet_random"]
    y = torch.arange(60) % 3
    feats = {m: torch.randn(3, 6, generator=gen, dtype=torch.float64)[y] * (i + 1) * 0.3
             + 0.5 * torch.randn(60, 6, generator=gen, dtype=torch.float64) for i, m in enumerate(names)}
    cell = {}
    for m in names:
        t = S.ncti_terms(feats[m], y)
        cell[m] = {"sfda": S.sfda(feats[m], y), **{"ncti_" + k: v for k, v in t.items()}}
    out = se.cell_scores(cell, names)
    assert out["ncti"] == pytest.approx(S.ncti(feats, y))
    assert out["sfda"] == pytest.approx({m: cell[m]["sfda"] for m in names})
    assert not any(k.startswith("ncti_") for k in out)
    # on a subset of the models the min-max is over that subset
    assert se.cell_scores(cell, names[:2])["ncti"] == pytest.approx(S.ncti({m: feats[m] for m in names[:2]}, y))
