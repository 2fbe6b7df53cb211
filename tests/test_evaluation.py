"""Evaluation of model-selection scores (zoo_kernels.evaluation), with the published 11 x 11 fine-tuning table as a
golden fixture."""
import math
import pathlib

import numpy as np
import pytest
from scipy import stats

from zoo_kernels import evaluation as E

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "imagenet_zoo_finetune_accuracy.csv"

# torchvision V1 ImageNet top-1 (%), the no-target-data prior (tests/fixtures/README.md)
IMAGENET_TOP1 = {
    "resnet34": 73.314, "resnet50": 76.130, "resnet101": 77.374, "resnet152": 78.312, "densenet121": 74.434,
    "densenet169": 75.600, "densenet201": 76.896, "mnasnet1_0": 73.456, "mobilenet_v2": 71.878,
    "googlenet": 69.778, "inception_v3": 77.294,
}
EXPECTED_TAU_W = {
    "aircraft": 0.732, "caltech101": 0.630, "cars": 0.732, "cifar10": 0.775, "cifar100": 0.759, "dtd": 0.736,
    "flowers": 0.252, "food": 0.540, "pets": 0.725, "sun397": 0.666, "voc2007": 0.649,
}


@pytest.fixture(scope="module")
def table():
    return E.load_accuracy_csv(FIXTURE)


def test_fixture_shape(table):
    assert set(table) == set(EXPECTED_TAU_W)
    assert all(set(row) == set(IMAGENET_TOP1) for row in table.values())
    assert table["cifar10"]["resnet152"] == 97.53 and table["cifar10"]["mnasnet1_0"] == 92.59


def test_golden_prior_weighted_tau(table):
    got = {t: E.weighted_tau(IMAGENET_TOP1, acc) for t, acc in table.items()}
    for t, expected in EXPECTED_TAU_W.items():
        assert round(got[t], 3) == pytest.approx(expected, abs=1e-9), t
    assert round(float(np.mean(list(got.values()))), 3) == 0.654


def test_golden_evaluate_zoo(table):
    res = E.evaluate_zoo({t: IMAGENET_TOP1 for t in table}, table, n_boot=2000)
    assert round(res["mean"]["weighted_tau"], 3) == 0.654
    lo, hi = res["ci"]["weighted_tau"]
    assert lo < res["mean"]["weighted_tau"] < hi
    # the prior picks the best model outright on 8 of the 11 targets
    assert sum(r["rel@1"] == 1.0 for r in res["per_target"].values()) == 8
    assert sum(r["regret@1"] == 0.0 for r in res["per_target"].values()) == 8
    assert res["per_target"]["flowers"]["regret@1"] == pytest.approx(97.32 - 96.86)  # picks resnet152


def test_weighted_tau_is_scipy_and_symmetric():
    rng = np.random.default_rng(0)
    s, a = rng.normal(size=9), rng.normal(size=9)
    assert E.weighted_tau(s, a) == pytest.approx(stats.weightedtau(a, s).statistic, abs=1e-15)
    assert E.weighted_tau(s, a) == pytest.approx(E.weighted_tau(a, s), abs=1e-15)
    assert E.weighted_tau(a, a) == pytest.approx(1.0)
    assert E.weighted_tau(-a, a) == pytest.approx(-1.0)
    # invariant to monotone transforms of the score
    assert E.weighted_tau(np.exp(s), a) == pytest.approx(E.weighted_tau(s, a), abs=1e-15)


def test_kendall_and_pearson_hand_computed():
    # one discordant pair out of 3: tau = (2 - 1) / 3
    assert E.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert E.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(E.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(E.weighted_tau([1, 1, 1], [1, 2, 3]))  # a constant ranking orders nothing


def test_top_k_hand_computed():
    acc = {"a": 90.0, "b": 80.0, "c": 85.0, "d": 70.0}
    score = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.3}  # ranking: b, c, d, a
    assert E.top_k_relative_accuracy(score, acc, 1) == pytest.approx(80 / 90)
    assert E.top_k_regret(score, acc, 1) == pytest.approx(10.0)
    assert E.top_k_regret(score, acc, 2) == pytest.approx(5.0)
    assert E.top_k_regret(score, acc, 4) == 0.0
    assert E.top_k_relative_accuracy(score, acc, 10) == 1.0
    # ties in the score: the earlier model (in the accuracy dict's order) first
    assert E.top_k_regret({"a": 1.0, "b": 1.0}, {"a": 50.0, "b": 60.0}, 1) == pytest.approx(10.0)
    res = E.evaluate(score, acc, ks=(1, 2))
    assert set(res) == {"weighted_tau", "kendall_tau", "pearson", "rel@1", "regret@1", "rel@2", "regret@2"}


def test_bootstrap_ci():
    v = [0.1, 0.5, 0.3, 0.9, 0.4]
    m, lo, hi = E.bootstrap_ci(v, n_boot=5000, seed=1)
    assert m == pytest.approx(np.mean(v)) and lo < m < hi
    assert (m, lo, hi) == E.bootstrap_ci(v, n_boot=5000, seed=1)  # seeded
    assert E.bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))
    m2, lo2, hi2 = E.bootstrap_ci(v, n_boot=5000, seed=1, level=0.5)
    assert lo <= lo2 and hi2 <= hi
    with pytest.raises(ValueError, match="NaN"):
        E.bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        E.bootstrap_ci([])


def test_errors():
    with pytest.raises(ValueError, match="different models"):
        E.weighted_tau({"a": 1, "b": 2}, {"a": 1, "c": 2})
    with pytest.raises(TypeError, match="dicts"):
        E.weighted_tau({"a": 1, "b": 2}, [1, 2])
    with pytest.raises(ValueError, match="entries"):
        E.kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        E.pearson([1], [1])
    with pytest.raises(ValueError, match="scores.*NaN"):
        E.weighted_tau([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="k"):
        E.top_k_regret([1, 2], [1, 2], 0)
    with pytest.raises(ValueError, match="targets"):
        E.evaluate_zoo({"t1": {"a": 1, "b": 2}}, {"t2": {"a": 1, "b": 2}})
