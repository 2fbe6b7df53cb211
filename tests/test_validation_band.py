"""benchmarks/validation_band.py: which targets count, censoring, quantiles and the leave-one-set-out coverage."""
import numpy as np
import pytest

from benchmarks.validation_band import band, leave_one_out, quantiles, ratios


def _rec(real, pred, steps=600):
    keys = [f"t{i}" for i in range(len(real))]
    return {"steps": steps, "real": dict(zip(keys, real)),
            "methods": {"head-aware+warm100": {"T": dict(zip(keys, pred))}}}


def test_ratios_count_predicted_targets_after_the_warmup():
    rho, cen = ratios([_rec([300, 50, 300, None, None, 400, 500], [150, 60, None, 300, 700, 200, 100])])
    # 300/150; t1 reached in the warm-up (out); t2 never predicted (out); t3 censored 600/300;
    # t4 predicted beyond the run (out); 400/200; t6 predicted within the warm-up (out)
    np.testing.assert_allclose(rho, [2.0, 2.0, 2.0])
    assert cen.tolist() == [False, True, False]


def test_quantiles_band_and_leave_one_out():
    assert quantiles(np.arange(1, 11) / 10) == pytest.approx((0.1, 0.5, 0.9))
    data = {"a": (np.full(10, 1.0), np.zeros(10, bool)), "b": (np.full(10, 1.0), np.zeros(10, bool)),
            "c": (np.full(10, 2.0), np.zeros(10, bool))}
    assert band(data) == (1.0, 1.0, 2.0)
    loo = leave_one_out(data)
    assert loo["c"] == ((1.0, 1.0), 0.0) and loo["a"] == ((1.0, 2.0), 1.0)
