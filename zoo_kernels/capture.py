"""Per-layer captures for per-sample gradients: forward hooks record each supported module's input,
tensor hooks record the gradient of each output. Every trainable parameter becomes one or more
`Block`s, the per-sample gradient of which is an outer product sum_t grads_t (x) acts_t:

- "outer": weight of Linear / Conv / Embedding, an (o, n) matrix, given as acts (N, T, n) and
  grads (N, C, T, o);
- "vector": bias or normalization affine parameter, given as its per-sample gradient (N, C, o).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.MultiheadAttention) + _NORMS


@dataclass
class LinearSlice:
    """Rows of a weight (and its bias) applied as a linear map outside an nn.Linear forward,
    e.g. the q, k and v parts of MultiheadAttention.in_proj_weight. `group` separates the seeds of
    the parts of one parameter in the Kronecker sketch."""

    weight: torch.Tensor
    w_row0: int
    bias: Optional[torch.Tensor]
    b_row0: int
    group: int


@dataclass
class Block:
    """Per-sample gradient of (a slice of) one parameter, for the rows [row_offset, row_offset + o*n)."""

    param_index: int  # index among the trainable parameters
    row_offset: int  # offset of the slice in the flattened trainable parameters
    group: int  # group index of grouped convolutions, else 0
    kind: str  # "outer" or "vector"
    acts: Optional[torch.Tensor]  # (N, T, n) for "outer"
    grads: torch.Tensor  # (N, C, T, o) for "outer", (N, C, o) for "vector"
    output: Optional[int] = None  # the one output these grads belong to, when C = 1 stands for output `output`


def trainable_layout(model, exclude=()):
    """{id(param): (index, offset)} over model.parameters() with requires_grad, and the total size P."""
    layout, offset = {}, 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in layout and id(p) not in exclude:
            layout[id(p)] = (len(layout), offset)
            offset += p.numel()
    return layout, offset


def check_modules(model, layout, skip_unsupported):
    """The modules to hook. Unsupported modules with trainable parameters are an error unless skipped."""
    hooked, skipped = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not m.self_attn.batch_first:
            raise ValueError(f"module '{name}' ({type(m).__name__}) runs its layers sequence-first; build it with "
                             "batch_first=True so that dimension 0 is the sample everywhere")
        own = [p for p in m.parameters(recurse=False) if id(p) in layout]
        if not own:
            continue
        if not isinstance(m, SUPPORTED):
            if not skip_unsupported:
                raise ValueError(
                    f"module '{name or type(m).__name__}' ({type(m).__name__}) has trainable parameters but is not "
                    f"supported; supported modules: {', '.join(t.__name__ for t in SUPPORTED)}. Freeze its "
                    "parameters or pass skip_unsupported=True to leave them out."
                )
            skipped.append((name or type(m).__name__, own))
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            raise ValueError(
                f"module '{name}' ({type(m).__name__}) normalizes with batch statistics, which couples the samples; "
                "call model.eval() (and keep track_running_stats=True)"
            )
        if isinstance(m, nn.Embedding) and m.scale_grad_by_freq:
            raise ValueError(f"module '{name}' (Embedding) has scale_grad_by_freq=True, which couples the samples")
        if isinstance(m, nn.MultiheadAttention) and m.bias_k is not None:
            raise ValueError(f"module '{name}' (MultiheadAttention) with add_bias_kv=True is not supported")
        hooked.append((name, m))
    # MultiheadAttention applies out_proj's parameters itself: its handler captures them.
    inner = {id(m.out_proj) for _, m in hooked if isinstance(m, nn.MultiheadAttention)}
    return [(n, m) for n, m in hooked if id(m) not in inner], skipped


class Recorder:
    """Records, for each call of each hooked module, its input and the output gradients of C backward passes.
    MultiheadAttention gets a decomposed forward for the duration, which records its four projections.

    cut_graph=True: a hooked module (not a MultiheadAttention projection) whose input does not require grad
    has its output replaced by a copy of a fresh leaf (collected in `leaves`, the call indices in `cut_calls`):
    the backward passes then stop there, and the module's own backward (input or weight gradient, e.g. the
    first convolution's) is never computed. The forward values are unchanged."""

    def __init__(self, modules, batch, cut_graph=False):
        from .attention import decomposed_mha_forward

        self.modules, self.batch = modules, batch
        self.calls = []  # (module name, module or LinearSlice, input, {pass: grad})
        self.pass_index = 0
        self.cut_graph = cut_graph
        self.leaves, self.cut_calls = [], set()
        self.input_requires_grad = []  # per call: whether its input required grad (calls keep a detached input)
        self.num_passes = None  # set before C > 1 backward passes: the gradients go straight into (N, C, ...)
        self.handles, self.patched = [], []
        for name, m in modules:
            if isinstance(m, nn.MultiheadAttention):
                m.forward = decomposed_mha_forward(m, name, self.track)
                self.patched.append(m)
            else:
                self.handles.append(m.register_forward_hook(self._forward_hook(name)))

    def track(self, name, module, x, output):
        """Keeps x and puts a hook on output that stores its gradient in each backward pass."""
        if not torch.is_tensor(output) or not output.requires_grad:
            return
        if x.shape[0] != self.batch:
            raise ValueError(f"module '{name}' gets an input of shape {tuple(x.shape)} whose dimension 0 is not the "
                             f"batch of {self.batch} samples; sub-modules must take the sample dimension first")
        grads = {}
        self.calls.append((name, module, x.detach(), grads))
        self.input_requires_grad.append(bool(x.requires_grad))

        stacked = []

        def grad_hook(g):
            g = g.detach()
            C = self.num_passes
            if C is not None and C > 1:  # one (N, C, ...) buffer per call; _stack_grads then needs no copy
                if not stacked or stacked[0].shape[2:] != g.shape[1:] or stacked[0].dtype != g.dtype:
                    stacked[:] = [g.new_empty((g.shape[0], C) + tuple(g.shape[1:]))]
                view = stacked[0][:, self.pass_index]
                view.copy_(g)
                g = view
            grads[self.pass_index] = g

        output.register_hook(grad_hook)

    def _forward_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0]
            if (self.cut_graph and torch.is_tensor(output) and output.requires_grad and torch.is_tensor(x)
                    and not x.requires_grad):
                leaf = output.detach().requires_grad_()
                output = leaf.clone()  # not the leaf itself: later in-place ops (ReLU(inplace=True)) stay legal
                n = len(self.calls)
                self.track(name, module, x, output)
                if len(self.calls) > n:
                    self.leaves.append(leaf)
                    self.cut_calls.add(n)
                return output
            self.track(name, module, x, output)
            return None

        return hook

    def check_called(self):
        called = {name for name, *_ in self.calls}
        missing = [name for name, _ in self.modules if name not in called]
        if missing:
            raise ValueError(
                f"the parameters of module(s) {missing} are used without calling their forward (for example "
                "MultiheadAttention.out_proj), so their per-sample gradients cannot be captured; freeze them or "
                "pass skip_unsupported=True"
            )

    def remove(self):
        for h in self.handles:
            h.remove()
        for m in self.patched:
            del m.forward


def _stack_grads(grads, num_passes, like):
    """(N, C, *out) from the per-pass gradients; a pass that never reached this output contributes zeros.
    Gradients that the Recorder already wrote into one (N, C, *out) buffer are returned as that buffer."""
    base = getattr(like, "_base", None)
    if (base is not None and base.dim() == like.dim() + 1 and base.shape[0] == like.shape[0]
            and base.shape[1] == num_passes and base.shape[2:] == like.shape[1:]
            and all(g._base is base and g.data_ptr() == base[:, c].data_ptr() for c, g in grads.items())):
        for c in range(num_passes):
            if c not in grads:
                base[:, c].zero_()
        return base
    return torch.stack([grads[c] if c in grads else torch.zeros_like(like) for c in range(num_passes)], dim=1)


def _conv_acts(m, x):
    """Unfolded input (N, L, C_in*kh*kw) of Conv1d/Conv2d, any stride, padding, dilation or padding mode."""
    if isinstance(m, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, m.kernel_size[0]), (1, m.stride[0]), (1, m.dilation[0])
        pad = list(m._reversed_padding_repeated_twice)
    else:
        kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
        pad = list(m._reversed_padding_repeated_twice)
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    # Strided windows, then one copy to (N, L, C_in*kh*kw): much faster than F.unfold (im2col) on CPU.
    for dim, (kern, s, d) in enumerate(zip(kernel, stride, dilation)):  # -> (N, C, Ho, Wo, kh, kw)
        x = x.unfold(2 + dim, (kern - 1) * d + 1, s)[..., ::d] if d > 1 else x.unfold(2 + dim, kern, s)
    N, Cin, Ho, Wo, kh, kw = x.shape
    return x.permute(0, 2, 3, 1, 4, 5).reshape(N, Ho * Wo, Cin * kh * kw)


def _normalized(m, x):
    """x_hat, the normalized input the affine parameters multiply, and the channel axis layout."""
    if isinstance(m, nn.LayerNorm):
        return F.layer_norm(x, m.normalized_shape, None, None, m.eps)
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(x, m.num_groups, None, None, m.eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)


def _channel_sum(m, t):
    """Sums t (N, C, ...) to the shape of the affine parameter, (N, C, numel)."""
    if isinstance(m, nn.LayerNorm):
        d = len(m.normalized_shape)
        return t.flatten(-d).flatten(2, -2).sum(2) if t.dim() > 2 + d else t.flatten(-d)
    return t if t.dim() == 3 else t.flatten(3).sum(-1)  # (N, C, channels, spatial...) -> (N, C, channels)


def blocks_of_call(m, x, grads_by_pass, num_passes, layout):
    """The Blocks of one module call, from its input x and output gradients."""
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    w_on = w is not None and id(w) in layout
    b_on = isinstance(b, torch.Tensor) and id(b) in layout
    out = []

    if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, LinearSlice)):
        g = _stack_grads(grads_by_pass, num_passes, next(iter(grads_by_pass.values())))  # (N, C, o, ...) or (N, C, ..., o)
        N, C = g.shape[:2]
        if isinstance(m, (nn.Linear, LinearSlice)):
            acts = x.reshape(N, -1, x.shape[-1])
            gr = g.reshape(N, C, acts.shape[1], g.shape[-1])
            groups = 1
        else:
            acts = _conv_acts(m, x)
            gr = g.flatten(3).transpose(2, 3)  # (N, C, L, C_out)
            groups = m.groups
        part = m if isinstance(m, LinearSlice) else LinearSlice(w, 0, b, 0, 0)
        if w_on:
            idx, off = layout[id(w)]
            off += part.w_row0 * acts.shape[-1]
            n_g, o_g = acts.shape[-1] // groups, gr.shape[-1] // groups
            for j in range(groups):
                out.append(Block(idx, off + j * o_g * n_g, part.group + j, "outer",
                                 acts[..., j * n_g:(j + 1) * n_g], gr[..., j * o_g:(j + 1) * o_g]))
        if b_on:
            idx, off = layout[id(b)]
            out.append(Block(idx, off + part.b_row0, part.group, "vector", None, gr.sum(2)))
        return out

    if isinstance(m, nn.Embedding):
        g = _stack_grads(grads_by_pass, num_passes, next(iter(grads_by_pass.values())))  # (N, C, *, d)
        N, C = g.shape[:2]
        ids = x.reshape(N, -1)
        gr = g.reshape(N, C, ids.shape[1], g.shape[-1])
        if m.padding_idx is not None:
            gr = gr * (ids != m.padding_idx).unsqueeze(1).unsqueeze(-1).to(gr.dtype)
        idx, off = layout[id(w)]
        onehot = F.one_hot(ids, m.num_embeddings).to(gr.dtype)  # (N, T, V): the "grads" role
        # G[v, j] = sum_t onehot[t, v] g[t, j]: one block per output, as acts carry no C dimension.
        for c in range(C):
            out.append(Block(idx, off, 0, "outer", gr[:, c], onehot.unsqueeze(1), output=c))
        return out

    # Normalization layers: elementwise affine on x_hat.
    g = _stack_grads(grads_by_pass, num_passes, next(iter(grads_by_pass.values())))  # (N, C, *x.shape[1:])
    xhat = _normalized(m, x).unsqueeze(1)
    if w_on:
        idx, off = layout[id(w)]
        out.append(Block(idx, off, 0, "vector", None, _channel_sum(m, g * xhat)))
    if b_on:
        idx, off = layout[id(b)]
        out.append(Block(idx, off, 0, "vector", None, _channel_sum(m, g)))
    return out
