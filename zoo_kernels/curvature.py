"""The head-aware model's second-order term along one backbone direction (docs/PREDICT.md, "One direction").

The head-aware model linearizes the backbone's features at w_K: φ(w_K + Δ) ≈ φ_K + J Δ. After a warm start the
real displacement Δ is nearly one-dimensional, and what the linearization misses late is the kernel's change
along it. With v̂ a unit direction in the backbone's weights and a = ⟨v̂, Δ⟩, the model

    φ = φ_K + J Δ + a ∂²φ[v̂, Δ] − ½ a² ∂²φ[v̂, v̂]

keeps the second-order terms of the Taylor series that involve v̂ (it is ½ ∂²φ[Δ, Δ] exactly when Δ ∥ v̂). In
the sketch's coordinates (Δ = P θ, S = J P):

    J Δ = S θ,   ∂²φ[v̂, Δ] = S' θ with S' = ∂_v̂ S,   a = gᵀθ with g = Pᵀ v̂.

The direction is the linearized prediction's own: HeadAwarePredictor.predict(track_coefficients=True) keeps
the feature-space coefficients A of its backbone displacement (Δ = J_Mᵀ A on the subset, exactly so for the
weight-space SGD the sketch approximates), so v = J_Mᵀ A is one backward pass, and g = S_Mᵀ A / ‖v‖ needs no P.
S' is a secant: the sketch at w_K + h v̂ (the same seed, hence the same P) minus S, over h, with h the
linearized displacement's norm ‖v‖ by default; ∂²φ[v̂, v̂] is a nested forward-mode pass. Cost: one more sketch,
one backward and two forward-mode passes over the subset.
"""
import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp

from .calibrate import feature_model, projected_features
from .sketch import sketch_jacobian

__all__ = ["Curvature", "curvature_along", "backbone_direction"]


@dataclass
class Curvature:
    """The second-order term along v̂, in a HeadAwarePredictor's coordinates (r = its feature_rank, k its width)."""

    dS: torch.Tensor  # (M, r, k) S' = ∂_v̂ S, the sketch's derivative along v̂ (a secant over h), S's dtype
    H: torch.Tensor  # (M, r) ∂²φ[v̂, v̂] in the feature coordinates, float64
    g: torch.Tensor  # (k,) Pᵀ v̂, float64: a = gᵀθ is the displacement along v̂
    norm: float  # ‖v‖, the linearized prediction's displacement along which v̂ points
    h: float  # the secant's length


def _feature_net(model, predictor):
    """The predictor's feature map (projected onto its feature directions U when it has them), eval mode."""
    fm = feature_model(model).eval()
    return projected_features(fm, predictor.U) if predictor.U is not None else fm


def backbone_direction(model, predictor, A, batch_size=32):
    """v = J_Mᵀ A: the backbone weights' displacement whose feature-space coefficients on the predictor's M samples
    are A (M, r), as {parameter name: tensor} of the predictor's feature net (_feature_net)."""
    net = _feature_net(model, predictor)
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    dev = next(iter(params.values())).device
    A = torch.as_tensor(A)
    if A.shape != (len(predictor.x), predictor.S_r.shape[1]) or not torch.isfinite(A).all():
        raise ValueError(f"`A` must be finite, of shape ({len(predictor.x)}, {predictor.S_r.shape[1]}), "
                         f"got {tuple(A.shape)}")
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in range(0, len(predictor.x), batch_size):
        out = net(predictor.x[s:s + batch_size].to(dev))
        grads = torch.autograd.grad((out * A[s:s + batch_size].to(out)).sum(), list(params.values()))
        for n, gr in zip(params, grads):
            v[n] += gr
    return net, v


def curvature_along(model, predictor, A, *, secant=1.0, batch_size=32):
    """The Curvature of `predictor` (a HeadAwarePredictor built from `model`) along v = J_Mᵀ A (see the module doc).

    secant: h = secant · ‖v‖, the length over which S' is the sketch's mean slope."""
    if predictor.S_r is None:
        raise ValueError("a frozen backbone has no second-order term")
    if not (isinstance(secant, (int, float)) and secant > 0):
        raise ValueError(f"`secant` must be a positive number, got {secant!r}")
    net, v = backbone_direction(model, predictor, A, batch_size)
    norm = float(torch.sqrt(sum(t.double().square().sum() for t in v.values())))
    if not norm > 0:
        raise ValueError("the direction is zero: the linearized prediction did not move the backbone")
    vhat = {n: (t.double() / norm).to(t.dtype) for n, t in v.items()}
    h = secant * norm
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    dev = next(iter(params.values())).device
    H = []
    with torch.no_grad():
        for s in range(0, len(predictor.x), batch_size):
            xb = predictor.x[s:s + batch_size].to(dev)
            first = lambda p: jvp(lambda q: functional_call(net, q, (xb,)), (p,), (vhat,))[1]  # noqa: E731
            H.append(jvp(first, (params,), (vhat,))[1].double().cpu())
        moved = copy.deepcopy(net)
        for n, p in moved.named_parameters():
            if n in vhat:
                p.add_(h * vhat[n])
    sk = predictor.sketch_method
    S_h = sketch_jacobian(moved, predictor.x, predictor.k, method=sk, seed=predictor.seed,
                          batch_size=batch_size).cpu()
    dS = ((S_h.double() - predictor.S_r.double()) / h).to(predictor.S_r.dtype)
    A = torch.as_tensor(A).double()
    g = torch.einsum("mrk,mr->k", predictor.S_r.double(), A) / norm
    return Curvature(dS=dS.contiguous(), H=torch.cat(H), g=g, norm=norm, h=h)
