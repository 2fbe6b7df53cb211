"""The empirical NTK of a model: exact through per-layer captures (the ghost identity), or from sketches."""
from collections import defaultdict

import torch

from . import ops
from .per_sample import check_model_inputs, chunk_blocks
from .sketch import sketch_jacobian

MODES = ("full", "trace")
METHODS = ("exact", "sketch")


def _block_key(block):
    return block.param_index, block.row_offset, block.kind


# T = 1 weights with at most this many entries join the explicit Gram: measured on 2 CPU cores (N=256, C=10),
# a column of the Gram costs about 0.1 ms, the ghost product of one T = 1 layer (two N x N passes) about 40 ms.
_SMALL_OUTER = 512


def _explicit_cost_ok(block, n_total):
    """Whether the per-sample gradient G (N, C, o*n) of this block is used explicitly (one Gram over all
    such blocks): for vectors always (unless they carry one output only); for weights with T = 1 when o*n is
    small, with T > 1 when the kernel's cost model prefers G over the ghost Σ_{t,s} form and G is no larger
    than the block's captures."""
    if block.output is not None:  # Embedding: one block per output; the kernel handles it
        return False
    if block.kind == "vector":
        return True
    _, C, T, o = block.grads.shape
    n = block.acts.shape[-1]
    if T == 1:  # small layers (a classifier head): o*n more Gram columns beat the ghost's N x N passes
        return o * n <= _SMALL_OUTER
    if C * o * n > T * (C * o + n):
        return False
    N = float(n_total)
    ghost = N * N * T * T * (n + C * o) + N * N * T * C * C * o
    expl = 2 * N * C * T * o * n + N * C * N * C * o * n
    return expl <= ghost


def _per_sample_grad(block):
    """The block's per-sample gradient: (N, C, o) for vectors; for weights G[i, c] = Σ_t acts_it ⊗ grads_ict as
    (N, C, n, o) (the transpose of the weight's (o, n) layout; the Gram only needs the same order on both sides)."""
    if block.kind == "vector":
        return block.grads
    N, C, T, o = block.grads.shape
    n = block.acts.shape[-1]
    if block.grads.stride(-2) == 1:  # convolutions: a transposed view of (N, C, o, T), one bmm over the samples
        B = block.grads.transpose(2, 3).reshape(N, C * o, T)
        return torch.bmm(block.acts.transpose(1, 2), B.transpose(1, 2)).view(N, n, C, o).permute(0, 2, 1, 3)
    return torch.matmul(block.acts.transpose(1, 2).unsqueeze(1), block.grads)


def _explicit_layout(blocks, n_total):
    """{key: (column offset, width)} of the blocks used explicitly, and the total width D."""
    by_key = defaultdict(list)
    for b in blocks:
        by_key[_block_key(b)].append(b)
    layout, D = {}, 0
    for key in sorted(by_key):
        group = by_key[key]
        if all(_explicit_cost_ok(b, n_total) for b in group):
            width = group[0].grads.shape[-1] * (1 if group[0].kind == "vector" else group[0].acts.shape[-1])
            layout[key] = (D, width)
            D += width
    return layout, D


def _explicit_features(side, layout, D, dtype):
    """F (N, C, D): the per-sample gradients of the explicit blocks of all chunks, side by side (blocks of the
    same parameter, e.g. a module called twice, are summed)."""
    N = sum(n for n, _, _ in side)
    C = side[0][1]
    first = side[0][2][0].grads
    F = torch.empty(N, C, D, dtype=dtype, device=first.device)
    i0 = 0
    for n, _, blocks in side:
        written = set()
        for b in blocks:
            key = _block_key(b)
            if key in layout:
                c0, w = layout[key]
                G = _per_sample_grad(b)
                dst = F[i0:i0 + n, :, c0:c0 + w].view(G.shape)
                dst.add_(G) if key in written else dst.copy_(G)
                written.add(key)
        for key in layout.keys() - written:  # a parameter this chunk never used
            c0, w = layout[key]
            F[i0:i0 + n, :, c0:c0 + w] = 0
        i0 += n
    return F


def _use_onednn(t):
    return t.device.type == "cpu" and t.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _mm_nt(a, b):
    """a @ b^T. float32 on CPU goes through oneDNN's matmul (its AVX-512 kernels also run on AMD CPUs, where
    MKL's sgemm takes an AVX2 path: about 2x faster there); everything else through torch.mm."""
    if _use_onednn(a):
        try:
            am = a.contiguous().to_mkldnn()
            bm = am if b is a else b.contiguous().to_mkldnn()
            return torch.ops.aten.mkldnn_linear(am, bm, None).to_dense()
        except RuntimeError:  # a oneDNN build without this primitive: the plain GEMM
            pass
    return a @ b.T


def _gram_into(out2d, F1, F2):
    """out2d = F1 F2^T; F2 None: the symmetric F1 F1^T, computed as an upper block triangle and mirrored."""
    if F2 is not None:
        out2d.copy_(_mm_nt(F1, F2))
        return
    R = F1.shape[0]
    nb = max(1, min(8, R // 512))  # row blocks: (nb + 1) / (2 nb) of the full GEMM's work
    step = -(-R // nb)
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        K = _mm_nt(F1, F1) if nb == 1 else _mm_nt(F1[r0:r1], F1[r0:])  # (r1 - r0, R - r0)
        out2d[r0:r1, r0:].copy_(K)
        if r1 < R:
            out2d[r1:, r0:r1].copy_(K[:, r1 - r0:].T)


def _pair(b1, b2, trace):
    """NTK contribution of one parameter block between two chunks: (n1, C1, n2, C2), or (n1, n2) for trace."""
    if b1.kind == "vector":
        return torch.einsum("ico,jco->ij" if trace else "ico,jdo->icjd", b1.grads, b2.grads)
    return ops.ntk_block(b1.acts, b1.grads, b2.acts, b2.grads, trace)


def _accumulate(out, i0, j0, blocks1, blocks2, trace, mirror):
    """Adds the NTK between two chunks into out (N1, C, N2, C) or (N1, N2); `mirror`: also its transpose at
    (j0, i0) (symmetric NTK, chunk pairs above the diagonal)."""
    by_key = defaultdict(list)
    for b in blocks2:
        by_key[_block_key(b)].append(b)
    for b1 in blocks1:
        for b2 in by_key.get(_block_key(b1), ()):
            c1, c2 = b1.output, b2.output  # set for blocks that carry one output only (Embedding)
            if trace and c1 is not None and c1 != c2:
                continue
            K = _pair(b1, b2, trace)
            n1, n2 = K.shape[0], K.shape[2 if K.dim() == 4 else 1]
            if trace:
                out[i0:i0 + n1, j0:j0 + n2] += K
                if mirror:
                    out[j0:j0 + n2, i0:i0 + n1] += K.T
            elif c1 is None:
                out[i0:i0 + n1, :, j0:j0 + n2, :] += K
                if mirror:
                    out[j0:j0 + n2, :, i0:i0 + n1, :] += K.permute(2, 3, 0, 1)
            else:
                out[i0:i0 + n1, c1, j0:j0 + n2, c2] += K[:, 0, :, 0]
                if mirror:
                    out[j0:j0 + n2, c2, i0:i0 + n1, c1] += K[:, 0, :, 0].T


def _exact(model, x1, x2, trace, batch_size, progress, skip_unsupported):
    side1 = list(chunk_blocks(model, x1, batch_size, "all", skip_unsupported, progress, "ntk"))
    side2 = side1 if x2 is None else list(chunk_blocks(model, x2, batch_size, "all", skip_unsupported, progress, "ntk"))
    C = side1[0][1]
    N1, N2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    dtype = side1[0][2][0].grads.dtype
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    device = side1[0][2][0].grads.device
    out = torch.empty((N1, N2) if trace else (N1, C, N2, C), dtype=dtype, device=device)

    # 1. Blocks whose per-sample gradients are cheap to form (biases, norms, convolutions with T^2 > o*n):
    #    one Gram F1 F2^T over all of them, all samples at once.
    layout, D = _explicit_layout(side1[0][2], max(N1, N2))
    if D:
        F1 = _explicit_features(side1, layout, D, dtype)
        F2 = None if x2 is None else _explicit_features(side2, layout, D, dtype)
        rows = (lambda F: F.view(F.shape[0], -1)) if trace else (lambda F: F.view(-1, D))
        _gram_into(out.view(N1, N2) if trace else out.view(N1 * C, N2 * C), rows(F1), None if F2 is None else rows(F2))
        del F1, F2
    else:
        out.zero_()

    # 2. The other blocks through ntk_block (ghost identity) per chunk pair; symmetric: the upper chunk
    #    triangle, each pair added with its transpose.
    rest1 = [[b for b in blocks if _block_key(b) not in layout] for _, _, blocks in side1]
    rest2 = rest1 if x2 is None else [[b for b in blocks if _block_key(b) not in layout] for _, _, blocks in side2]
    i0 = 0
    for a, (n1, _, _) in enumerate(side1):
        j0 = 0
        for b, (n2, _, _) in enumerate(side2):
            if x2 is not None or b >= a:
                _accumulate(out, i0, j0, rest1[a], rest2[b], trace, mirror=x2 is None and b > a)
            j0 += n2
        i0 += n1
    if not (torch.isfinite(out.sum()) or torch.isfinite(out).all()):  # one reduction unless it overflows
        raise ValueError("ntk: the NTK is not finite; the model's parameters or activations contain NaN or Inf")
    return out if trace else out.permute(0, 2, 1, 3)


def ntk(model, x1, x2=None, mode="full", method="exact", k=None, batch_size=64, seed=0, progress=False, *,
        sketch_method="dense", skip_unsupported=False):
    """Empirical NTK Θ(x1, x2) = J(x1) J(x2)^T over the model's trainable parameters.

    mode="full": (N1, N2, C, C), Θ[i, j, c, d] = <∂f_c(x1_i)/∂w, ∂f_d(x2_j)/∂w>.
    mode="trace": (N1, N2), the sum over the diagonal output pairs c = d.
    x2=None gives Θ(x1, x1) (computed once per chunk pair and mirrored).
    method="exact": from activation and output-gradient captures. Biases, norm parameters and the weights
      whose per-sample gradients are cheaper than the ghost form (convolutions with T^2 > o*n) are formed
      explicitly for all samples and contracted in one Gram (float32 on CPU: oneDNN; x2=None: an upper block
      triangle, mirrored); the other weights go through ops.ntk_block per chunk pair (the ghost identity
      (A A^T) * (B B^T) for T = 1, the tiled sum over t, s otherwise). Memory O(N * activations * C) for the
      captures of x1, x2 (an explicit block is never larger than its captures) plus the result.
    method="sketch": S1 S2^T from sketch_jacobian with k columns (`sketch_method` "dense" or "kronecker").
    Same module coverage as sketch_jacobian; frozen parameters are left out. float64 models give float64.
    """
    check_model_inputs(model, x1, batch_size, "x1")
    if x2 is not None:
        check_model_inputs(model, x2, batch_size, "x2")
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"`x1` and `x2` must have the same sample shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    trace = mode == "trace"
    if method == "exact":
        return _exact(model, x1, x2, trace, batch_size, progress, skip_unsupported)
    if k is None:
        raise ValueError("`k` (the sketch dimension) is required with method='sketch'")
    kwargs = dict(method=sketch_method, seed=seed, batch_size=batch_size, progress=progress,
                  skip_unsupported=skip_unsupported)
    S1 = sketch_jacobian(model, x1, k, **kwargs)
    S2 = S1 if x2 is None else sketch_jacobian(model, x2, k, **kwargs)
    return torch.einsum("ick,jck->ij" if trace else "ick,jdk->ijcd", S1, S2)
