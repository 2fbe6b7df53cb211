"""Per-sample gradient captures of a model, chunk by chunk: the common front end of sketch_jacobian and ntk."""
import warnings

import torch
from tqdm.auto import tqdm

from .capture import Recorder, blocks_of_call, check_modules, trainable_layout


def check_model_inputs(model, inputs, batch_size, name="inputs"):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not torch.is_tensor(inputs) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"`{name}` must be a tensor with a non-empty batch dimension, got "
                         f"{getattr(inputs, 'shape', inputs)!r}")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise ValueError(f"`{name}` contains NaN or Inf")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")


def _backward_passes(model, x, recorder, output, params, others):
    """Forward once, then one backward per model output (or one for their sum); returns C.

    The recorder cuts the graph at the outputs of the hooked modules whose input needs no gradient (the first
    layers): the passes are differentiated w.r.t. those leaves, so that neither the input gradient nor any
    weight gradient is computed. `others` are trainable parameters outside the hooked modules (left out with
    skip_unsupported), through which captured layers may be reached without a leaf."""
    with torch.enable_grad():
        out = model(x)
    if not torch.is_tensor(out) or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return a tensor of shape (N,) or (N, C); got {getattr(out, 'shape', type(out))}")
    out = out.reshape(out.shape[0], -1)
    recorder.check_called()
    num_targets = 1 if output == "sum" else out.shape[1]
    if not out.requires_grad:  # no trainable parameter reaches the output: nothing is captured
        return num_targets
    targets = [out.sum()] if output == "sum" else [out[:, c].sum() for c in range(out.shape[1])]
    # A captured call whose input needs no gradient but was not cut (a MultiheadAttention projection) is only
    # reached through its weights: then differentiate w.r.t. all parameters (weight gradients are computed).
    uncut_bottom = any(not needs_grad for i, needs_grad in enumerate(recorder.input_requires_grad)
                       if i not in recorder.cut_calls)
    wrt = recorder.leaves + (params if uncut_bottom or not (recorder.leaves or others) else others)
    recorder.num_passes = len(targets)
    for c, t in enumerate(targets):
        recorder.pass_index = c
        torch.autograd.grad(t, wrt, retain_graph=c + 1 < len(targets), allow_unused=True)
    return len(targets)


def chunk_blocks(model, inputs, batch_size, output, skip_unsupported, progress, desc):
    """Yields (n, C, blocks) per chunk of `batch_size` inputs: the chunk size, the number of outputs, and the
    Blocks (per-sample gradients in outer-product or vector form) of every captured parameter."""
    layout, total = trainable_layout(model)
    if total == 0:
        raise ValueError("`model` has no trainable parameters (all have requires_grad=False)")
    modules, skipped = check_modules(model, layout, skip_unsupported)
    if skipped:  # left out as if frozen
        warnings.warn(f"{desc}: leaving out the parameters of unsupported modules {[n for n, _ in skipped]}",
                      stacklevel=3)
        layout, total = trainable_layout(model, exclude={id(p) for _, own in skipped for p in own})
        if total == 0:
            raise ValueError("`model` has no trainable parameters in supported modules")
    if model.training and any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
        warnings.warn(f"{desc}: the model is in training mode; call model.eval() for a deterministic "
                      "Jacobian (dropout)", stacklevel=3)
    params = [p for p in model.parameters() if id(p) in layout]
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in layout]
    device = params[0].device
    with tqdm(total=inputs.shape[0], desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start:start + batch_size].to(device)
            recorder = Recorder(modules, x.shape[0], cut_graph=True)
            try:
                num_outputs = _backward_passes(model, x, recorder, output, params, others)
            finally:
                recorder.remove()
            blocks = [block for _, m, x_call, grads in recorder.calls if grads  # calls that reach the outputs
                      for block in blocks_of_call(m, x_call, grads, num_outputs, layout)]
            if not blocks:
                raise ValueError("no trainable parameter of `model` influences its output")
            yield x.shape[0], num_outputs, blocks
            bar.update(x.shape[0])
