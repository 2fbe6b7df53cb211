"""Warm-started prediction: spend K real SGD steps, then linearize at w_K.

A fine-tuned network's kernel changes fastest in its first steps (the new head grows, the features turn toward
the target's classes); a linearization taken after them drifts less. `predict_after_warmup` runs the first K
steps of real training (torch.optim.SGD on a copy of the model, minibatches of a seeded stream), then integrates
the head-aware model (zoo_kernels.calibrate.HeadAwarePredictor) linearized at w_K from the optimizer's state:
the head's momentum buffers exactly, the backbone's as its feature-space image J_φ b on the subset (exact, for any
sketch). The curves join: steps 0..K are the measured losses and
accuracies of the M subset samples, steps K.. the prediction. Cost: K real steps, K + 1 subset evaluations and the
head-aware setup at w_K. Weight decay is torch's (toward 0) during the warm-up and the head-aware model's
(toward w_K for the backbone) after it.
"""
import copy
import itertools
import time
import types

import numpy as np
import torch
from torch.func import functional_call, jvp
from tqdm.auto import tqdm

from .calibrate import HeadAwarePredictor, _last_linear, feature_model, projected_features
from .curvature import curvature_along
from .dynamics import _accuracy, _batch_stream, _loss_and_grad, interpolate_loss
from .predict import (Prediction, _load_data, _outputs, check_eval_every, check_sketch_method, evaluation_steps,
                      subset_indices)

__all__ = ["predict_after_warmup", "feature_velocity"]


def feature_velocity(model, optimizer, predictor, batch_size=32, head=None):
    """The momentum state of `optimizer` (torch.optim.SGD over `model`) as the head-aware model's velocity:
    (head weight buffer, head bias buffer, V), float64, where V = J_φ b is the backbone buffer b moved into the
    predictor's feature space, on its M samples: (M, r) in the coordinates of its feature directions U (r =
    feature_rank), (M, D) without them, (M, 0) for a frozen backbone. None when the optimizer holds no momentum
    buffers (momentum 0, or no step yet). Exact (one forward-mode pass over the M samples, `batch_size` at a time),
    whatever the sketch."""
    name = head or _last_linear(model)
    lin = model.get_submodule(name)
    state = lambda p: optimizer.state.get(p, {}).get("momentum_buffer")  # noqa: E731
    if state(lin.weight) is None:
        return None
    fm = feature_model(model, name).eval()
    if predictor.U is not None:
        fm = projected_features(fm, predictor.U)
    params = {n: p.detach() for n, p in fm.named_parameters() if p.requires_grad}
    bufs = {n: state(model.get_parameter(n.removeprefix("0.") if predictor.U is not None else n)) for n in params}
    if any(b is None for b in bufs.values()):
        raise ValueError("`optimizer` has no momentum buffer for some trainable backbone parameter")
    M = len(predictor.x)
    if not params or predictor.S_r is None:
        V = torch.zeros(M, 0, dtype=torch.float64)
    else:
        dev = next(iter(params.values())).device
        with torch.no_grad():
            V = torch.cat([jvp(lambda q: functional_call(fm, q, (predictor.x[i:i + batch_size].to(dev),)), (params,),
                               (bufs,))[1].double().cpu() for i in range(0, M, batch_size)])
    bias = state(lin.bias).detach().double().cpu() if lin.bias is not None else torch.zeros(lin.out_features)
    return state(lin.weight).detach().double().cpu(), bias.double(), V


@torch.no_grad()
def _subset_eval(model, x, y, loss, batch_size):
    """(mean loss, accuracy) of the model (eval mode) on the subset, with the predictors' loss definitions."""
    was = model.training
    f = _outputs(model.eval(), x, batch_size)  # float64, on the CPU, as the labels (_load_data)
    model.train(was)
    ell, _ = _loss_and_grad(f, y, torch.nn.functional.one_hot(y, f.shape[1]).double(), loss)
    return float(ell.mean()), float(_accuracy(f, y))


def _real_loss(out, y, loss):
    if loss == "ce":
        return torch.nn.functional.cross_entropy(out, y)
    return 0.5 * (out - torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)).square().sum(1).mean()


def predict_after_warmup(model, data, *, lr, batch_size, max_steps, warmup_steps, momentum=0.0, dampening=0.0,
                         nesterov=False, weight_decay=0.0, loss="ce", subset=None, k=512, seed=0,
                         feature_norm="linear", feature_rank=None, paths=4, sampling="epoch", eval_every=1,
                         eval_growth=0.0,
                         on_divergence="raise", eval_batch_size=32, sketch_method="dense", curvature=None,
                         holdout=0, holdout_self=False, fused=True, warmup_eval_rows=2000, progress=False):
    """Prediction of `max_steps` SGD steps whose first `warmup_steps` are run for real (see the module doc).

    The arguments are HeadAwarePredictor's and its predict()'s; warmup_steps = 0 is the plain head-aware
    prediction. `model` is not modified. Prediction.warmup_steps = K; its step_seconds is the median measured
    warm-up step (K ≥ 3), and its feature_shift is NaN over the warm-up (it is relative to the features at w_K).
    eval_every=E and eval_growth=g space the warm-up's subset evaluations as the prediction's
    (predict.evaluation_steps: max(E, g·t) apart, interpolated in between; with g = 0.01 the spacing first exceeds E
    = 10 after step 1,100, beyond every validated warm-up).
    curvature="along": integrate twice, the second time with the second-order term along the direction of the first
    run's backbone displacement (zoo_kernels.curvature; measured worse than None on MiniZoo's long runs, see
    docs/PREDICT.md); None: the linearized model only.
    holdout=H: Prediction.holdout_loss_curve, the loss of H samples outside the subset moved by the same dynamics
    (HeadAwarePredictor's holdout), NaN over the warm-up. fused: HeadAwarePredictor.predict's (the compiled steps).
    warmup_eval_rows=R: the warm-up's curves are measured on R random rows of the subset (all M where M <= R, as in
    every validated case; None: all M): at N = 200,000 (M = 10,000) the M-row evaluations were 76 % of the cost.
    Fewer rows make a noisier estimate of the full set's loss where it is small (docs/PREDICT.md, Cost)."""
    if curvature not in (None, "along"):
        raise ValueError(f"`curvature` must be None or 'along', got {curvature!r}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be an int >= 0, got {warmup_steps!r}")
    if warmup_eval_rows is not None and not (isinstance(warmup_eval_rows, int) and not isinstance(
            warmup_eval_rows, bool) and warmup_eval_rows >= 1):
        raise ValueError(f"`warmup_eval_rows` must be None or an int >= 1, got {warmup_eval_rows!r}")
    if not isinstance(max_steps, int) or max_steps <= warmup_steps:
        raise ValueError(f"`max_steps` must be an int > warmup_steps ({warmup_steps}), got {max_steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"`lr` must be a positive number, got {lr!r}")
    check_sketch_method(sketch_method)
    check_eval_every(eval_every, eval_growth)
    start = time.perf_counter()
    K = warmup_steps
    checked = types.SimpleNamespace()  # the predictors' checks of model, data, loss, subset; the subset itself
    _load_data(checked, model, data, loss, subset, seed, progress)
    N = checked.n_samples
    if not isinstance(batch_size, int) or not 1 <= batch_size <= N:
        raise ValueError(f"`batch_size` must be an int in [1, {N}] (the number of samples), got {batch_size!r}")
    warm = copy.deepcopy(model)
    evals, losses, accs, step_times, opt = [], [], [], [], None  # subset loss/accuracy at the steps `evals`
    if K:
        sx, sy = checked.x, checked.y
        if warmup_eval_rows is not None and len(sx) > warmup_eval_rows:  # the first R of the subset's random order
            pos = torch.searchsorted(checked.subset_rows, subset_indices(N, warmup_eval_rows, seed))
            sx, sy = sx[pos.to(sx.device)], sy[pos]
        dev = next(warm.parameters()).device
        opt = torch.optim.SGD([p for p in warm.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                              dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
        stream = _batch_stream(N, batch_size, sampling, torch.Generator().manual_seed(seed + 1))
        batches = checked.samples.batches(itertools.islice(stream, K))  # read ahead with the Samples' workers
        measured = set(evaluation_steps(K, eval_every, eval_growth))  # (K itself: the prediction's first point)
        warm.train()
        for t in tqdm(range(K), desc="warm-up (real steps)", unit="step", disable=not progress):
            if t in measured:  # as in the prediction: evaluation_steps, interpolated in between
                ell, acc = _subset_eval(warm, sx, sy, loss, eval_batch_size)
                evals.append(t), losses.append(ell), accs.append(acc)
            xb, yb = next(batches)
            t0 = time.perf_counter()
            out = warm(xb.to(dev))
            opt.zero_grad(set_to_none=True)
            batch_loss = _real_loss(out, yb.to(dev), loss)
            if not torch.isfinite(batch_loss):
                raise FloatingPointError(f"real training diverged during the warm-up, at step {t} (lr {lr}): "
                                         "lower the learning rate")
            batch_loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t0)
    pred = HeadAwarePredictor(warm, checked.samples, loss=loss, k=k, subset=subset, seed=seed,
                              eval_batch_size=eval_batch_size, feature_rank=feature_rank, sketch_method=sketch_method,
                              holdout=holdout, progress=progress)
    velocity = feature_velocity(warm, opt, pred, eval_batch_size) if opt is not None and momentum else None
    settings = dict(lr=lr, batch_size=batch_size, max_steps=max_steps - K, momentum=momentum, dampening=dampening,
                    nesterov=nesterov, weight_decay=weight_decay, paths=paths, seed=seed, sampling=sampling,
                    on_divergence=on_divergence, eval_every=eval_every, eval_growth=eval_growth,
                    feature_norm=feature_norm,
                    measure_time=K < 3, velocity=velocity, holdout_self=holdout_self, fused=fused)
    q = pred.predict(**settings, track_coefficients=curvature is not None)
    if curvature is not None and pred.S_r is not None:
        if q.coefficients is None:
            raise FloatingPointError("the linearized prediction diverged on every path: no direction for curvature")
        bend = curvature_along(warm, pred, q.coefficients, batch_size=eval_batch_size)
        q = pred.predict(**settings, curvature=bend)
        q.cost_seconds = time.perf_counter() - start  # both integrations and the curvature
    if not K:
        return q
    tt, evals = np.arange(K), evals + [K]  # the prediction's first point is the subset at w_K
    losses = interpolate_loss(evals, losses + [q.loss_curve[0]], tt)
    accs = np.interp(tt, evals, accs + [q.accuracy_curve[0]])
    per_path = (None if q.path_losses is None else
                np.concatenate([np.broadcast_to(losses, (q.path_losses.shape[0], K)), q.path_losses], 1))
    shift = nan_over_warmup(q.feature_shift, K)
    step_s = float(np.median(step_times)) if K >= 3 else q.step_seconds
    return Prediction(loss_curve=np.concatenate([losses, q.loss_curve]),
                      accuracy_curve=np.concatenate([accs, q.accuracy_curve]), n_samples=N,
                      batch_size=batch_size, lr=lr, momentum=momentum, step_seconds=step_s,
                      cost_seconds=time.perf_counter() - start, loss=loss, path_losses=per_path,
                      diverged_at=None if q.diverged_at is None else q.diverged_at + K, feature_shift=shift,
                      warmup_steps=K, holdout_loss_curve=nan_over_warmup(q.holdout_loss_curve, K),
                      holdout_accuracy_curve=nan_over_warmup(q.holdout_accuracy_curve, K),
                      holdout_plain_loss_curve=nan_over_warmup(q.holdout_plain_loss_curve, K))


def nan_over_warmup(curve, K):
    """A curve of the predicted steps K.. prefixed with NaN for the K real steps (None stays None)."""
    return None if curve is None else np.concatenate([np.full(K, np.nan), curve])
