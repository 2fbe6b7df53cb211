"""benchmarks/curve_extrapolation.py: the fits recover curves of their own family, and the joined curve's targets
and the error rules match predict_long's."""
import numpy as np
import pytest

from benchmarks.curve_extrapolation import FITS, errors, extrapolated_targets


@pytest.mark.parametrize("name, curve", [
    ("power law", lambda t: 0.05 + 2.0 * (t + 5.0) ** -0.7),
    ("exponential", lambda t: 0.02 + 2.5 * np.exp(-t / 80.0)),
    ("log-log", lambda t: 3.0 * t ** -0.4)])
def test_fit_extrapolates_its_own_family(name, curve):
    t = np.concatenate([np.arange(1, 11), np.unique(np.round(10 * 1.06 ** np.arange(40)))]).astype(float)
    t = t[t <= 100]
    f = FITS[name](t, curve(t), 100)
    s = np.array([150.0, 300.0, 600.0])
    np.testing.assert_allclose(f(s), curve(s), rtol=1e-3)


def test_targets_of_the_joined_curve_and_errors():
    t = np.arange(0, 601, dtype=float)
    loss = 2.0 * np.exp(-t / 100.0)
    rec = {"real_t": t.tolist(), "real_loss": loss.tolist(), "steps": 600,
           "real": {"loss<=0.5L0": 69.3, "loss<=0.1L0": 230.3, "loss<=0.0333L0": None, "acc>=0.9": 10.0}}
    T = extrapolated_targets(rec, FITS["exponential"], 100, start=50)
    assert set(T) == {"loss<=0.5L0", "loss<=0.1L0", "loss<=0.0333L0"}   # loss targets only
    assert T["loss<=0.5L0"] == pytest.approx(100 * np.log(2), abs=0.05)   # before K: the real curve
    assert T["loss<=0.1L0"] == pytest.approx(100 * np.log(10), abs=0.5)    # after K: the fit, exact here
    assert T["loss<=0.0333L0"] == pytest.approx(100 * np.log(30), abs=0.5)
    e, strict = errors([rec], [T], 100)
    # only 0.1L0 is reached by the real run after K; 0.0333L0 is reached at 340 by the fit only: least error 260/600
    assert e == [pytest.approx(abs(T["loss<=0.1L0"] - 230.3) / 230.3)]
    assert strict[1] == pytest.approx((600 - T["loss<=0.0333L0"]) / 600)
