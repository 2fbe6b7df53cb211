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


def _pair(b1, b2, trace):
    """NTK contribution of one parameter block between two chunks: (n1, C1, n2, C2), or (n1, n2) for trace."""
    if b1.kind == "vector":
        return torch.einsum("ico,jco->ij" if trace else "ico,jdo->icjd", b1.grads, b2.grads)
    return ops.ntk_block(b1.acts, b1.grads, b2.acts, b2.grads, trace)


def _accumulate(out, i0, j0, blocks1, blocks2, trace):
    """Adds the NTK between two chunks into out (N1, C, N2, C) or (N1, N2)."""
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
            elif c1 is None:
                out[i0:i0 + n1, :, j0:j0 + n2, :] += K
            else:
                out[i0:i0 + n1, c1, j0:j0 + n2, c2] += K[:, 0, :, 0]


def _exact(model, x1, x2, trace, batch_size, progress, skip_unsupported):
    side1 = list(chunk_blocks(model, x1, batch_size, "all", skip_unsupported, progress, "ntk"))
    side2 = side1 if x2 is None else list(chunk_blocks(model, x2, batch_size, "all", skip_unsupported, progress, "ntk"))
    C = side1[0][1]
    N1, N2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    dtype = side1[0][2][0].grads.dtype
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    device = side1[0][2][0].grads.device
    out = torch.zeros((N1, N2) if trace else (N1, C, N2, C), dtype=dtype, device=device)
    i0 = 0
    for a, (n1, _, blocks1) in enumerate(side1):
        j0 = 0
        for b, (n2, _, blocks2) in enumerate(side2):
            if x2 is not None or b >= a:  # symmetric: the upper chunk triangle, mirrored below
                _accumulate(out, i0, j0, blocks1, blocks2, trace)
            j0 += n2
        i0 += n1
    if x2 is None:
        starts = [0]
        for n, _, _ in side1:
            starts.append(starts[-1] + n)
        for a in range(len(side1)):
            for b in range(a):
                rows, cols = slice(starts[a], starts[a + 1]), slice(starts[b], starts[b + 1])
                if trace:
                    out[rows, cols] = out[cols, rows].T
                else:
                    out[rows, :, cols, :] = out[cols, :, rows, :].permute(2, 3, 0, 1)
    return out if trace else out.permute(0, 2, 1, 3)


def ntk(model, x1, x2=None, mode="full", method="exact", k=None, batch_size=64, seed=0, progress=False, *,
        sketch_method="dense", skip_unsupported=False):
    """Empirical NTK Θ(x1, x2) = J(x1) J(x2)^T over the model's trainable parameters.

    mode="full": (N1, N2, C, C), Θ[i, j, c, d] = <∂f_c(x1_i)/∂w, ∂f_d(x2_j)/∂w>.
    mode="trace": (N1, N2), the sum over the diagonal output pairs c = d.
    x2=None gives Θ(x1, x1) (computed once per chunk pair and mirrored).
    method="exact": per layer from activation and output-gradient captures (the ghost identity), never
      forming per-sample gradients unless cheaper; memory O(N * activations * C) for the captures of x1, x2.
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
