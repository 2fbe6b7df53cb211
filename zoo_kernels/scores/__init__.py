"""Transferability scores: which model of a zoo to fine-tune on a target task, without fine-tuning.

Every score takes features / probabilities / labels as torch tensors or numpy arrays and returns a Python
float (higher = better model for the target). See docs/SCORES.md for the formulas, costs and caveats.
"""
from ._common import clear_feature_cache, feature_stats, set_feature_cache
from .correlation import gradient_kernel, label_matrix, lfc, lgc, lgc_from_kernel, lgc_from_sketch, with_target_head
from .gbc import gbc
from .hscore import hscore, hscore_shrinkage, ledoit_wolf
from .knn import knn_accuracy
from .krr import krr_loo_accuracy
from .linear_probe import linear_probe_accuracy
from .ncti import ncti, ncti_combine, ncti_terms
from .prior import model_size, source_accuracy
from .probabilistic import gmm_posteriors, leep, logme, nce, nleep, pca
from .sfda import fisher_lda, sfda
from .transrate import transrate
from .zoo import (combine, energy_score, etran, group_prior, lda_score, minmax, rank_average, ranks,
                  standardize)

__all__ = [
    "lfc", "lgc", "lgc_from_kernel", "lgc_from_sketch", "gradient_kernel", "label_matrix", "with_target_head",
    "leep", "nce", "nleep", "logme", "hscore", "hscore_shrinkage", "transrate", "gbc", "knn_accuracy",
    "krr_loo_accuracy",
    "linear_probe_accuracy", "model_size", "source_accuracy", "sfda", "fisher_lda",
    "etran", "ncti", "ncti_terms", "ncti_combine", "lda_score", "energy_score", "minmax", "combine", "ranks",
    "rank_average", "standardize", "group_prior",
    "ledoit_wolf", "pca", "gmm_posteriors", "feature_stats", "clear_feature_cache", "set_feature_cache",
]
