"""GBC, the Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022, "Transferability Estimation using
Bhattacharyya Class Separability")."""
import torch

from ._common import check_labels, class_stats, feature_stats
from .probabilistic import pca

__all__ = ["gbc", "GAUSSIANS"]

GAUSSIANS = ("spherical", "diagonal")
VAR_FLOOR = 1e-4


def gbc(features, labels, *, gaussian="spherical", pca_dim=None):
    """GBC = -sum_{c != c'} exp(-D_B(c, c')): minus the total Bhattacharyya overlap between the per-class
    Gaussians N(mu_c, Sigma_c) of the features, Sigma_c diagonal (the per-dimension population variances) or
    spherical (their mean), floored at 1e-4. Bhattacharyya distance, Sigma = (Sigma_1 + Sigma_2) / 2:
        D_B = 1/8 (mu_1 - mu_2)^T Sigma^-1 (mu_1 - mu_2) + 1/2 log(det Sigma / sqrt(det Sigma_1 det Sigma_2)).
    For spherical Gaussians the log-det term counts all D dimensions (the TF reference adds it once).
    pca_dim: project the features on their top pca_dim principal axes first (the paper reduces dimension).
    <= 0; higher (less class overlap) is better. O(N D + C^2 D).
    """
    if gaussian not in GAUSSIANS:
        raise ValueError(f"`gaussian` must be one of {GAUSSIANS}, got {gaussian!r}")
    f = feature_stats(features).f
    y, c = check_labels(labels, f.shape[0], device=f.device)
    if pca_dim is not None:
        f = pca(f, variance=1.0, max_dim=int(pca_dim))
    d = f.shape[1]
    counts, sums = class_stats(f, y, c)
    mu = sums / counts[:, None]
    sq = torch.zeros_like(mu).index_add_(0, y, f * f) / counts[:, None]
    var = (sq - mu * mu).clamp_min(0)
    if gaussian == "spherical":
        var = var.mean(1, keepdim=True)
    var = var.clamp_min(VAR_FLOOR)
    dims = d if gaussian == "spherical" else 1
    logv = torch.log(var)
    total = 0.0
    for a in range(c):
        avg = (var[a][None] + var) / 2                       # (C, D or 1)
        maha = (((mu[a][None] - mu) ** 2) / avg).sum(1) / 8
        logdet = dims * (torch.log(avg) - 0.5 * logv[a][None] - 0.5 * logv).sum(1)
        bc = torch.exp(-(maha + 0.5 * logdet))
        bc[a] = 0
        total += float(bc.sum())
    return -total
