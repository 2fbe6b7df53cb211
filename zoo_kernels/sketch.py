"""sketch_jacobian: the randomly projected per-sample Jacobian of a model, from hooks and the fused ops."""
import math
import warnings

import torch
from tqdm.auto import tqdm

from . import ops
from .capture import Recorder, blocks_of_call, check_modules, trainable_layout

METHODS = ("kronecker", "dense")
OUTPUTS = ("all", "sum")


def kron_factors(k):
    """(k_out, k_in) with k_out * k_in = k and k_out the largest divisor of k not above sqrt(k)."""
    k_out = max(d for d in range(1, math.isqrt(k) + 1) if k % d == 0)
    return k_out, k // k_out


def _check_args(model, inputs, k, method, batch_size, output, dist):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not torch.is_tensor(inputs) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must be a tensor with a non-empty batch dimension, got {getattr(inputs, 'shape', inputs)!r}")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise ValueError("`inputs` contains NaN or Inf")
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
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


def _backward_passes(model, x, recorder, output, params):
    """Forward once, then one backward per model output (or one for their sum); returns C."""
    x_in = x.detach().requires_grad_() if x.is_floating_point() else x
    with torch.enable_grad():
        out = model(x_in)
    if not torch.is_tensor(out) or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return a tensor of shape (N,) or (N, C); got {getattr(out, 'shape', type(out))}")
    out = out.reshape(out.shape[0], -1)
    recorder.check_called()
    targets = [out.sum()] if output == "sum" else [out[:, c].sum() for c in range(out.shape[1])]
    # Differentiate w.r.t. the input where every captured call depends on it: weight gradients are then skipped.
    x_reaches_all = x_in.requires_grad and all(inp.requires_grad for _, _, inp, _ in recorder.calls)
    wrt = [x_in] if x_reaches_all else params
    for c, t in enumerate(targets):
        recorder.pass_index = c
        torch.autograd.grad(t, wrt, retain_graph=c + 1 < len(targets), allow_unused=True)
    return len(targets)


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
    layout, total = trainable_layout(model)
    if total == 0:
        raise ValueError("`model` has no trainable parameters (all have requires_grad=False)")
    modules, skipped = check_modules(model, layout, skip_unsupported)
    if skipped:  # left out as if frozen
        warnings.warn(f"sketch_jacobian: leaving out the parameters of unsupported modules {[n for n, _ in skipped]}",
                      stacklevel=2)
        layout, total = trainable_layout(model, exclude={id(p) for _, own in skipped for p in own})
        if total == 0:
            raise ValueError("`model` has no trainable parameters in supported modules")
    if model.training and any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
        warnings.warn("sketch_jacobian: the model is in training mode; call model.eval() for a deterministic "
                      "Jacobian (dropout)", stacklevel=2)
    kron = kron_factors(k) if method == "kronecker" else None
    if kron is not None and kron[0] * 4 < math.isqrt(k):
        warnings.warn(f"sketch_jacobian: k={k} factors only as {kron[0]} x {kron[1]}; the Kronecker sketch is more "
                      "accurate with balanced factors (e.g. k = 1024 = 32 x 32)", stacklevel=2)
    params = [p for p in model.parameters() if id(p) in layout]
    device = params[0].device
    result = []
    bar = tqdm(total=inputs.shape[0], desc="sketch_jacobian", unit="sample", disable=not progress)
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start:start + batch_size].to(device)
        recorder = Recorder(modules, x.shape[0])
        try:
            num_outputs = _backward_passes(model, x, recorder, output, params)
        finally:
            recorder.remove()
        S = None
        for _, m, x_call, grads in recorder.calls:
            if not grads:  # this call does not reach the outputs
                continue
            for block in blocks_of_call(m, x_call, grads, num_outputs, layout):
                s = _project(block, k, seed, method, dist, kron)
                if S is None:
                    S = torch.zeros(x.shape[0], num_outputs, k, dtype=s.dtype, device=s.device)
                if block.output is None:
                    S += s
                else:
                    S[:, block.output] += s[:, 0]
        if S is None:
            raise ValueError("no trainable parameter of `model` influences its output")
        result.append(S)
        bar.update(x.shape[0])
    bar.close()
    return torch.cat(result)
