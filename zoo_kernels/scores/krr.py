"""Linearized fine-tuning accuracy: the closed-form leave-one-out (LOO) accuracy of kernel ridge regression of
the one-hot labels on the model's features (the linear kernel of the features plus a constant).

In the linearized view of fine-tuning (Deshpande et al. 2021, arXiv:2102.00084), training the head on squared
loss by gradient flow for a time tau is kernel regression with a spectral filter; ridge regression with
lambda ~ N / tau is its closed-form stand-in (ridge ~ early stopping). The LOO accuracy of that regressor
estimates how well the linearized fine-tuned model generalizes on the target task, without training.

    A = [F, 1] (N x (D+1), raw features and a constant column), T = one-hot(y) - its column means (N x C),
    lambda = ridge * N, G = A^T A + lambda I (every weight penalized, the constant's too),
    H = A G^-1 A^T (hat matrix), P = H T, LOO predictions P_-i = (P_i - H_ii T_i) / (1 - H_ii) (exact for ridge),
    score = mean_i [argmax_c P_-i,c == y_i].

Equivalently (dual form, used when D + 1 > N): K = F F^T + 1 1^T, Q = (K + lambda I)^-1, the LOO residual is
T_i - P_-i = (Q T)_i / Q_ii.

The default ridge = 1/45 = 0.1 / tau with tau = lr / (1 - momentum) * steps = 0.003 / 0.1 * 150 = 4.5, the time
scale of MiniZoo's fine-tuning recipe (``zoo.finetune.RECIPE``); the factor 0.1 was chosen on the dev shot levels
(benchmarks/results/selection-minizoo-15shot-2026-11-27.md). The score depends on the features' scale (like
fine-tuning does): it is not invariant to rescaling the features, only to relabelling the classes.
"""
import math

import torch

from ._common import check_labels, feature_stats, one_hot

__all__ = ["krr_loo_accuracy", "RECIPE_TAU", "DEFAULT_RIDGE"]

RECIPE_TAU = 0.003 / (1 - 0.9) * 150   # lr / (1 - momentum) * steps of zoo.finetune.RECIPE
DEFAULT_RIDGE = 0.1 / RECIPE_TAU       # = 1/45


def _loo_residuals(a, t, lam):
    """T - P_-i for every row i (N, C), for the ridge regression of t on the rows of a (N, p) with penalty lam."""
    n, p = a.shape
    if p <= n:  # primal: p x p system
        g = a.T @ a
        g.diagonal().add_(lam)
        chol, info = torch.linalg.cholesky_ex(g)
        if int(info) != 0:
            raise ValueError("ridge system is not positive definite (ridge too small for these features)")
        b = torch.linalg.solve_triangular(chol, a.T, upper=False)          # L^-1 A^T  (p, N)
        h = (b * b).sum(0)                                                   # diag of the hat matrix
        pred = b.T @ (b @ t)                                                 # H T
        denom = 1.0 - h
        if not bool((denom > 0).all()):
            raise ValueError("a leverage H_ii reached 1 (ridge too small for these features)")
        return (t - pred) / denom[:, None]
    k = a @ a.T                                                              # dual: N x N system
    k.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        raise ValueError("ridge system is not positive definite (ridge too small for these features)")
    qt = torch.cholesky_solve(t, chol)                                      # Q T
    qdiag = torch.cholesky_inverse(chol).diagonal()
    return qt / qdiag[:, None]


def krr_loo_accuracy(features, labels, *, ridge=DEFAULT_RIDGE):
    """Leave-one-out accuracy of ridge regression of the centered one-hot labels on [features, 1].

    features: (N, D) (used as they are: raw scale, no standardization); labels: (N,) class indices.
    ridge: the penalty per sample (lambda = ridge * N), a positive finite number; default 0.1 / tau with tau the
    recipe's lr / (1 - momentum) * steps (see the module docstring). In [0, 1]; higher is better.
    Cost O(N D^2 + D^3) (primal) or O(N^2 D + N^3) when D + 1 > N; float64.
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"`ridge` must be a positive finite number, got {ridge!r}")
    f = feature_stats(features).f
    y, c = check_labels(labels, f.shape[0], device=f.device)
    n = f.shape[0]
    a = torch.cat([f, torch.ones(n, 1, dtype=f.dtype, device=f.device)], dim=1)
    t = one_hot(y, c, dtype=f.dtype)
    t = t - t.mean(0, keepdim=True)
    loo = t - _loo_residuals(a, t, float(ridge) * n)
    return float((loo.argmax(1) == y).sum()) / n
