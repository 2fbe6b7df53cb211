"""Probabilistic transferability scores: LEEP, NCE, N-LEEP (GMM on PCA features) and LogME.

* LEEP (Nguyen et al., ICML 2020, "LEEP: A New Measure to Evaluate Transferability of Learned Representations").
* NCE (Tran et al., ICCV 2019, "Transferability and Hardness of Supervised Classification Tasks").
* N-LEEP (Li et al., CVPR 2021, "Ranking Neural Checkpoints").
* LogME (You et al., ICML 2021 "LogME: Practical Assessment of Pre-trained Models for Transfer Learning";
  the fixed-point solver of the JMLR 2022 version, "Ranking and Tuning Pre-trained Models").
"""
import math

import torch

from ._common import (_integer_labels, as_tensor, check_features, check_labels, check_probs, check_targets,
                      feature_stats, one_hot)

__all__ = ["leep", "nce", "nleep", "logme", "pca", "gmm_posteriors", "LOGME_MAX_ITER", "LOGME_TOL"]

_TINY = 1e-300


def _leep_from_probs(p, y, c):
    n = p.shape[0]
    joint = (one_hot(y, c).T @ p) / n                          # P(y, z): (C, Cs)
    cond = joint / joint.sum(0, keepdim=True).clamp_min(_TINY)  # P(y | z)
    eep = (p @ cond.T).gather(1, y[:, None])[:, 0]               # sum_z P(y_i | z) theta_i(z)
    return float(torch.log(eep.clamp_min(_TINY)).mean())


def leep(source_probs, labels, *, logits=False):
    """LEEP = (1/N) sum_i log sum_z P(y_i | z) theta_i(z), with P(y | z) the empirical conditional of the
    target label given the source class under the source model's predictions theta_i (N, Cs).

    source_probs: softmax outputs of the source model (pass logits=True for raw outputs). <= 0; higher is
    better. O(N Cs C).
    """
    p = check_probs(source_probs, logits=logits)
    y, c = check_labels(labels, p.shape[0], device=p.device)
    return _leep_from_probs(p, y, c)


def _source_labels(source_labels, n=None):
    """(N,) long source classes: integers >= 0, or the argmax of (N, Cs) scores."""
    z = as_tensor(source_labels, "source_labels")
    if z.dim() == 2 and z.shape[1] > 1:
        z = check_features(z, "source_labels").argmax(1)
    z = _integer_labels(z, "source_labels")
    if n is not None and z.shape[0] != n:
        raise ValueError(f"`source_labels` has {z.shape[0]} entries but `labels` has {n}")
    if z.numel() and int(z.min()) < 0:
        raise ValueError(f"`source_labels` must be integers in [0, Cs), got a negative label {int(z.min())}")
    return torch.unique(z, return_inverse=True)[1]


def nce(source_labels, labels):
    """NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z), from the empirical joint of the target labels Y and the
    source model's hard predictions Z. source_labels: (N,) ints, or (N, Cs) probabilities/logits (argmax
    taken). <= 0; higher is better. O(N + Cs C).
    """
    y, c = check_labels(labels)
    z = _source_labels(source_labels, y.shape[0]).to(y.device)
    n = y.shape[0]
    cz = int(z.max()) + 1
    joint = torch.zeros(c * cz, dtype=torch.float64, device=y.device)
    joint.index_add_(0, y * cz + z, torch.ones(n, dtype=torch.float64, device=y.device))
    joint = joint.reshape(c, cz) / n
    pz = joint.sum(0, keepdim=True).expand_as(joint)
    nz = joint > 0
    return float((joint[nz] * torch.log(joint[nz] / pz[nz])).sum())


# ------------------------------------------------------------------------------------------------ PCA / GMM

def pca(features, variance=0.8, max_dim=None):
    """Centered features projected on their top principal axes: the fewest that explain >= `variance` of the
    total variance (variance=1.0 keeps all non-degenerate axes), at most max_dim. Returns (N, d)."""
    return _pca(feature_stats(features), variance, max_dim)


def _pca(st, variance, max_dim):
    f = st.centered
    n, d = f.shape
    if d <= n:
        evals, evecs = st.eigh_c  # shared with the H-score
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    else:
        evals, u = torch.linalg.eigh(f @ f.T)
        evals, u = evals.flip(0).clamp_min(0), u.flip(1)
        evecs = None
    total = evals.sum()
    if total <= 0:
        raise ValueError("`features` are constant; PCA is undefined")
    ratio = torch.cumsum(evals, 0) / total
    keep = int((ratio < variance - 1e-12).sum()) + 1
    keep = min(keep, int((evals > evals[0] * 1e-12).sum()))
    if max_dim is not None:
        keep = min(keep, int(max_dim))
    keep = max(keep, 1)
    if evecs is not None:
        return f @ evecs[:, :keep]
    return u[:, :keep] * evals[:keep].sqrt()


def _kmeans_pp(x, k, gen, iters=20):
    """k-means++ seeding and Lloyd iterations; returns hard assignments (N,)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2.clamp_min(0)
        if probs.sum() <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial((probs / probs.sum()).cpu().float(), 1, generator=gen))
        centers.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = torch.stack(centers)
    assign = None
    for _ in range(iters):
        dist = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]
        new = dist.argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
    return assign


def _gmm_log_prob(x, weights, means, cov, kind, xx=None):
    """log(w_k N(x_i | mu_k, Sigma_k)): (N, K). xx: [x, x * x] (N, 2d) for the diagonal case, if known."""
    d = x.shape[1]
    if kind == "diag":
        prec = 1.0 / cov                                                    # (K, d)
        if xx is None:
            xx = torch.cat([x, x * x], 1)
        # one GEMM: sum_j x_j^2 prec_kj - 2 x_j mu_kj prec_kj, plus sum_j mu_kj^2 prec_kj
        maha = xx @ torch.cat([-2 * means * prec, prec], 1).T + (means * means * prec).sum(1)[None]
        logdet = torch.log(cov).sum(1)
    else:
        chol = torch.linalg.cholesky(cov)                                   # (K, d, d)
        diff = x[None] - means[:, None]                                     # (K, N, d)
        sol = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, d, N)
        maha = (sol * sol).sum(1).T
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
    return torch.log(weights)[None] - 0.5 * (d * math.log(2 * math.pi) + logdet[None] + maha)


def _gmm_m_step(x, resp, kind, reg, xx=None):
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    d = x.shape[1]
    if kind == "diag":
        if xx is None:
            xx = torch.cat([x, x * x], 1)
        moments = (resp.T @ xx) / nk[:, None]                               # one GEMM: sum resp x, sum resp x^2
        means = moments[:, :d]
        cov = moments[:, d:] - means * means
        cov = cov.clamp_min(0) + reg
    else:
        means = (resp.T @ x) / nk[:, None]
        diff = x[None] - means[:, None]                                     # (K, N, d)
        cov = torch.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None]
        cov = cov + reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return nk / nk.sum(), means, cov


def gmm_posteriors(x, n_components, *, covariance="diag", seed=0, max_iter=100, tol=1e-3, reg=1e-6):
    """Fit a Gaussian mixture by EM (k-means++ + Lloyd init, seeded) and return the posteriors p(k | x_i) (N, K).

    covariance: "diag" (default, O(N K d) per iteration) or "full" (O(N K d^2)). Stops when the mean
    log-likelihood changes by less than `tol`, or after max_iter iterations; `reg` is added to the variances.
    """
    if covariance not in ("diag", "full"):
        raise ValueError(f"`covariance` must be 'diag' or 'full', got {covariance!r}")
    x = check_features(x, "x")
    n = x.shape[0]
    k = max(1, min(int(n_components), n))
    gen = torch.Generator().manual_seed(int(seed))
    assign = _kmeans_pp(x, k, gen)
    resp = one_hot(assign, k)
    xx = torch.cat([x, x * x], 1) if covariance == "diag" else None   # [x, x^2], shared by every E and M step
    weights, means, cov = _gmm_m_step(x, resp, covariance, reg, xx)
    prev = -math.inf
    for _ in range(max_iter):
        logp = _gmm_log_prob(x, weights, means, cov, covariance, xx)
        norm = torch.logsumexp(logp, 1, keepdim=True)
        resp = torch.exp(logp - norm)
        ll = float(norm.mean())
        if abs(ll - prev) < tol:
            break
        prev = ll
        weights, means, cov = _gmm_m_step(x, resp, covariance, reg, xx)
    return resp


def nleep(features, labels, *, variance=0.8, max_dim=None, components_per_class=5, covariance="diag",
          seed=0, max_iter=100, tol=1e-3):
    """N-LEEP: LEEP with the source classifier replaced by a Gaussian mixture fitted to the PCA-reduced
    features (components_per_class * C components); its posteriors p(k | x_i) play the source probabilities.

    PCA keeps `variance` of the variance (0.8, as in the SFDA implementation), optionally at most max_dim
    axes. The GMM is our own seeded EM (diagonal covariances by default; "full" as in the scikit-learn
    setup of SFDA is available). <= 0; higher is better.
    """
    st = feature_stats(features)
    y, c = check_labels(labels, st.n, device=st.f.device)
    z = _pca(st, variance, max_dim)
    post = gmm_posteriors(z, components_per_class * c, covariance=covariance, seed=seed, max_iter=max_iter,
                          tol=tol)
    return _leep_from_probs(post, y, c)


# ------------------------------------------------------------------------------------------------ LogME

LOGME_MAX_ITER = 11   # as the reference fixed-point solver
LOGME_TOL = 1e-3      # relative change of alpha / beta
GUARD = 1e-5          # added to the denominators of the updates, as the reference solver


def _spectrum(f):
    """(s, U): the nonzero eigenvalues s (r,) of F^T F and the matching left singular vectors U (N, r)."""
    n, d = f.shape
    if d <= n:
        s, v = torch.linalg.eigh(f.T @ f)
        keep = s > s.max().clamp_min(0) * 1e-12 * max(n, d)
        s, v = s[keep], v[:, keep]
        u = (f @ v) / s.sqrt()
    else:
        s, u = torch.linalg.eigh(f @ f.T)
        keep = s > s.max().clamp_min(0) * 1e-12 * max(n, d)
        s, u = s[keep], u[:, keep]
    return s, u


def _spectral_projections(f, y, eig=None):
    """(s, z2): the nonzero eigenvalues s (r,) of F^T F and z2 = (U^T y)^2 (r, T), U the matching left singular
    vectors. For D <= N, U^T y = V^T (F^T y) / sqrt(s) needs only F^T y (O(N D T)), not U itself (O(N D^2)).
    eig: eigh(F^T F) if known."""
    n, d = f.shape
    if d <= n:
        s, v = torch.linalg.eigh(f.T @ f) if eig is None else eig
        keep = s > s.max().clamp_min(0) * 1e-12 * max(n, d)
        s, v = s[keep], v[:, keep]
        return s, (v.T @ (f.T @ y)) ** 2 / s[:, None]
    s, u = _spectrum(f)
    return s, (u.T @ y) ** 2


def _logme_evidence(s, z2, y2, n, d, max_iter, tol):
    """Per-target log evidence / N. s: (r,) eigenvalues; z2: (r, T) squared projections U^T y; y2: (T,) ||y||^2.

    Fixed point (JMLR 2022, Alg. 3): gamma = sum beta s/(alpha + beta s); alpha = gamma / ||m||^2;
    beta = (N - gamma) / ||F m - y||^2, from alpha = beta = 1, until |dt|/t <= tol for t = alpha/beta or
    max_iter iterations; 1e-5 guards the denominators. The evidence is evaluated at the final alpha, beta.
    """
    t_count = z2.shape[1]
    alpha = torch.ones(t_count, dtype=s.dtype, device=s.device)
    beta = torch.ones_like(alpha)
    active = torch.ones(t_count, dtype=torch.bool, device=s.device)
    for _ in range(max_iter):
        _, gamma, m2, res2 = _evidence_terms(s, z2, y2, alpha, beta)
        new_alpha = gamma / (m2 + GUARD)
        new_beta = (n - gamma) / (res2 + GUARD)
        t_old = alpha / beta
        t_new = new_alpha / new_beta
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active = active & ((t_new - t_old).abs() / t_old > tol)
        if not active.any():
            break
    return _log_evidence(s, z2, y2, n, d, alpha, beta)


def _evidence_terms(s, z2, y2, alpha, beta):
    """(alpha + beta s, gamma, ||m||^2, ||F m - y||^2) per target, m the posterior mean weights."""
    s_ = s[:, None]
    den = alpha[None] + beta[None] * s_
    gamma = (beta[None] * s_ / den).sum(0)
    m2 = (beta[None] ** 2 * s_ * z2 / den ** 2).sum(0)
    out2 = (y2 - z2.sum(0)).clamp_min(0)           # the part of y outside the span of F
    res2 = (alpha[None] ** 2 * z2 / den ** 2).sum(0) + out2
    return den, gamma, m2, res2


def _log_evidence(s, z2, y2, n, d, alpha, beta):
    """log p(y | F, alpha, beta) / N = log N(y; 0, I / beta + F F^T / alpha) / N, per target:
    D/2 log a + N/2 log b - a/2 ||m||^2 - b/2 ||Fm - y||^2 - 1/2 log det(a I + b F^T F) - N/2 log 2 pi."""
    den, _, m2, res2 = _evidence_terms(s, z2, y2, alpha, beta)
    logdet = torch.log(den).sum(0) + (d - s.shape[0]) * torch.log(alpha)
    ev = (d / 2 * torch.log(alpha) + n / 2 * torch.log(beta) - alpha / 2 * m2 - beta / 2 * res2
          - logdet / 2 - n / 2 * math.log(2 * math.pi))
    return ev / n


def logme(features, labels, *, regression=False, max_iter=LOGME_MAX_ITER, tol=LOGME_TOL):
    """LogME: the mean over targets of the maximized log marginal likelihood (per sample) of a Bayesian
    linear model y = F w + noise, w ~ N(0, alpha^-1 I), noise ~ N(0, beta^-1), over alpha and beta.

    Classification: one target per class (one-vs-rest 0/1 indicators). Regression (regression=True):
    labels (N,) or (N, T) real targets, used as given. One eigendecomposition of the smaller Gram matrix
    (O(N D min(N, D))), then the fixed-point iteration vectorized over targets (max_iter iterations,
    relative tolerance tol on alpha/beta). Higher is better.
    """
    st = feature_stats(features)
    f = st.f
    n, d = f.shape
    if regression:
        y = check_targets(labels, n, device=f.device)
    else:
        yl, c = check_labels(labels, n, device=f.device)
        y = one_hot(yl, c)
    s, z2 = _spectral_projections(f, y, st.eigh_u if d <= n else None)
    y2 = (y * y).sum(0)
    return float(_logme_evidence(s, z2, y2, n, d, int(max_iter), float(tol)).mean())
