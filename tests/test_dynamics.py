"""The SGD dynamics of the linearized model: function-space solvers against parameter-space SGD."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import zoo_kernels as zk
from zoo_kernels.dynamics import SGD, KernelOperator, mse_moments, simulate_sgd
from zoo_kernels.predict import Prediction, Predictor


def problem(n=40, d=5, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, C)).double().eval()
    return model, x, y


def jacobian(model, x):
    params = {n: p.detach() for n, p in model.named_parameters()}
    J = vmap(jacrev(lambda p, xi: functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)), (None, 0))(params, x)
    return torch.cat([J[n].flatten(2) for n in params], 2)  # (N, C, P)


def weight_space_sgd(J, f0, y, loss, sgd, steps, seed, sampling="epoch"):
    """torch.optim.SGD on the linear model f = f0 + J (w - w0), same minibatch order as simulate_sgd
    ("epoch": shuffled epochs, the last batch smaller; "stream": full batches cut from concatenated permutations)."""
    N, C, P = J.shape
    w = torch.zeros(P, dtype=torch.float64, requires_grad=True)  # w - w0
    opt = torch.optim.SGD([w], lr=sgd.lr, momentum=sgd.momentum, dampening=sgd.dampening, nesterov=sgd.nesterov)
    gen = torch.Generator().manual_seed(seed)
    order, pos, curve = torch.randperm(N, generator=gen), 0, []
    for t in range(steps + 1):
        with torch.no_grad():
            f = f0 + J @ w
            curve.append(float(nn.functional.cross_entropy(f, y) if loss == "ce"
                               else 0.5 * (f - nn.functional.one_hot(y, C)).square().sum(1).mean()))
        if t == steps:
            break
        if sampling == "epoch":
            if pos >= N:
                order, pos = torch.randperm(N, generator=gen), 0
            b = order[pos:pos + sgd.batch_size]
            pos += sgd.batch_size
        else:
            while len(order) - pos < sgd.batch_size:
                order, pos = torch.cat([order[pos:], torch.randperm(N, generator=gen)]), 0
            b = order[pos:pos + sgd.batch_size]
            pos += sgd.batch_size
        fb = f0[b] + J[b] @ w
        lb = nn.functional.cross_entropy(fb, y[b]) if loss == "ce" else \
            0.5 * (fb - nn.functional.one_hot(y[b], C)).square().sum(1).mean()
        opt.zero_grad()
        lb.backward()
        if sgd.weight_decay:
            w.grad += sgd.weight_decay * w.detach()  # decay toward w0
        for group in opt.param_groups:
            group["lr"] = sgd.lr_at(t, steps)
        opt.step()
    return np.array(curve)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("hp", [
    dict(batch_size=7), dict(batch_size=7, momentum=0.9), dict(batch_size=16, momentum=0.8, dampening=0.3),
    dict(batch_size=5, momentum=0.9, nesterov=True), dict(batch_size=40, momentum=0.5, weight_decay=0.05),
    dict(batch_size=8, schedule="cosine"), dict(batch_size=8, momentum=0.5, schedule="step", step_size=10, gamma=0.5),
])
def test_function_space_sgd_equals_weight_space_sgd(loss, hp):
    model, x, y = problem()
    J = jacobian(model, x)
    with torch.no_grad():
        f0 = model(x)
    sgd = SGD(lr=0.3, **hp).check(40)
    ref = weight_space_sgd(J, f0, y, loss, sgd, 30, seed=7)
    K = torch.einsum("icp,jdp->icjd", J, J).reshape(120, 120)
    op = KernelOperator(40, 3, kernel=K)
    got, acc, _ = simulate_sgd(op, f0, y, loss, sgd, 30, paths=1, seed=7)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert acc.shape == (31,) and 0 <= acc.min() <= acc.max() <= 1
    # the same through a sketch that spans J exactly: S = J (P <= k makes S S^T = K with an orthonormal basis)
    Q, _ = torch.linalg.qr(J.reshape(120, -1).T)  # (P, P) orthonormal basis of the rows' span
    S = J.reshape(120, -1) @ Q
    got_s, _, _ = simulate_sgd(KernelOperator(40, 3, sketch=S), f0, y, loss, sgd, 30, paths=1, seed=7)
    np.testing.assert_allclose(got_s, ref, rtol=1e-9)
    # the paths run batched, drawn path after path: path 0 of 3 is the 1-path run, for both operators
    for o in (op, KernelOperator(40, 3, sketch=S)):
        mean, _, per = simulate_sgd(o, f0, y, loss, sgd, 30, paths=3, seed=7)
        np.testing.assert_allclose(per[0], ref, rtol=1e-9)
        np.testing.assert_allclose(mean, per.mean(0), rtol=1e-12)
        assert len(per) == 1 if sgd.batch_size == 40 else not np.allclose(per[1], per[0])  # full batch: 1 path
        rows, g = torch.randint(0, 120, (3, 12)), torch.randn(3, 12, dtype=torch.float64)
        torch.testing.assert_close(o.apply_batches(rows, g), torch.stack([o.apply_batch(r, v) for r, v in zip(rows, g)]))


@pytest.mark.parametrize("hp", [dict(batch_size=7), dict(batch_size=16, momentum=0.9, nesterov=True)])
def test_stream_sampling_equals_weight_space_sgd(hp):
    """sampling="stream" (the MiniZoo recipe: every batch full, straddling two permutations)."""
    model, x, y = problem()
    J = jacobian(model, x)
    with torch.no_grad():
        f0 = model(x)
    sgd = SGD(lr=0.3, **hp).check(40)
    ref = weight_space_sgd(J, f0, y, "ce", sgd, 30, seed=3, sampling="stream")
    op = KernelOperator(40, 3, kernel=torch.einsum("icp,jdp->icjd", J, J).reshape(120, 120))
    got, _, _ = simulate_sgd(op, f0, y, "ce", sgd, 30, paths=1, seed=3, sampling="stream")
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    epoch, _, _ = simulate_sgd(op, f0, y, "ce", sgd, 30, paths=1, seed=3, sampling="epoch")
    assert np.abs(epoch - got).max() > 1e-6  # the two samplings really differ (40 is not a multiple of 7 or 16)


@pytest.mark.parametrize("hp", [dict(), dict(momentum=0.9), dict(momentum=0.7, nesterov=True),
                                dict(momentum=0.5, dampening=0.5, weight_decay=0.1)])
def test_mse_moments_full_batch_equals_gd(hp):
    """B = N: no noise, the eigenbasis closed form equals the function-space recursion."""
    model, x, y = problem()
    K = zk.ntk(model, x).permute(0, 2, 1, 3).reshape(120, 120)
    with torch.no_grad():
        f0 = model(x)
    sgd = SGD(lr=0.5, batch_size=40, **hp).check(40)
    sim, _, _ = simulate_sgd(KernelOperator(40, 3, kernel=K), f0, y, "mse", sgd, 60, seed=1)
    lam, U = torch.linalg.eigh(K)
    r = U.T @ (f0 - nn.functional.one_hot(y, 3)).reshape(-1)
    closed = mse_moments(lam.clamp_min(0).numpy(), r.square().numpy(), np.ones(120), 40, 3, sgd, 60)
    np.testing.assert_allclose(closed, sim, rtol=1e-9)


def test_mse_moments_track_monte_carlo_sgd_noise():
    """B < N: the moment equations (isotropic-noise approximation) follow the mean of many SGD paths."""
    model, x, y = problem(n=60)
    K = zk.ntk(model, x).permute(0, 2, 1, 3).reshape(180, 180)
    with torch.no_grad():
        f0 = model(x)
    sgd = SGD(lr=0.3, batch_size=4, momentum=0.5).check(60)
    mc, _, paths = simulate_sgd(KernelOperator(60, 3, kernel=K), f0, y, "mse", sgd, 80, paths=200, seed=2)
    lam, U = torch.linalg.eigh(K)
    r = U.T @ (f0 - nn.functional.one_hot(y, 3)).reshape(-1)
    closed = mse_moments(lam.clamp_min(0).numpy(), r.square().numpy(), np.ones(180), 60, 3, sgd, 80)
    gd = mse_moments(lam.clamp_min(0).numpy(), r.square().numpy(), np.ones(180), 60, 3,
                     SGD(lr=0.3, batch_size=60, momentum=0.5), 80)
    se = paths.std(0) / math.sqrt(len(paths))
    # the noise raises the loss above GD; the moment equations capture most of that excess
    assert (mc[20:] > gd[20:]).all()
    assert np.abs(closed - mc).max() < np.abs(gd - mc).max() * 0.5 + 3 * se.max()


def test_limits_and_monotonicity():
    model, x, y = problem()
    pred = Predictor(model, (x, y), method="exact", loss="ce")
    slow = pred.predict(lr=0.05, batch_size=40, max_steps=50, measure_time=False)
    fast = pred.predict(lr=0.5, batch_size=40, max_steps=50, measure_time=False)
    assert (np.diff(slow.loss_curve) <= 1e-12).all() and (fast.loss_curve[1:] < slow.loss_curve[1:]).all()
    # momentum 0: dampening has no effect, and B = N is deterministic (any seed, any number of paths)
    a = pred.predict(lr=0.3, batch_size=40, max_steps=20, measure_time=False, seed=1)
    b = pred.predict(lr=0.3, batch_size=40, max_steps=20, measure_time=False, dampening=0.7, seed=2, paths=9)
    np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-12)
    # momentum speeds up the start like a larger effective learning rate
    m = pred.predict(lr=0.05, batch_size=40, max_steps=50, momentum=0.9, measure_time=False)
    assert m.loss_curve[30] < slow.loss_curve[30]


def test_prediction_targets():
    p = Prediction(loss_curve=np.array([1.0, 0.6, 0.4, 0.3, 0.25, 0.25]), accuracy_curve=np.array([.1, .5, .7, .8, .9, .9]),
                   n_samples=100, batch_size=10, lr=0.1, momentum=0.0, step_seconds=0.5, cost_seconds=1.0)
    assert p.steps_to(loss=0.4) == 2 and p.steps_to(fraction=0.3) == 3 and p.steps_to(accuracy=0.85) == 4
    assert p.steps_to(loss=0.1) is None and p.steps_to(epsilon=0.06) == 3
    assert p.time_to(loss=0.4) == {"steps": 2, "epochs": 0.2, "seconds": 1.0}
    assert p.steps_per_epoch == 10
    with pytest.raises(ValueError, match="exactly one"):
        p.steps_to(loss=0.1, accuracy=0.5)


def test_predict_training_time_end_to_end_and_subset():
    model, x, y = problem(n=200, d=5, C=3, seed=3)
    p = zk.predict_training_time(model.float(), (x.float(), y), lr=0.2, batch_size=16, max_steps=40, k=256,
                                 momentum=0.5, paths=2)
    assert p.loss_curve.shape == (41,) and p.accuracy_curve.shape == (41,)
    assert p.step_seconds > 0 and p.cost_seconds > 0 and p.loss_curve[-1] < p.loss_curve[0]
    sub = zk.predict_training_time(model.float(), (x.float(), y), lr=0.2, batch_size=16, max_steps=40, k=256,
                                   momentum=0.5, paths=2, subset=100)
    assert abs(sub.loss_curve[-1] / p.loss_curve[-1] - 1) < 0.3
    ds = torch.utils.data.TensorDataset(x.float(), y)
    assert zk.predict_training_time(model.float(), ds, lr=0.5, batch_size=16, max_steps=5, k=64).loss_curve.shape == (6,)


def test_predict_training_time_head_aware_method():
    from zoo_kernels.calibrate import HeadAwarePredictor
    model, x, y = problem(n=40, d=5, C=3, seed=4)
    args = dict(lr=0.1, batch_size=8, max_steps=12, momentum=0.9, paths=2)
    p = zk.predict_training_time(model, (x, y), method="head-aware", k=64, **args)
    q = HeadAwarePredictor(model, (x, y), k=64).predict(**args)
    np.testing.assert_allclose(p.loss_curve, q.loss_curve, rtol=1e-12)
    np.testing.assert_allclose(p.accuracy_curve, q.accuracy_curve, rtol=1e-12)
    with pytest.raises(ValueError, match="`method` must be"):
        zk.predict_training_time(model, (x, y), method="ntk", **args)
    r = zk.predict_training_time(model, (x, y), method="head-aware", k=64, feature_rank=2, **args)
    s = HeadAwarePredictor(model, (x, y), k=64, feature_rank=2).predict(**args)
    np.testing.assert_allclose(r.loss_curve, s.loss_curve, rtol=1e-12)
    with pytest.raises(ValueError, match="`feature_rank` applies to method='head-aware' only"):
        zk.predict_training_time(model, (x, y), method="sketch", feature_rank=2, **args)


def test_auto_subset_rule_and_errors():
    from zoo_kernels.calibrate import HeadAwarePredictor
    from zoo_kernels.predict import auto_subset
    assert auto_subset(4000, 10) == 200 and auto_subset(4004, 26) == 520 and auto_subset(100, 26) == 100
    assert auto_subset(3, 1) == 3 and auto_subset(40, 1) == 20
    model, x, y = problem(n=90, d=5, C=3, seed=4)
    pred = HeadAwarePredictor(model, (x, y), k=16, subset="auto")
    assert pred.subset == 60 and pred.n_samples == 90  # 20 per class beats N/20 = 4
    same = HeadAwarePredictor(model, (x, y), k=16, subset=60)
    torch.testing.assert_close(pred.x, same.x)  # the same seeded draw as an explicit M
    assert zk.Predictor(model, (x, y), k=16, subset="auto").subset == 60
    for bad in ("half", 1, 91, True, 2.5):
        with pytest.raises(ValueError, match="`subset` must be None, 'auto' or an int in"):
            zk.Predictor(model, (x, y), k=16, subset=bad)


def test_predict_training_time_kronecker_sketch():
    """sketch_method='kronecker' reaches both predictors and the warm start: the same call as the predictor's own,
    a different (independent) sketch than the dense one, and a clear error for an unknown method."""
    from zoo_kernels.calibrate import HeadAwarePredictor
    from zoo_kernels.warmstart import predict_after_warmup
    model, x, y = problem(n=40, d=5, C=3, seed=4)
    args = dict(lr=0.1, batch_size=8, max_steps=12, momentum=0.9, paths=2)
    p = zk.predict_training_time(model, (x, y), method="head-aware", k=64, sketch_method="kronecker", **args)
    q = HeadAwarePredictor(model, (x, y), k=64, sketch_method="kronecker").predict(**args)
    np.testing.assert_allclose(p.loss_curve, q.loss_curve, rtol=1e-12)
    dense = zk.predict_training_time(model, (x, y), method="head-aware", k=64, **args)
    assert not np.allclose(p.loss_curve[1:], dense.loss_curve[1:], rtol=1e-9)
    s = zk.predict_training_time(model, (x, y), method="sketch", k=64, sketch_method="kronecker", **args)
    t = zk.Predictor(model, (x, y), k=64, sketch_method="kronecker").predict(**args)
    np.testing.assert_allclose(s.loss_curve, t.loss_curve, rtol=1e-12)
    w = zk.predict_training_time(model, (x, y), method="head-aware", k=64, sketch_method="kronecker",
                                 warmup_steps=3, eval_every=2, **args)
    v = predict_after_warmup(model, (x, y), k=64, warmup_steps=3, sketch_method="kronecker", eval_every=2, **args)
    np.testing.assert_allclose(w.loss_curve, v.loss_curve, rtol=1e-12)
    e = zk.predict_training_time(model, (x, y), method="head-aware", k=64, eval_every=4, **args)
    f = HeadAwarePredictor(model, (x, y), k=64).predict(eval_every=4, **args)
    np.testing.assert_allclose(e.loss_curve, f.loss_curve, rtol=1e-12)
    with pytest.raises(ValueError, match="apply to method='head-aware' only"):
        zk.predict_training_time(model, (x, y), method="sketch", eval_every=4, **args)
    for bad in ("gaussian", None):
        with pytest.raises(ValueError, match="`sketch_method` must be one of"):
            zk.predict_training_time(model, (x, y), method="head-aware", k=64, sketch_method=bad, **args)
        with pytest.raises(ValueError, match="`sketch_method` must be one of"):
            predict_after_warmup(model, (x, y), k=64, warmup_steps=3, sketch_method=bad, **args)


def test_recommend_grid_and_predict_kwargs():
    model, x, y = problem(n=60, d=5, C=3, seed=1)
    pred = zk.Predictor(model, (x, y), method="exact")
    rows = pred.recommend(lrs=[0.5, 2.0], batch_sizes=[8, 30], max_steps=60, by="steps", fraction=0.9,
                          predict_kwargs=dict(sampling="stream", paths=1))
    assert len(rows) == 4 and {(r["lr"], r["batch_size"]) for r in rows} == {(0.5, 8), (0.5, 30), (2.0, 8), (2.0, 30)}
    reached = [r["steps"] for r in rows if r["steps"] is not None]
    assert reached == sorted(reached) and rows[0]["steps"] is not None
    best = rows[0]
    direct = pred.predict(lr=best["lr"], batch_size=best["batch_size"], max_steps=60, sampling="stream", paths=1,
                          measure_time=False)
    assert direct.steps_to(fraction=0.9) == best["steps"]  # the kwargs reached predict()


def test_subset_noise_correction_tracks_the_full_prediction():
    # Noisy labels, M·C = k: M samples fit the label noise faster than N do (it sits in M·C modes instead of
    # N·C); predict(subset_correction=True) removes most of that bias in the curve.
    g = torch.Generator().manual_seed(0)
    n, C, d = 1000, 10, 32
    scale = torch.arange(1, d + 1).pow(-0.5)
    means = torch.randn(C, d, generator=g) * 1.5 * scale
    y = torch.randint(C, (n,), generator=g)
    x = means[y] + torch.randn(n, d, generator=g) * scale
    y = torch.where(torch.rand(n, generator=g) < 0.1, torch.randint(C, (n,), generator=g), y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, C)).eval()  # P = 5,514
    kw = dict(loss="mse", k=256)
    settings = dict(lr=0.1, batch_size=32, max_steps=150, measure_time=False, paths=2)
    full = zk.Predictor(model, (x, y), **kw).predict(**settings).loss_curve
    sub = zk.Predictor(model, (x, y), subset=100, **kw)
    corrected = sub.predict(**settings, subset_correction=True).loss_curve
    plain = sub.predict(**settings).loss_curve  # the default
    assert corrected[0] == plain[0] and np.all(corrected >= plain - 1e-12)  # it only slows the decrease
    err, err_plain = np.abs(corrected / full - 1).max(), np.abs(plain / full - 1).max()
    assert err < 0.5 * err_plain, (err, err_plain)
    # without a subset there is nothing to correct
    whole = zk.Predictor(model, (x[:200], y[:200]), **kw)
    np.testing.assert_array_equal(whole.predict(**settings, subset_correction=True).loss_curve,
                                  whole.predict(**settings).loss_curve)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(lr=0.0), ValueError, "`lr`"), (dict(lr=-1.0), ValueError, "`lr`"), (dict(batch_size=500), ValueError, "`batch_size`"),
    (dict(loss="hinge"), ValueError, "`loss`"), (dict(momentum=1.0), ValueError, "`momentum`"),
    (dict(max_steps=0), ValueError, "`max_steps`"), (dict(nesterov=True), ValueError, "`nesterov`"),
])
def test_bad_arguments(kwargs, err, match):
    model, x, y = problem()
    args = dict(lr=0.1, batch_size=8, max_steps=5, k=32) | kwargs
    with pytest.raises(err, match=match):
        zk.predict_training_time(model, (x, y), **args)


def test_bad_data():
    model, x, y = problem()
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        zk.predict_training_time(model, (bad, y), lr=0.1, batch_size=8, max_steps=5, k=32)
    with pytest.raises(ValueError, match="labels must be integers in \\[0, 3\\)"):
        zk.predict_training_time(model, (x, y + 3), lr=0.1, batch_size=8, max_steps=5, k=32)
    with pytest.raises(TypeError, match="`data`"):
        zk.predict_training_time(model, x, lr=0.1, batch_size=8, max_steps=5, k=32)


def test_divergence_is_reported():
    model, x, y = problem()
    pred = Predictor(model, (x, y), method="exact", loss="mse")
    with pytest.raises(FloatingPointError, match="stability limit"):
        pred.predict(lr=1e4, batch_size=40, max_steps=200, measure_time=False)


def test_an_unstable_learning_rate_is_a_divergence_before_the_outputs_overflow():
    """Full-batch GD of the linearized MSE model at 1.5× the stability limit 2N/λ_max: the top mode grows 2× per step,
    so the outputs stay finite for hundreds of steps; the loss passing BLOWUP × L0 reports the divergence."""
    from zoo_kernels.dynamics import BLOWUP
    model, x, y = problem()
    pred = Predictor(model, (x, y), method="exact", loss="mse")
    lam = float(torch.linalg.eigvalsh(zk.ntk(model, x).permute(0, 2, 1, 3).reshape(120, 120))[-1])
    args = dict(lr=1.5 * 2 * 40 / lam, batch_size=40, measure_time=False)
    with pytest.raises(FloatingPointError, match=f"the loss passed {BLOWUP:g}× its initial value"):
        pred.predict(max_steps=60, **args)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        p = pred.predict(max_steps=60, on_divergence="truncate", **args)
    d = p.diverged_at
    assert 0 < d < 60 and p.loss_curve[:d].max() <= BLOWUP * p.loss_curve[0] and np.isnan(p.loss_curve[d:]).all()
    assert p.loss_curve[d - 1] > 10 * p.loss_curve[0]  # growing, not a noise blip
    K = zk.ntk(model, x).permute(0, 2, 1, 3).reshape(120, 120)  # the closed form stops at the same bound
    lam_all, U = torch.linalg.eigh(K)
    with torch.no_grad():
        r = U.T @ (model(x) - nn.functional.one_hot(y, 3)).reshape(-1)
    with pytest.raises(FloatingPointError, match=f"the loss passed {BLOWUP:g}× its initial value"):
        mse_moments(lam_all.clamp_min(0).numpy(), r.square().numpy(), np.ones(120), 40, 3,
                    SGD(lr=args["lr"], batch_size=40).check(40), 60)


def test_divergence_truncate_keeps_the_valid_prefix():
    model, x, y = problem()
    pred = Predictor(model, (x, y), method="exact", loss="mse")  # (linearized cross-entropy cannot diverge)
    args = dict(lr=30.0, batch_size=8, measure_time=False, paths=1, sampling="stream")
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        p = pred.predict(max_steps=400, on_divergence="truncate", **args)
    d = p.diverged_at
    assert d is not None and 0 < d <= 400
    assert np.isfinite(p.loss_curve[:d]).all() and np.isnan(p.loss_curve[d:]).all()
    ok = pred.predict(max_steps=d - 1, **args)  # the steps before the divergence are the ones "raise" would give
    np.testing.assert_allclose(p.loss_curve[:d], ok.loss_curve, rtol=1e-12)
    assert p.steps_to(loss=p.loss_curve[0]) == 0 and p.steps_to(epsilon=1e-3) is None
    with pytest.raises(FloatingPointError):
        pred.predict(max_steps=400, **args)
    with pytest.raises(ValueError, match="`on_divergence` must be one of"):
        pred.predict(max_steps=5, on_divergence="ignore", **args)


@pytest.mark.parametrize("hp", [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, dampening=0.5)])
def test_stride_super_steps_follow_the_exact_curve(hp):
    """Super-steps (dynamics.coarsen) keep drift and noise per unit time: on a slow curve the steps to a target
    stay close to the exact recursion's."""
    model, x, _ = problem(n=60, d=5, C=3, seed=2)
    y = (x @ torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).argmax(1)
    pred = Predictor(model, (x, y), method="exact")
    m, d = hp.get("momentum", 0.0), hp.get("dampening", 0.0)
    args = dict(lr=0.1 * (1 - m) / (1 - d), batch_size=6, max_steps=600, measure_time=False, paths=6, seed=3,
                sampling="stream", **hp)
    exact = pred.predict(**args)
    coarse = pred.predict(stride=4, **args)
    assert coarse.loss_curve.shape == exact.loss_curve.shape == (601,)
    for f in (0.5, 0.35, 0.25):
        te, tc = exact.steps_to(fraction=f), coarse.steps_to(fraction=f)
        assert te is not None and abs(tc - te) <= 0.1 * te + 4, (f, te, tc)
    np.testing.assert_allclose(pred.predict(stride=1, **args).loss_curve, exact.loss_curve, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`stride` must be a positive int"):
        pred.predict(stride=0, **args)
    with pytest.warns(RuntimeWarning, match="SGD noise is lost"):  # 11 x 6 > 60 samples: full-batch super-steps
        pred.predict(stride=11, **{**args, "max_steps": 22})


def test_coarsen_drift_per_unit_time():
    from zoo_kernels.dynamics import SGD, coarsen, expand_curve
    sgd = SGD(lr=0.01, batch_size=8, momentum=0.9, schedule="step", step_size=100, gamma=0.5)
    run, n = coarsen(sgd, 5, 1000, 1000)
    assert n == 200 and run.batch_size == 40 and run.momentum == pytest.approx(0.9 ** 5)
    # steady-state drift per super-step = 5 real steps' drift 5 * lr / (1 - m), at the schedule's lr
    for t in (0, 19, 20, 199):
        assert run.lr_at(t, n) / (1 - run.momentum) == pytest.approx(5 * sgd.lr_at(5 * t, 1000) / 0.1)
    np.testing.assert_allclose(expand_curve([0.0, 5.0, 10.0], 5, 10), np.arange(11.0))


def test_coarsen_ignores_dampening_without_momentum():
    """torch.optim.SGD keeps no buffer at momentum 0, so dampening changes nothing there, nor in super-steps."""
    from zoo_kernels.dynamics import SGD, coarsen
    g = torch.randn(5, generator=torch.Generator().manual_seed(0))
    w = torch.zeros(5, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.0, dampening=0.5)
    for _ in range(3):
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), -0.3 * g)  # the plain steps torch takes
    plain, _ = coarsen(SGD(lr=0.1, batch_size=4, momentum=0.0), 3, 30, 100)
    damped, _ = coarsen(SGD(lr=0.1, batch_size=4, momentum=0.0, dampening=0.5), 3, 30, 100)
    assert damped.lr_at(0, 10) == pytest.approx(plain.lr_at(0, 10)) == pytest.approx(0.3)


def test_recommended_subset_is_capped_beyond_the_validated_sizes():
    from zoo_kernels.predict import auto_subset, recommended_holdout, recommended_subset
    for n, C in ((4000, 10), (4004, 26), (40000, 10), (40019, 10), (100, 26)):
        assert recommended_subset(n, C) == auto_subset(n, C)  # unchanged where it was validated
    assert recommended_subset(200000, 16) == 2000 and recommended_subset(1000000, 10) == 2000
    assert recommended_subset(1000000, 200) == 4000  # 20 per class stays the floor
    assert recommended_holdout(200000, 16) == 200
