"""Input checks and small helpers shared by the scores.

Every score converts its inputs with these helpers, so that bad input fails the same way everywhere, with a
message naming the argument:

* features: a 2-D float array (N, D) (torch tensor, numpy array or nested lists), N >= 2, all finite;
  converted to a float64 tensor on the input's device;
* labels: N integers in [0, C) (integer dtype, or floats that are whole numbers), at least two classes
  present; classes with no sample are left out (the labels are remapped to 0..C'-1 over the present classes);
* regression targets: N floats, (N,) or (N, T).

`feature_stats(features)` checks the features once and shares what several scores compute from them (the float64
copy, the centered features, the centered and uncentered D x D Grams and their eigendecompositions) between the
scores of the same features tensor, as rank() calls them one after the other on one model's features. Each
quantity is always computed the same way, so a score's value does not depend on which score ran first.
"""
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

__all__ = ["as_tensor", "check_features", "check_labels", "check_targets", "check_probs", "one_hot",
           "feature_stats", "FeatureStats", "clear_feature_cache", "set_feature_cache"]


def as_tensor(x, name):
    """A torch tensor from a tensor, numpy array or nested list (no copy where possible)."""
    if torch.is_tensor(x):
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"`{name}` must be a numeric array, got dtype=object")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` must be a numeric array: {e}") from None
    raise TypeError(f"`{name}` must be a torch.Tensor, numpy array or list, got {type(x).__name__}")


def check_features(features, name="features", dtype=torch.float64):
    """(N, D) float tensor of `dtype`; N >= 2, finite values."""
    f = as_tensor(features, name)
    if f.dim() == 1:
        raise ValueError(f"`{name}` must be 2-D (N, D); got shape {tuple(f.shape)} (use x[:, None] for one feature)")
    if f.dim() != 2:
        raise ValueError(f"`{name}` must be 2-D (N, D); got shape {tuple(f.shape)}")
    if f.is_complex() or f.dtype == torch.bool:
        raise TypeError(f"`{name}` must be real numbers, got {f.dtype}")
    if f.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 samples (rows), got N={f.shape[0]}")
    if f.shape[1] < 1:
        raise ValueError(f"`{name}` has no columns (D=0)")
    f = f.to(dtype)
    if not torch.isfinite(f).all():
        raise ValueError(f"`{name}` contains NaN or Inf")
    return f


def _integer_labels(labels, name):
    y = as_tensor(labels, name)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise ValueError(f"`{name}` must be 1-D (N,) class indices; got shape {tuple(y.shape)} "
                         "(for (N, T) float targets pass regression=True where the score supports it)")
    if y.dtype == torch.bool:
        y = y.long()
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not torch.equal(y, torch.round(y)):
            raise ValueError(f"`{name}` must be integers in [0, C), got non-integer values "
                             "(for real-valued targets pass regression=True where the score supports it)")
        y = y.long()
    elif y.is_complex():
        raise TypeError(f"`{name}` must be integers in [0, C), got {y.dtype}")
    return y.long()


def check_labels(labels, n=None, name="labels", num_classes=None, device=None):
    """(y, C): labels remapped to 0..C-1 over the classes present (long tensor), and C >= 2.

    n: the expected number of samples (the features' N); num_classes: if given, labels must lie in
    [0, num_classes).
    """
    y = _integer_labels(labels, name)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"`{name}` has {y.shape[0]} entries but the features/inputs have N={n} rows")
    if y.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 samples, got N={y.shape[0]}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"`{name}` must be integers in [0, C), got a negative label {lo}")
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}")
        if hi >= num_classes:
            raise ValueError(f"`{name}` must be integers in [0, {num_classes}), got label {hi}")
    classes, y = torch.unique(y, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"`{name}` has only one class ({int(classes[0])}); scores need at least 2 classes")
    if device is not None:
        y = y.to(device)
    return y, int(classes.numel())


def check_targets(targets, n=None, name="labels", dtype=torch.float64, device=None):
    """Regression targets as an (N, T) float tensor (a 1-D input becomes (N, 1)); finite values."""
    t = as_tensor(targets, name)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ValueError(f"`{name}` (regression targets) must be (N,) or (N, T); got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"`{name}` has {t.shape[0]} entries but the features/inputs have N={n} rows")
    if t.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 samples, got N={t.shape[0]}")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` contains NaN or Inf")
    if device is not None:
        t = t.to(device)
    return t


def check_probs(probs, name="source_probs", logits=False, dtype=torch.float64, atol=1e-3):
    """(N, Cs) rows of probabilities (softmax applied first when logits=True)."""
    p = check_features(probs, name, dtype)
    if logits:
        return torch.softmax(p, dim=1)
    if (p < 0).any():
        raise ValueError(f"`{name}` must be probabilities (non-negative rows summing to 1); it has negative "
                         "entries (pass logits=True for raw model outputs)")
    err = (p.sum(1) - 1).abs().max().item()
    if err > atol:
        raise ValueError(f"`{name}` rows must sum to 1 (max deviation {err:.3g}); pass logits=True for raw "
                         "model outputs")
    return p / p.sum(1, keepdim=True)


def one_hot(y, num_classes, dtype=torch.float64):
    return torch.nn.functional.one_hot(y, num_classes).to(dtype)


def class_stats(f, y, num_classes):
    """(counts (C,), sums (C, D)) of the rows of f per class."""
    counts = torch.bincount(y, minlength=num_classes).to(f.dtype)
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
    return counts, sums


# ------------------------------------------------------------------------------------------------ shared work


class FeatureStats:
    """What the feature scores share for one (N, D) features tensor, computed on first use:
    f (float64, checked), mean (1, D), centered (N, D), gram_c = F~^T F~ (centered, D x D), gram_u = F^T F
    (= gram_c + N mu^T mu), eigh_c / eigh_u: (eigenvalues ascending, eigenvectors) of gram_c / gram_u."""

    def __init__(self, f):
        self.f = f
        self.n, self.d = f.shape
        self._memo = {}

    def _get(self, key, fn):
        out = self._memo.get(key)
        if out is None:
            out = self._memo[key] = fn()
        return out

    @property
    def mean(self):
        return self._get("mean", lambda: self.f.mean(0, keepdim=True))

    @property
    def centered(self):
        return self._get("centered", lambda: self.f - self.mean)

    @property
    def gram_c(self):
        return self._get("gram_c", lambda: self.centered.T @ self.centered)

    @property
    def gram_u(self):
        return self._get("gram_u", lambda: torch.addmm(self.gram_c, self.mean.T, self.mean, alpha=float(self.n)))

    @property
    def eigh_c(self):
        return self._get("eigh_c", lambda: torch.linalg.eigh(self.gram_c))

    @property
    def eigh_u(self):
        return self._get("eigh_u", lambda: torch.linalg.eigh(self.gram_u))

    def nbytes(self):
        total = self.f.numel() * self.f.element_size()
        for v in self._memo.values():
            for t in (v if isinstance(v, tuple) else (v,)):
                total += t.numel() * t.element_size()
        return total


_CACHE = OrderedDict()          # id(tensor) -> (weakref, version, signature, FeatureStats)
_CACHE_LOCK = threading.Lock()
_CACHE_MAX_BYTES = [256 * 2 ** 20]


def set_feature_cache(max_bytes):
    """Bound (bytes) of the shared per-features cache (default 256 MiB; the most recent entry is always kept);
    0 disables it. Returns the previous bound."""
    old = _CACHE_MAX_BYTES[0]
    _CACHE_MAX_BYTES[0] = int(max_bytes)
    if max_bytes <= 0:
        clear_feature_cache()
    return old


def clear_feature_cache():
    with _CACHE_LOCK:
        _CACHE.clear()


def _signature(t):
    try:
        return (t._version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t.data_ptr())
    except (RuntimeError, NotImplementedError):  # e.g. inference tensors have no version counter: not cached
        return None


def feature_stats(features, name="features"):
    """FeatureStats of `features` (checked as check_features does). A torch tensor's stats are cached while the
    tensor lives and is not modified in place (its version counter), so the scores of one model's features share
    one float64 copy, Gram and eigendecomposition; numpy arrays and lists are not cached."""
    sig = _signature(features) if torch.is_tensor(features) and _CACHE_MAX_BYTES[0] > 0 else None
    if sig is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(id(features))
            if hit is not None and hit[0]() is features and hit[1] == sig:
                _CACHE.move_to_end(id(features))
                return hit[2]
    stats = FeatureStats(check_features(features, name))
    if sig is not None:
        try:
            ref = weakref.ref(features)
        except TypeError:
            return stats
        with _CACHE_LOCK:
            _CACHE[id(features)] = (ref, sig, stats)
            _CACHE.move_to_end(id(features))
            dead = [k for k, v in _CACHE.items() if v[0]() is None]
            for k in dead:
                del _CACHE[k]
            while len(_CACHE) > 1 and sum(v[2].nbytes() for v in _CACHE.values()) > _CACHE_MAX_BYTES[0]:
                _CACHE.popitem(last=False)
    return stats
