"""TransRate (Huang et al., ICML 2022, "Frustratingly Easy Transferability Estimation")."""
import torch

from ._common import check_labels, feature_stats

__all__ = ["transrate", "coding_rate"]


def coding_rate(z, eps=1e-4, gram=None):
    """R(Z, eps) = 1/2 logdet(I_D + Z^T Z / (N eps)) for Z (N, D), from the eigenvalues of the smaller Gram
    (gram: Z^T Z if known and D <= N)."""
    n, d = z.shape
    if gram is not None and d <= n:
        g = gram
    else:
        g = z.T @ z if d <= n else z @ z.T
    m = g / (n * eps)
    m.diagonal().add_(1.0)
    chol, info = torch.linalg.cholesky_ex(m)  # I + G/(N eps) is positive definite (eigenvalues >= 1)
    if int(info) == 0:
        return torch.log(chol.diagonal()).sum()
    evals = torch.linalg.eigvalsh(g).clamp_min(0)
    return 0.5 * torch.log1p(evals / (n * eps)).sum()


def transrate(features, labels, *, eps=1e-4):
    """TransRate = R(Z, eps) - (1/C) sum_c R(Z_c, eps): the coding rate of the (globally centered) features minus
    the mean coding rate of each class's features (the rate-distortion estimate of the mutual information
    between features and labels). R uses the 1/(N eps) scaling and the 1/C class weights of the public
    implementations (TLlib). eps is absolute: nearly scale invariant when eps is far below the feature
    variances (the log-determinants' scale terms then cancel), not for small features. Higher is better.
    O(N D min(N, D))."""
    if not eps > 0:
        raise ValueError(f"`eps` must be > 0, got {eps!r}")
    st = feature_stats(features)
    y, c = check_labels(labels, st.n, device=st.f.device)
    f = st.centered
    total = coding_rate(f, eps, gram=st.gram_c if st.d <= st.n else None)
    per_class = sum(coding_rate(f[y == k], eps) for k in range(c))
    return float(total - per_class / c)
