"""NTK spectra for the training dynamics: streaming sketch Grams, and estimation from a subset.

The dynamics of a linearized model under gradient descent on Θ = J Jᵀ (N samples × C outputs) depend
only on Θ's eigenvalues λ_j and on the energy e_j = (u_jᵀ δ₀)² of the initial residual δ₀ = f₀(X) − Y along
each eigenvector. `estimate_spectrum` returns both, for all N·C modes, from M ≪ N samples:

1. Θ_M on a random subset of M samples: exact (ghost NTK, eigh of the M·C × M·C matrix) or sketched
   (the k × k Gram Sᵀ S, accumulated in float64 while streaming over the subset: O(k² + batch) memory), or
   its top k eigenpairs by randomized subspace iteration on Θ_M = J Jᵀ (method="subspace").
2. Eigenvalues: λ_j ≈ (N/M) λ_j^(M) (the eigenvalues of Θ/N converge to those of the kernel operator).
   The subset resolves only its leading modes (`trust`, by default the top quarter); beyond them a power law
   λ_j ∝ j^(−α), fitted on the trusted modes, extends the spectrum to all N·C modes.
3. Energies: signal plus white noise. The part of δ₀ that is a smooth function of x puts energy ∝ N in
   each leading mode; the rest (label noise, everything the kernel cannot resolve) spreads evenly, σ² per
   mode, over all N·C modes whatever N is. σ² is the residual energy per mode that the measured modes miss
   (for exact subsets: the mean over the lowest quarter of the modes). So e_j ≈ (N/M)(e_j^(M) − σ²) + σ²,
   and the unmeasured modes get σ² each. Plain (N/M) rescaling would move the noise into the fast modes
   and predict too fast a decay. The total, (N/M)‖δ₀^(M)‖², is unchanged.

Units: λ are eigenvalues of Θ (not Θ/N). MSE here is L = (1/2N) Σ_i ‖f(x_i) − y_i‖², so gradient descent
with learning rate η contracts mode j by (1 − η λ_j / N) per step.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .eigs import ntk_eigh
from .ntk import ntk
from .per_sample import check_model_inputs
from .samples import Samples, as_samples
from .sketch import sketch_jacobian

LOSSES = ("mse", "ce")
METHODS = ("exact", "sketch", "subspace")
DEFAULT_TRUST = 0.25  # benchmarks/results/ntk-spectrum-cpu-2026-11-26.md: best density and loss curve


class SketchGram:
    """Streaming k × k Gram Sᵀ S of sketch rows, and Sᵀ Y for residual columns Y, in float64.

    Θ ≈ S Sᵀ has the same nonzero eigenvalues as Sᵀ S, so the top of Θ's spectrum, and the residual's energy
    along its eigenvectors (v_jᵀ Sᵀ δ / √λ_j), need only these two accumulators: N can reach millions.
    With torch.distributed initialized, `all_reduce()` sums the shards of all ranks.
    """

    def __init__(self, k, targets=1, device="cpu"):
        self.gram = torch.zeros(k, k, dtype=torch.float64, device=device)
        self.cross = torch.zeros(k, targets, dtype=torch.float64, device=device)
        self.residual_norm2 = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, sketch, residual):
        """Adds rows: sketch (rows, k) and residual (rows,) or (rows, targets)."""
        residual = residual.reshape(sketch.shape[0], -1)
        ops.gram_accumulate_(self.gram, sketch, self.cross, residual)
        self.residual_norm2 += residual.double().square().sum()
        self.rows += sketch.shape[0]

    def all_reduce(self, group=None):
        import torch.distributed as dist  # noqa: PLC0415

        for t in (self.gram, self.cross, self.residual_norm2, self.rows):
            dist.all_reduce(t, group=group)
        return self

    def eigh(self, diag_reg=0.0):
        """(λ, energies) of Θ ≈ S Sᵀ, descending; energies of the first residual column."""
        lam, V = _eigh(self.gram, diag_reg)
        proj = V.T @ self.cross[:, 0]
        energies = torch.where(lam > 0, proj.square() / lam.clamp_min(torch.finfo(lam.dtype).tiny), 0.0)
        return lam, energies


def _eigh(matrix, diag_reg):
    """Eigenpairs of a symmetric matrix in float64, descending, with a clear error for non-finite input."""
    m = matrix.double()
    if not torch.isfinite(m).all():
        raise ValueError("the NTK contains NaN or Inf; check the model outputs and inputs")
    if diag_reg:
        m = m + diag_reg * m.diagonal().mean() * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    lam, U = torch.linalg.eigh(m)
    return lam.flip(0).clamp_min(0.0), U.flip(1)


def _power_law(y, lo, hi):
    """(alpha, log_c) of y_j ≈ exp(log_c) j^(-alpha), fitted in log-log on modes lo..hi (1-based)."""
    j = np.arange(lo, hi + 1, dtype=np.float64)
    v = np.asarray(y[lo - 1:hi], dtype=np.float64)
    keep = v > 0
    if keep.sum() < 2:
        return 0.0, math.log(max(float(v.max(initial=0.0)), 1e-300))
    slope, intercept = np.polyfit(np.log(j[keep]), np.log(v[keep]), 1)
    return max(-slope, 0.0), intercept


@dataclass
class Spectrum:
    """Eigenvalues and residual energies of the full NTK Θ_N, measured on M samples and extrapolated.

    `modes()` gives (eigenvalues, multiplicities, energies) with the trusted modes one by one and the
    extrapolated tail grouped into log-spaced bins, for sums over all N·C modes at small cost.
    """

    n_samples: int
    n_outputs: int
    subset: int
    eigenvalues: np.ndarray  # trusted top modes of Θ_N, descending (rescaled by N/M)
    energies: np.ndarray  # residual energies along them (signal rescaled by N/M, plus the noise floor)
    residual_norm2: float  # ‖δ₀‖² of the full set (rescaled)
    alpha: float  # eigenvalue tail exponent
    tail_scale: float  # eigenvalue tail: λ_j = tail_scale · j^(-alpha)
    noise_energy: float = 0.0  # σ²: white-noise energy per mode, in every mode of the full set
    tail_signal: np.ndarray = field(default=None, repr=False)  # signal energies of modes t+1.. (measured, untrusted)
    subset_eigenvalues: np.ndarray = field(default=None, repr=False)  # all measured eigenvalues (rescaled)
    subset_energies: np.ndarray = field(default=None, repr=False)  # all measured energies (not rescaled)
    method: str = "exact"
    rank: int = None  # numerical rank of Θ when the subset showed it rank-deficient (P < M·C): later modes are 0
    seconds: float = 0.0

    @property
    def n_modes(self):
        return self.n_samples * self.n_outputs

    def modes(self, bins=256):
        lam, e = self.eigenvalues, self.energies
        m = len(lam)
        if m >= self.n_modes:
            return lam.copy(), np.ones_like(lam), e.copy()
        edges = np.unique(np.geomspace(m + 1, self.n_modes + 1, bins + 1).astype(np.int64))
        lo, hi = edges[:-1], edges[1:]  # bin b holds modes lo..hi-1
        count = (hi - lo).astype(np.float64)
        mid = np.sqrt(lo * (hi - 1.0).clip(min=lo))
        tail_lam = self.tail_scale * mid ** (-self.alpha)
        if self.rank is not None:
            tail_lam = np.where(lo > self.rank, 0.0, tail_lam)
        signal = np.zeros(len(count))
        if self.tail_signal is not None and len(self.tail_signal):
            cum = np.concatenate([[0.0], np.cumsum(self.tail_signal)])  # mode m+1+i holds tail_signal[i]
            clip = lambda j: np.clip(j - (m + 1), 0, len(self.tail_signal))  # noqa: E731
            signal = cum[clip(hi)] - cum[clip(lo)]
        tail_e = count * self.noise_energy + signal
        # the rounding of the estimate (clipped modes) is absorbed so that the energies sum to the total
        remaining = self.residual_norm2 - float(e.sum())
        if tail_e.sum() > 0:
            tail_e = tail_e * max(remaining, 0.0) / tail_e.sum()
        else:
            tail_e = count / count.sum() * max(remaining, 0.0)
        return (np.concatenate([lam, tail_lam]), np.concatenate([np.ones(m), count]),
                np.concatenate([e, tail_e]))

    def density(self, bins=50):
        """Histogram (counts, edges) of log10 eigenvalues over all N·C modes (tail included)."""
        lam, mult, _ = self.modes()
        keep = lam > 0
        return np.histogram(np.log10(lam[keep]), bins=bins, weights=mult[keep])

    def mse_gd_loss_curve(self, lr, steps):
        """Full-batch GD on the linearized model with MSE L = (1/2N) Σ ‖f − y‖²: L_0 … L_steps."""
        lam, mult, e = self.modes()
        rate = (1.0 - lr * lam / self.n_samples) ** 2
        t = np.arange(steps + 1)[:, None]
        return (rate[None, :] ** t * e[None, :]).sum(1) / (2 * self.n_samples)


def _labels_to_targets(labels, C, loss):
    if labels.dtype.is_floating_point:
        if loss == "ce":
            raise ValueError("`labels` must be integer class labels for loss='ce'")
        return labels.reshape(labels.shape[0], -1)
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"`labels` must be integers in [0, {C}), got range [{labels.min()}, {labels.max()}]")
    return F.one_hot(labels.long(), C)


@torch.no_grad()
def initial_residual(model, inputs, labels, loss="mse", batch_size=256):
    """δ₀ = f₀(x) − y (MSE) or softmax(f₀(x)) − y (cross-entropy), (N, C) float64."""
    out = []
    device = next(model.parameters()).device
    for s in range(0, inputs.shape[0], batch_size):
        out.append(model(inputs[s:s + batch_size].to(device)).reshape(min(batch_size, inputs.shape[0] - s), -1))
    f0 = torch.cat(out).double()
    y = _labels_to_targets(labels.to(f0.device), f0.shape[1], loss).double()
    if y.shape != f0.shape:
        raise ValueError(f"`labels` give targets of shape {tuple(y.shape)}, the model outputs {tuple(f0.shape)}")
    return (torch.softmax(f0, 1) if loss == "ce" else f0) - y


def estimate_spectrum(model, data, subset=None, k=None, method=None, *, loss="mse", seed=0, batch_size=64,
                      n_total=None, trust=DEFAULT_TRUST, diag_reg=0.0, sketch_method="dense", chunk=1024, progress=False):
    """Eigenvalues of the NTK Θ_N and the initial residual's energy along them, from a random subset.

    data: (inputs, labels), labels integer classes (one-hot targets) or float targets (N, C); or a map-style Dataset
      of (input, integer label) rows (or zoo_kernels.Samples), read only at the subset's rows, chunk by chunk for
      method="sketch" (O(chunk + k²) memory for any M).
    subset: M samples (default: all). n_total: the N to extrapolate to (default len(inputs)).
    method: "exact" (ghost NTK, (M·C)² memory), "sketch" (k × k streaming Gram of sketch_jacobian; default when k
      is given) or "subspace" (the top k eigenpairs of the exact Θ_M by randomized subspace iteration,
      zoo_kernels.ntk_eigh: O(M·C·k) memory, never forms Θ_M; the modes beyond k are the measured remainder).
    trust: fraction of the measured modes kept as measured; the rest is the fitted power-law tail.
    Returns a Spectrum.
    """
    import time  # noqa: PLC0415

    start = time.perf_counter()
    if isinstance(data, (torch.utils.data.Dataset, Samples)):
        samples = as_samples(data)
        N, read = len(samples), samples.take  # rows read where used; each checked
        check_model_inputs(model, read([0])[0], batch_size)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, labels = data
        check_model_inputs(model, inputs, batch_size)
        if len(labels) != len(inputs):
            raise ValueError(f"`labels` has {len(labels)} entries for {len(inputs)} inputs")
        N, read = len(inputs), lambda rows: (inputs[rows], labels[rows])  # noqa: E731
    else:
        raise TypeError("`data` must be an (inputs, labels) pair of tensors or a map-style torch Dataset")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    method = method or ("sketch" if k is not None else "exact")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if method != "exact" and (not isinstance(k, int) or k <= 0):
        raise ValueError(f"`k` must be a positive int for method={method!r}, got {k!r}")
    if not 0 < trust <= 1:
        raise ValueError(f"`trust` must be in (0, 1], got {trust}")
    M = N if subset is None else subset
    if not isinstance(M, int) or not 1 <= M <= N:
        raise ValueError(f"`subset` must be an int in [1, {N}], got {subset!r}")
    n_total = N if n_total is None else n_total
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(N, generator=g)[:M].sort().values
    if method != "sketch":
        x, y = read(idx)

    if method == "exact":
        delta = initial_residual(model, x, y, loss, batch_size)
        C = delta.shape[1]
        K = ntk(model, x, batch_size=batch_size, progress=progress).permute(0, 2, 1, 3).reshape(M * C, M * C)
        lam, U = _eigh(K, diag_reg)
        energies = (U.T @ delta.reshape(-1).to(U.device)).square()
        residual_norm2 = float(delta.square().sum())
    elif method == "subspace":
        delta = initial_residual(model, x, y, loss, batch_size)
        C = delta.shape[1]
        lam, U = ntk_eigh(model, x, min(k, M * C), seed=seed, batch_size=batch_size, progress=progress)
        energies = (U.reshape(M * C, -1).T @ delta.reshape(-1).to(U)).square()
        residual_norm2 = float(delta.square().sum())
    else:
        acc = None
        for s in range(0, M, chunk):
            xs, ys = read(idx[s:s + chunk])  # streamed: a chunk of the subset at a time
            delta = initial_residual(model, xs, ys, loss, batch_size)
            S = sketch_jacobian(model, xs, k, method=sketch_method, seed=seed, batch_size=batch_size)
            acc = acc or SketchGram(k, device=S.device)
            acc.update(S.flatten(0, 1), delta.reshape(-1).to(S.device))
        C = delta.shape[1]
        lam, energies = acc.eigh(diag_reg)
        residual_norm2 = float(acc.residual_norm2)

    return spectrum_from_measurement(lam.cpu().numpy(), energies.cpu().numpy(), residual_norm2, M, n_total, C,
                                     trust=trust, method=method, seconds=time.perf_counter() - start)


def spectrum_from_measurement(eigenvalues, energies, residual_norm2, subset, n_total, n_outputs, *, trust=DEFAULT_TRUST,
                              method="sketch", seconds=0.0):
    """The Spectrum of Θ_N from what was measured on M = `subset` samples (estimate_spectrum's last step).

    eigenvalues, energies: of Θ_M (not rescaled), descending; for method="sketch" the k modes of S Sᵀ,
    for "exact" all M·C modes. residual_norm2: ‖δ₀^(M)‖² of the subset.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    e_m = np.asarray(energies, dtype=np.float64)
    if not (np.isfinite(lam).all() and np.isfinite(e_m).all() and math.isfinite(residual_norm2)):
        raise ValueError("the measured eigenvalues or energies contain NaN or Inf")
    M, C = subset, n_outputs
    scale = n_total / M
    m = int(np.count_nonzero(lam > lam[0] * 1e-12)) if lam.size else 0
    rank = m if method == "exact" and m < len(lam) else None
    full = len(lam) >= n_total * C  # every mode measured: no tail
    t = len(lam) if full else max(2, min(m, int(round(trust * m))))
    # white-noise floor σ² per mode: what the measured modes miss, spread over the unmeasured ones
    if M * C > len(lam):
        sigma2 = max(residual_norm2 - float(e_m.sum()), 0.0) / (M * C - len(lam))
    elif m >= 8:
        sigma2 = float(e_m[m - m // 4:m].mean())
    else:
        sigma2 = 0.0
    e_n = np.maximum(scale * (e_m - sigma2) + sigma2, 0.0)  # = e_m when M = N
    tail_signal = np.maximum(scale * (e_m[t:m] - sigma2), 0.0)  # measured but untrusted modes: noise added in modes()
    alpha, log_c = _power_law(lam * scale, max(1, t // 4), t)
    return Spectrum(n_samples=n_total, n_outputs=C, subset=M, eigenvalues=lam[:t] * scale, energies=e_n[:t],
                    residual_norm2=residual_norm2 * scale, alpha=alpha, tail_scale=math.exp(log_c),
                    noise_energy=sigma2, tail_signal=tail_signal, subset_eigenvalues=lam * scale,
                    subset_energies=e_m, method=method, rank=rank, seconds=seconds)
