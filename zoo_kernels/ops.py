"""Python entry points of the compiled ops, with their fake (meta) implementations for torch.compile.

The random matrix R(seed) is a pure function of (seed, row, column): the same on CPU and CUDA, for any
tiling, thread count or batch chunking. Rademacher entries are bit-exact across devices; Gaussian
entries agree to rounding of the host/device math library.
"""
import math

import torch

from . import _build  # noqa: F401  (loads the extension and registers torch.ops.zoo_kernels)

_ops = torch.ops.zoo_kernels
DISTS = ("rademacher", "gaussian")
_MASK64 = (1 << 64) - 1


def _check_dist(dist):
    if dist not in DISTS:
        raise ValueError(f"`dist` must be one of {DISTS}, got {dist!r}")


def _check_seed(seed):
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"`seed` must fit in 64 bits, got {seed}")
    return seed - (1 << 64) if seed >= (1 << 63) else seed


def derive_seed(seed, stream):
    """Seed of an independent stream (splitmix64 of seed and stream), as the kernels derive it."""
    z = (_check_seed(seed) + 0x9E3779B97F4A7C15 * (stream + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z - (1 << 64) if z >= (1 << 63) else z


def random_matrix(rows, cols, seed, dist="rademacher", *, dtype=torch.float32, device="cpu", row0=0, col0=0):
    """The (rows, cols) block at (row0, col0) of the unscaled random matrix R(seed): entries +-1 or N(0, 1)."""
    _check_dist(dist)
    for name, v in (("rows", rows), ("cols", cols)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {v!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")
    out = torch.empty(rows, cols, dtype=dtype, device=device)
    _ops.fill_random(out, row0, col0, _check_seed(seed), dist)
    return out


def project_dense(acts, grads, k, seed, dist="rademacher", row_offset=0):
    """Dense JL projection of per-sample gradients G_i = sum_t grads[i,t] (x) acts[i,t].

    acts: (N, n) or (N, T, n); grads: (N, o) or (N, T, o), optionally with an output dimension C after N.
    Returns S = vec(G_i) @ R[row_offset:row_offset + o*n] / sqrt(k) of shape (N, [C,] k), with
    R = random_matrix(row_offset + o*n, k, seed, dist) and vec row-major. R and the G_i are never formed
    whole. float64 inputs give float64; float32, float16 and bfloat16 give float32 (fp32 accumulation).
    """
    _check_dist(dist)
    return _ops.project_dense(acts, grads, k, _check_seed(seed), dist, row_offset)


def project_kron(acts, grads, k_in, k_out, seed, dist="rademacher"):
    """Kronecker-factored projection sum_t (R_out^T grads_t)(R_in^T acts_t)^T / sqrt(k_in k_out).

    R_in = random_matrix(n, k_in, derive_seed(seed, 0)), R_out = random_matrix(o, k_out, derive_seed(seed, 1)).
    Returns (N, [C,] k_out * k_in), row-major in (k_out, k_in). Unbiased: E<S_i, S_j> = <G_i, G_j>.
    """
    _check_dist(dist)
    return _ops.project_kron(acts, grads, k_in, k_out, _check_seed(seed), dist)


def ntk_block(acts1, grads1, acts2, grads2, trace=False):
    """Exact NTK block <G_ic, G_jd> of one layer from two sides' captures (acts (N, [T,] n), grads (N, [C,] [T,] o)).

    Returns (N1, C1, N2, C2), or (N1, N2) = sum_c <G_ic, G_jc> with trace=True (grads without an output
    dimension count as C = 1). No per-sample gradient is formed unless that is cheaper (T^2 > o*n).
    """
    return _ops.ntk_block(acts1, grads1, acts2, grads2, trace)


def reference_ntk_block(acts1, grads1, acts2, grads2, trace=False):
    """Pure-torch reference of ntk_block through explicit per-sample gradients; for tests."""
    G = [torch.einsum("nctp,ntq->ncpq", g.double(), a.double()).flatten(2)
         for a, g in (_reference_layout(acts1, grads1), _reference_layout(acts2, grads2))]
    return torch.einsum("ick,jck->ij", *G) if trace else torch.einsum("ick,jdk->icjd", *G)


def jacobian_t_matmul(acts, grads, V, max_tile=0):
    """Jᵀ V of one layer from its captures, without forming the per-sample gradients G_ic.

    acts (N, [T,] n), grads (N, [C,] [T,] o), V (N, [C,] b) -> W (b, o, n) with
    W[b] = sum_{i,c} V[i, c, b] G_ic and G_ic = sum_t grads[i, c, t] (x) acts[i, t]. Computed in float32
    (float64 for float64 captures; float16/bfloat16 captures are upcast, V is converted), tiled over samples so
    that no intermediate holds more than `max_tile` entries (0: 2^24).
    """
    return _ops.jacobian_t_matmul(acts, grads, V, max_tile)


def jacobian_matmul(acts, grads, W, max_tile=0):
    """J W of one layer: out[i, c, b] = <G_ic, W[b]> = sum_t grads[i, c, t] . (W[b] acts[i, t]).

    acts (N, [T,] n), grads (N, [C,] [T,] o), W (b, o, n) -> (N, [C,] b), in the dtype rules of jacobian_t_matmul.
    """
    return _ops.jacobian_matmul(acts, grads, W, max_tile)


def reference_jacobian_t_matmul(acts, grads, V):
    """Pure-torch float64 reference of jacobian_t_matmul through explicit per-sample gradients; for tests."""
    a, g = _reference_layout(acts, grads)
    v = V.double() if V.dim() == 3 else V.double().unsqueeze(1)
    G = torch.einsum("nctp,ntq->ncpq", g.double(), a.double())
    return torch.einsum("ncb,ncpq->bpq", v, G)


def reference_jacobian_matmul(acts, grads, W):
    """Pure-torch float64 reference of jacobian_matmul through explicit per-sample gradients; for tests."""
    a, g = _reference_layout(acts, grads)
    G = torch.einsum("nctp,ntq->ncpq", g.double(), a.double())
    out = torch.einsum("ncpq,bpq->ncb", G, W.double())
    return out if grads.dim() == acts.dim() + 1 else out[:, 0]


def gram_accumulate_(gram, sketch, cross=None, targets=None):
    """gram += sketch^T sketch (and cross += sketch^T targets) in float64, streamed over row tiles."""
    empty = sketch.new_empty(0)
    _ops.gram_accumulate_(gram, sketch, gram.new_empty(0) if cross is None else cross,
                          empty if targets is None else targets)


def _out_shape(acts, grads, k):
    has_c = grads.dim() - (acts.dim() - 2) == 3
    return (acts.shape[0], grads.shape[1], k) if has_c else (acts.shape[0], k)


def _out_dtype(acts):
    return torch.float64 if acts.dtype == torch.float64 else torch.float32


@torch.library.register_fake("zoo_kernels::fill_random")
def _fill_random_fake(out, row0, col0, seed, dist):
    return None


@torch.library.register_fake("zoo_kernels::project_dense")
def _project_dense_fake(acts, grads, k, seed, dist="rademacher", row_offset=0):
    torch._check(k > 0, lambda: f"project_dense: `k` must be positive, got {k}")
    return acts.new_empty(_out_shape(acts, grads, k), dtype=_out_dtype(acts))


@torch.library.register_fake("zoo_kernels::project_kron")
def _project_kron_fake(acts, grads, k_in, k_out, seed, dist="rademacher"):
    torch._check(k_in > 0 and k_out > 0, lambda: "project_kron: `k_in` and `k_out` must be positive")
    return acts.new_empty(_out_shape(acts, grads, k_out * k_in), dtype=_out_dtype(acts))


def _reference_layout(acts, grads):
    """acts as (N, T, n) and grads as (N, C, T, o)."""
    has_c = grads.dim() == acts.dim() + 1
    a = acts if acts.dim() == 3 else acts.unsqueeze(1)
    g = grads if has_c else grads.unsqueeze(1)
    return a, (g if g.dim() == 4 else g.unsqueeze(2))


@torch.library.register_fake("zoo_kernels::ntk_block")
def _ntk_block_fake(acts1, grads1, acts2, grads2, trace=False):
    def outputs(acts, grads):
        return grads.shape[1] if grads.dim() - (acts.dim() - 2) == 3 else 1

    N1, N2 = acts1.shape[0], acts2.shape[0]
    shape = (N1, N2) if trace else (N1, outputs(acts1, grads1), N2, outputs(acts2, grads2))
    return acts1.new_empty(shape, dtype=_out_dtype(acts1))


@torch.library.register_fake("zoo_kernels::jacobian_t_matmul")
def _jacobian_t_matmul_fake(acts, grads, V, max_tile=0):
    torch._check(V.shape[-1] > 0, lambda: "jacobian_t_matmul: `V` must have at least one column (b > 0)")
    return acts.new_empty((V.shape[-1], grads.shape[-1], acts.shape[-1]), dtype=_out_dtype(acts))


@torch.library.register_fake("zoo_kernels::jacobian_matmul")
def _jacobian_matmul_fake(acts, grads, W, max_tile=0):
    torch._check(W.shape[0] > 0, lambda: "jacobian_matmul: `W` must have at least one row (b > 0)")
    return acts.new_empty(_out_shape(acts, grads, W.shape[0]), dtype=_out_dtype(acts))


@torch.library.register_fake("zoo_kernels::gram_accumulate_")
def _gram_accumulate_fake(gram, sketch, cross, targets):
    return None


def reference_project_dense(acts, grads, k, seed, dist="rademacher", row_offset=0):
    """Pure-torch reference of project_dense (materializes R and the G_i); for tests."""
    a, g = _reference_layout(acts, grads)
    G = torch.einsum("nctp,ntq->ncpq", g.double(), a.double()).flatten(2)
    R = random_matrix(row_offset + G.shape[-1], k, seed, dist, dtype=torch.float64, device=acts.device)[row_offset:]
    S = G @ R / math.sqrt(k)
    return S if grads.dim() == acts.dim() + 1 else S[:, 0]


def reference_project_kron(acts, grads, k_in, k_out, seed, dist="rademacher"):
    """Pure-torch reference of project_kron; for tests."""
    a, g = _reference_layout(acts, grads)
    dev = acts.device
    R_in = random_matrix(a.shape[-1], k_in, derive_seed(seed, 0), dist, dtype=torch.float64, device=dev)
    R_out = random_matrix(g.shape[-1], k_out, derive_seed(seed, 1), dist, dtype=torch.float64, device=dev)
    S = torch.einsum("nctp,pa,ntq,qb->ncab", g.double(), R_out, a.double(), R_in).flatten(2) / math.sqrt(k_in * k_out)
    return S if grads.dim() == acts.dim() + 1 else S[:, 0]


def head_aware_sgd_steps(sketch, basis, phi0, radius, offset, labels, batches, sizes, lrs, state, buffers, dead, *,
                         momentum, dampening=0.0, nesterov=False, weight_decay=0.0, head_trainable=True, loss="ce",
                         started=True):
    """E SGD steps of the head-aware linearized model for P paths (calibrate.HeadAwarePredictor), in place.

    sketch (n, r, k) float32/float64: the training rows' feature-Jacobian sketch; basis (D, r) float64 or None
    (r == D); phi0 (n, D), radius (n,) or None (feature_norm "fixed": ‖φ_i‖ kept at radius_i), offset (n, r) or
    None (the warm-up buffer's feature direction V), labels (n,) int64; batches (P, E, Bmax) int64 with the step
    sizes (E,) (all paths draw equal sizes at a step), lrs (E,) float64. state = (W (P, C, D), b (P, C),
    theta (P, k), c (P,)) and buffers (their torch.optim.SGD momentum buffers, read only when `started`) are
    float64 and updated in place; dead (P,) int64: -1 for a live path, set to the step (0..E-1) after which its
    state stopped being finite (that path is not updated further). CPU tensors only."""
    e = phi0.new_empty(0)
    _ops.head_aware_sgd_steps(sketch, e if basis is None else basis, phi0, e if radius is None else radius,
                              e if offset is None else offset, labels, batches, sizes, lrs, *state, *buffers, dead,
                              float(momentum), float(dampening), bool(nesterov), float(weight_decay),
                              bool(head_trainable), loss, bool(started))


def reference_head_aware_sgd_steps(sketch, basis, phi0, radius, offset, labels, batches, sizes, lrs, state, buffers,
                                   dead, *, momentum, dampening=0.0, nesterov=False, weight_decay=0.0,
                                   head_trainable=True, loss="ce", started=True):
    """Pure-torch float64 reference of head_aware_sgd_steps (same arguments, same in-place updates); for tests."""
    S, U = sketch.double(), basis
    m, d, wd = momentum, dampening, weight_decay
    C = state[0].shape[1]
    for p in range(state[0].shape[0]):
        if dead[p] >= 0:
            continue
        for e in range(batches.shape[1]):
            idx = batches[p, e, :int(sizes[e])]
            W, b, th, c = (t[p] for t in state)
            with torch.enable_grad():  # the gradients by autograd, through the same chain
                W_, th_ = W.clone().requires_grad_(True), th.clone().requires_grad_(True)
                zr = S[idx] @ th_ + (0 if offset is None else c * offset[idx])
                zz = phi0[idx] + (zr if U is None else zr @ U.T)
                ph = zz if radius is None else zz * (radius[idx] / zz.norm(dim=1).clamp_min(1e-12))[:, None]
                f = ph @ W_.T + b
                onehot = torch.nn.functional.one_hot(labels[idx], C).double()
                ell = torch.nn.functional.cross_entropy(f, labels[idx]) if loss == "ce" else \
                    0.5 * (f - onehot).square().sum(1).mean()
                gW, gth = torch.autograd.grad(ell, (W_, th_))
            G = (torch.softmax(f.detach(), 1) if loss == "ce" else f.detach()) - onehot
            gb = G.mean(0)
            if not head_trainable:
                gW, gb = torch.zeros_like(gW), torch.zeros_like(gb)
            elif wd:
                gW, gb = gW + wd * W, gb + wd * b
            gth = gth + wd * th
            grads = (gW, gb, gth, wd * c)
            for j, (x, buf, g) in enumerate(zip(state, buffers, grads)):
                if j == 3 and offset is None:
                    continue
                nb = g if (not started and e == 0) or m == 0 else m * buf[p] + (1 - d) * g
                buf[p] = nb
                x[p] = x[p] - lrs[e] * (g + m * nb if nesterov else nb)
            if not (torch.isfinite(state[0][p]).all() and torch.isfinite(state[2][p]).all()):
                dead[p] = e
                break
