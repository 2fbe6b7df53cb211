"""benchmarks/holdout_gap.py: which targets count, the censored error, and the rank statistics."""
import pytest

from benchmarks.holdout_gap import markdown, rows, summary


def _rec(real, pred, gap, steps=600):
    keys = [f"t{i}" for i in range(len(real))]
    return {"steps": steps, "real": dict(zip(keys, real)),
            "methods": {"head-aware+warm100": {"T": dict(zip(keys, pred)), "holdout_gap_at": dict(zip(keys, gap))}}}


def test_rows_keep_predicted_targets_with_a_gap():
    rs = rows([_rec([200, 300, None, 100, None, None], [100, None, 300, 150, None, 700],
                    [1.5, 2.0, 3.0, None, 4.0, 2.0])], "head-aware+warm100")
    # t0: -50 %; t1 never predicted (out); t2 real never: (300 - 600)/600; t3 no gap (warm-up: out); t4 out;
    # t5 predicted after the run's 600 steps, never reached by it: its error is unknown (out)
    assert rs == [("t0", 1.5, -0.5, True), ("t2", 3.0, -0.5, False)]


def test_summary_ranks_errors_by_gap():
    recs = [_rec([100, 100, 100, 100], [110, 130, 160, 300], [1.0, 2.0, 3.0, 4.0]),
            _rec([100, 100, 100, None], [105, 120, 170, 200], [1.5, 2.5, 3.5, 5.0])]
    s = summary(rows(recs, "head-aware+warm100"))
    assert s["targets"] == 8 and s["real_never"] == 1
    # |errors| in gap order: .1 .05 .3 .2 .6 .7 2.0 .667 (the censored (200 - 600)/600 last): ranks 2 1 4 3 5 7 8 6,
    # sum d^2 = 10, rho = 1 - 60/504; the median gap 2.75 splits .1 .05 .3 .2 | .6 .7 2.0 .667
    assert s["rho_abs"] == pytest.approx(1 - 60 / 504)
    assert s["median_abs_low_gap"] == pytest.approx(0.15)
    assert s["median_abs_high_gap"] == pytest.approx((2 / 3 + 0.7) / 2)
    assert s["real_never_in_high_gap"] == 1
    # the flag at gap >= 1.5 (the default): .1 unflagged; .05 .3 .2 .6 .7 2.0 .667 flagged
    assert s["unflagged"] == {"targets": 1, "median_abs": pytest.approx(0.1), "within20": 1.0}
    assert s["flagged"]["targets"] == 7 and s["flagged"]["median_abs"] == pytest.approx(0.6)
    assert s["flagged"]["within20"] == pytest.approx(2 / 7) and s["real_never_flagged"] == 1
    md = markdown({"x": s})
    assert "| x | 8 (1) |" in md and "| x | 1, 0.10, 1.00 | 7, 0.60, 0.29 | 1 of 1 |" in md


def test_adaptive_rule_takes_the_doubled_subset_where_flagged():
    from benchmarks.holdout_gap import adaptive_records

    base = _rec([200, 300, 400], [150, 310, 500], [1.6, 1.2, None])
    base.update(model="m", task="t", lr=0.01, batch=64, momentum=0.9)
    base["methods"]["head-aware+warm100"]["cost_s"] = 3.0
    dbl = _rec([200, 300, 400], [190, 280, 420], [1.1, 1.0, 1.0])
    dbl.update(model="m", task="t", lr=0.01, batch=64, momentum=0.9)
    dbl["methods"]["head-aware+warm100"]["cost_s"] = 5.0
    out, = adaptive_records([base], [dbl])
    ada = out["methods"]["head-aware[adaptive]+warm100"]
    assert ada["T"] == {"t0": 190, "t1": 310, "t2": 500} and ada["flagged"] == ["t0"] and ada["cost_s"] == 8.0
    assert out["methods"]["head-aware[2M]+warm100"]["T"]["t1"] == 280
    assert "head-aware[adaptive]+warm100" not in base["methods"]  # the input is not modified
    other = dict(dbl, lr=0.1)
    with pytest.raises(ValueError, match="no doubled-subset record"):
        adaptive_records([base], [other])
