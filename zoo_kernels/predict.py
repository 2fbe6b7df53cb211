"""predict_training_time: how many SGD steps (epochs, seconds) fine-tuning takes, without training.

A `Predictor` computes the linearized model once (initial outputs f₀ and the NTK, sketched or exact, on all
samples or a random subset); `predict(lr=..., batch_size=..., momentum=...)` then integrates the SGD dynamics
(zoo_kernels.dynamics) for any hyper-parameters at small cost. `predict_training_time` does both.
"""
import copy
import inspect
import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .dynamics import LOSSES, SGD, KernelOperator, coarsen, expand_curves, simulate_sgd
from .ntk import ntk
from .sketch import METHODS as SKETCH_METHODS, sketch_jacobian
from .samples import as_samples
from .spectrum import SketchGram, _eigh, spectrum_from_measurement


@dataclass
class Prediction:
    """Expected full-training-set loss and accuracy after 0..max_steps steps, and the times they imply."""

    loss_curve: np.ndarray
    accuracy_curve: np.ndarray
    n_samples: int
    batch_size: int
    lr: float
    momentum: float
    step_seconds: float  # measured wall time of one real SGD step on this device (nan if not measured)
    cost_seconds: float  # cost of the prediction: the NTK (shared by a Predictor) plus the integration
    loss: str = "ce"
    path_losses: np.ndarray = field(default=None, repr=False)
    diverged_at: int = None  # first step whose curve is NaN (predict(on_divergence="truncate")); None: finite
    # head-aware only: ‖φ_t − φ_0‖ / ‖φ_0 − mean φ_0‖ over the samples (Frobenius), how far the linearized
    # features have moved relative to their spread: a measure of how far the linearization is extrapolated
    feature_shift: np.ndarray = field(default=None, repr=False)
    warmup_steps: int = 0  # steps 0..warmup_steps-1 were run for real (zoo_kernels.warmstart)
    # head-aware, predict(track_coefficients=True): the backbone displacement's coefficients A (M, r) on the subset
    coefficients: torch.Tensor = field(default=None, repr=False)
    # head-aware with holdout=H: the mean loss of H samples outside the subset, moved by the same dynamics but
    # never trained on (a measure of how much of the predicted decrease is the subset's memorization)
    holdout_loss_curve: np.ndarray = field(default=None, repr=False)
    holdout_accuracy_curve: np.ndarray = field(default=None, repr=False)  # their mean accuracy
    # holdout_self=True: the holdout rows' loss without their own block (the holdout gap's, as validated)
    holdout_plain_loss_curve: np.ndarray = field(default=None, repr=False)
    # from_holdout(): the subset's own curves, which loss_curve (and accuracy_curve) then no longer are
    subset_loss_curve: np.ndarray = field(default=None, repr=False)
    subset_accuracy_curve: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        self.loss_curve = np.asarray(self.loss_curve, dtype=np.float64)
        self.accuracy_curve = np.asarray(self.accuracy_curve, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(self.loss_curve))
        if bad.size and self.diverged_at is None:
            self.diverged_at = int(bad[0])
        if self.diverged_at is not None:  # NaN from there on (an overflowing loss, then non-finite outputs)
            self.loss_curve, self.accuracy_curve = self.loss_curve.copy(), self.accuracy_curve.copy()
            self.loss_curve[self.diverged_at:] = np.nan
            self.accuracy_curve[self.diverged_at:] = np.nan
            warnings.warn(f"the linearized dynamics diverged at step {self.diverged_at} (lr {self.lr}, batch "
                          f"{self.batch_size}): the curves are NaN from there on; targets reached before it stand",
                          RuntimeWarning, stacklevel=3)

    @property
    def steps_per_epoch(self):
        return math.ceil(self.n_samples / self.batch_size)

    def steps_to(self, loss=None, fraction=None, accuracy=None, epsilon=None):
        """First step at which the expected curve reaches the target, or None if not within max_steps.

        loss: absolute loss L_t <= loss; fraction: L_t <= fraction * L_0; accuracy: acc_t >= accuracy;
        epsilon: the paper's criterion |L_t - L_T| < epsilon from t on, with T = max_steps.
        """
        given = [v is not None for v in (loss, fraction, accuracy, epsilon)]
        if sum(given) != 1:
            raise ValueError("give exactly one of `loss`, `fraction`, `accuracy`, `epsilon`")
        L, A = self.loss_curve, self.accuracy_curve
        if loss is not None:
            hit = L <= loss
        elif fraction is not None:
            if not 0 < fraction <= 1:
                raise ValueError(f"`fraction` must be in (0, 1], got {fraction}")
            hit = L <= fraction * L[0]
        elif accuracy is not None:
            hit = A >= accuracy
        else:
            if self.diverged_at is not None:
                return None  # no final value to converge to
            far = np.abs(L - L[-1]) >= epsilon
            last_far = np.flatnonzero(far)
            return 0 if last_far.size == 0 else (int(last_far[-1]) + 1 if last_far[-1] + 1 < len(L) else None)
        where = np.flatnonzero(hit)
        return int(where[0]) if where.size else None

    def epochs(self, steps):
        return None if steps is None else steps * self.batch_size / self.n_samples

    def seconds(self, steps):
        return None if steps is None else steps * self.step_seconds

    def time_to(self, **target):
        """{'steps', 'epochs', 'seconds'} to reach a target (the arguments of steps_to)."""
        s = self.steps_to(**target)
        return {"steps": s, "epochs": self.epochs(s), "seconds": self.seconds(s)}

    def gap_curves(self):
        """(holdout, subset) loss curves of the holdout gap: the holdout rows without their own block (as the gap was
        validated), the subset's rows; None without holdout rows."""
        if self.holdout_loss_curve is None:
            return None
        held = self.holdout_loss_curve if self.holdout_plain_loss_curve is None else self.holdout_plain_loss_curve
        return held, (self.loss_curve if self.subset_loss_curve is None else self.subset_loss_curve)

    def holdout_gap(self, steps):
        """holdout loss / subset loss after `steps` steps (interpolated; NaN where either is not predicted: no
        holdout, the warm-up, a divergence). Above 1.5 the predicted decrease leans on memorizing the subset
        (docs/PREDICT.md, "The holdout gap")."""
        curves = self.gap_curves()
        if curves is None or steps is None:
            return float("nan")
        t = np.arange(len(self.loss_curve))
        return float(np.interp(steps, t, curves[0]) / np.interp(steps, t, curves[1]))

    def from_holdout(self, accuracy=False):
        """This prediction with its loss curve (and accuracy curve, if `accuracy`) read off the holdout rows after the
        warm-up; the subset's curves move to subset_loss_curve and subset_accuracy_curve. With the holdout rows' own
        kernel block (holdout_self=True) the loss is the better full-set estimate; their accuracy was not (59 % against
        23 % median error on the accuracy target, pre-registered test; docs/PREDICT.md)."""
        if self.holdout_loss_curve is None or self.subset_loss_curve is not None:
            raise ValueError("from_holdout needs a prediction with holdout rows (holdout=H > 0), not yet read off them")
        K = self.warmup_steps

        def swap(own, held):
            return np.concatenate([own[:K], held[K:]])
        acc = swap(self.accuracy_curve, self.holdout_accuracy_curve) if accuracy else self.accuracy_curve
        with warnings.catch_warnings():  # a divergence was announced when this prediction was made
            warnings.simplefilter("ignore", RuntimeWarning)
            return replace(self, loss_curve=swap(self.loss_curve, self.holdout_loss_curve), accuracy_curve=acc,
                           subset_loss_curve=self.loss_curve, subset_accuracy_curve=self.accuracy_curve)


@torch.no_grad()
def _outputs(model, x, batch_size):
    device = next(model.parameters()).device
    return torch.cat([model(x[s:s + batch_size].to(device)).reshape(min(batch_size, len(x) - s), -1).cpu()
                      for s in range(0, len(x), batch_size)]).double()


def subset_batch_size(batch_size, n, m):
    """The batch size on M of N samples with the same per-step SGD noise: 1/B_M − 1/M = 1/B − 1/N."""
    return int(min(m, max(1, round(1.0 / (1.0 / batch_size - 1.0 / n + 1.0 / m)))))


def subset_indices(n, m, seed, offset=0):
    """The sorted indices of the m of n samples that subset mode integrates on (depends on (n, m, seed) only);
    offset=o: the samples o..m-1 of the same random order (the holdout after a subset of o)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[offset:m].sort().values


def check_sketch_method(sketch_method):
    if sketch_method not in SKETCH_METHODS:
        raise ValueError(f"`sketch_method` must be one of {SKETCH_METHODS}, got {sketch_method!r}")


def check_eval_every(eval_every, eval_growth=0.0):
    if not isinstance(eval_every, int) or isinstance(eval_every, bool) or eval_every < 1:
        raise ValueError(f"`eval_every` must be a positive int, got {eval_every!r}")
    if isinstance(eval_growth, bool) or not isinstance(eval_growth, (int, float)) or not 0 <= eval_growth <= 1:
        raise ValueError(f"`eval_growth` must be a number in [0, 1], got {eval_growth!r}")


def evaluation_steps(max_steps, eval_every, eval_growth=0.0):
    """The steps 0..max_steps at which the full-set curves are computed: 0, then every max(eval_every,
    floor(eval_growth · t)) steps (evenly spaced, then geometric: late curves change slowly), and max_steps."""
    out, t = [0], 0
    while t < max_steps:
        t = min(max_steps, t + max(eval_every, int(eval_growth * t)))
        out.append(t)
    return out


def auto_subset(n, num_classes):
    """subset="auto": M = max(N/20, 20 per class), at most N. On the long-run validation (docs/PREDICT.md) N/20
    alone over-fitted a 26-class task (8 samples per class); 20 per class did not."""
    return min(n, max(n // 20, 20 * num_classes, 2))


def resolve_subset(subset, n, num_classes):
    """The number of samples M that `subset` (None: all, "auto", or an int, unchecked) means for N samples of C
    classes."""
    return n if subset is None else auto_subset(n, num_classes) if subset == "auto" else subset


def _load_data(pred, model, data, loss, subset, seed, progress=False):
    """Checks (model, data, loss, subset) and sets the data attributes shared by the predictors."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    samples = as_samples(data)
    if len(samples) < 2:
        raise ValueError(f"`data` must hold at least 2 samples, got {len(samples)}")
    pred.model, pred.loss, pred.seed = model, loss, seed
    pred.n_samples = N = len(samples)
    M = resolve_subset(subset, N, samples.num_classes(model) if subset == "auto" else None)
    if not isinstance(M, int) or isinstance(M, bool) or not 2 <= M <= N:
        raise ValueError(f"`subset` must be None, 'auto' or an int in [2, {N}], got {subset!r}")
    pred.subset = M
    pred.subset_rows = subset_indices(N, M, seed)  # sorted
    pred.x, pred.y = samples.take(pred.subset_rows, progress, "reading the subset", keep=True)
    pred.y = pred.y.cpu()  # labels on the CPU, where the simulations run
    pred.samples = samples  # the rest is read where needed (holdout rows, warm-up batches, timed steps)


class Predictor:
    """The linearized model of one (model, data) pair, reusable across hyper-parameters.

    method="sketch": Θ ≈ S Sᵀ with S = sketch_jacobian(model, x, k) (dense JL by default), O(N·C·k) memory.
    method="exact": the ghost NTK, (N·C)² memory; for small N and as the reference.
    subset=M: the dynamics are integrated on M random samples with the batch size that keeps the per-step
    SGD noise of the full set (1/B_M − 1/M = 1/B − 1/N); per-step rates are N-independent under the
    spectral rescaling λ_N ≈ (N/M) λ_M, so the curves estimate the full set's at M/N of the cost.
    subset="auto": M = max(N/20, 20 per class) (auto_subset).
    In theory M samples fit the label noise (σ² per mode, zoo_kernels.spectrum) too fast, as it sits in M·C
    modes instead of N·C; `predict(subset_correction=True)` corrects the loss decrease by the linearized (MSE)
    ratio of the full set's to the subset's decrease. Measured at N = 10,000, M = N/20, k = 1024
    (benchmarks/predict_subset.py), the plain subset is already within 0-7 % of the full prediction in steps
    to target and the correction over-corrects (median 6 % vs 2.5 %), so it is off by default; it improves
    the MSE curve shape (max error 6-7 % vs 8-15 %) and helps where M·C is small next to k.
    """

    def __init__(self, model, data, *, loss="ce", k=1024, method="sketch", subset=None, seed=0,
                 sketch_method="dense", eval_batch_size=128, progress=False):
        start = time.perf_counter()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
        if method not in ("sketch", "exact"):
            raise ValueError(f"`method` must be 'sketch' or 'exact', got {method!r}")
        check_sketch_method(sketch_method)
        _load_data(self, model, data, loss, subset, seed, progress)
        M = self.subset
        self.f0 = _outputs(model, self.x, eval_batch_size)
        C = self.f0.shape[1]
        if self.y.min() < 0 or self.y.max() >= C:
            raise ValueError(f"`data` labels must be integers in [0, {C}) for a model with {C} outputs")
        if method == "exact":
            K = ntk(model, self.x, batch_size=eval_batch_size, progress=progress)
            self.op = KernelOperator(M, C, kernel=K.permute(0, 2, 1, 3).reshape(M * C, M * C).double().cpu())
        else:
            S = sketch_jacobian(model, self.x, k, method=sketch_method, seed=seed, batch_size=eval_batch_size,
                                progress=progress)
            self.op = KernelOperator(M, C, sketch=S.flatten(0, 1).cpu().contiguous())  # the model's dtype
        self.method, self.k = method, k
        self._subset_modes = None  # measured on the first predict(subset_correction=True)
        self.setup_seconds = time.perf_counter() - start
        self._step_seconds = {}

    def _measure_subset_modes(self):
        """Eigenvalues, energies and the noise floor σ² of the subset's operator for the initial residual
        (softmax(f₀) − y for cross-entropy), for the subset correction."""
        onehot = torch.nn.functional.one_hot(self.y, self.f0.shape[1]).double()
        delta = ((torch.softmax(self.f0, 1) if self.loss == "ce" else self.f0) - onehot).reshape(-1)
        if self.op.K is not None:
            lam, U = _eigh(self.op.K, 0.0)
            e = (U.T @ delta).square()
        else:
            acc = SketchGram(self.op.S.shape[1])
            acc.update(self.op.S.double(), delta)
            lam, e = acc.eigh()
        lam, e = lam.numpy(), e.numpy()
        spec = spectrum_from_measurement(lam, e, float(delta.square().sum()), self.subset, self.n_samples,
                                         self.f0.shape[1], method=self.method, trust=1.0)
        return lam, e, spec.noise_energy

    def _subset_correction(self, sgd, max_steps):
        """Ratio (t = 0..max_steps) of the full set's to the subset's linearized loss decrease (see the class):
        full-batch SGD with the same momentum, dampening, Nesterov and schedule on the MSE proxy, mode by mode."""
        if self._subset_modes is None:
            self._subset_modes = self._measure_subset_modes()
        lam, e, sigma2 = self._subset_modes
        N, M = self.n_samples, self.subset
        rate = lam / M
        x, buf = np.ones(len(lam)), None  # each mode's residual amplitude, relative to its start
        decay = np.zeros((max_steps + 1, len(lam)))  # 1 − x_j(t)²
        for t in range(max_steps):
            g = rate * x
            buf = g if buf is None or sgd.momentum == 0 else sgd.momentum * buf + (1 - sgd.dampening) * g
            x = x - sgd.lr_at(t, max_steps) * (g + sgd.momentum * buf if sgd.nesterov else buf)
            x = np.clip(x, -1e6, 1e6)  # unstable modes: the simulation itself raises
            decay[t + 1] = 1.0 - x * x
        dec_m = decay @ e / (2 * M)  # the subset's decrease
        corr = sigma2 * (1.0 / M - 1.0 / N) / 2 * decay.sum(1)  # the noise it learns that the full set does not
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(dec_m > 0, np.clip((dec_m - corr) / dec_m, 0.0, 1.0), 1.0)

    def step_seconds(self, batch_size, steps=3):
        """Measured wall time of one real SGD step (forward, backward, update) at this batch size."""
        if batch_size not in self._step_seconds:
            model = copy.deepcopy(self.model).train()
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-12)
            lossf = torch.nn.CrossEntropyLoss() if self.loss == "ce" else torch.nn.MSELoss()
            device = next(model.parameters()).device
            g = torch.Generator().manual_seed(self.seed)
            times = []
            for i in range(steps + 1):
                b = torch.randint(0, self.n_samples, (batch_size,), generator=g)
                xb, yb = (t.to(device) for t in self.samples.take(b))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(xb).reshape(batch_size, -1)
                target = yb if self.loss == "ce" else torch.nn.functional.one_hot(yb.long(), out.shape[1]).to(out.dtype)
                opt.zero_grad()
                lossf(out, target).backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first step warms up
                    times.append(time.perf_counter() - t)
            self._step_seconds[batch_size] = float(np.median(times))
        return self._step_seconds[batch_size]

    def predict(self, *, lr, batch_size, max_steps, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                schedule="constant", paths=4, seed=None, measure_time=True, sampling="epoch", subset_correction=False,
                on_divergence="raise", stride=1, **schedule_kwargs):
        """Prediction of the expected training curves for one hyper-parameter setting.

        sampling: "epoch" (DataLoader(shuffle=True): shuffled epochs, last batch smaller) or "stream" (full batches
        sliced from a stream of random permutations, as the MiniZoo recipe).
        subset_correction: with subset=M < N, correct the loss curve for the noise the subset learns too fast
        (see the class; off by default: measured, the plain subset curve gives the steps to target better).
        on_divergence: "raise" (FloatingPointError where the linearized dynamics diverge) or "truncate" (the
        curves are NaN from there on, `Prediction.diverged_at` holds the step, and a RuntimeWarning is issued).
        stride: integrate in super-steps of `stride` real steps (dynamics.coarsen: stride × cheaper, first-order in
        the SDE sense; for long horizons whose curves change little over `stride` steps). 1 = exact. Measured on
        the long-run validation (lr 0.001-0.03, momentum 0.9, subset M = 200), stride 5 was unstable: use it only
        far from the stability limit; it warns when stride × batch exceeds the samples (the SGD noise is lost).
        """
        start = time.perf_counter()
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}")
        sgd = SGD(lr=lr, batch_size=batch_size, momentum=momentum, dampening=dampening, nesterov=nesterov,
                  weight_decay=weight_decay, schedule=schedule, **schedule_kwargs).check(self.n_samples)
        N, M = self.n_samples, self.subset
        ratio = self._subset_correction(sgd, max_steps) if M < N and subset_correction else None
        if M < N:
            sgd.batch_size = subset_batch_size(batch_size, N, M)
        run, n_run = coarsen(sgd, stride, max_steps, M)
        loss_curve, acc_curve, per_path = simulate_sgd(self.op, self.f0, self.y, self.loss, run, n_run,
                                                       paths=paths, seed=self.seed if seed is None else seed,
                                                       sampling=sampling, on_divergence=on_divergence)
        loss_curve, acc_curve, per_path = expand_curves(loss_curve, acc_curve, per_path, stride, max_steps)
        if ratio is not None:  # L_t = L_0 − ratio_t (L_0 − L_t^subset)
            loss_curve = loss_curve[0] - ratio * (loss_curve[0] - loss_curve)
            per_path = per_path[:, :1] - ratio[None, :] * (per_path[:, :1] - per_path)
        step_s = self.step_seconds(batch_size) if measure_time else float("nan")
        return Prediction(loss_curve=loss_curve, accuracy_curve=acc_curve, n_samples=N, batch_size=batch_size,
                          lr=lr, momentum=momentum, step_seconds=step_s,
                          cost_seconds=self.setup_seconds + time.perf_counter() - start, loss=self.loss,
                          path_losses=per_path)

    def recommend(self, *, lrs, batch_sizes, max_steps, momentum=0.0, by="seconds", predict_kwargs=None, **target):
        """Grid search of (lr, batch size) minimizing the predicted time to a target (see Prediction.steps_to).

        predict_kwargs: further arguments of predict() for every setting (sampling, weight_decay, schedule, ...).
        Returns rows sorted best first: dicts with lr, batch_size, steps, epochs, seconds (None when not reached).
        """
        if by not in ("seconds", "steps", "epochs"):
            raise ValueError(f"`by` must be 'seconds', 'steps' or 'epochs', got {by!r}")
        rows = []
        for lr in lrs:
            for bs in batch_sizes:
                try:
                    p = self.predict(lr=lr, batch_size=bs, max_steps=max_steps, momentum=momentum,
                                     measure_time=by == "seconds", **(predict_kwargs or {}))
                    rows.append({"lr": lr, "batch_size": bs, **p.time_to(**target)})
                except FloatingPointError:
                    rows.append({"lr": lr, "batch_size": bs, "steps": None, "epochs": None, "seconds": None,
                                 "diverged": True})
        return sorted(rows, key=lambda r: (r[by] is None, r[by] if r[by] is not None else 0))


# method="recommended": the configuration validated on the long runs (docs/PREDICT.md, "Warm start"): K real
# steps (recommended_warmup: max(100, half an epoch); "warmup_steps" here is the least), then the head-aware model
# at w_K with fixed feature norms, 8 feature directions (at most the feature width; 16 were as accurate and 25 %
# dearer), a Kronecker sketch of width 512 on max(N/20, 20 per class) samples,
# full-set curves every 10 steps, growing to 1 % of t (the same targets on the five sets, 2026-11-28)
RECOMMENDED = {"warmup_steps": 100, "feature_norm": "fixed", "feature_rank": 8, "sketch_method": "kronecker",
               "eval_every": 10, "eval_growth": 0.01, "subset": "auto", "k": 512}
# and the loss curve read off min(200, N − M) holdout rows with their own kernel block (predict_training_time's
# holdout_self; pre-registered test: benchmarks/results/predict-long-cpu-2026-11-28-holdout-self-newest.md)
RECOMMENDED_HOLDOUT = 200
# what the validation measured for it (docs/PREDICT.md), shown with its predictions by the CLI
RECOMMENDED_VALIDATION = ("validated on 10-epoch MiniZoo fine-tuning, 15 expert/task pairs in 5 sets: median error of "
                          "the steps to a target after step 100 of 10 % (p90 30 %, 13 targets; 11 % and 15 % with two "
                          "more prediction seeds) on the fifth set, pre-registered, and 9-18 % per set (p90 34-48 %) "
                          "on the four earlier sets, which suggested this mode; more often too early than too late; "
                          "where the real network barely trains (two tasks of the fifth set) the prediction still "
                          "reached 20 targets that training never reached, and the 'memorized' flag caught all of "
                          "them, so distrust flagged targets; no error band is given, since the error does not "
                          "transfer between sets; on N = 40,000 (20,000-step runs) 100 real steps predicted the "
                          "targets 1.5-12x too late (two pairs, pre-registered), so the warm-up is now at least half an "
                          "epoch: 38.6 % there over ten pre-registered pairs (61 targets; 18.6, 21.2, 34.1, 47.2 and "
                          "68 % per pair of pairs, worse with each new set), 9-18x cheaper than the training; the "
                          "targets after the warm-up came too early on most pairs and too late or never on a "
                          "far-domain one, so a predicted step is not a bound either way")


RECOMMENDED_TESTED_N = 200000  # the largest training set of its validation (benchmarks/predict_large.py)


# the holdout gap's flag (Prediction.holdout_gap >= GAP_FLAG) and what it measured (docs/PREDICT.md)
GAP_FLAG = 1.5
GAP_VALIDATION = ("On 5 sets of MiniZoo pairs (195 targets of method='recommended' after step 100), flagged targets "
                  "had a median error of 23 % (46 % within 20 %), unflagged ones 9 % (78 %), and 35 of the 37 "
                  "targets the prediction reached but training never did were flagged; on the fifth set, run after "
                  "the threshold was fixed, 31 % against 4 %, and 20 of 20.")


def validation_note(method, warmup_steps=0, feature_norm="linear"):
    """What the long-run validation measured for a prediction method (docs/PREDICT.md), one line for the CLI."""
    if method == "recommended":
        return RECOMMENDED_VALIDATION
    rec = ("--method recommended (max(100, half an epoch) real steps first) measured 10-15 % on a pre-registered set, "
           "9-18 % on four others")
    if method == "head-aware" and warmup_steps:
        return f"not validated with these settings; {rec}"
    if method == "head-aware":
        fixed = feature_norm == "fixed"
        return ("measured on 10-epoch MiniZoo fine-tuning (3 expert/task pairs, 70 targets, N/20-sample subsets): "
                "median error of the steps "
                f"to a target {'40 % (p90 133 %)' if fixed else '50 % (p90 inf: targets never reached)'}, growing "
                f"with the target's depth ({'31 % at L0/2, 50 %' if fixed else '37 % at L0/2, 80 %'} at L0/30); {rec}")
    return ("the paper's full linearization, measured on 10-epoch MiniZoo fine-tuning (--method sketch, 3 expert/task "
            f"pairs, 70 targets): median error of the steps to a target 299 % (p90 inf); {rec}")


def recommended_warmup(n_samples, batch_size):
    """The recommended mode's real warm-up steps K = max(100, ceil(N / 2B)): at least half an epoch (pre-registered
    test on N = 40,000: benchmarks/results/predict-large-cpu-2026-11-28-halfepoch-preregistration.md); 100 wherever
    N <= 200 B, which is all of the N ≈ 4,000 validation."""
    return max(RECOMMENDED["warmup_steps"], -(-n_samples // (2 * batch_size)))


def recommended_scope(n_samples, batch_size, max_steps=None):
    """A warning (or None) when the recommended mode is used on more samples than it was tested on: N ≈ 4,000
    (15 pairs, K = 100), N = 40,000 (13 pairs, 10 of them pre-registered, K = 313 at B = 64) and N = 200,000 (2
    registered pairs, K = 1,563); with max_steps, it says what share of the run the warm-up's real steps are (the
    mode's cost grows with N, docs/PREDICT.md, Cost)."""
    if n_samples <= RECOMMENDED_TESTED_N:
        return None
    K = recommended_warmup(n_samples, batch_size)
    share = "" if max_steps is None else f", {K / max_steps:.0%} of the {max_steps}-step run it predicts"
    return (f"the recommended mode was tested on up to {RECOMMENDED_TESTED_N} samples; on these {n_samples} its "
            f"warm-up is {K} real steps (half an epoch{share}), and how its error grows with N is not known")


RECOMMENDED_SUBSET_CAP = 2000  # the largest validated M; at N = 200,000 (registered test) as accurate as N/20


def recommended_subset(n_samples, num_classes):
    """The recommended mode's subset: auto_subset's max(N/20, 20 C), at most max(2,000, 20 C) (the cap changes
    nothing up to N = 40,019; benchmarks/results/predict-large-cpu-2026-12-08-n200000-preregistration.md)."""
    return min(auto_subset(n_samples, num_classes), max(RECOMMENDED_SUBSET_CAP, 20 * num_classes))


def recommended_holdout(n_samples, num_classes, holdout=0):
    """The recommended mode's holdout rows: `holdout` if given (> 0), else min(RECOMMENDED_HOLDOUT, N − M) for its
    subset M of N samples of C classes (0 when the subset is all the data)."""
    if holdout:
        return holdout
    return max(0, min(RECOMMENDED_HOLDOUT, n_samples - recommended_subset(n_samples, num_classes)))


def recommended_settings(model, max_steps, n_samples, batch_size, cli=False, **given):
    """RECOMMENDED for this model and data (feature_rank at most the head's input width, warmup_steps
    recommended_warmup(n_samples, batch_size)); `given` holds the caller's values of RECOMMENDED's keys, which must be
    left at their defaults. cli=True names the arguments as the CLI's flags."""
    arg = (lambda key: "--" + key.replace("_", "-")) if cli else (lambda key: f"`{key}`")  # noqa: E731
    method = (lambda m: f"--method {m}") if cli else (lambda m: f"method={m!r}")  # noqa: E731
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    free = inspect.signature(predict_training_time).parameters  # the defaults of RECOMMENDED's keys
    changed = sorted(key for key, v in given.items() if v != free[key].default)
    if changed:
        raise ValueError(f"{method('recommended')} sets {', '.join(map(arg, changed))} itself; use "
                         f"{method('head-aware')} to choose them")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= n_samples:
        raise ValueError(f"{arg('batch_size')} must be an int in [1, {n_samples}] (the number of samples), got "
                         f"{batch_size!r}")
    K = recommended_warmup(n_samples, batch_size)
    if not isinstance(max_steps, int) or max_steps <= K:
        raise ValueError(f"{method('recommended')} runs the first {K} steps for real (max(100, half an epoch)): "
                         f"{arg('max_steps')} must be an int above that, got {max_steps!r} (use "
                         f"{method('head-aware')} for shorter horizons)")
    from .calibrate import _last_linear  # noqa: PLC0415 (calibrate imports this module)

    width = model.get_submodule(_last_linear(model)).in_features
    return dict(RECOMMENDED, feature_rank=min(RECOMMENDED["feature_rank"], width), warmup_steps=K)


def predict_training_time(model, data, *, lr, batch_size, max_steps, momentum=0.0, weight_decay=0.0, loss="ce",
                          seed=0, subset=None, k=None, method="sketch", dampening=0.0, nesterov=False,
                          schedule="constant", paths=4, progress=False, feature_rank=None, feature_norm="linear",
                          warmup_steps=0, sketch_method="dense", eval_every=1, eval_growth=0.0, holdout=0,
                          holdout_self=False, **schedule_kwargs):
    """Expected training loss/accuracy curves of SGD fine-tuning, predicted from the linearized model.

    data: (inputs, labels) tensors, a map-style torch Dataset of (input, label) rows or a zoo_kernels.Samples; a
    Dataset is read only at the rows the prediction uses (zoo_kernels.samples). Returns a Prediction: loss_curve and
    accuracy_curve
    (length max_steps + 1), steps_to(loss=|fraction=|accuracy=|epsilon=), epochs(), seconds() from a measured
    step time, and cost_seconds. For several settings, build one Predictor and call predict() repeatedly.

    method: "sketch" (the paper's linearization, dense JL sketch of width k), "exact" (exact NTK) or "head-aware"
    (zoo_kernels.calibrate.HeadAwarePredictor: linearized backbone, exact last linear layer; the better choice
    when fine-tuning starts from a new random head, see docs/PREDICT.md; k defaults to 512 there; feature_rank=r
    lets the features move only in their r top-energy directions, r instead of D backward passes per sample;
    feature_norm="fixed" keeps each sample's feature norm, as normalized networks do; warmup_steps=K runs the
    first K steps for real and linearizes at w_K: zoo_kernels.warmstart.predict_after_warmup, constant schedule).
    sketch_method: the Jacobian sketch of method "sketch" and "head-aware", "dense" (exact JL) or "kronecker"
    (3-4× cheaper to set up, same width k; see sketch_jacobian). eval_every=E (head-aware): the full-set curves
    are computed every E steps and interpolated in between (HeadAwarePredictor.predict); the dynamics stay exact;
    eval_growth=g spaces them max(E, g·t) apart (evaluation_steps: geometric late, for long runs).
    method="recommended": head-aware with the settings of RECOMMENDED (max(100, ceil(N / 2B)) real steps first,
    recommended_warmup, then the validated configuration; docs/PREDICT.md); it sets warmup_steps, feature_norm, feature_rank, sketch_method, eval_every,
    eval_growth, subset and k, which must then be left at their defaults.
    holdout=H (head-aware, with a subset): Prediction.holdout_loss_curve and holdout_gap(), the loss of H more
    samples moved by the same dynamics but never trained on (HeadAwarePredictor's holdout).
    holdout_self=True (with holdout=H): the holdout rows also get their own kernel block at the full data's weight
    1/N, and the loss curve is read off them after the warm-up (Prediction.from_holdout; the subset's stays in
    subset_loss_curve; the accuracy curve stays the subset's); docs/PREDICT.md, "Reading the loss off the holdout".
    method="recommended" does this with H = min(200, N − M) (recommended_holdout; holdout=H > 0 sets H).
    """
    if method not in ("sketch", "exact", "head-aware", "recommended"):
        raise ValueError(f"`method` must be 'sketch', 'exact', 'head-aware' or 'recommended', got {method!r}")
    if method == "recommended":
        data = as_samples(data)
        chosen = recommended_settings(model, max_steps, len(data), batch_size, warmup_steps=warmup_steps,
                                      feature_norm=feature_norm, feature_rank=feature_rank,
                                      sketch_method=sketch_method, eval_every=eval_every, eval_growth=eval_growth,
                                      subset=subset, k=k)
        scope = recommended_scope(len(data), batch_size, max_steps)
        if scope:
            warnings.warn(scope, RuntimeWarning, stacklevel=2)
        if len(data) >= 2:  # else the predictor's checks say why
            C = data.num_classes(model)
            holdout = recommended_holdout(len(data), C, holdout)
            chosen["subset"] = recommended_subset(len(data), C)
        holdout_self = isinstance(holdout, int) and holdout > 0
        return predict_training_time(model, data, lr=lr, batch_size=batch_size, max_steps=max_steps,
                                     momentum=momentum, weight_decay=weight_decay, loss=loss, seed=seed,
                                     method="head-aware", dampening=dampening, nesterov=nesterov, schedule=schedule,
                                     paths=paths, progress=progress, holdout=holdout, holdout_self=holdout_self,
                                     **chosen, **schedule_kwargs)
    if method != "head-aware" and (warmup_steps or feature_norm != "linear" or eval_every != 1 or eval_growth
                                   or holdout or holdout_self):
        raise ValueError("`warmup_steps`, `feature_norm`, `eval_every`, `eval_growth`, `holdout` and `holdout_self` "
                         "apply to method='head-aware' only")
    if not isinstance(holdout_self, bool) or (holdout_self and not holdout):
        raise ValueError(f"`holdout_self` must be a bool, and True only with `holdout` > 0; got {holdout_self!r} "
                         f"with holdout={holdout!r}")
    if warmup_steps:
        if schedule != "constant":
            raise ValueError("`warmup_steps` supports the constant schedule only")
        from .warmstart import predict_after_warmup  # noqa: PLC0415
        p = predict_after_warmup(model, data, lr=lr, batch_size=batch_size, max_steps=max_steps,
                                 warmup_steps=warmup_steps, momentum=momentum, dampening=dampening,
                                 nesterov=nesterov, weight_decay=weight_decay, loss=loss, subset=subset,
                                 k=512 if k is None else k, seed=seed, feature_norm=feature_norm,
                                 feature_rank=feature_rank, paths=paths, sketch_method=sketch_method,
                                 eval_every=eval_every, eval_growth=eval_growth, holdout=holdout,
                                 holdout_self=holdout_self, progress=progress)
        return p.from_holdout() if holdout_self else p
    if method == "head-aware":
        from .calibrate import HeadAwarePredictor  # noqa: PLC0415 (calibrate imports this module)
        pred = HeadAwarePredictor(model, data, loss=loss, k=512 if k is None else k, subset=subset, seed=seed,
                                  feature_rank=feature_rank, sketch_method=sketch_method, holdout=holdout,
                                  progress=progress)
    else:
        if feature_rank is not None:
            raise ValueError("`feature_rank` applies to method='head-aware' only")
        pred = Predictor(model, data, loss=loss, k=1024 if k is None else k, method=method, subset=subset,
                         seed=seed, sketch_method=sketch_method, progress=progress)
    extra = ({"feature_norm": feature_norm, "eval_every": eval_every, "eval_growth": eval_growth,
              "holdout_self": holdout_self}
             if method == "head-aware" else {})
    p = pred.predict(lr=lr, batch_size=batch_size, max_steps=max_steps, momentum=momentum,
                     weight_decay=weight_decay, dampening=dampening, nesterov=nesterov, schedule=schedule,
                     paths=paths, **extra, **schedule_kwargs)
    return p.from_holdout() if holdout_self else p
