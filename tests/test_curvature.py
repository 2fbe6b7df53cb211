"""zoo_kernels.curvature: the head-aware model's second-order term along one backbone direction."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp

from conftest import bilinear_problem
from zoo_kernels import ops
from zoo_kernels.calibrate import HeadAwarePredictor
from zoo_kernels.curvature import Curvature, backbone_direction, curvature_along
from zoo_kernels.dynamics import path_batches
from zoo_kernels.warmstart import predict_after_warmup

pytestmark = pytest.mark.usefixtures("one_thread")
HP = dict(lr=0.2, batch_size=12, max_steps=15, momentum=0.9, dampening=0.1, weight_decay=0.01)


def _problem(seed=0, n=24, d=5, h=6, D=4, C=3):
    """A float64 tanh backbone (features curved in the weights) and a linear head."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, D), nn.Tanh()),
                          nn.Linear(D, C)).double()
    return model, x, y


class Backbone:
    """The backbone's features as a function of its flat weights w, with explicit derivatives (torch.func)."""

    def __init__(self, model, x):
        self.net, self.x = model[0], x
        self.names = [n for n, _ in self.net.named_parameters()]
        self.shapes = [p.shape for _, p in self.net.named_parameters()]
        self.w0 = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])

    def __call__(self, w):
        parts = dict(zip(self.names, (t.view(s) for t, s in zip(w.split([math.prod(s) for s in self.shapes]),
                                                                 self.shapes))))
        return functional_call(self.net, parts, (self.x,))

    def jacobian(self, w=None):  # (N, D, p)
        return jacrev(self)(self.w0 if w is None else w)

    def d_jacobian(self, v):  # ∂_v J, (N, D, p)
        return jvp(self.jacobian, (self.w0,), (v,))[1]

    def second(self, u, v):  # ∂²φ[u, v], (N, D)
        return jvp(lambda w: jvp(self, (w,), (u,))[1], (self.w0,), (v,))[1]


def _exact_predictor(model, x, y, bb):
    """A HeadAwarePredictor whose 'sketch' is the exact Jacobian (P = I): its model is the weight-space one."""
    pred = HeadAwarePredictor(model, (x, y), k=8, seed=0, sketch_method="dense")
    pred.S = bb.jacobian()
    return pred


def _weight_space(model, x, y, bb, steps, batches, feature_norm, vhat=None):
    """Full-set losses and the final displacement of torch.optim.SGD on (head, Δ) for the head-aware model,
    φ = φ_0 + ∂φ[Δ] (+ a ∂²φ[v̂, Δ] − ½ a² ∂²φ[v̂, v̂], a = ⟨v̂, Δ⟩), its terms by forward-mode passes."""
    W = model[1].weight.detach().clone().requires_grad_(True)
    b = model[1].bias.detach().clone().requires_grad_(True)
    delta = torch.zeros_like(bb.w0, requires_grad=True)
    opt = torch.optim.SGD([W, b, delta], lr=HP["lr"], momentum=HP["momentum"], dampening=HP["dampening"],
                          weight_decay=HP["weight_decay"])
    phi0 = bb(bb.w0).detach()

    def loss(idx):
        z = phi0 + jvp(bb, (bb.w0,), (delta,))[1]
        if vhat is not None:
            a = vhat @ delta
            z = z + a * bb.second(vhat, delta) - 0.5 * a * a * bb.second(vhat, vhat)
        if feature_norm == "fixed":
            z = phi0.norm(dim=1, keepdim=True) * z / z.norm(dim=1, keepdim=True)
        return nn.functional.cross_entropy(z[idx] @ W.T + b, y[idx])

    out = []
    for t in range(steps + 1):
        with torch.no_grad():
            out.append(float(loss(slice(None))))
        if t == steps:
            break
        opt.zero_grad()
        loss(batches[t]).backward()
        opt.step()
    return np.array(out), delta.detach()


@pytest.mark.parametrize("feature_norm", ["linear", "fixed"])
def test_curved_model_equals_weight_space_sgd(feature_norm):
    """With the exact Jacobian as its sketch and the exact ∂_v̂ J, H and g = v̂, the curved head-aware model's SGD
    (momentum, dampening, weight decay, minibatches) is torch.optim.SGD on φ_0 + ∂φ[Δ] + a ∂²φ[v̂, Δ] − ½ a² H."""
    model, x, y = _problem(seed=1)
    bb = Backbone(model, x)
    pred = _exact_predictor(model, x, y, bb)
    batches = path_batches(len(x), HP["batch_size"], "epoch", 3, 1, HP["max_steps"])[0]
    flat_ref, delta = _weight_space(model, x, y, bb, HP["max_steps"], batches, feature_norm)
    vhat = delta / delta.norm()  # the direction the method takes: the linearized model's displacement
    curv = Curvature(dS=bb.d_jacobian(vhat), H=bb.second(vhat, vhat), g=vhat, norm=1.0, h=1.0)
    q = pred.predict(**HP, paths=1, seed=3, sampling="epoch", feature_norm=feature_norm, curvature=curv,
                     measure_time=False)
    ref, _ = _weight_space(model, x, y, bb, HP["max_steps"], batches, feature_norm, vhat)
    np.testing.assert_allclose(q.loss_curve, ref, rtol=1e-9)
    flat = pred.predict(**HP, paths=1, seed=3, sampling="epoch", feature_norm=feature_norm, measure_time=False)
    np.testing.assert_allclose(flat.loss_curve, flat_ref, rtol=1e-9)
    assert np.abs(flat.loss_curve - ref).max() > 1e-3  # the curvature mattered here


@pytest.mark.parametrize("feature_norm", ["linear", "fixed"])
def test_tracked_coefficients_give_the_displacement(feature_norm):
    """track_coefficients: Δ = J_Mᵀ A. With the exact Jacobian as the sketch, backbone_direction(A) must be the
    weight-space SGD's own displacement (momentum, dampening, weight decay, minibatches with repeats)."""
    model, x, y = _problem(seed=2)
    bb = Backbone(model, x)
    pred = _exact_predictor(model, x, y, bb)
    q = pred.predict(**HP, paths=1, seed=5, sampling="stream", feature_norm=feature_norm, track_coefficients=True,
                     measure_time=False)
    batches = path_batches(len(x), HP["batch_size"], "stream", 5, 1, HP["max_steps"])[0]
    ref, delta = _weight_space(model, x, y, bb, HP["max_steps"], batches, feature_norm)
    np.testing.assert_allclose(q.loss_curve, ref, rtol=1e-9)
    assert q.coefficients.shape == (len(x), 4)
    _, v = backbone_direction(model, pred, q.coefficients)
    got = torch.cat([t.reshape(-1) for t in v.values()])
    torch.testing.assert_close(got, delta, rtol=1e-9, atol=1e-12)
    assert delta.norm() > 1e-2


@pytest.mark.parametrize("feature_rank", [None, 2])
def test_curvature_along_against_explicit_derivatives(feature_rank):
    """curvature_along on a dense sketch S = J P: g = Pᵀ v̂, S' = (∂_v̂ J) P (a short secant) and H = ∂²φ[v̂, v̂],
    with v = Jᵀ A, all from explicit torch.func derivatives and the explicit random matrix P."""
    model, x, y = _problem(seed=3)
    bb = Backbone(model, x)
    k = 48
    pred = HeadAwarePredictor(model, (x, y), k=k, seed=7, sketch_method="dense", feature_rank=feature_rank)
    U = torch.eye(4, dtype=torch.float64) if feature_rank is None else pred.U
    r = U.shape[1]
    A = torch.randn(len(x), r, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    J = torch.einsum("ndp,dr->nrp", bb.jacobian(), U)
    P = ops.random_matrix(len(bb.w0), k, 7, dtype=torch.float64) / math.sqrt(k)
    torch.testing.assert_close(pred.S_r, J @ P)  # the sketch is J P with this P
    curv = curvature_along(model, pred, A, secant=1e-7, batch_size=7)
    v = torch.einsum("nrp,nr->p", J, A)
    vhat = v / v.norm()
    assert curv.norm == pytest.approx(float(v.norm()), rel=1e-10)
    assert curv.h == pytest.approx(1e-7 * float(v.norm()), rel=1e-12)
    torch.testing.assert_close(curv.g, P.T @ vhat)
    torch.testing.assert_close(curv.H, bb.second(vhat, vhat) @ U)
    dJ = torch.einsum("ndp,dr->nrp", bb.d_jacobian(vhat), U)
    torch.testing.assert_close(curv.dS, dJ @ P, rtol=1e-4, atol=1e-5 * float((dJ @ P).abs().max()))  # O(h)


def test_linear_backbone_has_no_curvature():
    """A linear backbone's features have no second derivative: curvature='along' predicts what None predicts."""
    model, x, y = bilinear_problem(n=40, seed=4)
    common = dict(lr=0.1, batch_size=8, max_steps=40, warmup_steps=5, momentum=0.9, subset=20, k=32, seed=1,
                  paths=2, sampling="stream", feature_norm="fixed", feature_rank=3)
    flat = predict_after_warmup(model, (x, y), **common)
    bent = predict_after_warmup(model, (x, y), **common, curvature="along")
    np.testing.assert_allclose(bent.loss_curve, flat.loss_curve, rtol=1e-8)
    assert bent.loss_curve[-1] < bent.loss_curve[0]


def test_curved_prediction_runs_and_moves():
    """On a curved backbone the second pass differs from the linearized one and stays finite."""
    model, x, y = _problem(seed=5, n=60)
    common = dict(lr=0.3, batch_size=10, max_steps=60, warmup_steps=10, momentum=0.9, subset=30, k=32, seed=2,
                  paths=2, sampling="stream", feature_norm="fixed", sketch_method="kronecker")
    flat = predict_after_warmup(model, (x, y), **common)
    bent = predict_after_warmup(model, (x, y), **common, curvature="along")
    assert np.isfinite(bent.loss_curve).all()
    np.testing.assert_array_equal(bent.loss_curve[:10], flat.loss_curve[:10])  # the same warm-up
    assert np.abs(bent.loss_curve[10:] - flat.loss_curve[10:]).max() > 1e-4


def test_bad_curvature_arguments():
    model, x, y = _problem(seed=6)
    with pytest.raises(ValueError, match="`curvature` must be None or 'along'"):
        predict_after_warmup(model, (x, y), lr=0.1, batch_size=8, max_steps=10, warmup_steps=2, curvature="full")
    pred = HeadAwarePredictor(model, (x, y), k=16, seed=0)
    bad = Curvature(dS=torch.zeros(3, 4, 16), H=torch.zeros(3, 4), g=torch.zeros(16), norm=1.0, h=1.0)
    with pytest.raises(ValueError, match="`curvature` must hold finite dS, H, g of shapes"):
        pred.predict(lr=0.1, batch_size=8, max_steps=5, curvature=bad)
    with pytest.raises(ValueError, match="`A` must be finite, of shape"):
        curvature_along(model, pred, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="`secant` must be a positive number"):
        curvature_along(model, pred, torch.ones(len(x), 4), secant=0)
    with pytest.raises(ValueError, match="the direction is zero"):
        curvature_along(model, pred, torch.zeros(len(x), 4))


def test_curved_prediction_cost_counts_the_curvature(monkeypatch):
    """Without a warm-up too, cost_seconds covers the first pass and the curvature (here made 0.3 s slower)."""
    import time

    from zoo_kernels import warmstart

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return curvature_along(*args, **kwargs)

    monkeypatch.setattr(warmstart, "curvature_along", slow)
    model, x, y = _problem(seed=7, n=40)
    bent = predict_after_warmup(model, (x, y), lr=0.2, batch_size=8, max_steps=30, warmup_steps=0, momentum=0.9,
                                subset=20, k=16, seed=1, paths=1, sampling="stream", curvature="along")
    assert bent.cost_seconds >= 0.3
