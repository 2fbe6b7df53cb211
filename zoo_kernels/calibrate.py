"""Corrections of the linearization drift of `predict_training_time`.

Fine-tuning with a **new, randomly initialized head** is where the plain linearization f_w ≈ f_w0 + J (w − w0)
drifts first: at w0 the head is small, so the backbone's part of the NTK, which scales with the head's norm, is
small too; as the head grows the real network speeds up and the fixed-Θ prediction falls behind (see
docs/PREDICT.md and benchmarks/results/). Two corrections:

* `HeadAwarePredictor` (no real training): linearize only the **backbone**, keep the last linear layer (the head)
  exact. With φ(x) the head's input (the penultimate features),

      f(x) = W φ_t(x) + b,   φ_t(x) = φ_0(x) + J_φ(x) (w − w0)      (J_φ: the features' Jacobian at w0)

  is bilinear in (W, w). Its SGD runs exactly in (head, feature) space: per step the head gets its true gradient
  and the features of all N samples move by Θ_φ[:, batch] · (∂ℓ/∂φ of the batch), where Θ_φ = J_φ J_φᵀ
  is the feature NTK (N·D × N·D), used through a sketch S_φ (N·D × k). PyTorch SGD semantics (momentum, dampening,
  Nesterov, weight decay: exact for the head, toward w0 for the backbone, schedules) carry over as in
  zoo_kernels.dynamics, the backbone's velocity being kept in feature space (J_φ v). The cost is a sketch of D
  outputs per sample instead of C (D = the feature width), and O(N·D·k) per step.
  It captures the head-growth speed-up; it does not capture the saturation of normalized features, so at large
  learning rates it can blow up where the real network does not (the prediction then raises FloatingPointError).
* `calibrate_time` (a few real steps): fit a time-rescaling factor s so that the predicted curve L̂(s·t) matches
  the first `k` real steps' full-training-set losses, and return the rescaled prediction. Its cost is k real
  SGD steps plus k evaluations of the training loss (see `calibration_cost`).
"""
import copy
import math
import time

import numpy as np
import torch
from torch import nn

from .dynamics import (SGD, _accuracy, _loss_and_grad, check_divergence_mode, coarsen, expand_curve, expand_curves,
                       interpolate_loss, mark_blowup, mark_divergence, momentum_gain, path_batches, BLOWUP)
from .predict import (Prediction, Predictor, _load_data, _outputs, check_eval_every, check_sketch_method,
                      evaluation_steps, subset_batch_size, subset_indices)
from . import ops
from .sketch import sketch_jacobian

__all__ = ["HeadAwarePredictor", "calibrate_time", "fit_time_scale", "rescale_curve", "calibration_cost"]


def _last_linear(model):
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ValueError("the model has no nn.Linear layer (the head); HeadAwarePredictor needs one")
    return name


def feature_model(model, head=None):
    """A copy of `model` with its head (the last nn.Linear, or the submodule named `head`) replaced by Identity.

    The copy's output is then the head's input: this assumes the head is the last operation of forward (as in
    torchvision classifiers and the MiniZoo nets)."""
    name = head or _last_linear(model)
    fm = copy.deepcopy(model)
    parent, _, leaf = name.rpartition(".")
    setattr(fm.get_submodule(parent) if parent else fm, leaf, nn.Identity())
    return fm


def _check_head_is_last(model, x, f0, head_name, batch_size):
    """The head-aware split assumes f(x) = head(features(x)): check it against the model's own outputs."""
    was = model.training
    ref = _outputs(model.eval(), x, batch_size)
    model.train(was)
    if ref.shape != f0.shape or not torch.allclose(ref, f0, rtol=1e-3, atol=1e-4 * (1 + float(ref.abs().max()))):
        raise ValueError(f"the model's outputs are not `{head_name}` applied to its input: HeadAwarePredictor needs "
                         "the head (the last nn.Linear, or `head=`) to be the last operation of forward")


def feature_directions(phi, r):
    """(D, r) orthonormal: the top-r eigenvectors of the features' second moment φᵀφ / N (not centered, so
    the mean feature direction, which dominates φᵢᵀφⱼ, is kept)."""
    phi = phi.double().cpu()
    _, vecs = torch.linalg.eigh(phi.T @ phi / phi.shape[0])
    return vecs[:, -r:].flip(1).contiguous()


def projected_features(fm, U):
    """fm followed by the frozen projection onto the columns of U (D, r): the features' r coordinates Uᵀφ."""
    w = next(p for p in fm.parameters() if p.requires_grad)
    proj = nn.Linear(U.shape[0], U.shape[1], bias=False, device=w.device, dtype=w.dtype)
    proj.weight.data.copy_(U.T.to(proj.weight.dtype))
    proj.weight.requires_grad_(False)
    return nn.Sequential(fm, proj)


class HeadAwarePredictor(Predictor):
    """Training curves of SGD on the model with a linearized backbone and an exact linear head (see module doc).

    Same interface as Predictor (predict, recommend, step_seconds); `subset=M` integrates on M random samples with
    the noise-matched batch size, as Predictor does. k is the width of the feature-Jacobian sketch (dense JL: the
    Kronecker sketch is cheaper but its larger variance inflates Θ_φ's spectrum and speeds the prediction up).
    eval_batch_size: inputs per chunk of the sketch; its memory grows with D (the feature width) times this.
    feature_rank=r < D: the backbone moves the features only within their r top-energy directions
    (`feature_directions`), so the sketch needs r instead of D backward passes per sample (D/r × cheaper setup;
    for wide features, D = 512-2048, the head-aware setup is otherwise D/C × the plain one's); None = all D.
    """

    def __init__(self, model, data, *, loss="ce", k=512, subset=None, seed=0, sketch_method="dense",
                 eval_batch_size=32, head=None, feature_rank=None, holdout=0, progress=False):
        start = time.perf_counter()
        check_sketch_method(sketch_method)
        _load_data(self, model, data, loss, subset, seed, progress)
        self.n_train = M = self.subset
        if not (isinstance(holdout, int) and not isinstance(holdout, bool) and 0 <= holdout <= self.n_samples - M):
            raise ValueError(f"`holdout` must be an int in [0, {self.n_samples - M}] (the samples outside the "
                             f"subset), got {holdout!r}")
        if holdout:  # rows M.. : samples the dynamics never train on, moved by the same θ (Prediction.holdout_*)
            hx, hy = self.samples.take(subset_indices(self.n_samples, M + holdout, seed, offset=M), progress,
                                       "reading the holdout")
            self.x, self.y = torch.cat([self.x, hx]), torch.cat([self.y, hy.cpu()])
        head_name = head or _last_linear(model)
        lin = model.get_submodule(head_name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"`head` {head_name!r} is not an nn.Linear")
        fm = feature_model(model, head_name).eval()
        self.phi0 = _outputs(fm, self.x, eval_batch_size)  # (M, D) float64
        self.W0 = lin.weight.detach().double().cpu().clone()
        self.b0 = (lin.bias.detach().double().cpu().clone() if lin.bias is not None
                   else torch.zeros(lin.out_features, dtype=torch.float64))
        self.head_trainable = lin.weight.requires_grad
        self.f0 = self.phi0 @ self.W0.T + self.b0
        _check_head_is_last(model, self.x[:8], self.f0[:8], head_name, eval_batch_size)
        C = self.f0.shape[1]
        if self.y.min() < 0 or self.y.max() >= C:
            raise ValueError(f"`data` labels must be integers in [0, {C}) for a model with {C} outputs")
        D = self.phi0.shape[1]
        if feature_rank is not None and not (isinstance(feature_rank, int) and 1 <= feature_rank <= D):
            raise ValueError(f"`feature_rank` must be None or an int in [1, {D}] (the feature width), "
                             f"got {feature_rank!r}")
        self.feature_rank = feature_rank or D
        if any(p.requires_grad for p in fm.parameters()):
            if self.feature_rank < D:  # the features move only within their top-energy directions U
                U = feature_directions(self.phi0[:M], self.feature_rank)  # (D, r)
                S = sketch_jacobian(projected_features(fm, U), self.x, k, method=sketch_method, seed=seed,
                                    batch_size=eval_batch_size, progress=progress)  # (M, r, k)
                self.S_r, self.U = S.cpu().contiguous(), U  # the sketch is U S_r: kept factored (r/D the work)
            else:
                self.S = sketch_jacobian(fm, self.x, k, method=sketch_method, seed=seed, batch_size=eval_batch_size,
                                         progress=progress)  # (M, D, k)
        else:  # a frozen backbone: only the head trains (a linear probe)
            self.S = None
        self.method, self.k, self.sketch_method = "head-aware", k, sketch_method
        self.setup_seconds = time.perf_counter() - start
        self._step_seconds = {}

    @property
    def S(self):
        """The feature-Jacobian sketch (M, D, k) in the model's dtype (None for a frozen backbone). With
        feature_rank r < D it is stored factored, U (D, r) times S_r (M, r, k), and expanded here on demand."""
        if self.U is None or self.S_r is None:
            return self.S_r
        return torch.einsum("dr,nrk->ndk", self.U.to(self.S_r.dtype), self.S_r)

    @S.setter
    def S(self, value):  # a full (M, D, k) sketch (or None)
        self.S_r = None if value is None else value.cpu().contiguous()
        self.U = None

    def _simulate(self, sgd, max_steps, paths, seed, sampling, on_divergence="raise", eval_every=1, eval_growth=0.0,
                  feature_norm="linear", velocity=None, curvature=None, track=False, holdout_self=False, fused=True):
        """All Monte-Carlo paths at once (leading dimension P; minibatches from dynamics.path_batches).

        The backbone's displacement is kept as sketch coordinates θ (φ_t = φ_0 + S θ_t, exactly the feature-space
        recursion), so a step touches only the minibatch's rows of S; the full-set loss, which streams all of S,
        is evaluated at evaluation_steps(max_steps, eval_every, eval_growth) and interpolated in between (log-linear
        for the loss; a divergence is then located to within the spacing).
        curvature (zoo_kernels.curvature.Curvature): φ_t = φ_0 + S θ + a S'θ − ½ a² H with a = gᵀθ.
        track: also return A (M, r), the mean over the surviving paths of the coefficients with θ = Sᵀ A (the
        gradients' feature-space coefficients, accumulated as θ is; None when no path survives).
        holdout_self: the holdout rows also get their own kernel block at the full data's weight, an offset
        −η κ/N · K_hh ∂ℓ_h/∂φ_h per step (κ: momentum's steady-state gain), applied at each evaluation for the
        steps until the next (what a sample of N gets from its own visits, which the subset's rows get N/M× of).
        fused: the steps between evaluations run in the compiled kernel ops.head_aware_sgd_steps (without curvature
        and track); False: this loop in torch (the same dynamics; the kernel is its float64 twin)."""
        N, D = self.phi0.shape  # rows n_train.. are the holdout, never in a minibatch
        y, n = self.y, self.n_train
        C = self.W0.shape[0]
        onehot = torch.nn.functional.one_hot(y, C).double()
        P = 1 if sgd.batch_size == n else paths
        batches = path_batches(n, sgd.batch_size, sampling, seed, P, max_steps)
        shape = (P, max_steps + 1)
        losses, accs, shift = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        held, held_acc, held_plain = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        spread = float((self.phi0[:n] - self.phi0[:n].mean(0)).square().sum().sqrt()) or 1.0
        wd = sgd.weight_decay
        S, U = self.S_r, self.U  # the sketch is S (M, D, k), or U (D, r) times S (M, r, k)
        r = D if S is None else S.shape[1]
        if feature_norm not in ("linear", "fixed"):
            raise ValueError(f"`feature_norm` must be 'linear' or 'fixed', got {feature_norm!r}")
        r0 = self.phi0.norm(dim=1).clamp_min(1e-12) if feature_norm == "fixed" and S is not None else None

        def sphere(zz, rr):  # (features, per-sample scale r0/‖z‖ or None): 'fixed' keeps each ‖φ(x)‖ = ‖φ_0(x)‖
            if rr is None:
                return zz, None
            sc = rr / zz.norm(dim=-1).clamp_min(1e-12)
            return zz * sc[..., None], sc

        def up(dz):  # feature displacement (…, r) -> (…, D)
            return dz if U is None else dz @ U.T

        def down(v, zz, sc, rr):  # ∂ℓ/∂φ (…, D) -> ∂ℓ/∂z in the sketch's coordinates (…, r)
            if sc is not None:  # back through φ = r0 z/‖z‖: (r0/‖z‖)(I − ẑẑᵀ)
                zh = zz * (sc / rr)[..., None]
                v = sc[..., None] * (v - zh * (zh * v).sum(-1, keepdim=True))
            return v if U is None else v @ U

        W, b = self.W0.expand(P, C, D).clone(), self.b0.expand(P, C).clone()
        theta = torch.zeros(P, S.shape[-1] if S is not None else 0, dtype=torch.float64)
        curv = curvature if S is not None else None
        dS, H, g = (None, None, None) if curv is None else (curv.dS, curv.H, curv.g)
        A = torch.zeros(P, N, r, dtype=torch.float64) if track else None
        bufA = None
        own = torch.zeros(P, N - n, r, dtype=torch.float64) if holdout_self and S is not None and N > n else None
        S_own = None if own is None else S[n:].double()  # the holdout rows' sketch: their blocks K_hh = S_h S_hᵀ
        gain = momentum_gain(sgd)

        def rows(Sx, th):  # (P, n, r): each path's θ through the rows Sx (n, r, k) (or per path: (P, n, r, k))
            if Sx.dim() == 4:
                return torch.einsum("pnrk,pk->pnr", Sx, th.to(Sx.dtype)).double()
            return (Sx.reshape(-1, Sx.shape[-1]) @ th.T.to(Sx.dtype)).T.reshape(th.shape[0], Sx.shape[0], -1).double()

        def bend(lin, quad, a, Hx):  # the second-order term along v̂: S θ + a S'θ − ½ a² H
            return lin if quad is None else lin + a[:, None, None] * quad - 0.5 * (a * a)[:, None, None] * Hx
        dead = np.full(P, -1)  # the step after which a path diverged (-1: alive)
        evaluated = []
        V, c = None, torch.zeros(P, dtype=torch.float64)  # the warm-up's backbone buffer b: φ gains c_t · J_φ b
        buf = None
        if velocity is not None:  # torch's buffers, split by linearity: the sketch's part starts at 0, b's at c' = 1
            vW, vb, V = (v.double() for v in velocity)
            buf = (vW.expand(P, *vW.shape).clone(), vb.expand(P, *vb.shape).clone(), torch.zeros_like(theta))
            bufA = None if A is None else torch.zeros_like(A)
            if S is None or V.shape[1] == 0:
                V = None
            else:
                buf += (torch.ones(P, dtype=torch.float64),)
        fast = fused and S is not None and curv is None and A is None
        if fast:  # the training rows' tensors, every path's batches packed (P, steps, Bmax), the step sizes
            kernel = _FusedSteps(S[:n], U, self.phi0[:n], None if r0 is None else r0[:n],
                                 None if V is None else V[:n], y[:n], batches, sgd, max_steps, self.head_trainable,
                                 self.loss)
            W, b = W.contiguous(), b.contiguous()
            if buf is None:
                buf = (torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(theta))
            buf = tuple(u.contiguous() for u in buf) + ((torch.zeros(P, dtype=torch.float64),) if len(buf) == 3 else ())
            started = velocity is not None
        at = evaluation_steps(max_steps, eval_every, eval_growth)
        following = dict(zip(at, at[1:]))  # evaluation step -> the next one
        t = 0
        while True:
            full = t in following or t == max_steps
            a = None if curv is None else theta @ g  # (P,) the displacement along v̂
            if full:  # the whole training set: φ = φ_0 + S θ for all samples (one product for all paths)
                quad = None if curv is None else rows(dS, theta)
                z = self.phi0.expand(P, N, D) if S is None else \
                    self.phi0 + up(bend(rows(S, theta), quad, a, H) + (0 if V is None else c[:, None, None] * V))
                if own is not None:  # the holdout rows' loss without their own block too: the gap's (holdout_gap)
                    bare = sphere(z[:, n:], None if r0 is None else r0[n:])[0]
                    bare = torch.einsum("phd,pcd->phc", bare, W) + b[:, None]
                    held_plain[:, t] = _loss_and_grad(bare, y[n:], onehot[n:], self.loss)[0].mean(1).numpy()
                    z = torch.cat([z[:, :n], z[:, n:] + up(own)], 1)
                phi, scale = sphere(z, r0)
                f = torch.einsum("pnd,pcd->pnc", phi, W) + b[:, None]
                ell, grad = _loss_and_grad(f, y, onehot, self.loss)
                losses[:, t] = ell[:, :n].mean(1).numpy()
                accs[:, t] = _accuracy(f[:, :n], y[:n]).numpy()
                if mark_blowup(dead, losses[:, t], losses[:, 0], t, on_divergence,
                               lambda: f"the head-aware linearized dynamics diverged at step {t}: the loss passed "
                                       f"{BLOWUP:g}× its initial value (learning rate {sgd.lr_at(t - 1, max_steps)})"):
                    break
                if N > n:
                    held[:, t], held_acc[:, t] = ell[:, n:].mean(1).numpy(), _accuracy(f[:, n:], y[n:]).numpy()
                if own is not None and t < max_steps:  # the holdout rows' own visits, until the next evaluation
                    vh = down(torch.einsum("phc,pcd->phd", grad[:, n:], W), z[:, n:],
                              None if scale is None else scale[:, n:], None if r0 is None else r0[n:])
                    span = following[t] - t
                    own = own - sgd.lr_at(t, max_steps) * gain * span / self.n_samples * \
                        torch.einsum("hrk,phk->phr", S_own, torch.einsum("hrk,phr->phk", S_own, vh))
                shift[:, t] = ((phi[:, :n] - self.phi0[:n]).square().sum((1, 2)).sqrt() / spread).numpy()
                evaluated.append(t)
            if t == max_steps:
                break
            if fast:  # the steps until the next evaluation, in the kernel
                E = following[t] - t  # t is an evaluation step here
                died = kernel.run(t, E, (W, b, theta, c), buf, dead, started)
                started = True
                if died.any():
                    if on_divergence != "truncate":
                        q = int(np.flatnonzero(died)[0])
                        raise FloatingPointError(
                            f"the head-aware linearized dynamics diverged at step {dead[q]} (learning rate "
                            f"{sgd.lr_at(int(dead[q]), max_steps)}): the linearized features grow without the "
                            "saturation of the real network")
                    if (dead >= 0).all():
                        break
                t += E
                continue
            bidx = torch.stack([bl[t] for bl in batches])  # (P, B): the paths' batches have equal sizes
            B = bidx.shape[1]
            Sb = [S[bidx[q]] for q in range(P)] if S is not None else None  # (B, D, k) per path
            dSb = None if curv is None else torch.stack([dS[bidx[q]] for q in range(P)])  # (P, B, r, k)
            if full:
                G = grad.gather(1, bidx[..., None].expand(P, B, C)) / B  # ∂(mean loss of the batch)/∂f
                phib = phi.gather(1, bidx[..., None].expand(P, B, D))
                zb = z.gather(1, bidx[..., None].expand(P, B, D))
                scb = None if scale is None else scale.gather(1, bidx)
                quad_b = None if curv is None else quad.gather(1, bidx[..., None].expand(P, B, r))
            else:  # only the batch's features and outputs
                zb = self.phi0[bidx]
                quad_b = None if curv is None else rows(dSb, theta)
                if S is not None:
                    zb = zb + up(bend(torch.stack([Sb[q] @ theta[q].to(S.dtype) for q in range(P)]).double(),
                                      quad_b, a, None if H is None else H[bidx])
                                 + (0 if V is None else c[:, None, None] * V[bidx]))
                phib, scb = sphere(zb, None if r0 is None else r0[bidx])
                G = _loss_and_grad(torch.einsum("pbd,pcd->pbc", phib, W) + b[:, None], y[bidx], onehot[bidx],
                                   self.loss)[1] / B
            if self.head_trainable:
                gW, gb = torch.einsum("pbc,pbd->pcd", G, phib), G.sum(1)
                if wd:
                    gW, gb = gW + wd * W, gb + wd * b
            else:
                gW, gb = torch.zeros_like(W), torch.zeros_like(b)
            if S is not None:  # J_φ,batchᵀ ∂ℓ/∂φ, sketched; in S's dtype (float32 for a float32 model)
                v = down(torch.einsum("pbc,pcd->pbd", G, W), zb, scb,
                         None if r0 is None else r0[bidx]).to(S.dtype)  # (P, B, r)
                gth = torch.stack([torch.einsum("bdk,bd->k", Sb[q], v[q]) for q in range(P)]).double()
                if curv is not None:  # ∂z/∂θ = S + a S' + (S'θ − a H) gᵀ
                    vd = v.double()
                    gth = gth + a[:, None] * torch.einsum("pbrk,pbr->pk", dSb, v).double() \
                        + ((quad_b - a[:, None, None] * H[bidx]) * vd).sum((1, 2))[:, None] * g
                if A is not None:  # the same gradient as coefficients on the samples: θ = Sᵀ A
                    gA = torch.zeros_like(A)
                    for q in range(P):
                        gA[q].index_add_(0, bidx[q], v[q].double())
                    if wd:
                        gA = gA + wd * A
                    bufA, stepA = sgd.direction(bufA, gA)
                if wd:  # toward w0: wd (φ − φ_0) = S (wd θ)
                    gth = gth + wd * theta
            else:
                gth = theta
            grads = (gW, gb, gth) + (() if V is None else (wd * c,))  # wd toward w0 acts on c · b too
            moved = [sgd.direction(bi, gi) for bi, gi in zip(buf or (None,) * 3, grads)]
            buf, step = tuple(u for u, _ in moved), tuple(v for _, v in moved)
            eta = sgd.lr_at(t, max_steps)
            W, b, theta = W - eta * step[0], b - eta * step[1], theta - eta * step[2]
            if A is not None and S is not None:
                A = A - eta * stepA
            if V is not None:
                c = c - eta * step[3]
            finite = (torch.isfinite(W).flatten(1).all(1) & torch.isfinite(theta).all(1)).numpy()
            if mark_divergence(dead, finite, t, on_divergence, lambda: (
                               f"the head-aware linearized dynamics diverged at step {t} (learning rate {eta}): the "
                               "linearized features grow without the saturation of the real network")):
                break
            t += 1
        ev = np.asarray(evaluated)
        for q in range(P):  # fill the steps between evaluations; NaN after a divergence
            last = max_steps if dead[q] < 0 else int(ev[ev <= dead[q]].max())
            keep = ev[ev <= last]
            tt = np.arange(last + 1)
            if len(keep) < len(tt):
                losses[q, :last + 1] = interpolate_loss(keep, losses[q, keep], tt)
                if N > n:
                    held[q, :last + 1] = interpolate_loss(keep, held[q, keep], tt)
                    held_acc[q, :last + 1] = np.interp(tt, keep, held_acc[q, keep])
                if own is not None:
                    held_plain[q, :last + 1] = interpolate_loss(keep, held_plain[q, keep], tt)
                accs[q, :last + 1] = np.interp(tt, keep, accs[q, keep])
                shift[q, :last + 1] = np.interp(tt, keep, shift[q, keep])
            losses[q, last + 1:], accs[q, last + 1:], shift[q, last + 1:] = np.nan, np.nan, np.nan
            held[q, last + 1:], held_acc[q, last + 1:], held_plain[q, last + 1:] = np.nan, np.nan, np.nan
        alive = torch.as_tensor(dead < 0)
        coeff = None if A is None or not alive.any() else A[alive].mean(0)
        hold = ((held.mean(0), held_acc.mean(0), held_plain.mean(0) if own is not None else None) if N > n
                else (None, None, None))  # the holdout rows' loss, accuracy, and loss without their own block
        return losses.mean(0), accs.mean(0), losses, shift.mean(0), coeff, hold

    def predict(self, *, lr, batch_size, max_steps, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                schedule="constant", paths=4, seed=None, measure_time=True, sampling="epoch", on_divergence="raise",
                stride=1, eval_every=1, eval_growth=0.0, feature_norm="linear", velocity=None, curvature=None,
                track_coefficients=False, holdout_self=False, fused=True, **schedule_kwargs):
        """As Predictor.predict (on_divergence: "raise" or "truncate"; stride: super-steps, dynamics.coarsen).

        eval_every=E: the dynamics stay exact, but the full-set loss, accuracy and feature shift are computed every E
        steps (and at the last) and interpolated in between (log-linear for the loss); a step then costs O(B·D·k)
        per path instead of O(M·D·k). A divergence is located to within E steps. eval_growth=g: evaluations
        max(E, g·t) steps apart (predict.evaluation_steps; geometric late, for long runs).
        feature_norm="fixed": each sample's features keep their norm, φ_t(x) = ‖φ_0(x)‖ · z/‖z‖ with z = φ_0 + S θ
        the linearized features (the real GroupNorm/ReLU features keep 0.83-1.04 of their norm over 10 epochs
        while their centered part grows up to 8×; docs/PREDICT.md); the default "linear" is φ_t = z.
        velocity: the initial momentum state (head weight buffer, head bias buffer, the backbone buffer b as J_φ b
        on the M samples, in the feature directions' coordinates), as zoo_kernels.warmstart.feature_velocity returns
        it; None starts at rest, as torch.optim.SGD does.
        curvature: the second-order term along one backbone direction (zoo_kernels.curvature.curvature_along).
        track_coefficients: set the result's `coefficients` (M, r), the feature-space coefficients A of the
        backbone's displacement (mean over paths), from which curvature_along takes its direction.
        holdout_self (with holdout rows): each holdout row also gets its own kernel block at the full data's weight
        1/N (see _simulate); Prediction.holdout_loss_curve is then the better estimate of the full-set loss on
        MiniZoo's long runs (docs/PREDICT.md, "Reading the loss off the holdout").
        fused: the steps between evaluations run in the compiled kernel ops.head_aware_sgd_steps (not with
        curvature or track_coefficients); False: in torch, step by step (the same dynamics, to rounding)."""
        check_eval_every(eval_every, eval_growth)
        if curvature is not None:
            want = None if self.S_r is None else (tuple(self.S_r.shape), (len(self.x), self.S_r.shape[1]),
                                                  (self.S_r.shape[2],))
            got = tuple(tuple(t.shape) for t in (curvature.dS, curvature.H, curvature.g))
            if got != want or stride != 1 or not all(torch.isfinite(t).all() for t in
                                                     (curvature.dS, curvature.H, curvature.g)):
                raise ValueError(f"`curvature` must hold finite dS, H, g of shapes {want} (this predictor's; a "
                                 f"frozen backbone has none), with stride 1; got {got}, stride {stride}")
        if velocity is not None:
            want = (tuple(self.W0.shape), tuple(self.b0.shape),
                    (len(self.x), 0 if self.S_r is None else self.S_r.shape[1]))
            got = tuple(tuple(v.shape) for v in velocity) if len(velocity) == 3 else None
            if got != want or stride != 1 or not all(torch.isfinite(v).all() for v in velocity):
                raise ValueError(f"`velocity` must be 3 finite tensors of shapes {want} (head weight, head bias, "
                                 f"the backbone's in feature space), with stride 1; got shapes {got}, stride {stride}")
        start = time.perf_counter()
        check_divergence_mode(on_divergence)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}")
        sgd = SGD(lr=lr, batch_size=batch_size, momentum=momentum, dampening=dampening, nesterov=nesterov,
                  weight_decay=weight_decay, schedule=schedule, **schedule_kwargs).check(self.n_samples)
        N, M = self.n_samples, self.subset
        if M < N:
            sgd.batch_size = subset_batch_size(batch_size, N, M)
        if sampling not in ("epoch", "stream"):
            raise ValueError(f"`sampling` must be 'epoch' or 'stream', got {sampling!r}")
        run, n_run = coarsen(sgd, stride, max_steps, M)
        loss_curve, acc_curve, per_path, shift, coeff, hold = self._simulate(
            run, n_run, paths, self.seed if seed is None else seed, sampling, on_divergence, eval_every, eval_growth,
            feature_norm, velocity, curvature, track_coefficients and stride == 1, holdout_self, fused)
        loss_curve, acc_curve, per_path = expand_curves(loss_curve, acc_curve, per_path, stride, max_steps)
        hold = [None if c is None else expand_curve(c, stride, max_steps) for c in hold]
        step_s = self.step_seconds(batch_size) if measure_time else float("nan")
        return Prediction(loss_curve=loss_curve, accuracy_curve=acc_curve, n_samples=N, batch_size=batch_size,
                          lr=lr, momentum=momentum, step_seconds=step_s,
                          cost_seconds=self.setup_seconds + time.perf_counter() - start, loss=self.loss,
                          path_losses=per_path, feature_shift=expand_curve(shift, stride, max_steps),
                          coefficients=coeff, holdout_loss_curve=hold[0], holdout_accuracy_curve=hold[1],
                          holdout_plain_loss_curve=hold[2])


class _FusedSteps:
    """HeadAwarePredictor._simulate's steps between evaluations through ops.head_aware_sgd_steps."""

    def __init__(self, S, U, phi0, r0, V, y, batches, sgd, max_steps, head_trainable, loss):
        f64 = lambda t: None if t is None else t.double().contiguous()  # noqa: E731
        self.S, self.U, self.phi0, self.r0, self.V = S.contiguous(), f64(U), f64(phi0), f64(r0), f64(V)
        self.y = y.long().contiguous()
        sizes = [len(bl) for bl in batches[0]]  # equal for every path at each step
        self.idx = torch.zeros(len(batches), max_steps, max(sizes), dtype=torch.long)
        for q, path in enumerate(batches):
            for t, bl in enumerate(path):
                self.idx[q, t, :len(bl)] = bl
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.lrs = torch.tensor([sgd.lr_at(t, max_steps) for t in range(max_steps)], dtype=torch.float64)
        self.sgd, self.head_trainable, self.loss = sgd, head_trainable, loss

    def run(self, t, E, state, buffers, dead, started):
        """Steps t..t+E-1 on state and buffers in place; records new divergences in `dead` (numpy, -1: alive) as
        the step after which they happened. Returns the mask of the paths that diverged in these steps."""
        d = torch.as_tensor(np.where(dead < 0, -1, 0), dtype=torch.long)  # the kernel skips d >= 0
        sgd = self.sgd
        ops.head_aware_sgd_steps(self.S, self.U, self.phi0, self.r0, self.V, self.y,
                                 self.idx[:, t:t + E].contiguous(), self.sizes[t:t + E].contiguous(),
                                 self.lrs[t:t + E].contiguous(), state, buffers, d, momentum=sgd.momentum,
                                 dampening=sgd.dampening, nesterov=sgd.nesterov, weight_decay=sgd.weight_decay,
                                 head_trainable=self.head_trainable, loss=self.loss, started=started)
        died = (dead < 0) & (d.numpy() >= 0)
        dead[died] = t + d.numpy()[died]
        return died


# ------------------------------------------------------------------------------------------ time rescaling

def rescale_curve(curve, scale, length=None):
    """c(s·t) for t = 0..length-1 by linear interpolation (held at the last value beyond the curve's end)."""
    curve = np.asarray(curve, dtype=np.float64)
    length = len(curve) if length is None else length
    return np.interp(scale * np.arange(length), np.arange(len(curve)), curve)


def fit_time_scale(predicted, real, lo=0.25, hi=4.0, grid=301):
    """The factor s in [lo, hi] minimizing Σ_t (log L̂(s·t) − log L(t))² over the given real steps t = 0..k.

    predicted: the predicted loss curve (long enough for s·k steps where possible); real: k+1 real losses."""
    real = np.asarray(real, dtype=np.float64)
    if real.ndim != 1 or len(real) < 2 or not np.isfinite(real).all() or (real <= 0).any():
        raise ValueError("`real` must hold at least 2 positive finite losses (steps 0..k)")
    pred = np.asarray(predicted, dtype=np.float64)
    scales = np.exp(np.linspace(math.log(lo), math.log(hi), grid))
    with np.errstate(invalid="ignore"):
        errs = np.array([np.square(np.log(np.maximum(rescale_curve(pred, s, len(real)), 1e-300)) - np.log(real)).sum()
                         for s in scales])
    errs[~np.isfinite(errs)] = np.inf  # a truncated (diverged) prediction: only scales that stay on its finite part
    if not np.isfinite(errs).any():
        raise ValueError("`predicted` has no finite values over the real steps at any time scale")
    return float(scales[int(np.argmin(errs))])


def calibrate_time(prediction, real_losses, **fit_kwargs):
    """A new Prediction whose curves are the given one's at rescaled time s·t, s fitted to the real losses of the
    first k steps (`real_losses`, steps 0..k, full training set). The rescaled curves are as long as the original
    (held at the last predicted value where s·t runs past it); `prediction.calibration_scale` holds s."""
    s = fit_time_scale(prediction.loss_curve, real_losses, **fit_kwargs)
    n = len(prediction.loss_curve)
    out = Prediction(loss_curve=rescale_curve(prediction.loss_curve, s, n),
                     accuracy_curve=rescale_curve(prediction.accuracy_curve, s, n),
                     n_samples=prediction.n_samples, batch_size=prediction.batch_size, lr=prediction.lr,
                     momentum=prediction.momentum, step_seconds=prediction.step_seconds,
                     cost_seconds=prediction.cost_seconds, loss=prediction.loss,
                     feature_shift=(None if prediction.feature_shift is None
                                    else rescale_curve(prediction.feature_shift, s, n)))
    out.calibration_scale = s
    return out


def calibration_cost(k, step_seconds, eval_seconds):
    """Seconds spent by calibration: k real SGD steps and k + 1 evaluations of the training loss."""
    return k * step_seconds + (k + 1) * eval_seconds
