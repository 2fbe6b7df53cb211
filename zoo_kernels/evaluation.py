"""Evaluating model-selection scores against ground-truth fine-tuning accuracies.

Per target task, a score ranks the zoo; it is compared with the models' fine-tuned accuracies by
* weighted Kendall tau: scipy.stats.weightedtau with its defaults (hyperbolic weights 1/(r+1) on the rank, the
  average of the two orderings), as LogME, TLlib, SFDA, NCTI, ETran and Agostinelli et al. report it;
* Kendall tau (tau-b) and Pearson r;
* top-k relative accuracy, max acc(top-k by score) / max acc (SFDA's rel@k), and top-k regret,
  max acc - max acc(top-k by score), in the accuracy's own units (points when accuracies are in %).
Across targets: the mean, and a percentile bootstrap confidence interval of the mean over targets.

Scores and accuracies are given either as dicts {model: value} (aligned by model name) or as equal-length
sequences. Higher score = predicted better.
"""
import csv
import math

import numpy as np
from scipy import stats

__all__ = ["weighted_tau", "kendall_tau", "pearson", "top_k_relative_accuracy", "top_k_regret", "evaluate",
           "evaluate_zoo", "bootstrap_ci", "load_accuracy_csv", "METRICS"]


def _align(scores, accuracy):
    """(scores, accuracy) as float64 arrays in the same model order."""
    if isinstance(scores, dict) or isinstance(accuracy, dict):
        if not (isinstance(scores, dict) and isinstance(accuracy, dict)):
            raise TypeError("`scores` and `accuracy` must both be dicts {model: value}, or both sequences")
        if set(scores) != set(accuracy):
            only_s = sorted(set(scores) - set(accuracy))
            only_a = sorted(set(accuracy) - set(scores))
            raise ValueError(f"`scores` and `accuracy` cover different models: only in scores {only_s}, "
                             f"only in accuracy {only_a}")
        names = list(accuracy)
        s = np.array([float(scores[m]) for m in names], dtype=np.float64)
        a = np.array([float(accuracy[m]) for m in names], dtype=np.float64)
    else:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        a = np.asarray(accuracy, dtype=np.float64).reshape(-1)
        if s.shape != a.shape:
            raise ValueError(f"`scores` has {s.size} entries but `accuracy` has {a.size}")
    if s.size < 2:
        raise ValueError(f"need at least 2 models, got {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("`scores` contains NaN or Inf")
    if not np.isfinite(a).all():
        raise ValueError("`accuracy` contains NaN or Inf")
    return s, a


def weighted_tau(scores, accuracy):
    """scipy.stats.weightedtau(accuracy, scores) with default arguments (symmetric in its two arguments); NaN, as
    scipy gives, when the scores are all equal (a constant ranking orders nothing)."""
    s, a = _align(scores, accuracy)
    return float(stats.weightedtau(a, s).statistic)


def kendall_tau(scores, accuracy):
    """Kendall tau-b between the scores and the accuracies (scipy.stats.kendalltau)."""
    s, a = _align(scores, accuracy)
    return float(stats.kendalltau(s, a).statistic)


def pearson(scores, accuracy):
    """Pearson r between the scores and the accuracies; NaN if either is constant."""
    s, a = _align(scores, accuracy)
    if np.ptp(s) == 0 or np.ptp(a) == 0:
        return float("nan")
    return float(stats.pearsonr(s, a).statistic)


def _top_k(s, k):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    return np.argsort(-s, kind="stable")[:k]  # ties: the earlier model first


def top_k_relative_accuracy(scores, accuracy, k=1):
    """max accuracy among the k best-scored models / max accuracy of the zoo (1.0 = the best model is found)."""
    s, a = _align(scores, accuracy)
    best = a.max()
    if best <= 0:
        raise ValueError("top-k relative accuracy needs a positive best accuracy")
    return float(a[_top_k(s, k)].max() / best)


def top_k_regret(scores, accuracy, k=1):
    """max accuracy of the zoo - max accuracy among the k best-scored models (>= 0, in accuracy units)."""
    s, a = _align(scores, accuracy)
    return float(a.max() - a[_top_k(s, k)].max())


METRICS = ("weighted_tau", "kendall_tau", "pearson")


def evaluate(scores, accuracy, ks=(1, 3)):
    """All metrics for one target: weighted_tau, kendall_tau, pearson, rel@k and regret@k for k in ks."""
    out = {"weighted_tau": weighted_tau(scores, accuracy), "kendall_tau": kendall_tau(scores, accuracy),
           "pearson": pearson(scores, accuracy)}
    for k in ks:
        out[f"rel@{k}"] = top_k_relative_accuracy(scores, accuracy, k)
        out[f"regret@{k}"] = top_k_regret(scores, accuracy, k)
    return out


def bootstrap_ci(values, *, n_boot=10000, level=0.95, seed=0):
    """(mean, low, high): the mean of `values` and a percentile bootstrap CI of the mean (resampling the values
    with replacement, n_boot times, seeded). NaN values are an error."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("`values` is empty")
    if not np.isfinite(v).all():
        raise ValueError("`values` contains NaN or Inf")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def evaluate_zoo(scores, accuracy, *, ks=(1, 3), n_boot=10000, level=0.95, seed=0):
    """Per-target metrics and their means over targets with bootstrap CIs.

    scores: {target: {model: score}}; accuracy: {target: {model: accuracy}} (same targets).
    Returns {"per_target": {target: metrics}, "mean": {metric: mean}, "ci": {metric: (low, high)}}; a metric
    that is NaN on some target (Pearson with a constant score) is averaged over the other targets.
    """
    if set(scores) != set(accuracy):
        raise ValueError(f"`scores` and `accuracy` cover different targets: {sorted(set(scores) ^ set(accuracy))}")
    per = {t: evaluate(scores[t], accuracy[t], ks) for t in accuracy}
    mean, ci = {}, {}
    for metric in next(iter(per.values())):
        vals = [per[t][metric] for t in per if not math.isnan(per[t][metric])]
        if not vals:
            mean[metric], ci[metric] = float("nan"), (float("nan"), float("nan"))
            continue
        m, lo, hi = bootstrap_ci(vals, n_boot=n_boot, level=level, seed=seed)
        mean[metric], ci[metric] = m, (lo, hi)
    return {"per_target": per, "mean": mean, "ci": ci}


def load_accuracy_csv(path, target_column="dataset"):
    """{target: {model: accuracy}} from a CSV with one row per target and one column per model."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or target_column not in rows[0]:
        raise ValueError(f"{path}: expected a header with a {target_column!r} column")
    return {r[target_column]: {m: float(v) for m, v in r.items() if m != target_column} for r in rows}
