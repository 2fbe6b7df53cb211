"""Input checks and small helpers shared by the scores.

Every score converts its inputs with these helpers, so that bad input fails the same way everywhere, with a
message naming the argument:

* features: a 2-D float array (N, D) (torch tensor, numpy array or nested lists), N >= 2, all finite;
  converted to a float64 tensor on the input's device;
* labels: N integers in [0, C) (integer dtype, or floats that are whole numbers), at least two classes
  present; classes with no sample are left out (the labels are remapped to 0..C'-1 over the present classes);
* regression targets: N floats, (N,) or (N, T).
"""
import numpy as np
import torch

__all__ = ["as_tensor", "check_features", "check_labels", "check_targets", "check_probs", "one_hot"]


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
