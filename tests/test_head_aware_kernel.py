"""ops.head_aware_sgd_steps (the fused head-aware SGD steps) against its autograd reference and the torch loop."""
import numpy as np
import pytest
import torch

from conftest import bilinear_problem
from zoo_kernels import ops
from zoo_kernels.calibrate import HeadAwarePredictor
from zoo_kernels.warmstart import predict_after_warmup

pytestmark = pytest.mark.usefixtures("one_thread")


def problem(seed, *, n=30, r=3, k=20, D=5, C=4, P=3, E=7, B=6, basis=True, radius=True, offset=True,
            dtype=torch.float64, short_step=None):
    g = torch.Generator().manual_seed(seed)
    r = r if basis else D
    S = (torch.randn(n, r, k, generator=g, dtype=torch.float64) / k ** 0.5).to(dtype)
    U = torch.linalg.qr(torch.randn(D, r, generator=g, dtype=torch.float64))[0].contiguous() if basis else None
    phi0 = torch.randn(n, D, generator=g, dtype=torch.float64)
    rad = phi0.norm(dim=1) * (1 + torch.rand(n, generator=g, dtype=torch.float64)) if radius else None
    V = torch.randn(n, r, generator=g, dtype=torch.float64) if offset else None
    y = torch.randint(0, C, (n,), generator=g)
    idx = torch.randint(0, n, (P, E, B), generator=g)
    sizes = torch.full((E,), B)
    if short_step is not None:  # an epoch's last, smaller batch (the padding must be ignored)
        sizes[short_step] = B // 2
    lrs = torch.rand(E, generator=g, dtype=torch.float64) * 0.5 + 0.1
    state = [torch.randn(P, C, D, generator=g, dtype=torch.float64) * 0.3, torch.randn(P, C, generator=g,
             dtype=torch.float64) * 0.1, torch.randn(P, k, generator=g, dtype=torch.float64), torch.rand(P, generator=g,
                                                                                                  dtype=torch.float64)]
    bufs = [torch.randn_like(t) for t in state]
    return (S, U, phi0, rad, V, y, idx, sizes, lrs), state, bufs


def run(fn, args, state, bufs, dead=None, **kw):
    state, bufs = [t.clone() for t in state], [t.clone() for t in bufs]
    dead = torch.full((state[0].shape[0],), -1) if dead is None else dead.clone()
    fn(*args, state, bufs, dead, **kw)
    return state, bufs, dead


CASES = [dict(momentum=0.9), dict(momentum=0.0), dict(momentum=0.7, dampening=0.3, weight_decay=1e-2),
         dict(momentum=0.9, nesterov=True), dict(momentum=0.9, loss="mse"), dict(momentum=0.9, head_trainable=False),
         dict(momentum=0.9, started=False)]
LAYOUTS = [dict(), dict(basis=False), dict(radius=False), dict(offset=False), dict(short_step=3)]


@pytest.mark.parametrize("hp", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_matches_the_autograd_reference(hp, layout):
    seed = int(torch.randint(0, 2 ** 31, ()))  # fresh inputs on every run
    args, state, bufs = problem(seed, **layout)
    if not hp.get("started", True):  # torch keeps no buffer before the first step: whatever is there is ignored
        bufs = [torch.full_like(t, float("nan")) for t in bufs]
    got = run(ops.head_aware_sgd_steps, args, state, bufs, **hp)
    want = run(ops.reference_head_aware_sgd_steps, args, state, bufs, **hp)
    for a, b, name in zip(got[0] + got[1], want[0] + want[1], ("W", "b", "theta", "c", "bW", "bb", "btheta", "bc")):
        if name in ("c", "bc") and not layout.get("offset", True):
            continue  # without an offset c is not a parameter
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} (seed {seed})")
    assert (got[2] == -1).all()
    assert not torch.equal(got[0][2], state[2])  # the steps did move theta


def test_float32_sketch_within_float32_rounding():
    args, state, bufs = problem(11)
    args32 = (args[0].float(),) + args[1:]
    got = run(ops.head_aware_sgd_steps, args32, state, bufs, momentum=0.9)
    want = run(ops.reference_head_aware_sgd_steps, args, state, bufs, momentum=0.9)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_divergence_is_recorded_and_the_path_frozen():
    args, state, bufs = problem(3, E=12, radius=False)
    lrs = torch.full_like(args[-1], 1e200)
    args = args[:-1] + (lrs,)
    got = run(ops.head_aware_sgd_steps, args, state, bufs, momentum=0.9)
    want = run(ops.reference_head_aware_sgd_steps, args, state, bufs, momentum=0.9)
    assert (got[2] >= 0).all() and torch.equal(got[2], want[2])
    skip = torch.tensor([0, -1, 0])  # paths already dead on entry are not touched
    kept = run(ops.head_aware_sgd_steps, args, state, bufs, dead=skip, momentum=0.9)
    assert torch.equal(kept[0][0][0], state[0][0]) and torch.equal(kept[0][0][2], state[0][2])


@pytest.mark.parametrize("change, match", [
    (lambda a: (a[0][:, :, :-1].contiguous(),) + a[1:], "basis must be|state shapes"),
    (lambda a: a[:5] + (a[5] + 100,) + a[6:], "labels must be in"),
    (lambda a: a[:6] + (a[6] + 1000,) + a[7:], "batch indices"),
    (lambda a: a[:7] + (a[7] * 0,) + a[8:], "sizes must be"),
    (lambda a: (a[0].transpose(1, 2),) + a[1:], "sketch must be a contiguous"),
])
def test_bad_input_names_the_argument(change, match):
    args, state, bufs = problem(5)
    with pytest.raises(RuntimeError, match=match):
        run(ops.head_aware_sgd_steps, change(args), state, bufs, momentum=0.9)


def test_bad_loss_is_refused():
    args, state, bufs = problem(5)
    with pytest.raises(RuntimeError, match="loss must be"):
        run(ops.head_aware_sgd_steps, args, state, bufs, momentum=0.9, loss="hinge")


@pytest.mark.parametrize("kw", [
    dict(sampling="epoch", feature_norm="fixed", eval_every=4, feature_rank=3),
    dict(sampling="stream", feature_norm="linear", eval_every=1, weight_decay=1e-3, nesterov=True),
    dict(sampling="stream", feature_norm="fixed", eval_every=5, dampening=0.2, schedule="cosine", feature_rank=4),
])
def test_predictor_fused_equals_the_torch_loop(kw):
    """HeadAwarePredictor's curves with the kernel between evaluations and with the step-by-step torch loop."""
    model, x, y = bilinear_problem(n=40)
    rank = kw.pop("feature_rank", None)
    p = HeadAwarePredictor(model, (x, y), k=24, seed=1, subset=30, holdout=10, feature_rank=rank)
    common = dict(lr=0.2, batch_size=8, max_steps=37, momentum=0.9, paths=3, measure_time=False,
                  holdout_self=True, **kw)
    a, b = p.predict(fused=True, **common), p.predict(fused=False, **common)
    for name in ("loss_curve", "accuracy_curve", "holdout_loss_curve", "holdout_plain_loss_curve", "feature_shift"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12, err_msg=name)
    assert a.loss_curve[-1] < 0.9 * a.loss_curve[0]


def test_warm_start_with_velocity_fused_equals_the_torch_loop():
    """The recommended configuration's path: a warm-up's momentum buffers (c, V) enter the kernel."""
    model, x, y = bilinear_problem(n=40)
    kw = dict(lr=0.1, batch_size=8, max_steps=30, warmup_steps=6, momentum=0.9, paths=2, k=24, subset=30,
              holdout=10, holdout_self=True, feature_norm="fixed", eval_every=3, sampling="stream")
    a = predict_after_warmup(model, (x, y), **kw)
    b = predict_after_warmup(model, (x, y), **kw, fused=False)
    np.testing.assert_allclose(a.loss_curve, b.loss_curve, rtol=1e-9)
    np.testing.assert_allclose(a.holdout_loss_curve[6:], b.holdout_loss_curve[6:], rtol=1e-9)


def test_divergence_is_located_as_in_the_torch_loop():
    model, x, y = bilinear_problem(n=40)
    p = HeadAwarePredictor(model, (x, y), k=24, seed=1)
    common = dict(lr=1e6, batch_size=8, max_steps=80, momentum=0.9, paths=2, measure_time=False,
                  on_divergence="truncate", eval_every=7)
    a, b = p.predict(fused=True, **common), p.predict(fused=False, **common)
    assert a.diverged_at is not None and a.diverged_at == b.diverged_at
    np.testing.assert_array_equal(np.isnan(a.loss_curve), np.isnan(b.loss_curve))
    with pytest.raises(FloatingPointError, match="diverged at step"):
        p.predict(fused=True, **{**common, "on_divergence": "raise"})


def test_evaluation_steps_are_even_then_geometric():
    from zoo_kernels.predict import evaluation_steps
    assert evaluation_steps(45, 10) == [0, 10, 20, 30, 40, 45]
    at = evaluation_steps(20000, 10, 0.01)
    gaps = np.diff(at)
    assert at[0] == 0 and at[-1] == 20000 and (gaps > 0).all()
    assert (gaps[np.asarray(at[:-1]) < 1000] == 10).all()  # max(10, 1 % of t)
    assert gaps[-2] == int(0.01 * at[-3]) and len(at) < 500  # against 2,001 evenly spaced


def test_eval_growth_changes_only_where_the_curves_are_read():
    """The dynamics are exact between evaluations: at the steps both schedules evaluate, the curves agree."""
    model, x, y = bilinear_problem(n=40)
    p = HeadAwarePredictor(model, (x, y), k=24, seed=1, subset=30)
    common = dict(lr=0.05, batch_size=8, max_steps=400, momentum=0.9, paths=2, measure_time=False, eval_every=2)
    a, b = p.predict(eval_growth=0.0, **common), p.predict(eval_growth=0.05, **common)
    from zoo_kernels.predict import evaluation_steps
    both = [t for t in evaluation_steps(400, 2, 0.05) if t % 2 == 0]  # evaluated by both
    assert len(both) > 40 and both[-1] > 300
    np.testing.assert_allclose(a.loss_curve[both], b.loss_curve[both], rtol=1e-9)
    c = p.predict(eval_growth=0.05, fused=False, **common)
    np.testing.assert_allclose(b.loss_curve, c.loss_curve, rtol=1e-9)
    with pytest.raises(ValueError, match="eval_growth"):
        p.predict(eval_growth=-0.1, **common)


def test_a_loss_blowing_up_while_finite_is_a_divergence():
    """A path whose loss passes BLOWUP × its initial loss has diverged although its state is still finite: found at
    the first evaluation past the bound, in the kernel and in the torch loop alike."""
    from zoo_kernels.dynamics import BLOWUP
    model, x, y = bilinear_problem(n=40)
    p = HeadAwarePredictor(model, (x, y), k=24, seed=1)
    common = dict(lr=1.0, batch_size=8, max_steps=80, momentum=0.9, paths=2, measure_time=False, eval_every=7)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        a = p.predict(fused=True, on_divergence="truncate", **common)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        b = p.predict(fused=False, on_divergence="truncate", **common)
    d = a.diverged_at
    assert d == b.diverged_at and 0 < d < 80 and d % 7 == 1  # NaN after the last evaluation within the bound
    assert np.isfinite(a.loss_curve[:d]).all() and np.isnan(a.loss_curve[d:]).all()
    assert a.loss_curve[:d].max() <= BLOWUP * a.loss_curve[0]
    for fused in (True, False):
        with pytest.raises(FloatingPointError, match=f"the loss passed {BLOWUP:g}× its initial value"):
            p.predict(fused=fused, on_divergence="raise", **common)
