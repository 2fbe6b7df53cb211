"""benchmarks/predict_long.py's summary: errors over the targets the real run reaches after the warm-up, and the
targets that only the prediction reaches within the run (reported beside the medians, and in the strict medians
with a lower bound of their error)."""
import math

import pytest

from benchmarks.predict_long import summary_rows, with_preamble


def _record(real, pred, steps=600):
    return {"model": "m", "task": "t", "steps": steps, "train_wall_s": 10.0, "setup_s": {},
            "real": real, "methods": {"head-aware+warm100": {"T": pred, "total_s": 2.0, "cost_s": 2.0}}}


def test_errors_and_targets_reached_by_the_prediction_only():
    recs = [_record({"a": 50.0, "b": 200.0, "c": None, "d": None, "e": None},
                    {"a": 60.0, "b": 250.0, "c": 300.0, "d": 700.0, "e": None}),   # c: within the run, never reached
            _record({"a": 400.0, "b": None, "c": None, "d": 150.0, "e": 120.0},
                    {"a": 300.0, "b": 90.0, "c": None, "d": None, "e": 180.0})]    # b: before K = 100, not predicted
    (row,) = summary_rows(recs)
    # a = 50 is reached in the warm-up (not counted); b 250 vs 200, a 300 vs 400, d never vs 150, e 180 vs 120
    assert row["pairs"] == 4
    assert row["median"] == pytest.approx((0.25 + 0.5) / 2) and math.isinf(row["p90"])
    assert row["false_reach"] == 1
    # strict: c (predicted at 300, the real run of 600 steps never reaches it) counts with its least error, 0.5
    assert row["median_strict"] == pytest.approx(0.5) and math.isinf(row["p90_strict"])
    assert row["train_over_pred"] == pytest.approx(5.0)


def test_rescore_keeps_the_hand_written_text():
    table = "| method | pairs |\n|---|---|\n| x | 1 |"
    assert with_preamble("# Title\n\nwhy\n\n| method | old |\n|---|\n", table) == "# Title\n\nwhy\n\n" + table + "\n"
    assert with_preamble("# Pre-registration\n\nclaims\n", table) == "# Pre-registration\n\nclaims\n\n" + table + "\n"
    assert with_preamble("", table) == table + "\n"
