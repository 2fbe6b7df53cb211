"""Cross-validated linear-probe accuracy: multinomial logistic regression on the frozen features."""
import torch

from ._common import check_labels, feature_stats

__all__ = ["linear_probe_accuracy", "stratified_folds", "objective_and_gradient", "batched_lbfgs"]


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


def objective_and_gradient(x, onehot, params, l2):
    """(loss, gradient) of mean cross-entropy(x W + b) + l2/2 ||W||^2 at params = [W; b] ((D+1, C)), in closed
    form: dL/dW = x^T (softmax - onehot) / N + l2 W, dL/db = sum_i (softmax - onehot)_i / N. No autograd.
    (One fold; linear_probe_accuracy evaluates all folds at once with the same formulas.)"""
    n, d = x.shape
    w, b = params[:d], params[d]
    logits = torch.addmm(b, x, w)
    lse = torch.logsumexp(logits, 1)
    loss = (lse - (logits * onehot).sum(1)).mean() + 0.5 * l2 * (w * w).sum()
    resid = torch.exp(logits - lse[:, None]).sub_(onehot).div_(n)
    grad = torch.empty_like(params)
    torch.addmm(w, x.T, resid, beta=l2, out=grad[:d])
    grad[d] = resid.sum(0)
    return loss, grad


def _dot(a, b):
    """Per-problem inner products of (K, ...) tensors: (K,)."""
    return (a * b).flatten(1).sum(1)


def batched_lbfgs(evaluate, p0, *, max_iter=100, history_size=10, tolerance_grad=1e-6, tolerance_change=1e-9,
                  c1=1e-4, max_backtrack=10):
    """Minimizes K independent smooth objectives at once by L-BFGS, each with its own history, step sizes and
    stopping test; one call of evaluate(p) -> (loss (K,), grad (K, ...), aux) evaluates all of them.

    Per problem, as torch.optim.LBFGS: the first step is min(1, 1/|g|_1) along -g, later steps 1 along the
    two-loop direction (initial inverse Hessian s^T y / y^T y); stop when max|g| <= tolerance_grad, when the
    step or the loss change is below tolerance_change, or after max_iter iterations. The line search is
    Armijo backtracking (halving) instead of strong Wolfe; a curvature pair is kept only if s^T y > 1e-10.
    Returns (p, loss, grad, aux) at the last accepted points, and the iterations of each problem.
    """
    p = p0.clone()
    loss, grad, aux = evaluate(p)
    k = p.shape[0]
    bshape = (k,) + (1,) * (p.dim() - 1)
    active = grad.abs().flatten(1).amax(1) > tolerance_grad
    hist_s, hist_y, hist_rho = [], [], []
    h_diag = torch.ones(k, dtype=p.dtype, device=p.device)
    iters = torch.zeros(k, dtype=torch.long)
    for it in range(max_iter):
        if not bool(active.any()):
            break
        q = -grad
        alphas = []
        for s_i, y_i, r_i in zip(reversed(hist_s), reversed(hist_y), reversed(hist_rho)):
            a = r_i * _dot(s_i, q)
            q = q - a.view(bshape) * y_i
            alphas.append(a)
        d = q * h_diag.view(bshape)
        for s_i, y_i, r_i, a in zip(hist_s, hist_y, hist_rho, reversed(alphas)):
            d = d + (a - r_i * _dot(y_i, d)).view(bshape) * s_i
        gtd = _dot(grad, d)
        active = active & (gtd < -tolerance_change)          # not a descent direction (numerically): stop
        if not bool(active.any()):
            break
        d = d * active.view(bshape).to(d.dtype)
        if it == 0:
            t = torch.clamp(1.0 / grad.abs().flatten(1).sum(1), max=1.0)
        else:
            t = torch.ones(k, dtype=p.dtype, device=p.device)
        t = t * active.to(t.dtype)
        todo = active.clone()
        slack = 4 * torch.finfo(p.dtype).eps * loss.abs()   # round-off of the loss: no false rejections
        for _ in range(max_backtrack):
            trial = p + t.view(bshape) * d
            new_loss, new_grad, new_aux = evaluate(trial)
            ok = new_loss <= loss + c1 * t * gtd + slack
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            t = torch.where(todo, t * 0.5, t)
        if bool(todo.any()):  # no decrease found (round-off level): stay, and stop these problems
            t = torch.where(todo, torch.zeros_like(t), t)
            active = active & ~todo
            trial = p + t.view(bshape) * d
            new_loss, new_grad, new_aux = evaluate(trial)
        iters += active.long()
        s = trial - p
        yv = new_grad - grad
        ys = _dot(yv, s)
        upd = active & (ys > 1e-10)
        if bool(upd.any()):
            if len(hist_s) == history_size:
                hist_s.pop(0), hist_y.pop(0), hist_rho.pop(0)
            hist_s.append(s)
            hist_y.append(yv)
            hist_rho.append(torch.where(upd, 1.0 / torch.where(upd, ys, torch.ones_like(ys)), torch.zeros_like(ys)))
            yy = _dot(yv, yv)
            h_diag = torch.where(upd, ys / torch.where(upd, yy, torch.ones_like(yy)), h_diag)
        change = (loss - new_loss).abs()
        step_max = s.abs().flatten(1).amax(1)
        p, loss, grad, aux = trial, new_loss, new_grad, new_aux
        active = (active & (grad.abs().flatten(1).amax(1) > tolerance_grad) & (step_max > tolerance_change)
                  & (change >= tolerance_change))
    return p, loss, grad, aux, iters


def _fold_problem(x, y, fold, folds, c, l2, standardize, dtype):
    """evaluate(p) for the K = folds logistic regressions at once, p = [W_k; b_k] (K, D+1, C), each on its training
    rows with its own standardization (x - m_k) / s_k, and the (N, K, C) logits of every sample under every fold's
    model (the test rows give the predictions). The standardization is folded into the weights, so that one
    (N, D) x (D, K C) GEMM gives all logits and one (D, N) x (N, K C) GEMM all gradients. x: the globally centered
    float64 features (centering keeps the folded form well conditioned in float32)."""
    n, d = x.shape
    train = torch.stack([fold != k for k in range(folds)])   # (K, N)
    n_tr = train.sum(1).to(x.dtype)                     # (K,)
    if standardize:
        m = (train.to(x.dtype) @ x) / n_tr[:, None]     # (K, D) training means
        var = (train.to(x.dtype) @ (x * x) - n_tr[:, None] * m * m) / (n_tr[:, None] - 1)
        s = var.clamp_min(0).sqrt()
        s = torch.where(s > 0, s, torch.ones_like(s))
    else:
        m = torch.zeros(folds, d, dtype=x.dtype, device=x.device)
        s = torch.ones(folds, d, dtype=x.dtype, device=x.device)
    lam = (1.0 / n_tr) if l2 is None else torch.full_like(n_tr, float(l2))
    xt = x.to(dtype)
    xtt = xt.T.contiguous()
    m, s, lam = m.to(dtype), s.to(dtype), lam.to(dtype)
    onehot = torch.nn.functional.one_hot(y, c).to(dtype)[:, None, :]    # (N, 1, C)
    wrow = (train.T.to(dtype) / n_tr.to(dtype)[None])[:, :, None]        # (N, K, 1): 1/n_k on training rows
    ms = m / s                                                            # (K, D)

    def evaluate(p):
        w, b = p[:, :d], p[:, d]                                          # (K, D, C), (K, C)
        wt = w / s[:, :, None]
        bt = b - torch.einsum("kd,kdc->kc", ms, w)
        logits = (xt @ wt.permute(1, 0, 2).reshape(d, folds * c)).view(n, folds, c) + bt[None]
        lse = torch.logsumexp(logits, 2, keepdim=True)
        ce = ((lse - (logits * onehot).sum(2, keepdim=True)) * wrow).sum((0, 2))   # (K,)
        loss = ce + 0.5 * lam * (w * w).flatten(1).sum(1)
        resid = (torch.exp(logits - lse) - onehot) * wrow                 # (N, K, C), 0 on test rows
        gb = resid.sum(0)                                                 # (K, C)
        g = (xtt @ resid.view(n, folds * c)).view(d, folds, c).permute(1, 0, 2)
        gw = (g - m[:, :, None] * gb[:, None, :]) / s[:, :, None] + lam[:, None, None] * w
        return loss, torch.cat([gw, gb[:, None]], 1), logits

    return evaluate


def linear_probe_accuracy(features, labels, *, folds=5, l2=None, max_iter=100, seed=0, standardize=True,
                          dtype=torch.float32):
    """Accuracy of a multinomial logistic regression on the features, pooled over stratified K-fold
    cross-validation (each sample predicted once by the probe trained without its fold).

    Objective per fold: mean cross-entropy + l2/2 ||W||^2 (bias not penalized), l2 = 1/N_train by default (the
    objective of scikit-learn's LogisticRegression(C=1)), on the features standardized with the training fold's
    statistics (standardize=True). Minimized from zero by L-BFGS (history 10, Armijo backtracking, at most
    max_iter iterations, max |gradient| <= 1e-6), the K folds at once: the standardization is folded into the
    weights, so one GEMM of all N samples against the K folds' weights gives every logit (the test rows give the
    predictions) and one GEMM every gradient (closed form, no autograd).
    Deterministic for a seed (the fold assignment). In [0, 1]; higher is better. O(iters * N D K C).
    """
    st = feature_stats(features)
    f = st.f
    y, c = check_labels(labels, f.shape[0], device=f.device)
    n, d = f.shape
    if not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"`folds` must be an int in [2, N] = [2, {n}], got {folds!r}")
    fold = stratified_folds(y, folds, seed).to(f.device)
    present = torch.bincount(fold, minlength=folds) > 0
    if not bool(present.all()):                          # fewer samples than folds in effect: drop empty folds
        keep = present.nonzero()[:, 0]
        fold = torch.searchsorted(keep, fold)
        folds = int(keep.numel())
    evaluate = _fold_problem(st.centered, y, fold, folds, c, l2, standardize, dtype)
    p0 = torch.zeros(folds, d + 1, c, dtype=dtype, device=f.device)
    *_, logits, _ = batched_lbfgs(evaluate, p0, max_iter=max_iter)
    pred = logits[torch.arange(n, device=f.device), fold].argmax(1)
    return float((pred == y).sum()) / n


def _standardized_split(x, tr, te):
    """Train and test rows, standardized with the train rows' mean and std (the references' per-fold step)."""
    x_tr, x_te = x[tr], x[te]
    mean, std = x_tr.mean(0, keepdim=True), x_tr.std(0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x_tr - mean) / std, (x_te - mean) / std


def reference_linear_probe_accuracy(features, labels, folds=5, seed=0):
    """Pure-torch reference: the same probe fold by fold with torch L-BFGS (strong Wolfe) and an autograd
    closure, float32 (the implementation before the closed-form gradient and the batched folds)."""
    f = torch.as_tensor(features).float()
    y = torch.unique(torch.as_tensor(labels), return_inverse=True)[1]
    c = int(y.max()) + 1
    fold = stratified_folds(y, folds, seed)
    correct = 0
    for k in range(folds):
        te, tr = fold == k, fold != k
        x_tr, x_te = _standardized_split(f, tr, te)
        w = torch.zeros(f.shape[1], c, requires_grad=True)
        b = torch.zeros(c, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=100, history_size=10, tolerance_grad=1e-6,
                                tolerance_change=1e-9, line_search_fn="strong_wolfe")
        lam = 1.0 / int(tr.sum())

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x_tr @ w + b, y[tr]) + 0.5 * lam * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            correct += int(((x_te @ w + b).argmax(1) == y[te]).sum())
    return correct / f.shape[0]


def reference_per_fold_probe_accuracy(features, labels, folds=5, seed=0, dtype=torch.float32):
    """Pure-torch reference: the probe fold by fold with torch L-BFGS (strong Wolfe) on the closed-form gradient
    (the implementation before the batched folds); float64 with tight tolerances gives the exact optimum."""
    f = torch.as_tensor(features).double()
    y = torch.unique(torch.as_tensor(labels), return_inverse=True)[1]
    c = int(y.max()) + 1
    fold = stratified_folds(y, folds, seed)
    x = f.to(dtype)
    tight = dtype != torch.float32
    correct = 0
    for k in range(folds):
        te, tr = fold == k, fold != k
        x_tr, x_te = _standardized_split(x, tr, te)
        d = x.shape[1]
        params = torch.zeros(d + 1, c, dtype=dtype, requires_grad=True)
        onehot = torch.nn.functional.one_hot(y[tr], c).to(dtype)
        lam = 1.0 / int(tr.sum())
        opt = torch.optim.LBFGS([params], lr=1, max_iter=1000 if tight else 100, history_size=10,
                                tolerance_grad=1e-11 if tight else 1e-6, tolerance_change=1e-15 if tight else 1e-9,
                                line_search_fn="strong_wolfe")

        def closure():
            loss, grad = objective_and_gradient(x_tr, onehot, params.detach(), lam)
            params.grad = grad
            return loss

        opt.step(closure)
        w = params.detach()
        correct += int(((x_te @ w[:d] + w[d]).argmax(1) == y[te]).sum())
    return correct / f.shape[0]
