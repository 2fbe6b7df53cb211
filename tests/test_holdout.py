"""HeadAwarePredictor(holdout=H): samples outside the subset, moved by the same dynamics, never trained on."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jvp

from test_curvature import Backbone, _problem
from zoo_kernels.calibrate import HeadAwarePredictor
from zoo_kernels.dynamics import path_batches
from zoo_kernels.predict import subset_batch_size, subset_indices
from zoo_kernels.warmstart import predict_after_warmup

pytestmark = pytest.mark.usefixtures("one_thread")


def test_holdout_rows_are_the_next_samples_of_the_subset_order():
    model, x, y = _problem(seed=1, n=50)
    pred = HeadAwarePredictor(model, (x, y), k=16, subset=20, holdout=12, seed=3)
    want = torch.cat([subset_indices(50, 20, 3), subset_indices(50, 32, 3, offset=20)])
    assert len(set(want.tolist())) == 32
    torch.testing.assert_close(pred.x, x[want])
    assert torch.equal(pred.y, y[want])


@pytest.mark.parametrize("feature_norm", ["linear", "fixed"])
def test_holdout_leaves_the_prediction_unchanged(feature_norm):
    model, x, y = _problem(seed=2, n=60)
    kw = dict(k=32, subset=20, seed=1, sketch_method="kronecker", feature_rank=3)
    hp = dict(lr=0.3, batch_size=12, max_steps=30, momentum=0.9, paths=2, seed=4, sampling="stream",
              feature_norm=feature_norm, eval_every=3, measure_time=False)
    plain = HeadAwarePredictor(model, (x, y), **kw).predict(**hp)
    held = HeadAwarePredictor(model, (x, y), holdout=15, **kw).predict(**hp)
    np.testing.assert_allclose(held.loss_curve, plain.loss_curve, rtol=1e-12)
    np.testing.assert_allclose(held.accuracy_curve, plain.accuracy_curve, rtol=1e-12)
    assert plain.holdout_loss_curve is None
    assert held.holdout_loss_curve.shape == (31,) and np.isfinite(held.holdout_loss_curve).all()


def test_holdout_loss_equals_weight_space_sgd():
    """With the exact Jacobian as the sketch, the holdout curve is the loss of the holdout rows under
    torch.optim.SGD on the subset rows only (the subset's noise-matched batch size)."""
    model, x, y = _problem(seed=3, n=60)
    M, H, B, steps, lr = 20, 16, 12, 12, 0.3
    pred = HeadAwarePredictor(model, (x, y), k=8, subset=M, holdout=H, seed=2, sketch_method="dense")
    bb = Backbone(model, pred.x)
    pred.S = bb.jacobian()
    q = pred.predict(lr=lr, batch_size=B, max_steps=steps, momentum=0.9, paths=1, seed=6, sampling="stream",
                     measure_time=False)
    BM = subset_batch_size(B, len(x), M)
    batches = path_batches(M, BM, "stream", 6, 1, steps)[0]
    W = model[1].weight.detach().clone().requires_grad_(True)
    b = model[1].bias.detach().clone().requires_grad_(True)
    delta = torch.zeros_like(bb.w0, requires_grad=True)
    opt = torch.optim.SGD([W, b, delta], lr=lr, momentum=0.9)
    phi0, yy = bb(bb.w0).detach(), pred.y

    def loss(idx):
        z = phi0 + jvp(bb, (bb.w0,), (delta,))[1]
        return nn.functional.cross_entropy(z[idx] @ W.T + b, yy[idx])

    def accuracy(idx):
        z = phi0 + jvp(bb, (bb.w0,), (delta,))[1]
        return float(((z[idx] @ W.T + b).argmax(1) == yy[idx]).double().mean())

    train, hold, hold_acc = [], [], []
    for t in range(steps + 1):
        with torch.no_grad():
            train.append(float(loss(slice(0, M))))
            hold.append(float(loss(slice(M, M + H))))
            hold_acc.append(accuracy(slice(M, M + H)))
        if t == steps:
            break
        opt.zero_grad()
        loss(batches[t]).backward()
        opt.step()
    np.testing.assert_allclose(q.loss_curve, train, rtol=1e-9)
    np.testing.assert_allclose(q.holdout_loss_curve, hold, rtol=1e-9)
    np.testing.assert_allclose(q.holdout_accuracy_curve, hold_acc, rtol=1e-12)
    assert abs(hold[-1] - hold[0]) > 1e-3 and len(set(hold_acc)) > 1


def test_warm_start_holdout_is_nan_over_the_warm_up():
    model, x, y = _problem(seed=4, n=60)
    p = predict_after_warmup(model, (x, y), lr=0.2, batch_size=10, max_steps=30, warmup_steps=5, momentum=0.9,
                             subset=20, holdout=10, k=16, seed=1, paths=2, sampling="stream")
    for curve in (p.holdout_loss_curve, p.holdout_accuracy_curve):
        assert np.isnan(curve[:5]).all() and np.isfinite(curve[5:]).all()
        assert len(curve) == len(p.loss_curve) == 31
    assert ((p.holdout_accuracy_curve[5:] >= 0) & (p.holdout_accuracy_curve[5:] <= 1)).all()


def test_from_holdout_reads_the_curves_off_the_holdout_rows_after_the_warm_up():
    model, x, y = _problem(seed=4, n=60)
    p = predict_after_warmup(model, (x, y), lr=0.2, batch_size=10, max_steps=30, warmup_steps=5, momentum=0.9,
                             subset=20, holdout=10, k=16, seed=1, paths=2, sampling="stream", holdout_self=True)
    q, qa = p.from_holdout(), p.from_holdout(accuracy=True)
    assert np.isnan(p.holdout_plain_loss_curve[:5]).all() and np.isfinite(p.holdout_plain_loss_curve[5:]).all()
    for r in (q, qa):
        np.testing.assert_array_equal(r.loss_curve[:5], p.loss_curve[:5])
        np.testing.assert_array_equal(r.loss_curve[5:], p.holdout_loss_curve[5:])
        np.testing.assert_array_equal(r.subset_loss_curve, p.loss_curve)
        np.testing.assert_array_equal(r.subset_accuracy_curve, p.accuracy_curve)
        assert r.holdout_gap(12) == pytest.approx(p.holdout_gap(12))  # still holdout over subset
    np.testing.assert_array_equal(q.accuracy_curve, p.accuracy_curve)
    np.testing.assert_array_equal(qa.accuracy_curve[:5], p.accuracy_curve[:5])
    np.testing.assert_array_equal(qa.accuracy_curve[5:], p.holdout_accuracy_curve[5:])
    assert p.holdout_gap(12) != pytest.approx(1.0)
    with pytest.raises(ValueError, match="from_holdout needs a prediction with holdout rows"):
        q.from_holdout()
    plain = predict_after_warmup(model, (x, y), lr=0.2, batch_size=10, max_steps=30, warmup_steps=5, subset=20, k=16)
    with pytest.raises(ValueError, match="from_holdout needs a prediction with holdout rows"):
        plain.from_holdout()


def test_predict_training_time_holdout_self():
    import zoo_kernels as zk

    model, x, y = _problem(seed=7, n=60)
    kw = dict(lr=0.2, batch_size=10, max_steps=20, momentum=0.9, subset=20, holdout=10, k=16, paths=2, seed=3)
    p = zk.predict_training_time(model, (x, y), method="head-aware", holdout_self=True, **kw)
    want = HeadAwarePredictor(model, (x, y), k=16, subset=20, holdout=10, seed=3).predict(
        lr=0.2, batch_size=10, max_steps=20, momentum=0.9, paths=2, holdout_self=True).from_holdout()
    np.testing.assert_allclose(p.loss_curve, want.loss_curve, rtol=1e-12)
    np.testing.assert_allclose(p.accuracy_curve, want.accuracy_curve, rtol=1e-12)
    np.testing.assert_allclose(p.subset_loss_curve, want.subset_loss_curve, rtol=1e-12)
    w = zk.predict_training_time(model, (x, y), method="head-aware", holdout_self=True, warmup_steps=4, **kw)
    assert np.isfinite(w.loss_curve).all() and np.isnan(w.holdout_loss_curve[:4]).all()
    np.testing.assert_array_equal(w.loss_curve[4:], w.holdout_loss_curve[4:])
    for bad, match in [(dict(holdout=0), "`holdout_self` must be a bool, and True only with `holdout` > 0"),
                       (dict(holdout_self=1), "`holdout_self` must be a bool"),
                       (dict(method="sketch", holdout=0), "`holdout_self` apply to method='head-aware' only")]:
        with pytest.raises(ValueError, match=match):
            zk.predict_training_time(model, (x, y), **{**kw, "method": "head-aware", "holdout_self": True, **bad})


@pytest.mark.parametrize("holdout", [-1, 41, 2.0, True])
def test_bad_holdout(holdout):
    model, x, y = _problem(seed=5, n=60)
    with pytest.raises(ValueError, match=r"`holdout` must be an int in \[0, 40\]"):
        HeadAwarePredictor(model, (x, y), k=16, subset=20, holdout=holdout)


def test_predict_training_time_holdout_and_gap():
    import zoo_kernels as zk

    model, x, y = _problem(seed=6, n=60)
    p = zk.predict_training_time(model, (x, y), lr=0.2, batch_size=10, max_steps=20, method="head-aware",
                                 subset=20, holdout=10, k=16, paths=2)
    gap = p.holdout_loss_curve / p.loss_curve
    assert p.holdout_gap(7) == pytest.approx(gap[7]) and p.holdout_gap(7.5) == pytest.approx(
        (p.holdout_loss_curve[7] + p.holdout_loss_curve[8]) / (p.loss_curve[7] + p.loss_curve[8]))
    assert np.isnan(p.holdout_gap(None))
    plain = zk.predict_training_time(model, (x, y), lr=0.2, batch_size=10, max_steps=20, method="head-aware",
                                     subset=20, k=16, paths=2)
    np.testing.assert_allclose(plain.loss_curve, p.loss_curve, rtol=1e-12)
    assert np.isnan(plain.holdout_gap(5))
    with pytest.raises(ValueError, match="`holdout` and `holdout_self` apply to method=.head-aware. only"):
        zk.predict_training_time(model, (x, y), lr=0.2, batch_size=10, max_steps=20, method="sketch", holdout=5)


@pytest.mark.parametrize("feature_norm", ["linear", "fixed"])
def test_holdout_own_block_equals_explicit_euler(feature_norm):
    """holdout_self: at each evaluation the holdout rows' features gain −η κ E/N · J_h J_hᵀ ∂ℓ_h/∂z_h (E steps to
    the next evaluation, κ = 1/(1 − m)), on top of the subset's weight-space SGD; explicit Jacobians and autograd."""
    model, x, y = _problem(seed=8, n=60)
    M, H, B, steps, lr, E, m = 20, 12, 12, 10, 0.3, 3, 0.9
    pred = HeadAwarePredictor(model, (x, y), k=8, subset=M, holdout=H, seed=2, sketch_method="dense")
    bb = Backbone(model, pred.x)
    J = bb.jacobian()
    pred.S = J
    q = pred.predict(lr=lr, batch_size=B, max_steps=steps, momentum=m, paths=1, seed=6, sampling="stream",
                     measure_time=False, eval_every=E, feature_norm=feature_norm, holdout_self=True)
    plain = pred.predict(lr=lr, batch_size=B, max_steps=steps, momentum=m, paths=1, seed=6, sampling="stream",
                         measure_time=False, eval_every=E, feature_norm=feature_norm)
    np.testing.assert_allclose(q.loss_curve, plain.loss_curve, rtol=1e-12)  # the subset is unaffected
    batches = path_batches(M, subset_batch_size(B, len(x), M), "stream", 6, 1, steps)[0]
    W = model[1].weight.detach().clone().requires_grad_(True)
    b = model[1].bias.detach().clone().requires_grad_(True)
    delta = torch.zeros_like(bb.w0, requires_grad=True)
    opt = torch.optim.SGD([W, b, delta], lr=lr, momentum=m)
    phi0, yy, own, Jh = bb(bb.w0).detach(), pred.y, torch.zeros(H, 4, dtype=torch.float64), J[M:]
    r0 = phi0.norm(dim=1, keepdim=True)
    sphere = (lambda z: r0[-len(z):] * z / z.norm(dim=1, keepdim=True)) if feature_norm == "fixed" else (lambda z: z)

    def features():
        return phi0 + jvp(bb, (bb.w0,), (delta,))[1]

    held, held_acc = {}, {}
    for t in range(steps + 1):
        if t % E == 0 or t == steps:
            with torch.no_grad():
                zh0 = features()[M:] + own
            zh = zh0.clone().requires_grad_(True)
            ell = nn.functional.cross_entropy(sphere(zh) @ W.detach().T + b.detach(), yy[M:], reduction="none")
            held[t] = float(ell.mean().detach())
            held_acc[t] = float(((sphere(zh) @ W.detach().T + b.detach()).argmax(1) == yy[M:]).double().mean())
            if t < steps:
                vh, = torch.autograd.grad(ell.sum(), zh)
                own = own - lr / (1 - m) * min(E, steps - t) / len(x) * torch.einsum(
                    "hdp,hp->hd", Jh, torch.einsum("hdp,hd->hp", Jh, vh))
        if t == steps:
            break
        opt.zero_grad()
        z = features()
        zb = z[batches[t]]
        zb = (phi0[batches[t]].norm(dim=1, keepdim=True) * zb / zb.norm(dim=1, keepdim=True)
              if feature_norm == "fixed" else zb)
        nn.functional.cross_entropy(zb @ W.T + b, yy[batches[t]]).backward()
        opt.step()
    np.testing.assert_allclose([q.holdout_loss_curve[t] for t in held], list(held.values()), rtol=1e-9)
    np.testing.assert_allclose([q.holdout_accuracy_curve[t] for t in held], list(held_acc.values()), rtol=1e-12)
    assert abs(q.holdout_loss_curve[-1] - plain.holdout_loss_curve[-1]) > 1e-4  # the own block mattered
    # the gap stays the validated one: the holdout rows without their own block, over the subset
    assert plain.holdout_plain_loss_curve is None
    np.testing.assert_allclose(q.holdout_plain_loss_curve, plain.holdout_loss_curve, rtol=1e-12)
    assert q.holdout_gap(7.5) == pytest.approx(plain.holdout_gap(7.5), rel=1e-12)
