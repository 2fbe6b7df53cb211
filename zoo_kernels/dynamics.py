"""Training dynamics of the linearized model f_w(x) = f_0(x) + J(x)(w - w_0) under SGD, in function space.

Every update of w moves the outputs by J Δw, and J Jᵀ = Θ: the dynamics of the N·C outputs need only Θ
(exact, or S Sᵀ from a sketch S) and never the P parameters. PyTorch SGD (momentum m, dampening d,
Nesterov, weight decay wd) maps exactly to a function-space velocity φ = J v:

    φ_{t+1} = m φ_t + (1 - d) (Θ_{:,b} ∇ℓ_b / |b| + wd (f_t - f_0))      (first step: φ_1 without m, d)
    f_{t+1} = f_t - η_t (Nesterov: the gradient term + m φ_{t+1};  else: φ_{t+1})

Weight decay is taken toward w_0 (exact decay toward 0 would need J w_0; for fine-tuning from w_0 the
difference is the usual L2-SP simplification, and it is zero without weight decay).

Two solvers:
- `simulate_sgd`: Monte-Carlo paths of this exact recursion with the real minibatch sampling
  (sampling="epoch": shuffled epochs, last batch smaller, as DataLoader(shuffle=True); sampling="stream":
  consecutive full batches of a stream of random permutations, as the MiniZoo recipe), for MSE and
  cross-entropy; the expected curves are path means. Cost per step O(N·C·k) with a sketch of width k.
- `mse_moments`: MSE in the eigenbasis of Θ, closed form for the mean and moment equations for the SGD noise
  (per mode a 2 × 2 position/velocity covariance; noise covariance J Σ Jᵀ ≈ (2 E[L]/(N C)) Θ², with the
  without-replacement factor (N - B)/(N - 1), so that B = N is the deterministic ODE). Works from a Spectrum.

Losses: "ce" is the mean cross-entropy over samples (torch.nn.CrossEntropyLoss); "mse" is
L = (1/2N) Σ_i ‖f(x_i) − y_i‖² with one-hot y (half the sum of squares, averaged over samples, not over C).
Units: one step is one SGD update on one minibatch; an epoch is ceil(N / B) steps.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

LOSSES = ("mse", "ce")
SCHEDULES = ("constant", "step", "cosine")
SAMPLINGS = ("epoch", "stream")


@dataclass
class SGD:
    """Hyper-parameters of torch.optim.SGD plus a schedule over steps."""

    lr: float
    batch_size: int
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Union[str, Callable[[int], float]] = "constant"
    step_size: int = 1000  # "step": multiply by gamma every step_size steps
    gamma: float = 0.1
    t_max: Optional[int] = None  # "cosine": period (default: max_steps)
    eta_min: float = 0.0

    def check(self, n_samples):
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"`lr` must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= n_samples:
            raise ValueError(f"`batch_size` must be an int in [1, N={n_samples}], got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.dampening <= 1:
            raise ValueError(f"`dampening` must be in [0, 1], got {self.dampening!r}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("`nesterov` needs momentum > 0 and zero dampening (as torch.optim.SGD)")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if not callable(self.schedule) and self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES} or a callable step -> lr, got {self.schedule!r}")
        return self

    def direction(self, buf, g):
        """torch.optim.SGD's momentum update: (new buffer, step direction) for the gradient g (buf None: no buffer
        yet; without momentum torch keeps none)."""
        buf = g.clone() if buf is None or self.momentum == 0 else self.momentum * buf + (1 - self.dampening) * g
        return buf, (g + self.momentum * buf if self.nesterov else buf)

    def lr_at(self, t, max_steps):
        if callable(self.schedule):
            return float(self.schedule(t))
        if self.schedule == "step":
            return self.lr * self.gamma ** (t // self.step_size)
        if self.schedule == "cosine":
            t_max = self.t_max or max_steps
            return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * min(t, t_max) / t_max)) / 2
        return self.lr


def momentum_gain(sgd):
    """κ, the steady-state drift per unit lr of torch.optim.SGD's steps: (1 − d)/(1 − m), with Nesterov
    1 + m (1 − d)/(1 − m), and 1 without momentum (torch keeps no buffer then, so dampening does nothing)."""
    m, d = sgd.momentum, sgd.dampening
    if m == 0:
        return 1.0
    return 1 + m * (1 - d) / (1 - m) if sgd.nesterov else (1 - d) / (1 - m)


def coarsen(sgd, stride, max_steps, n_samples):
    """SGD in super-steps of `stride` real steps (for long horizons; stride = 1 returns `sgd` itself).

    A super-step is one step on a batch of stride·B samples (capped at N) with the drift of `stride` real steps:
    lr × stride × κ (1 − m^stride), momentum m^stride, no dampening or Nesterov, where κ (momentum_gain) is the
    real steps' drift per unit lr once the velocity has built up. Drift and SGD noise per unit time match the real
    steps to first order (the SDE limit; exact for stride = 1); the approximation needs curves that change little
    over `stride` steps and stride × the per-step rate of the fastest mode well below 1. Returns (the super-step
    SGD, the number of super-steps)."""
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be a positive int, got {stride!r}")
    if stride == 1:
        return sgd, max_steps
    if stride * sgd.batch_size > n_samples:
        warnings.warn(f"stride {stride} x batch {sgd.batch_size} exceeds the {n_samples} samples integrated: the "
                      "super-steps are full-batch and the SGD noise is lost; use a smaller stride", RuntimeWarning,
                      stacklevel=3)
    m = sgd.momentum
    kappa = momentum_gain(sgd)
    m_r = m ** stride
    factor = stride * kappa * (1 - m_r)
    coarse = SGD(lr=sgd.lr * factor, batch_size=min(n_samples, stride * sgd.batch_size), momentum=m_r,
                 weight_decay=sgd.weight_decay,
                 schedule=lambda t: factor * sgd.lr_at(min(stride * t, max_steps), max_steps))
    return coarse, -(-max_steps // stride)


def expand_curve(curve, stride, max_steps):
    """Values at real steps 0..max_steps of a curve sampled every `stride` steps (linear interpolation)."""
    curve = np.asarray(curve, dtype=np.float64)
    if stride == 1:
        return curve
    return np.interp(np.arange(max_steps + 1) / stride, np.arange(len(curve)), curve)


def expand_curves(loss_curve, acc_curve, per_path, stride, max_steps):
    """expand_curve for a simulation's (loss, accuracy, per-path losses)."""
    if stride == 1:
        return loss_curve, acc_curve, per_path
    return (expand_curve(loss_curve, stride, max_steps), expand_curve(acc_curve, stride, max_steps),
            np.stack([expand_curve(c, stride, max_steps) for c in per_path]))


class KernelOperator:
    """Θ through the columns of a minibatch: exact (NC × NC matrix) or low rank (S: NC × k, Θ = S Sᵀ)."""

    def __init__(self, n_samples, n_outputs, kernel=None, sketch=None):
        if (kernel is None) == (sketch is None):
            raise ValueError("give exactly one of `kernel` (N*C x N*C) or `sketch` (N*C x k)")
        self.N, self.C = n_samples, n_outputs
        self.K, self.S = kernel, sketch

    def apply_batch(self, rows, g):
        """Θ[:, rows] @ g for the flat output rows of a minibatch."""
        return self.apply_batches(rows[None], g[None])[0]

    def apply_batches(self, rows, g):
        """Θ[:, rows[p]] @ g[p] for P minibatches at once: rows, g (P, R) -> (P, N·C) float64. A sketch is used
        in its own dtype (float32 for a float32 model; the product streams all of S, so this halves its cost)."""
        if self.K is not None:  # Θ is symmetric: gather rows (contiguous), 4x faster than columns
            return torch.stack([g[p] @ self.K[rows[p]] for p in range(len(rows))])
        S = self.S
        u = torch.stack([S[rows[p]].T @ g[p].to(S.dtype) for p in range(len(rows))])  # (P, k)
        return (S @ u.T).T.double()  # one product for all minibatches

    def apply(self, v):
        return self.K @ v if self.K is not None else self.S @ (self.S.T @ v)


def _loss_and_grad(f, y, onehot, loss):
    """Per-sample losses (N,) and output gradients (N, C) of ℓ_i (MSE: ½‖f_i − y_i‖²)."""
    if loss == "ce":
        logp = torch.log_softmax(f, dim=-1)
        return -(logp * onehot).sum(-1), logp.exp() - onehot
    r = f - onehot
    return 0.5 * r.square().sum(-1), r


def _accuracy(f, y):
    """Fraction of correct argmax outputs over the samples (the last-but-one dim of f; per path for (P, N, C))."""
    return (f.argmax(-1) == y).double().mean(-1)


BLOWUP = 1e3  # a path whose loss passes BLOWUP × its initial loss diverges, though its state is still finite


def mark_blowup(dead, loss_t, loss_0, t, on_divergence, message):
    """mark_divergence for the paths whose loss at step t (> 0) passed BLOWUP × their loss at step 0: they diverged
    after step t − 1 (their values are NaN from step t on). `message()` is called only then."""
    blown = loss_t > BLOWUP * loss_0
    return t > 0 and blown.any() and mark_divergence(dead, ~blown, t - 1, on_divergence, message)


def blowup_message(t, lr):
    return (f"the linearized dynamics diverged at step {t}: the loss passed {BLOWUP:g}× its initial value; the "
            f"learning rate {lr} exceeds the stability limit 2 N / λ_max of this NTK")


def mark_divergence(dead, finite, t, on_divergence, message):
    """Record the paths whose state stopped being finite after step t (`dead[p]` = t; -1: alive); raise
    FloatingPointError(message()) instead unless on_divergence == "truncate" (`message` is called only then). True
    when every path has diverged."""
    new = (~finite) & (dead < 0)
    if new.any():
        if on_divergence != "truncate":
            raise FloatingPointError(message())
        dead[new] = t
    return bool((dead >= 0).all())


def _batch_stream(N, B, sampling, gen):
    """Index tensors of the minibatches, forever. "epoch": shuffled epochs, the last batch of each smaller
    (DataLoader(shuffle=True, drop_last=False)); "stream": consecutive slices of size B of a stream of random
    permutations (batches may straddle two permutations; every batch is full)."""
    if sampling == "epoch":
        while True:
            order = torch.randperm(N, generator=gen)
            for pos in range(0, N, B):
                yield order[pos:pos + B]
    buf = torch.empty(0, dtype=torch.long)
    while True:
        while len(buf) < B:
            buf = torch.cat([buf, torch.randperm(N, generator=gen)])
        yield buf[:B]
        buf = buf[B:]


def path_batches(N, B, sampling, seed, paths, steps):
    """Each Monte-Carlo path's minibatches (index tensors) for `steps` steps, drawn path after path from one
    generator seeded with `seed`: a path's batches do not depend on how many paths are drawn after it."""
    gen = torch.Generator().manual_seed(seed)
    streams = [_batch_stream(N, B, sampling, gen) for _ in range(paths)]  # lazy: nothing drawn yet
    return [[next(s) for _ in range(steps)] for s in streams]


def interpolate_loss(ts, values, steps):
    """Losses measured at the increasing steps `ts`, interpolated at `steps`: log-linear where all are positive
    (losses decay roughly exponentially), else linear."""
    values = np.asarray(values, dtype=np.float64)
    if (values > 0).all():
        return np.exp(np.interp(steps, ts, np.log(values)))
    return np.interp(steps, ts, values)


def simulate_sgd(op, f0, labels, loss, sgd, max_steps, paths=4, seed=0, targets=None, sampling="epoch",
                 on_divergence="raise"):
    """Expected full-training-set loss and accuracy after 0..max_steps SGD steps of the linearized model.

    op: KernelOperator; f0 (N, C) initial outputs; labels (N,) int classes (targets: optional float (N, C) for
    MSE regression); sampling: "epoch" or "stream" (see _batch_stream). Returns (loss_curve, accuracy_curve,
    per-path loss curves) as numpy arrays. on_divergence: "raise" (FloatingPointError) or "truncate" (the path's
    values are NaN from the step its outputs stop being finite; see check_divergence_mode).
    """
    check_divergence_mode(on_divergence)
    if sampling not in SAMPLINGS:
        raise ValueError(f"`sampling` must be one of {SAMPLINGS}, got {sampling!r}")
    N, C = f0.shape
    f0 = f0.double()
    onehot = torch.nn.functional.one_hot(labels.long(), C).double() if targets is None else targets.double()
    idx_all = torch.arange(N * C).view(N, C)
    P = 1 if sgd.batch_size == N else paths  # full batch: deterministic
    batches = path_batches(N, sgd.batch_size, sampling, seed, P, max_steps)  # all paths run together
    losses = np.zeros((P, max_steps + 1))
    accs = np.zeros((P, max_steps + 1))
    f, phi = f0.expand(P, N, C).clone(), None
    dead = np.full(P, -1)  # the step after which a path diverged (-1: alive)
    for t in range(max_steps + 1):
        ell, grad = _loss_and_grad(f, labels, onehot, loss)
        losses[:, t] = ell.mean(1).numpy()
        accs[:, t] = _accuracy(f, labels).numpy()
        if mark_blowup(dead, losses[:, t], losses[:, 0], t, on_divergence,
                       lambda: blowup_message(t, sgd.lr_at(t - 1, max_steps))) or t == max_steps:
            break
        batch = torch.stack([bl[t] for bl in batches])  # (P, B): the paths' batches have equal sizes
        B = batch.shape[1]
        rows = idx_all[batch].reshape(P, -1)
        gb = grad.gather(1, batch[..., None].expand(P, B, C)).reshape(P, -1)
        g = op.apply_batches(rows, gb).view(P, N, C) / B
        if sgd.weight_decay:
            g = g + sgd.weight_decay * (f - f0)
        phi, step = sgd.direction(phi, g)
        f = f - sgd.lr_at(t, max_steps) * step
        if mark_divergence(dead, torch.isfinite(f).flatten(1).all(1).numpy(), t, on_divergence,
                           lambda: f"the linearized dynamics diverged at step {t}: the learning rate "
                           f"{sgd.lr_at(t, max_steps)} exceeds the stability limit 2 N / λ_max of this NTK"):
            break
    for p in np.flatnonzero(dead >= 0):  # NaN after the step a path diverged
        losses[p, dead[p] + 1:], accs[p, dead[p] + 1:] = np.nan, np.nan
    return losses.mean(0), accs.mean(0), losses


DIVERGENCE_MODES = ("raise", "truncate")


def check_divergence_mode(on_divergence):
    """"raise": a diverging linearized dynamics raises FloatingPointError; "truncate": the curves are NaN from the
    first step where a path diverged, and the Prediction's `diverged_at` says where (the steps before stay valid)."""
    if on_divergence not in DIVERGENCE_MODES:
        raise ValueError(f"`on_divergence` must be one of {DIVERGENCE_MODES}, got {on_divergence!r}")


def mse_moments(eigenvalues, energies, multiplicity, n_samples, n_outputs, sgd, max_steps):
    """Expected MSE loss curve E[L_t] from Θ's eigenvalues and the residual energies along them.

    Exact mean dynamics per mode (momentum, dampening, Nesterov, weight decay toward w_0, schedule);
    SGD noise through moment equations with J Σ Jᵀ ≈ (2 E[L_t] / (N C)) Θ² (isotropic residual
    approximation) and the without-replacement factor (N − B) / (N − 1).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64)
    w = np.asarray(multiplicity, dtype=np.float64)
    N, C, B = n_samples, n_outputs, sgd.batch_size
    a = lam / N
    wd, m, nest = sgd.weight_decay, sgd.momentum, sgd.nesterov
    # Mean of (u, φ) per mode, relative to r_j = sqrt(e_j): u_0 = 1.  Covariance absolute (per unit multiplicity).
    mu_u, mu_p = np.ones_like(lam), np.zeros_like(lam)
    Vuu, Vup, Vpp = np.zeros_like(lam), np.zeros_like(lam), np.zeros_like(lam)
    noise_scale = (N - B) / (B * max(N - 1, 1))
    curve = np.empty(max_steps + 1)
    for t in range(max_steps + 1):
        EL = float((w * (e * mu_u**2 + Vuu)).sum()) / (2 * N)
        curve[t] = EL
        if t == max_steps:
            break
        eta = sgd.lr_at(t, max_steps)
        c = 1.0 if t == 0 or m == 0 else 1.0 - sgd.dampening
        mm = 0.0 if t == 0 else m
        q = noise_scale * (2 * EL / (N * C)) * lam**2  # variance of the gradient noise per mode
        # gradient g = (a + wd) u - wd u_0 + ξ ; φ' = mm φ + c g ; u' = u - η (nesterov: g + m φ' ; else φ')
        k = a + wd
        new_p = mm * mu_p + c * (k * mu_u - wd)
        if nest:
            new_u = mu_u - eta * ((k * mu_u - wd) + m * new_p)
            Au = (1 - eta * k * (1 + m * c), -eta * m * mm)
            bu = -eta * (1 + m * c)
        else:
            new_u = mu_u - eta * new_p
            Au = (1 - eta * c * k, -eta * mm)
            bu = -eta * c
        Ap = (c * k, mm)
        bp = c
        # covariance update: s' = A s + b ξ
        nVuu = Au[0] ** 2 * Vuu + 2 * Au[0] * Au[1] * Vup + Au[1] ** 2 * Vpp + bu**2 * q
        nVup = Au[0] * Ap[0] * Vuu + (Au[0] * Ap[1] + Au[1] * Ap[0]) * Vup + Au[1] * Ap[1] * Vpp + bu * bp * q
        nVpp = Ap[0] ** 2 * Vuu + 2 * Ap[0] * Ap[1] * Vup + Ap[1] ** 2 * Vpp + bp**2 * q
        mu_u, mu_p, Vuu, Vup, Vpp = new_u, new_p, nVuu, nVup, nVpp
        if not np.isfinite(curve[t]) or curve[t] > BLOWUP * curve[0]:
            raise FloatingPointError(blowup_message(t, eta))
    return curve
