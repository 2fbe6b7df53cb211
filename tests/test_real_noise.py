"""The scoring of benchmarks/real_noise.py (the ground truth's scatter) and predict_large's warm-up rule."""
import argparse

import numpy as np
import pytest

from benchmarks.predict_large import _small_subset, warmup_length
from benchmarks.real_noise import markdown, summary, vs_mean


def row(set_name, real0, real_s, pred):
    rel = lambda p, r: None if r is None else abs((np.inf if p is None else p) - r) / r  # noqa: E731
    return {"set": set_name, "model": "m", "task": "t", "lr": 0.01, "batch": 64, "momentum": 0.9, "seed": 1,
            "target": "loss<=0.5L0", "real0": real0, "real_s": real_s, "pred": pred,
            "real_vs_real": rel(real_s, real0) if real_s is not None else None,
            "pred_vs_real0": rel(pred, real0), "pred_vs_real_s": None if real_s is None else rel(pred, real_s)}


def test_errors_against_the_mean_and_unreached_targets():
    assert vs_mean(row("a", 100, 300, 150)) == pytest.approx(0.25)
    assert vs_mean(row("a", 100, None, 150)) is None
    assert summary([0.1, None, 0.3]).startswith("30 % (p90 inf %")  # None counts as never reached: inf
    assert summary([]) == "-"


def test_markdown_pools_the_sets():
    rows = [row("a", 200, 220, 200), row("a", 200, 180, 260), row("b", 400, 400, 300)]
    md = markdown(rows, {"date": "d", "torch": "t", "setting": None, "seeds": [1]})
    pooled = next(line for line in md.splitlines() if line.startswith("| pooled"))
    # real vs real 10 %, 10 %, 0 %: median 10 %; prediction vs seed 0: 0 %, 30 %, 25 %: median 25 %
    assert pooled.startswith("| pooled | 3 | 10 % (") and "| 25 % (" in pooled
    assert md.count("| a | m -> t |") == 2


def test_predict_large_warmup_rule():
    assert warmup_length("half-epoch", 40000, 64) == 313 and warmup_length("half-epoch", 4000, 64) == 100
    assert warmup_length("100", 40000, 64) == 100


def test_predict_large_small_subset_argument():
    assert _small_subset("floor") == "floor" and _small_subset("200") == 200
    for bad in ("1", "-5", "x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="'floor' or an int"):
            _small_subset(bad)


def test_quantile_is_numpys_and_keeps_inf():
    from benchmarks.real_noise import quantile
    g = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        v = g.random(n)
        for q in (0.5, 0.9):
            assert quantile(v, q) == pytest.approx(np.quantile(v, q), abs=1e-15)
    assert quantile([0.1, np.inf, 0.3], 0.5) == pytest.approx(0.3) and quantile([0.1, np.inf, 0.3], 0.9) == np.inf
