"""zoo_kernels.warmstart: K real SGD steps, then the head-aware model linearized at w_K."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import bilinear_problem
from zoo_kernels.calibrate import HeadAwarePredictor
from zoo_kernels.dynamics import _batch_stream, path_batches
from zoo_kernels.warmstart import feature_velocity, predict_after_warmup


def _loss(out, y, loss):
    if loss == "ce":
        return nn.functional.cross_entropy(out, y)
    return 0.5 * (out - nn.functional.one_hot(y, out.shape[1]).to(out.dtype)).square().sum(1).mean()


def _real_sgd(model, params, x, y, lr, B, K, steps, seed, hp, loss="ce"):
    """Full-set losses of torch.optim.SGD over `params` after 0..steps steps, with predict_after_warmup's minibatches:
    its warm-up stream (seed + 1) for K steps, then the prediction's path 0 (seed)."""
    opt = torch.optim.SGD(params, lr=lr, **hp)
    warm = _batch_stream(len(x), B, "stream", torch.Generator().manual_seed(seed + 1))
    rest = path_batches(len(x), B, "stream", seed, 1, steps - K)[0]
    ref = []
    for t in range(steps + 1):
        with torch.no_grad():
            ref.append(float(_loss(model(x), y, loss)))
        if t == steps:
            break
        b = next(warm) if t < K else rest[t - K]
        opt.zero_grad()
        _loss(model(x[b]), y[b], loss).backward()
        opt.step()
    return ref


@pytest.mark.parametrize("feature_rank", [None, 2])
def test_feature_velocity_is_the_buffer_in_feature_space(feature_rank):
    """After one full-batch step the backbone's momentum buffer is b = Σ_i J_iᵀ ∂L/∂φ_i; its feature-space image
    must be J_j b = Σ_i J_j J_iᵀ ∂L/∂φ_i on the predictor's samples (with feature_rank, in the coordinates Uᵀφ),
    from the explicit Jacobian (torch.func.jacrev), whatever the sketch."""
    model, x, y = bilinear_problem(n=20, d=6, h=7, C=4, seed=3)
    pred = HeadAwarePredictor(model, (x, y), k=96, seed=5, sketch_method="kronecker", feature_rank=feature_rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert feature_velocity(model, opt, pred) is None  # no buffer before the first step
    phi = model[0](x).detach().requires_grad_(True)
    dphi, = torch.autograd.grad(nn.functional.cross_entropy(model[1](phi), y), phi)
    params = {n: p.detach().clone() for n, p in model[0].named_parameters()}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model[0], p, (x,)))(params)
    J = torch.cat([jac[n].reshape(len(x), 7, -1) for n in params], -1)  # (N, D, P)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    gW, gb = model[1].weight.grad.clone(), model[1].bias.grad.clone()
    opt.step()
    vW, vb, V = feature_velocity(model, opt, pred, batch_size=7)
    want = J @ torch.einsum("ndp,nd->p", J, dphi)  # (N, D)
    if feature_rank:
        want = want @ pred.U
    assert V.shape == (20, feature_rank or 7)
    np.testing.assert_allclose(V, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(vW, gW, rtol=1e-12)
    np.testing.assert_allclose(vb, gb, rtol=1e-12)
    assert V.abs().max() > 1e-3  # not trivially zero


def test_no_warmup_is_the_head_aware_prediction():
    model, x, y = bilinear_problem()
    kw = dict(lr=0.3, batch_size=6, max_steps=15, momentum=0.9, paths=2, seed=2, sampling="stream")
    a = predict_after_warmup(model, (x, y), warmup_steps=0, k=16, **kw)
    b = HeadAwarePredictor(model, (x, y), k=16, seed=2).predict(measure_time=False, **kw)
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
    assert a.warmup_steps == 0


@pytest.mark.parametrize("hp, loss", [(dict(momentum=0.0), "ce"), (dict(momentum=0.9), "ce"),
                                      (dict(momentum=0.8, nesterov=True), "ce"),
                                      (dict(momentum=0.5, dampening=0.3), "ce"), (dict(momentum=0.9), "mse")])
def test_frozen_backbone_warmup_joins_real_sgd_exactly(hp, loss):
    """With the backbone frozen the head-aware model is the network (a linear probe): K real steps, the head's
    momentum buffers carried over and the predicted rest must reproduce one torch.optim.SGD run step for step."""
    model, x, y = bilinear_problem()
    for p in model[0].parameters():
        p.requires_grad_(False)
    K, steps, B, lr, seed = 7, 20, 5, 0.4, 4
    p = predict_after_warmup(model, (x, y), lr=lr, batch_size=B, max_steps=steps, warmup_steps=K, paths=1,
                             seed=seed, sampling="stream", loss=loss, **hp)
    ref_model = bilinear_problem()[0]
    ref_model.load_state_dict(model.state_dict())
    ref = _real_sgd(ref_model, ref_model[1].parameters(), x, y, lr, B, K, steps, seed, hp, loss)
    assert p.warmup_steps == K and len(p.loss_curve) == steps + 1
    np.testing.assert_allclose(p.loss_curve, ref, rtol=1e-9)
    assert np.isnan(p.feature_shift[:K]).all() and (p.feature_shift[K:] == 0).all()
    # the input model is left as it was
    np.testing.assert_array_equal(model[1].weight.detach(), bilinear_problem()[0][1].weight.detach())


@pytest.mark.parametrize("sketch_method", ["dense", "kronecker"])
def test_warmup_with_a_trained_backbone_tracks_the_network(sketch_method):
    """A linear backbone: after the real warm-up the head-aware model is the network up to the sketch's JL error;
    with the backbone's momentum carried (feature_velocity) it follows real SGD closely, with either sketch."""
    model, x, y = bilinear_problem(n=30)
    K, steps, B, lr, seed, hp = 6, 40, 6, 0.05, 1, dict(momentum=0.9)
    p = predict_after_warmup(model, (x, y), lr=lr, batch_size=B, max_steps=steps, warmup_steps=K, paths=1,
                             seed=seed, sampling="stream", k=8192, sketch_method=sketch_method, **hp)
    ref_model = bilinear_problem(n=30)[0]
    ref = _real_sgd(ref_model, ref_model.parameters(), x, y, lr, B, K, steps, seed, hp)
    np.testing.assert_allclose(p.loss_curve[:K + 1], ref[:K + 1], rtol=1e-12)  # the measured part
    # 0.1 % measured (k = 8192, both sketches); without the backbone's velocity it is 2-3 %, so this catches a lost
    # momentum state (as the Kronecker sketch's velocity projected with the dense R did: 2.9 %)
    np.testing.assert_allclose(p.loss_curve, ref, rtol=6e-3)
    assert ref[-1] < 0.8 * ref[K]  # the predicted part covers real progress


def test_warmup_eval_every_spaces_the_measurements():
    """eval_every=E: the warm-up measures the subset every E real steps (the steps themselves are unchanged) and
    interpolates log-linearly in between, up to the prediction's first point at w_K."""
    model, x, y = bilinear_problem(n=30)
    kw = dict(lr=0.05, batch_size=6, max_steps=30, warmup_steps=7, paths=1, seed=1, sampling="stream", k=64,
              momentum=0.9)
    every = predict_after_warmup(model, (x, y), **kw)
    sparse = predict_after_warmup(model, (x, y), eval_every=3, **kw)
    L, S = every.loss_curve, sparse.loss_curve
    np.testing.assert_allclose(S[[0, 3, 6]], L[[0, 3, 6]], rtol=1e-12)  # measured: the same real steps
    assert S[7] == pytest.approx(L[7], rel=1e-12)  # w_K: the same linearization point
    # between measurements: log-linear in the measured values (steps 0, 3, 6 and the prediction's 7)
    want = np.exp(np.interp(np.arange(7), [0, 3, 6, 7], np.log(L[[0, 3, 6, 7]])))
    np.testing.assert_allclose(S[:7], want, rtol=1e-12)
    assert not np.allclose(S[1:3], L[1:3], rtol=1e-9)  # interpolated, not measured
    assert np.all((S[1:3] - L[0]) * (S[1:3] - L[3]) <= 0)  # between its measured neighbours


def test_warmup_eval_growth_spaces_the_warmup_measurements_too():
    """eval_growth=g: the warm-up is measured at evaluation_steps(K, E, g) only, the same real steps as with g = 0
    where both measure; eval_growth = 0 is every E steps."""
    from zoo_kernels.predict import evaluation_steps
    model, x, y = bilinear_problem(n=30)
    kw = dict(lr=0.02, batch_size=6, max_steps=60, warmup_steps=40, paths=1, seed=1, sampling="stream", k=32,
              momentum=0.9, eval_every=2)
    even = predict_after_warmup(model, (x, y), **kw)
    grown = predict_after_warmup(model, (x, y), eval_growth=0.2, **kw)
    at = evaluation_steps(40, 2, 0.2)[:-1]
    assert len(at) < 20 and at[:6] == [0, 2, 4, 6, 8, 10] and 40 not in at
    both = [t for t in at if t % 2 == 0]  # measured by both runs
    assert len(both) >= 8
    np.testing.assert_allclose(grown.loss_curve[both], even.loss_curve[both], rtol=1e-12)  # the same real steps
    gaps = sorted(set(range(40)) - set(at))
    assert not np.allclose(grown.loss_curve[gaps], even.loss_curve[gaps], rtol=1e-9)  # interpolated over wider gaps


def test_warmup_eval_rows_measures_the_warmup_on_a_random_part_of_the_subset():
    """warmup_eval_rows=R < M: the warm-up's curve is the loss of R random subset rows (the first R of the subset's
    random order); the prediction after w_K is unchanged; R >= M is the all-M measurement, bit for bit."""
    from zoo_kernels.predict import subset_indices
    model, x, y = bilinear_problem(n=60, C=3)
    kw = dict(lr=0.05, batch_size=6, max_steps=20, warmup_steps=5, paths=1, seed=2, sampling="stream", k=32,
              momentum=0.9, subset=40)
    full = predict_after_warmup(model, (x, y), warmup_eval_rows=None, **kw)
    same = predict_after_warmup(model, (x, y), warmup_eval_rows=40, **kw)
    part = predict_after_warmup(model, (x, y), warmup_eval_rows=7, **kw)
    np.testing.assert_array_equal(same.loss_curve, full.loss_curve)
    np.testing.assert_allclose(part.loss_curve[5:], full.loss_curve[5:], rtol=1e-12)  # from w_K on
    rows = subset_indices(60, 7, 2)
    assert set(rows.tolist()) <= set(subset_indices(60, 40, 2).tolist())
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(model(x[rows]), y[rows]))
        everyone = float(nn.functional.cross_entropy(model(x[subset_indices(60, 40, 2)]), y[subset_indices(60, 40, 2)]))
    assert part.loss_curve[0] == pytest.approx(want, rel=1e-12)
    assert full.loss_curve[0] == pytest.approx(everyone, rel=1e-12) and abs(want / everyone - 1) > 1e-6
    with pytest.raises(ValueError, match="`warmup_eval_rows` must be None or an int >= 1"):
        predict_after_warmup(model, (x, y), warmup_eval_rows=0, **kw)


@pytest.mark.parametrize("kwargs, match", [
    (dict(warmup_steps=-1), "`warmup_steps`"), (dict(warmup_steps=2.5), "`warmup_steps`"),
    (dict(warmup_steps=2, eval_every=0), "`eval_every`"), (dict(warmup_steps=10), "`max_steps`"), (dict(warmup_steps=2, lr=0.0), "`lr`"),
    (dict(warmup_steps=2, batch_size=99), "`batch_size`")])
def test_bad_arguments(kwargs, match):
    model, x, y = bilinear_problem()
    args = dict(lr=0.1, batch_size=4, max_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        predict_after_warmup(model, (x, y), **args)


def test_public_call_routes_warmup_and_feature_norm():
    from zoo_kernels import predict_training_time
    model, x, y = bilinear_problem()
    kw = dict(lr=0.2, batch_size=6, max_steps=12, momentum=0.9, paths=1, k=16, seed=1)
    a = predict_training_time(model, (x, y), method="head-aware", warmup_steps=4, feature_norm="fixed", **kw)
    b = predict_after_warmup(model, (x, y), warmup_steps=4, feature_norm="fixed", **kw)
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
    assert a.warmup_steps == 4
    for bad in (dict(warmup_steps=2), dict(feature_norm="fixed")):
        with pytest.raises(ValueError, match="apply to method='head-aware' only"):
            predict_training_time(model, (x, y), method="sketch", **kw, **bad)
    with pytest.raises(ValueError, match="constant schedule"):
        predict_training_time(model, (x, y), method="head-aware", warmup_steps=2, schedule="cosine", **kw)


def test_bad_data_and_divergence_are_clear_errors():
    model, x, y = bilinear_problem()
    args = dict(lr=0.1, batch_size=4, max_steps=10, warmup_steps=3)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        predict_after_warmup(model, (bad, y), **args)
    with pytest.raises(ValueError, match="`subset`"):
        predict_after_warmup(model, (x, y), subset=999, **args)
    with pytest.raises(ValueError, match="`loss`"):
        predict_after_warmup(model, (x, y), loss="hinge", **args)
    with pytest.raises(FloatingPointError, match="diverged during the warm-up"):
        predict_after_warmup(model, (x, y), **{**args, "lr": 1e300, "warmup_steps": 8})


def test_velocity_is_checked():
    model, x, y = bilinear_problem()
    pred = HeadAwarePredictor(model, (x, y), k=16)
    kw = dict(lr=0.1, batch_size=4, max_steps=3, momentum=0.9, measure_time=False)
    good = (torch.zeros(3, 6, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
            torch.zeros(24, 6, dtype=torch.float64))
    np.testing.assert_array_equal(pred.predict(velocity=good, **kw).loss_curve, pred.predict(**kw).loss_curve)
    for bad in [good[:2], (good[0], good[1], torch.zeros(16, dtype=torch.float64)),
                (good[0] * float("nan"), good[1], good[2])]:
        with pytest.raises(ValueError, match="`velocity` must be 3 finite tensors"):
            pred.predict(velocity=bad, **kw)
    with pytest.raises(ValueError, match="with stride 1"):
        pred.predict(velocity=good, stride=2, **kw)


def test_recommended_method_is_the_validated_configuration():
    """method="recommended" is head-aware with predict.RECOMMENDED (feature_rank capped at the feature width), and
    refuses the arguments it sets."""
    from zoo_kernels import predict_training_time
    from zoo_kernels.predict import RECOMMENDED
    model, x, y = bilinear_problem(n=60, h=6)  # feature width 6 < RECOMMENDED's 8
    kw = dict(lr=0.05, batch_size=8, max_steps=RECOMMENDED["warmup_steps"] + 20, momentum=0.9, paths=2, seed=2)
    a = predict_training_time(model, (x, y), method="recommended", **kw)
    b = predict_after_warmup(model, (x, y), **kw, **dict(RECOMMENDED, feature_rank=6))
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
    assert a.warmup_steps == RECOMMENDED["warmup_steps"] and np.isfinite(a.loss_curve).all()
    assert RECOMMENDED["feature_norm"] == "fixed" and RECOMMENDED["subset"] == "auto"
    for bad, name in [(dict(k=64), "`k`"), (dict(subset=30), "`subset`"), (dict(eval_every=1, warmup_steps=5),
                                                                           "`warmup_steps`")]:
        with pytest.raises(ValueError, match=f"sets {name} itself"):
            predict_training_time(model, (x, y), method="recommended", **kw | bad)
    with pytest.raises(ValueError, match="`max_steps` must be an int above"):
        predict_training_time(model, (x, y), method="recommended", **kw | dict(max_steps=100))
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        predict_training_time("resnet", (x, y), method="recommended", **kw)
    assert a.holdout_loss_curve is None  # M = max(N/20, 20 per class) is all 60 samples: no holdout rows


def test_recommended_warmup_is_at_least_half_an_epoch(monkeypatch):
    """K = max(100, ceil(N / 2B)) real steps (pre-registered test on N = 40,000); 100 on the N ≈ 4,000 validation;
    a warning beyond the largest N it was tested on."""
    from zoo_kernels import predict as P
    assert P.recommended_warmup(4000, 64) == 100 and P.recommended_warmup(4000, 32) == 100
    assert P.recommended_warmup(40000, 64) == 313 and P.recommended_warmup(40001, 64) == 313
    assert P.recommended_warmup(40000, 8) == 2500
    assert P.recommended_scope(40000, 64) is None and P.recommended_scope(4000, 32) is None
    assert P.recommended_scope(200000, 64) is None  # registered test at N = 200,000
    assert "tested on up to 200000 samples" in P.recommended_scope(400000, 64)
    assert "(half an epoch, 39% of the 20000-step run it predicts)" in P.recommended_scope(1000000, 64, 20000)
    model, x, y = bilinear_problem(n=1800, h=6)  # B = 6: K = 150 real steps
    kw = dict(lr=0.05, batch_size=6, max_steps=160, momentum=0.9, paths=1, seed=2)
    with pytest.raises(ValueError, match="runs the first 150 steps for real"):
        P.predict_training_time(model, (x, y), method="recommended", **kw | dict(max_steps=150))
    with pytest.raises(ValueError, match="`batch_size` must be an int in"):
        P.predict_training_time(model, (x, y), method="recommended", **kw | dict(batch_size=0))
    monkeypatch.setattr(P, "RECOMMENDED_TESTED_N", 1000)
    with pytest.warns(RuntimeWarning, match="tested on up to 1000 samples; on these 1800 its warm-up is 150"):
        a = P.predict_training_time(model, (x, y), method="recommended", **kw)
    assert a.warmup_steps == 150 and len(a.loss_curve) == 161
    b = predict_after_warmup(model, (x, y), **kw, **dict(P.RECOMMENDED, feature_rank=6, warmup_steps=150),
                             holdout=200, holdout_self=True).from_holdout()
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)


def test_recommended_method_reads_the_curves_off_its_holdout_rows():
    """With N > M, method="recommended" adds min(200, N − M) holdout rows with their own block and reads its curves
    off them (predict.RECOMMENDED_HOLDOUT; the accuracy stays the subset's); holdout=H sets their number."""
    from zoo_kernels import predict_training_time
    from zoo_kernels.predict import RECOMMENDED, recommended_holdout
    model, x, y = bilinear_problem(n=150, h=6, C=2)  # M = 40, so 110 holdout rows
    assert recommended_holdout(150, 2) == 110 and recommended_holdout(150, 2, 7) == 7
    kw = dict(lr=0.05, batch_size=8, max_steps=RECOMMENDED["warmup_steps"] + 20, momentum=0.9, paths=2, seed=2)
    a = predict_training_time(model, (x, y), method="recommended", **kw)
    b = predict_after_warmup(model, (x, y), **kw, **dict(RECOMMENDED, feature_rank=6), holdout=110,
                             holdout_self=True).from_holdout()
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
    np.testing.assert_array_equal(a.accuracy_curve, b.accuracy_curve)
    np.testing.assert_array_equal(a.accuracy_curve, a.subset_accuracy_curve)
    np.testing.assert_array_equal(a.subset_loss_curve, b.subset_loss_curve)
    np.testing.assert_array_equal(a.loss_curve[100:], a.holdout_loss_curve[100:])
    assert np.isfinite(a.holdout_gap(110))  # the flag's gap, without the own block
    c = predict_training_time(model, (x, y), method="recommended", holdout=30, **kw)
    assert c.holdout_loss_curve is not None and not np.array_equal(c.loss_curve, a.loss_curve)


def test_progress_shows_the_warmup(capsys):
    model, x, y = bilinear_problem()
    kw = dict(lr=0.1, batch_size=4, max_steps=8, warmup_steps=5, k=16, paths=1)
    predict_after_warmup(model, (x, y), progress=True, **kw)
    assert "warm-up (real steps)" in capsys.readouterr().err
    predict_after_warmup(model, (x, y), **kw)
    assert "warm-up" not in capsys.readouterr().err  # quiet by default
