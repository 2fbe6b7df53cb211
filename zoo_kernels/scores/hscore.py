"""H-score (Bao et al., ICIP 2019, "An Information-Theoretic Approach to Transferability in Task Transfer
Learning") and its shrinkage (regularized) variant (Ibrahim et al., "Newer is not always better: Rethinking
transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022 / arXiv 2021).
"""
import torch

from ._common import check_labels, class_stats, feature_stats

__all__ = ["hscore", "hscore_shrinkage", "ledoit_wolf"]


def _pinv_trace(cov, between, rcond, factor=None, eig=None):
    """tr(pinv(cov) @ between) for symmetric PSD cov, with eigenvalues <= rcond * max eigenvalue dropped.
    Pass between=None and factor=M (k, D) for between = M^T M (cheaper: O(k D^2) instead of O(D^3)); eig: the
    (eigenvalues, eigenvectors) of cov if known."""
    evals, evecs = torch.linalg.eigh(cov) if eig is None else eig
    cutoff = rcond * evals.max().clamp_min(0)
    keep = evals > cutoff
    if not keep.any():
        return 0.0
    v = evecs[:, keep]
    if factor is not None:
        return float((((factor @ v) ** 2).sum(0) / evals[keep]).sum())
    return float(((v.T @ between @ v).diagonal() / evals[keep]).sum())


def _between_factor(f, y, c, ddof):
    """M (C, D) with M^T M = cov(E[f | y]) (f centered): rows sqrt(n_c / (N - ddof)) mu_c."""
    counts, sums = class_stats(f, y, c)
    return sums / (counts * (f.shape[0] - ddof)).sqrt()[:, None]


def _between(f, y, c, ddof):
    """cov(E[f | y]) = sum_c n_c (mu_c - mu)(mu_c - mu)^T / (N - ddof), f centered (mu = 0)."""
    counts, sums = class_stats(f, y, c)
    m = sums / counts.sqrt()[:, None]              # rows sqrt(n_c) * mu_c
    return m.T @ m / (f.shape[0] - ddof)


def _default_rcond(d):
    return d * torch.finfo(torch.float64).eps


def hscore(features, labels, *, rcond=None):
    """H-score = tr(cov(f)^+ cov(E[f | y])): the class-conditional feature variance that a linear
    classifier can use, relative to the total feature covariance. Higher is better; invariant to invertible
    linear maps of the features (in particular to scaling). O(N D^2 + D^3).

    rcond: relative eigenvalue cutoff of the pseudo-inverse (default D * machine epsilon; the TLlib
    implementation uses 1e-15, which lets round-off eigenvalues of a rank-deficient covariance, N <= D,
    dominate). Unstable for N < D or nearly collinear features: use hscore_shrinkage there.
    """
    st = feature_stats(features)
    y, c = check_labels(labels, st.n, device=st.f.device)
    n, d = st.f.shape
    f = st.centered
    evals, evecs = st.eigh_c  # cov = gram_c / (N - 1): the same eigenvectors (shared with PCA / N-LEEP)
    return _pinv_trace(None, None, _default_rcond(d) if rcond is None else rcond, factor=_between_factor(f, y, c, 1),
                       eig=(evals / (n - 1), evecs))


def ledoit_wolf(features):
    """(covariance, shrinkage): the Ledoit-Wolf (2004) shrunk covariance (1 - a) S + a mu I of the centered
    features, S = X^T X / N, mu = tr(S) / D, a = min(b2, d2) / d2 with d2 = ||S - mu I||_F^2 / D and
    b2 = (sum_i ||x_i||^4 - N ||S||_F^2) / (N^2 D) (the same estimator as scikit-learn's LedoitWolf)."""
    st = feature_stats(features)
    return _ledoit_wolf(st.centered, st.gram_c)


def _ledoit_wolf(x, gram):
    """ledoit_wolf from the centered features x (N, D) and their Gram x^T x."""
    n, d = x.shape
    s = gram / n
    mu = s.diagonal().sum() / d
    s_fro2 = (s * s).sum()
    d2 = (s_fro2 - 2 * mu * s.diagonal().sum() + d * mu * mu) / d
    b2 = (((x * x).sum(1) ** 2).sum() - n * s_fro2) / (n * n * d)
    b2 = torch.minimum(b2.clamp_min(0), d2)
    a = 0.0 if float(d2) <= 0 else float(b2 / d2)
    shrunk = (1 - a) * s
    shrunk.diagonal().add_(a * mu)
    return shrunk, a


def hscore_shrinkage(features, labels, *, rcond=1e-15):
    """Shrinkage (regularized) H-score = tr(Sigma_a^-1 (1 - a) cov(E[f | y])), with Sigma_a the Ledoit-Wolf
    shrunk feature covariance and a its shrinkage (Ibrahim et al.). Stable for N < D. Higher is better.
    Both covariances are normalized by N (so the score equals hscore when a = 0); TLlib's
    regularized_h_score normalizes the class-mean covariance by N - 1, a constant factor N / (N - 1) that
    does not change rankings at a fixed N. O(N D^2 + D^3)."""
    st = feature_stats(features)
    y, c = check_labels(labels, st.n, device=st.f.device)
    f = st.centered
    cov, a = _ledoit_wolf(f, st.gram_c)
    between = (1 - a) * _between(f, y, c, 0)
    if a > 0:  # shrinkage makes cov positive definite (eigenvalues >= a mu): a Cholesky solve is exact and cheaper
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return float(torch.cholesky_solve(between, chol).diagonal().sum())
    return _pinv_trace(cov, between, rcond)
