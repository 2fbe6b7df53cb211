"""sketch_jacobian: the randomly projected per-sample Jacobian of a model, from hooks and the fused ops."""
import math
import warnings

import torch

from . import ops
from .per_sample import check_model_inputs, chunk_blocks

METHODS = ("kronecker", "dense")
OUTPUTS = ("all", "sum")


def kron_factors(k):
    """(k_out, k_in) with k_out * k_in = k and k_out the largest divisor of k not above sqrt(k)."""
    k_out = max(d for d in range(1, math.isqrt(k) + 1) if k % d == 0)
    return k_out, k // k_out


def _check_args(model, inputs, k, method, batch_size, output, dist):
    check_model_inputs(model, inputs, batch_size)
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
    if dist not in ops.DISTS:
        raise ValueError(f"`dist` must be one of {ops.DISTS}, got {dist!r}")


def _project(block, k, seed, method, dist, kron):
    """(N, C, k) projection of one Block."""
    if method == "dense" or block.kind == "vector":  # vectors: their rows of R(seed), in both methods
        acts = block.grads.new_ones(block.grads.shape[0], 1) if block.kind == "vector" else block.acts
        return ops.project_dense(acts, block.grads, k, seed, dist, block.row_offset)
    block_seed = ops.derive_seed(ops.derive_seed(seed, block.param_index), block.group)
    return ops.project_kron(block.acts, block.grads, kron[1], kron[0], block_seed, dist)


def sketch_jacobian(model, inputs, k, method="kronecker", seed=0, batch_size=64, progress=False, *,
                    output="all", dist="rademacher", skip_unsupported=False):
    """Projected per-sample Jacobian (N, C, k) of the model's C outputs w.r.t. all trainable parameters.

    method="dense":  S[i, c] = J_c(x_i) @ R / sqrt(k), with R = ops.random_matrix(P, k, seed, dist) over the
                     trainable parameters flattened in model.parameters() order; exact JL projection.
    method="kronecker": each weight matrix (each group of a grouped conv, each of q, k, v of an attention
                     in-projection) is projected with its own Kronecker factors R_out (x) R_in (k = k_out * k_in,
                     see kron_factors); biases and norm parameters take their rows of R as in "dense"; the
                     blocks' sketches are summed. Unbiased: E[S_i . S_j] = J_i . J_j.
    output="sum" gives the Jacobian of the sum of the outputs, (N, 1, k), in one backward pass.

    Supported: Linear, Conv1d/Conv2d (any stride, padding, dilation, groups), Embedding, MultiheadAttention
    (without add_bias_kv), and the affine
    parameters of LayerNorm, GroupNorm and BatchNorm (eval mode). Frozen parameters are left out.
    Memory is O(batch_size * activations + N * C * k). The model should be in eval mode (dropout off).
    """
    _check_args(model, inputs, k, method, batch_size, output, dist)
    seed = ops._check_seed(seed)
    kron = kron_factors(k) if method == "kronecker" else None
    if kron is not None and kron[0] * 4 < math.isqrt(k):
        warnings.warn(f"sketch_jacobian: k={k} factors only as {kron[0]} x {kron[1]}; the Kronecker sketch is more "
                      "accurate with balanced factors (e.g. k = 1024 = 32 x 32)", stacklevel=2)
    result = []
    for n, num_outputs, blocks in chunk_blocks(model, inputs, batch_size, output, skip_unsupported, progress,
                                               "sketch_jacobian"):
        S = None
        for block in blocks:
            s = _project(block, k, seed, method, dist, kron)
            if S is None:
                S = torch.zeros(n, num_outputs, k, dtype=s.dtype, device=s.device)
            if block.output is None:
                S += s
            else:
                S[:, block.output] += s[:, 0]
        result.append(S)
    return torch.cat(result)
