"""Cross-validated linear-probe accuracy: multinomial logistic regression on the frozen features."""
import torch

from ._common import check_features, check_labels

__all__ = ["linear_probe_accuracy", "stratified_folds"]


def stratified_folds(labels, folds, seed=0):
    """(N,) fold index of each sample: each class's samples shuffled (seeded) and dealt round-robin, the deal
    continuing across classes (taken in order of first appearance) so that the folds' sizes differ by at most
    one."""
    y = torch.as_tensor(labels).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    fold = torch.empty(y.shape[0], dtype=torch.long)
    offset = 0
    classes, inverse = torch.unique(y, return_inverse=True)
    first = torch.full((classes.numel(),), y.shape[0], dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(y.shape[0]), reduce="amin")
    for c in classes[torch.argsort(first)]:  # classes in order of first appearance: invariant to relabelling
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        fold[idx] = (offset + torch.arange(idx.numel())) % folds
        offset += idx.numel()
    return fold


def _fit_predict(x_tr, y_tr, x_te, c, l2, max_iter, standardize):
    if standardize:
        mean = x_tr.mean(0, keepdim=True)
        std = x_tr.std(0, keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    w = torch.zeros(x_tr.shape[1], c, dtype=x_tr.dtype, device=x_tr.device, requires_grad=True)
    b = torch.zeros(c, dtype=x_tr.dtype, device=x_tr.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_tr @ w + b, y_tr) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (x_te @ w + b).argmax(1)


def linear_probe_accuracy(features, labels, *, folds=5, l2=None, max_iter=100, seed=0, standardize=True,
                          dtype=torch.float32):
    """Accuracy of a multinomial logistic regression on the features, pooled over stratified K-fold
    cross-validation (each sample predicted once by the probe trained without its fold).

    Objective: mean cross-entropy + l2/2 ||W||^2 (bias not penalized), l2 = 1/N_train by default (the objective
    of scikit-learn's LogisticRegression(C=1)), minimized by L-BFGS (strong Wolfe line search, at most max_iter
    iterations) from zero. Features standardized with the training fold's statistics (standardize=True).
    Deterministic for a seed (the fold assignment). In [0, 1]; higher is better. O(folds * iters * N D C).
    """
    f = check_features(features, dtype=torch.float64)
    y, c = check_labels(labels, f.shape[0], device=f.device)
    n = f.shape[0]
    if not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"`folds` must be an int in [2, N] = [2, {n}], got {folds!r}")
    f = f.to(dtype)
    fold = stratified_folds(y, folds, seed).to(f.device)
    correct = 0
    for k in range(folds):
        te = fold == k
        tr = ~te
        if not te.any():
            continue
        lam = (1.0 / int(tr.sum())) if l2 is None else float(l2)
        pred = _fit_predict(f[tr], y[tr], f[te], c, lam, max_iter, standardize)
        correct += int((pred == y[te]).sum())
    return correct / n
