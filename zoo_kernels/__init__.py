"""zoo_kernels: which model of a zoo to fine-tune, and how long fine-tuning takes, from the linearized (NTK) view."""
from . import evaluation, ops, scores
from ._build import build_info
from .eigs import JacobianOperator, ntk_eigh
from .ntk import ntk
from .predict import Prediction, Predictor, predict_training_time
from .ranking import RankingTable, rank
from .samples import Samples
from .sketch import sketch_jacobian
from .spectrum import SketchGram, Spectrum, estimate_spectrum

__version__ = build_info()["version"]
__all__ = ["ops", "build_info", "ntk", "ntk_eigh", "JacobianOperator", "sketch_jacobian", "estimate_spectrum",
           "Spectrum", "SketchGram", "predict_training_time", "Predictor", "Prediction", "Samples", "scores",
           "evaluation", "rank", "RankingTable", "__version__"]
