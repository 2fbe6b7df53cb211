"""Leave-one-out k-nearest-neighbour accuracy of the features (the kNN baseline of PARC, Bolya et al.,
NeurIPS 2021; k-NN as a transferability estimator, Sorkhei et al. 2025)."""
import torch

from ._common import check_labels, feature_stats

__all__ = ["knn_accuracy", "METRICS"]

METRICS = ("euclidean", "cosine")
_BLOCK = 1024


def knn_accuracy(features, labels, *, k=1, metric="euclidean"):
    """Fraction of samples whose label is the majority label of their k nearest other samples (leave one out).

    Ties between classes are broken in favour of the class with the nearest neighbour. metric: "euclidean" or
    "cosine". In [0, 1]; higher is better; invariant to feature scaling. O(N^2 D) in row blocks (O(block N)
    memory).
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    f = feature_stats(features).f
    y, c = check_labels(labels, f.shape[0], device=f.device)
    n = f.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ValueError(f"`k` must be an int in [1, N-1] = [1, {n - 1}], got {k!r}")
    if metric == "cosine":
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sq = (f * f).sum(1)
    correct = 0
    pos = torch.arange(k, device=f.device)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(n, start + _BLOCK))
        if metric == "cosine":
            dist = -(f[rows] @ f.T)
        else:
            dist = sq[rows, None] - 2 * f[rows] @ f.T + sq[None]
        idx = torch.arange(rows.start, rows.stop, device=f.device)
        dist[idx - start, idx] = float("inf")
        nb = dist.topk(k, dim=1, largest=False).indices          # sorted nearest first
        lab = y[nb]
        counts = torch.zeros(nb.shape[0], c, dtype=torch.long, device=f.device).scatter_add_(
            1, lab, torch.ones_like(lab))
        first = torch.full((nb.shape[0], c), k, dtype=torch.long, device=f.device).scatter_reduce_(
            1, lab, pos[None].expand_as(lab).contiguous(), reduce="amin")
        votes = counts * (k + 1) + (k - first)            # more votes first, then the nearest neighbour
        correct += int((votes.argmax(1) == y[rows]).sum())
    return correct / n
