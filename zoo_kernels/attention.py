"""nn.MultiheadAttention, decomposed so that its four projections can be captured.

The native forward applies in_proj_weight and out_proj inside one fused function, where no hook
can see the projections' outputs. While sketching, the module's forward is replaced by this
equivalent computation, which reports each projection (input, output) to the recorder.
"""
import math

import torch
import torch.nn.functional as F

from .capture import LinearSlice


def _additive(mask, dtype):
    """Boolean masks (True = masked out) as 0 / -inf; float masks unchanged."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def decomposed_mha_forward(m, name, track):
    E, h = m.embed_dim, m.num_heads
    hd = E // h

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.dim() != 3:
            raise ValueError(f"module '{name}' (MultiheadAttention): sketching needs batched inputs, got {query.dim()}-D")
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        if m._qkv_same_embed_dim:
            Ws = [m.in_proj_weight] * 3
            rows = [0, E, 2 * E]
        else:
            Ws = [m.q_proj_weight, m.k_proj_weight, m.v_proj_weight]
            rows = [0, 0, 0]
        b = m.in_proj_bias
        projected = []
        for part, (x, W, r) in enumerate(zip((query, key, value), Ws, rows)):
            y = F.linear(x, W[r:r + E], None if b is None else b[part * E:(part + 1) * E])
            track(name, LinearSlice(W, r, b, part * E, part), x, y)
            projected.append(y)
        q, k, v = (t.reshape(N, -1, h, hd).transpose(1, 2) for t in projected)  # (N, h, L|S, hd)

        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        mask = _additive(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + (mask.view(N, h, L, S) if mask.dim() == 3 else mask)
        elif is_causal:
            causal = torch.ones(L, S, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores + _additive(causal, scores.dtype)
        kpm = _additive(key_padding_mask, scores.dtype)
        if kpm is not None:
            scores = scores + kpm.view(N, 1, 1, S)
        weights = torch.softmax(scores, dim=-1)
        if m.training and m.dropout > 0:
            weights = F.dropout(weights, m.dropout)
        attn = (weights @ v).transpose(1, 2).reshape(N, L, E)

        out = F.linear(attn, m.out_proj.weight, m.out_proj.bias)
        track(name + ".out_proj", m.out_proj, attn, out)
        if not m.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    return forward
