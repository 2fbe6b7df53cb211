"""NCTI, Neural Collapse informed Transferability Index (Wang et al., ICCV 2023, "How Far Pre-trained Models Are
from Neural Collapse on the Target Dataset Informs their Transferability").

Neural collapse: at the end of training, a classifier's penultimate features (NC1) collapse onto their class
means, (NC2) whose centered means form a simplex equiangular tight frame, and (NC4) the classifier acts as a
nearest-class-center rule. NCTI measures how close a pre-trained model's target features already are to that
state, with one term per property, computed in a regularized Fisher space of the features:

* the features are centered and projected on their top ``pca_dim`` = 64 principal axes (all of them when
  D <= 64), then on the Fisher directions of SFDA's first step (``sfda.fisher_lda``: within-class scatter
  shrunk toward I with lam = exp(-5 lambda_max(S_w)), at most C - 1 directions, W^T S_w(lam) W = I), giving Z
  (N, k) and the posteriors p(c | x_i) of the LDA (nearest class center in that whitened space, with log-prior
  offsets);
* ``etf`` (NC2, class separation toward a simplex ETF) = ||Z - mean(Z)||_*, the nuclear norm of the centered
  Fisher features (large when the classes spread in many equally strong directions);
* ``ncc`` (NC4) = the mean over samples of p(y_i | x_i), the nearest-class-center (LDA) self-prediction;
* ``vc`` (NC1, within-class variability) = log sum_c ||P_c||_*, P_c (n_c, C) the posteriors of the samples of
  class c (rank one, so small, when a class's samples are predicted alike).

The three terms are on different scales, so they are min-max normalized **across the models of the zoo** and
combined as
    NCTI(m) = minmax(etf)(m) + minmax(ncc)(m) - minmax(vc)(m),
hence a whole-zoo call, ``ncti({model: features}, labels)`` (like ``zoo.etran``). ``ncti_terms`` gives one
model's raw terms; ``ncti_combine`` combines terms computed elsewhere (e.g. cached per model).

What was reconstructed, not confirmed from the paper's text: the PCA dimension 64, the choice of SFDA's
adaptive shrinkage for the LDA (the authors' code takes its shrinkage from the PCA spectrum in a way we could
not pin down), the unnormalized nuclear norm of the centered Fisher features, the NC4 term as the mean
posterior of the true class (not its log, not the accuracy), and the equal weights of the combination
(``weights``). The structure (PCA, LDA, three terms, min-max across the zoo, a + b - c) follows the public code
as described in our reference notes. Cost per model: O(N D^2 + D^3) plus an SVD of an (N, C - 1) and C SVDs of
(n_c, C) matrices.
"""
import math

import torch

from ._common import check_labels, feature_stats
from .probabilistic import _pca
from .sfda import SHRINK_RATE, fisher_lda
from .zoo import minmax

__all__ = ["ncti", "ncti_terms", "ncti_combine", "NCTI_TERMS", "PCA_DIM"]

NCTI_TERMS = ("etf", "ncc", "vc")
PCA_DIM = 64


def ncti_terms(features, labels, *, pca_dim=PCA_DIM, shrinkage=None, shrink_rate=SHRINK_RATE):
    """One model's raw NCTI terms {"etf", "ncc", "vc"} (see the module docstring); higher etf and ncc and
    lower vc are better. pca_dim: the number of principal axes kept first (None: all)."""
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int) or pca_dim < 1):
        raise ValueError(f"`pca_dim` must be None or an int >= 1, got {pca_dim!r}")
    st = feature_stats(features)
    y, c = check_labels(labels, st.n, device=st.f.device)
    g = _pca(st, 1.0, pca_dim)  # the centered Gram's eigendecomposition, shared with the H-score / N-LEEP
    fit = fisher_lda(g, y, shrinkage=shrinkage, shrink_rate=shrink_rate)
    z = fit["projected"]
    etf = float(torch.linalg.svdvals(z - z.mean(0, keepdim=True)).sum())
    post = fit["posteriors"]
    ncc = float(post.gather(1, y[:, None]).mean())
    nuc = sum(float(torch.linalg.svdvals(post[y == k]).sum()) for k in range(c))
    vc = math.log(nuc)
    return {"etf": etf, "ncc": ncc, "vc": vc}


def ncti_combine(terms, weights=(1.0, 1.0, 1.0)):
    """{model: NCTI} from {model: {"etf", "ncc", "vc"}}: w0 minmax(etf) + w1 minmax(ncc) - w2 minmax(vc) across
    the models given (one model: every min-max is 0.5)."""
    if not isinstance(terms, dict) or not terms:
        raise ValueError("`terms` must be a non-empty dict {model name: {'etf', 'ncc', 'vc'}}")
    w = tuple(float(v) for v in weights)
    if len(w) != 3 or not all(math.isfinite(v) and v >= 0 for v in w):
        raise ValueError(f"`weights` must be 3 finite numbers >= 0 (etf, ncc, vc), got {weights!r}")
    for m, t in terms.items():
        if not isinstance(t, dict) or any(k not in t for k in NCTI_TERMS):
            raise ValueError(f"`terms[{m!r}]` must have the keys {NCTI_TERMS}")
    normed = {k: minmax({m: t[k] for m, t in terms.items()}) for k in NCTI_TERMS}
    return {m: w[0] * normed["etf"][m] + w[1] * normed["ncc"][m] - w[2] * normed["vc"][m] for m in terms}


def ncti(features, labels, *, pca_dim=PCA_DIM, shrinkage=None, shrink_rate=SHRINK_RATE, weights=(1.0, 1.0, 1.0)):
    """NCTI of every model of a zoo: features = {model name: (N, D) features} (the same N samples), labels (N,)
    in [0, C). Returns {model name: score} in [-1, 2]; higher is better. A model's score depends on the other
    models (min-max across the zoo); see the module docstring."""
    if not isinstance(features, dict) or len(features) < 1:
        raise TypeError("`features` must be a non-empty dict {model name: (N, D) features}")
    terms = {}
    for m, f in features.items():
        try:
            terms[m] = ncti_terms(f, labels, pca_dim=pca_dim, shrinkage=shrinkage, shrink_rate=shrink_rate)
        except (ValueError, TypeError) as e:
            raise type(e)(f"model {m!r}: {e}") from None
    return ncti_combine(terms, weights)
