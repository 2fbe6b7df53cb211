"""Whole-zoo scores: scores that are rescaled across the set of candidate models before being combined.

ETran (Gholami et al., ICCV 2023, "ETran: Energy-Based Transferability Estimation") combines, per target,
a label-free energy score and an LDA classification score after min-max normalizing each across the zoo:
    ETran(m) = 0.85 * minmax(LDA)(m) + 0.15 * minmax(energy)(m).
Such a score of one model depends on the other models, hence the whole-zoo calls here: they take a dict
{model name: features} (or {model name: {score name: value}}) and return {model name: value}.

Rank aggregation (`rank_average`) and a prior learned from other targets' ground truth (`group_prior`) are the
pieces of the documented selection strategies evaluated in benchmarks/selection_eval.py (docs/SCORES.md).
"""
import math

import torch

from ._common import check_features, check_labels, class_stats, feature_stats
from .hscore import _ledoit_wolf, ledoit_wolf

__all__ = ["minmax", "combine", "ranks", "rank_average", "standardize", "group_prior", "energy_score", "lda_score",
           "etran"]


def minmax(values):
    """{name: (v - min) / (max - min)}; all 0.5 when the values are equal. Non-finite values raise."""
    vals = {k: float(v) for k, v in values.items()}
    if not vals:
        raise ValueError("`values` is empty")
    bad = [k for k, v in vals.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite scores for {bad}")
    lo, hi = min(vals.values()), max(vals.values())
    if hi == lo:
        return {k: 0.5 for k in vals}
    return {k: (v - lo) / (hi - lo) for k, v in vals.items()}


def combine(scores, weights):
    """Weighted sum of min-max normalized scores across the zoo.

    scores: {score name: {model name: value}}; weights: {score name: weight}. Returns {model name: value}.
    Every score must cover the same models. A documented, zoo-relative combination of single scores.
    """
    if not weights:
        raise ValueError("`weights` is empty")
    missing = [s for s in weights if s not in scores]
    if missing:
        raise ValueError(f"`scores` has no entry for {missing}")
    models = set(scores[next(iter(weights))])
    for s in weights:
        if set(scores[s]) != models:
            raise ValueError(f"score {s!r} covers models {sorted(scores[s])}, expected {sorted(models)}")
    normed = {s: minmax(scores[s]) for s in weights}
    return {m: sum(w * normed[s][m] for s, w in weights.items()) for m in sorted(models)}


def _finite_dict(values, name):
    if not isinstance(values, dict) or not values:
        raise ValueError(f"`{name}` must be a non-empty dict {{model name: value}}")
    vals = {k: float(v) for k, v in values.items()}
    bad = [k for k, v in vals.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"`{name}` has non-finite values for {bad}")
    return vals


def ranks(values):
    """{name: rank} with rank 1 = the lowest value and M = the highest; ties share their average rank.
    Non-finite values raise."""
    vals = _finite_dict(values, "values")
    order = sorted(vals, key=vals.get)
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and vals[order[j + 1]] == vals[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_average(scores, weights=None):
    """Rank aggregation (Borda count) across the zoo: sum_s w_s rank_s(m) / sum_s w_s, rank 1 = the lowest
    score; higher = better. Invariant to any increasing transform of each score, so scores on different scales
    (kNN accuracy, LogME evidence, LFC) combine without calibration.

    scores: {score name: {model name: value}} over the same models; weights: {score name: weight > 0}
    (default: equal weights over every score given).
    """
    if not isinstance(scores, dict) or not scores:
        raise ValueError("`scores` must be a non-empty dict {score name: {model name: value}}")
    weights = {s: 1.0 for s in scores} if weights is None else dict(weights)
    if not weights:
        raise ValueError("`weights` is empty")
    missing = [s for s in weights if s not in scores]
    if missing:
        raise ValueError(f"`scores` has no entry for {missing}")
    if any(not (float(w) > 0 and math.isfinite(float(w))) for w in weights.values()):
        raise ValueError(f"`weights` must be positive and finite, got {weights}")
    models = set(scores[next(iter(weights))])
    for s in weights:
        if set(scores[s]) != models:
            raise ValueError(f"score {s!r} covers models {sorted(scores[s])}, expected {sorted(models)}")
    r = {s: ranks(scores[s]) for s in weights}
    total = sum(float(w) for w in weights.values())
    return {m: sum(float(w) * r[s][m] for s, w in weights.items()) / total for m in sorted(models)}


def standardize(values):
    """{name: (v - mean) / std} across the zoo (population std); all 0 when the values are equal."""
    vals = _finite_dict(values, "values")
    v = list(vals.values())
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))
    return {k: ((x - mean) / std if std > 0 else 0.0) for k, x in vals.items()}


def group_prior(accuracy, group_of):
    """A no-target-data prior learned from **other** targets: {group: mean over those targets of the
    within-target standardized fine-tuning accuracy of the group's models}.

    accuracy: {target: {model: accuracy}}, ground truth of targets other than the one being ranked (passing the
    ranked target's own accuracies would leak its answer); group_of: {model: group} (e.g. the architecture) or a
    callable model -> group. A group that is in no target is absent from the result. Positive = that group's
    models fine-tune better than the zoo average.
    """
    if not isinstance(accuracy, dict) or not accuracy:
        raise ValueError("`accuracy` must be a non-empty dict {target: {model: accuracy}}")
    group = group_of if callable(group_of) else (lambda m: group_of[m])
    sums, counts = {}, {}
    for target, acc in accuracy.items():
        if len(acc) < 2:
            raise ValueError(f"target {target!r} has {len(acc)} model(s); standardizing needs at least 2")
        for m, zv in standardize(acc).items():
            try:
                g = group(m)
            except KeyError:
                raise ValueError(f"`group_of` has no group for model {m!r}") from None
            sums[g] = sums.get(g, 0.0) + zv
            counts[g] = counts.get(g, 0) + 1
    return {g: sums[g] / counts[g] for g in sorted(sums)}


def energy_score(features, *, tail=0.5):
    """Label-free energy score: per sample E(x) = logsumexp_d f_d(x) over the feature vector; the mean of the
    lowest `tail` fraction of the samples' E (ETran's energy term). Higher is better."""
    f = check_features(features)
    if not 0 < tail <= 1:
        raise ValueError(f"`tail` must be in (0, 1], got {tail!r}")
    e = torch.logsumexp(f, dim=1).sort().values
    keep = max(1, int(round(tail * e.numel())))
    return float(e[:keep].mean())


def lda_score(features, labels):
    """Mean posterior of the true class under a linear discriminant analysis fitted to the same samples
    (class means, pooled within-class covariance with Ledoit-Wolf shrinkage, class priors n_c / N).
    In (0, 1]; higher is better. O(N D^2 + D^3)."""
    st = feature_stats(features)
    f = st.f
    y, c = check_labels(labels, f.shape[0], device=f.device)
    counts, sums = class_stats(f, y, c)
    mu = sums / counts[:, None]
    within = f - mu[y]
    if st.d <= st.n:  # within^T within = F~^T F~ - sum_c n_c (mu_c - mu)(mu_c - mu)^T, from the shared centered Gram
        delta = (mu - st.mean) * counts.sqrt()[:, None]
        cov, a = _ledoit_wolf(within, st.gram_c - delta.T @ delta)
    else:
        cov, a = ledoit_wolf(within)
    chol, info = torch.linalg.cholesky_ex(cov)
    if a > 0 and int(info) == 0:  # shrunk: positive definite
        prec_mu = torch.cholesky_solve(mu.T.contiguous(), chol)          # (D, C) Sigma^-1 mu_c
    else:
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(evals.max() * 1e-12)
        prec_mu = evecs @ ((evecs.T @ mu.T) / evals[:, None])
    logits = f @ prec_mu - 0.5 * (mu * prec_mu.T).sum(1)[None] + torch.log(counts / counts.sum())[None]
    post = torch.softmax(logits, dim=1)
    return float(post.gather(1, y[:, None]).mean())


def etran(features, labels, *, weights=(0.85, 0.15), tail=0.5):
    """ETran-style whole-zoo score: weights[0] * minmax(lda_score) + weights[1] * minmax(energy_score).

    features: {model name: (N, D) features}, labels: (N,). Returns {model name: score}. Our LDA term uses
    Ledoit-Wolf shrinkage; the reference implementation's exact LDA settings are not reproduced.
    """
    if not isinstance(features, dict) or len(features) < 1:
        raise TypeError("`features` must be a non-empty dict {model name: (N, D) features}")
    lda = {m: lda_score(f, labels) for m, f in features.items()}
    energy = {m: energy_score(f, tail=tail) for m, f in features.items()}
    return combine({"lda": lda, "energy": energy}, {"lda": weights[0], "energy": weights[1]})
