"""Label-Feature Correlation (LFC) and Label-Gradient Correlation (LGC), Deshpande et al. 2021
("A linearized framework and a new benchmark for model selection for fine-tuning", arXiv:2102.00084).

Both are the Pearson correlation, over all N^2 entries (diagonal included), between a kernel matrix K and the
label-similarity matrix S (S_ij = +1 if y_i == y_j else -1):

    corr(K, S) = <K - mean(K), S - mean(S)>_F / (||K - mean(K)||_F * ||S - mean(S)||_F)

* LFC: K = F F^T, F the penultimate (head-input) features.
* LGC: K = Theta, the trace NTK Theta_ij = sum_c <d f_c(x_i)/dw, d f_c(x_j)/dw> over the trainable parameters w.

Pearson correlation is invariant to affine maps of S, so S = +-1 and S = 1[y_i == y_j] give the same value.
centering="double" is the CKA-style variant <HKH, HSH> / (||HKH|| ||HSH||) (H = I - 11^T/N).

For a kernel that is a Gram matrix K = Phi Phi^T, all sums are computed from Phi without forming N x N:
with Y the one-hot label matrix (S ~ Y Y^T) and M = N^2,

    sum K = ||Phi^T 1||^2,  sum K*S = ||Phi^T Y||_F^2,  sum K^2 = ||Phi^T Phi||_F^2,
    sum S = ||Y^T 1||^2,    sum S^2 = ||Y^T Y||_F^2 (= sum_c n_c^2 for one-hot labels),
    corr = (sum K*S - sum K sum S / M) / sqrt((sum K^2 - (sum K)^2/M) (sum S^2 - (sum S)^2/M)).

Cost O(N D min(N, D) + N D C); memory O(D^2) (or O(b N) row blocks when D > N).
"""
import contextlib
import copy
import importlib

import torch

from ._common import as_tensor, check_features, check_labels, check_targets, feature_stats, one_hot

__all__ = ["lfc", "lgc", "lgc_from_kernel", "lgc_from_sketch", "gradient_kernel", "label_matrix", "with_target_head",
           "CENTERINGS"]

CENTERINGS = ("global", "double")
_BLOCK = 1024  # rows per block of Phi Phi^T when D > N


def _gram_sumsq(phi):
    """||Phi^T Phi||_F^2 = ||Phi Phi^T||_F^2 from the smaller of the two Grams (row blocks when D > N)."""
    n, d = phi.shape
    if d <= n:
        g = phi.T @ phi
        return (g * g).sum()
    total = phi.new_zeros(())
    for start in range(0, n, _BLOCK):
        b = phi[start:start + _BLOCK] @ phi.T
        total = total + (b * b).sum()
    return total


def _label_factor(labels, n, regression, device):
    """Y with S = Y Y^T: one-hot (N, C) for classes; centered targets (N, T) for regression."""
    if regression:
        t = check_targets(labels, n, device=device)
        return t - t.mean(0, keepdim=True)
    y, c = check_labels(labels, n, device=device)
    return one_hot(y, c)


def _check_centering(centering):
    if centering not in CENTERINGS:
        raise ValueError(f"`centering` must be one of {CENTERINGS}, got {centering!r}")


def _corr_from_sums(s_ks, s_k, s_k2, s_s, s_s2, m):
    cov = s_ks - s_k * s_s / m
    var_k = s_k2 - s_k * s_k / m
    var_s = s_s2 - s_s * s_s / m
    if var_s <= 0:
        raise ValueError("`labels` give a constant label-similarity matrix (one distinct value); the correlation "
                         "is undefined")
    if var_k <= 0:
        return 0.0  # constant kernel: no information (Pearson with a constant is undefined; report 0)
    return float(cov / torch.sqrt(var_k * var_s))


def _feature_correlation(phi, y_factor, centering, stats=None):
    """corr(Phi Phi^T, Y Y^T) without N x N matrices. stats: FeatureStats of phi (its Grams are reused)."""
    n, d = phi.shape
    gram = None
    if centering == "double":
        if stats is not None:
            phi, gram = stats.centered, (stats.gram_c if d <= n else None)
        else:
            phi = phi - phi.mean(0, keepdim=True)
        y_factor = y_factor - y_factor.mean(0, keepdim=True)
    elif stats is not None and d <= n:
        gram = stats.gram_u
    s_k = (phi.sum(0) ** 2).sum()
    s_s = (y_factor.sum(0) ** 2).sum()
    s_ks = ((phi.T @ y_factor) ** 2).sum()
    s_k2 = (gram * gram).sum() if gram is not None else _gram_sumsq(phi)
    s_s2 = _gram_sumsq(y_factor)
    return _corr_from_sums(s_ks, s_k, s_k2, s_s, s_s2, float(n) * n)


def lfc(features, labels, *, centering="global", regression=False):
    """Label-Feature Correlation: Pearson correlation of the entries of F F^T and of the +-1 label matrix.

    features: (N, D) penultimate-layer features (raw, as the reference implementations use them);
    labels: (N,) integer classes, or (N,) / (N, T) real targets with regression=True (then S = y~ y~^T with
    the targets centered per column). Higher is better. Invariant to feature scaling and label permutation.
    O(N D min(N, D)) time, no N x N matrix.
    """
    _check_centering(centering)
    st = feature_stats(features)
    y = _label_factor(labels, st.n, regression, st.f.device)
    return _feature_correlation(st.f, y, centering, st)


def label_matrix(labels, *, regression=False, signed=True):
    """The N x N label-similarity matrix S (+-1, or {0, 1} with signed=False; y~ y~^T for regression)."""
    if regression:
        t = check_targets(labels)
        t = t - t.mean(0, keepdim=True)
        return t @ t.T
    y, _ = check_labels(labels)
    same = (y[:, None] == y[None, :]).to(torch.float64)
    return 2 * same - 1 if signed else same


def lgc_from_kernel(kernel, labels, *, centering="global", regression=False):
    """corr(K, S) for a precomputed symmetric N x N kernel K (e.g. an exact trace NTK). O(N^2 C)."""
    _check_centering(centering)
    k = check_features(kernel, "kernel")
    n = k.shape[0]
    if k.shape[1] != n:
        raise ValueError(f"`kernel` must be square (N, N), got shape {tuple(k.shape)}")
    y = _label_factor(labels, n, regression, k.device)
    if centering == "double":
        k = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
        y = y - y.mean(0, keepdim=True)
    ky = k @ y
    s_ks = (ky * y).sum()
    s_k = k.sum()
    s_k2 = (k * k).sum()
    s_s = (y.sum(0) ** 2).sum()
    s_s2 = _gram_sumsq(y)
    return _corr_from_sums(s_ks, s_k, s_k2, s_s, s_s2, float(n) * n)


# ------------------------------------------------------------------------------------------------ LGC

@contextlib.contextmanager
def _only_trainable(model, layers):
    """Temporarily sets requires_grad=False on the parameters outside `layers` (names or name prefixes)."""
    if layers is None:
        yield
        return
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    named = list(model.named_parameters())
    matched = set()
    for name, _ in named:
        for prefix in layers:
            if name == prefix or name.startswith(prefix + "."):
                matched.add(name)
    unknown = [p for p in layers if not any(n == p or n.startswith(p + ".") for n, _ in named)]
    if unknown:
        raise ValueError(f"`layers` names no parameter of the model: {unknown}")
    saved = [(p, p.requires_grad) for _, p in named]
    try:
        for name, p in named:
            if name not in matched:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _func_trace_ntk(model, inputs, output, batch_size, max_elements):
    """Exact trace NTK from per-sample Jacobians (torch.func); for small models only."""
    from torch.func import functional_call, jacrev, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("`model` has no trainable parameters (all have requires_grad=False)")
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update(dict(model.named_buffers()))
    num_p = sum(p.numel() for p in params.values())
    n = inputs.shape[0]
    with torch.no_grad():
        c = model(inputs[:1]).reshape(1, -1).shape[1]
    c = 1 if output == "sum" else c
    if n * c * num_p > max_elements:
        raise ValueError(f"exact LGC needs the per-sample Jacobians, N*C*P = {n}*{c}*{num_p} = {n * c * num_p} "
                         f"values > max_elements={max_elements}; use method='sketch' or pass a `kernel` callable")

    def f(p, x):
        out = functional_call(model, {**frozen, **p}, (x.unsqueeze(0),)).reshape(-1)
        return out.sum(0, keepdim=True) if output == "sum" else out

    jac_fn = vmap(jacrev(f), in_dims=(None, 0))
    rows = []
    for start in range(0, n, batch_size):
        xb = inputs[start:start + batch_size]
        jac = jac_fn(params, xb)
        rows.append(torch.cat([j.reshape(xb.shape[0], c, -1) for j in jac.values()], dim=2)
                    .to(torch.float64).reshape(xb.shape[0], -1))
    g = torch.cat(rows)
    return g @ g.T


LGC_METHODS = ("sketch", "exact")
EXACT_BACKENDS = ("auto", "ghost", "func")


def gradient_kernel(model, inputs, *, method="sketch", k=1024, sketch="kronecker", seed=0, batch_size=64,
                    output="all", layers=None, kernel=None, progress=False, dist="rademacher",
                    exact_backend="auto", max_elements=50_000_000):
    """The gradient information LGC correlates with the labels (see `lgc` for the options):
    method="sketch": the Jacobian sketch S (N, C, k) (Theta ~= S_flat S_flat^T); method="exact": the trace NTK
    (N, N). Separate from the correlation so that it can be cached and reused (rank() does)."""
    if method not in LGC_METHODS:
        raise ValueError(f"`method` must be one of {LGC_METHODS}, got {method!r}")
    if exact_backend not in EXACT_BACKENDS:
        raise ValueError(f"`exact_backend` must be one of {EXACT_BACKENDS}, got {exact_backend!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    x = as_tensor(inputs, "inputs")
    if x.dim() < 1 or x.shape[0] < 2:
        raise ValueError(f"`inputs` needs at least 2 samples, got shape {tuple(x.shape)}")
    n = x.shape[0]
    with _only_trainable(model, layers):
        if method == "sketch":
            from ..sketch import sketch_jacobian
            return sketch_jacobian(model, x, k, method=sketch, seed=seed, batch_size=batch_size, progress=progress,
                                   output=output, dist=dist)
        if kernel is not None:
            theta = kernel(model, x)
        else:
            ghost = getattr(importlib.import_module("zoo_kernels"), "ntk", None)
            backend = exact_backend
            if backend == "auto":
                backend = "ghost" if ghost is not None and output == "all" else "func"
            if backend == "ghost":
                if ghost is None:
                    raise ValueError("exact_backend='ghost' needs zoo_kernels.ntk, which this build lacks")
                if output != "all":
                    raise ValueError("exact_backend='ghost' computes the trace NTK (output='all') only")
                theta = ghost(model, x, mode="trace", batch_size=batch_size, progress=progress)
            else:
                theta = _func_trace_ntk(model, x, output, batch_size, max_elements)
    theta = as_tensor(theta, "kernel")
    if tuple(theta.shape) != (n, n):
        raise ValueError(f"the kernel must be (N, N) = ({n}, {n}), got {tuple(theta.shape)}")
    return theta


def lgc_from_sketch(sketch, labels, *, centering="global", regression=False):
    """LGC from a Jacobian sketch S (N, C, k) (e.g. zoo_kernels.sketch_jacobian): LFC of S.flatten(1), since the
    sketched trace NTK is sum_c S_c S_c^T. No N x N matrix; O(N Ck min(N, Ck))."""
    _check_centering(centering)
    s = as_tensor(sketch, "sketch")
    if s.dim() != 3:
        raise ValueError(f"`sketch` must be (N, C, k), got shape {tuple(s.shape)}")
    phi = check_features(s.reshape(s.shape[0], -1), "sketch")
    y = _label_factor(labels, phi.shape[0], regression, phi.device)
    return _feature_correlation(phi, y, centering)


def lgc(model, inputs, labels, *, method="sketch", k=1024, sketch="kronecker", seed=0, batch_size=64,
        output="all", layers=None, kernel=None, centering="global", regression=False, progress=False,
        dist="rademacher", exact_backend="auto", max_elements=50_000_000):
    """Label-Gradient Correlation: corr(Theta, S) with Theta the trace NTK of `model` on `inputs`.

    model: an nn.Module mapping inputs to C outputs (N, C); the gradients are taken w.r.t. its trainable
    parameters (restrict them with `layers`: parameter names or module-name prefixes, e.g. ["fc", "layer4"]).
    For fine-tuning to C target classes, attach a target head first (`with_target_head`). Put the model in
    eval mode (dropout/BatchNorm).
    output: "all" (trace NTK, sum over the C outputs) or "sum" (the NTK of the summed outputs).

    method="sketch": S = zoo_kernels.sketch_jacobian(model, inputs, k, method=sketch) (N, C, k); since
        Theta_ij ~= sum_c <S_ic, S_jc> = <Phi_i, Phi_j> with Phi_i = S[i].flatten(), LGC = LFC(Phi), computed
        without N x N (O(N Ck min(N, Ck))). Unbiased kernel, error ~ 1/sqrt(k).
    method="exact": the exact N x N kernel: `kernel(model, inputs)` if a callable is given, else by
        exact_backend: "ghost" = zoo_kernels.ntk(model, inputs, mode="trace") (the extension's ghost NTK, no
        per-sample gradients formed; output="all" only), "func" = per-sample Jacobians with torch.func (small
        models: N*C*P <= max_elements), "auto" = ghost where available and output="all", else func.

    With only a linear head f(x) = W phi(x) + b trainable, Theta = C (Phi Phi^T + 1 1^T), so LGC = LFC(phi)
    exactly (the constant and the factor C cancel in the correlation).
    """
    _check_centering(centering)
    x = as_tensor(inputs, "inputs")
    if x.dim() >= 1 and x.shape[0] >= 2:
        _label_factor(labels, x.shape[0], regression, "cpu")  # check the labels before the expensive part
    g = gradient_kernel(model, x, method=method, k=k, sketch=sketch, seed=seed, batch_size=batch_size,
                        output=output, layers=layers, kernel=kernel, progress=progress, dist=dist,
                        exact_backend=exact_backend, max_elements=max_elements)
    if method == "sketch":
        return lgc_from_sketch(g, labels, centering=centering, regression=regression)
    return lgc_from_kernel(g, labels, centering=centering, regression=regression)


# ------------------------------------------------------------------------------------------------ heads

def _last_linear(model):
    name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            name, last = n, m
    if last is None:
        raise ValueError("`model` has no nn.Linear layer to replace by a target head")
    return name, last


HEAD_INITS = ("random", "zero")


def with_target_head(model, num_classes, *, init="random", std=None, seed=0):
    """A deep copy of `model` whose last nn.Linear is replaced by a fresh (in_features -> num_classes) head.

    init="random": weights N(0, std^2) with std = 1/sqrt(in_features) by default, bias 0 (seeded);
    init="zero": zero weights and bias; the backbone gradients then vanish and LGC = LFC exactly.
    The head initialization scale sets the weight of the backbone term in the NTK (see docs/SCORES.md).
    """
    if init not in HEAD_INITS:
        raise ValueError(f"`init` must be one of {HEAD_INITS}, got {init!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
    new = copy.deepcopy(model)
    name, old = _last_linear(new)
    head = torch.nn.Linear(old.in_features, num_classes, bias=True, device=old.weight.device,
                           dtype=old.weight.dtype)
    with torch.no_grad():
        if init == "zero":
            head.weight.zero_()
        else:
            g = torch.Generator().manual_seed(seed)
            s = (1.0 / old.in_features ** 0.5) if std is None else float(std)
            head.weight.copy_(torch.randn(head.weight.shape, generator=g, dtype=torch.float64) * s)
        head.bias.zero_()
    if name == "":  # the model is the Linear layer itself
        return head
    parent = new
    *path, leaf = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, head)
    return new
