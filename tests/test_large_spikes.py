"""benchmarks/large_spikes.py: spikes against the running minimum, and the signed errors of the late targets."""
import numpy as np

from benchmarks.large_spikes import late_errors, spikes


def test_spikes_count_rises_above_the_running_minimum_after_start():
    ts = [0, 50, 100, 200, 300, 400, 500]
    loss = [4.0, 1.0, 0.5, 1.2, 0.4, 0.5, 2.0]  # after step 100: 1.2/0.5, 0.4/0.5, 0.5/0.4, 2.0/0.4
    assert spikes(ts, loss, 100, 2.0) == (5.0, 2)
    assert spikes(ts, loss, 300, 2.0) == (5.0, 1)
    assert spikes(ts, loss, 100, 10.0) == (5.0, 0)
    assert spikes(ts[:3], loss[:3], 100, 2.0) == (1.0, 0)  # nothing after the start


def test_late_errors_sign_and_censoring():
    real = {"a": 50, "b": 400, "c": 1000, "d": None, "e": 800, "f": None}
    T = {"a": 80, "b": 200, "c": 1500, "d": 900, "e": None, "f": None}
    # a before K (out); b -50 %; c +50 %; d reached by the prediction only (-inf); e never predicted (inf); f neither
    assert late_errors(real, T, 313) == [-0.5, 0.5, -np.inf, np.inf]
