"""The selection-evaluation helpers of benchmarks/selection_eval.py: rank averaging, NaN handling, leave-one-task-out
choice, random-ranking baseline (fast; no model is scored)."""
import importlib.util
import math
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "selection_eval.py")
_spec = importlib.util.spec_from_file_location("selection_eval", _PATH)
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)


def test_rank_average_ties_and_order():
    a = {"m1": 0.1, "m2": 0.5, "m3": 0.9}
    b = {"m1": 3.0, "m2": 1.0, "m3": 1.0}       # m2, m3 tie: average rank 1.5
    r = S.rank_average([a, b])
    assert r == pytest.approx({"m1": (1 + 3) / 2, "m2": (2 + 1.5) / 2, "m3": (3 + 1.5) / 2})
    # invariant to monotone transforms of either score
    r2 = S.rank_average([{k: math.exp(v) for k, v in a.items()}, {k: 10 * v - 3 for k, v in b.items()}])
    assert r2 == pytest.approx(r)


def test_nan_ranks_last():
    v, bad = S.finite_or_last({"a": 1.0, "b": float("nan"), "c": -2.0})
    assert bad == 1 and v["b"] < v["c"] < v["a"]
    assert S._ranks({"a": 1.0, "b": float("nan"), "c": -2.0}) == {"a": 3.0, "b": 1.0, "c": 2.0}


def test_loto_never_uses_the_held_out_task():
    # candidate "x" is perfect only on task t0; "y" is better on every other task
    wtau = {"x": {"t0": 1.0, "t1": 0.0, "t2": 0.0}, "y": {"t0": -1.0, "t1": 0.5, "t2": 0.5}}
    choice = S.loto_select(wtau, ["t0", "t1", "t2"])
    assert choice["t0"] == "y"                      # chosen from t1, t2 only
    assert choice["t1"] == "x" and choice["t2"] == "x"   # (1 + 0)/2 = 0.5 > (-1 + 0.5)/2


def test_random_baseline_near_zero():
    acc = {f"m{i}": float(i) for i in range(12)}
    r = S.random_baseline(acc, draws=400, seed=1)
    assert abs(r["weighted_tau"]) < 0.1 and abs(r["kendall_tau"]) < 0.1
    assert 0 < r["regret@3"] < r["regret@1"]


def test_zrank_mean_is_the_mean_of_standardized_ranks():
    a = {"m1": 0.1, "m2": 0.5, "m3": 0.9}
    b = {"m1": 30.0, "m2": 10.0, "m3": 20.0}
    z = math.sqrt(1.5)  # ranks 1, 2, 3 -> z = -1.2247, 0, 1.2247
    assert S.zrank_mean([a, b]) == pytest.approx({"m1": (-z + z) / 2, "m2": (0 - z) / 2, "m3": (z + 0) / 2})


def test_arch_prior_strategy_never_uses_the_held_out_task():
    import numpy as np
    from zoo_kernels import zoo
    from zoo_kernels.scores import group_prior
    models = ["convnet_latin", "convnet_multi", "resnet_latin", "resnet_multi", "mobilenet_latin", "mobilenet_multi"]
    rng = np.random.default_rng(0)
    tasks = ["t0", "t1", "t2", "t3", "t4"]
    acc = {t: {m: float(rng.uniform(10, 90)) for m in models} for t in tasks}
    base = {t: {m: float(rng.normal()) for m in models} for t in tasks}
    out, beta, prior = S.arch_prior_strategy(base, acc, tasks)
    for t in tasks:  # the prior is learned from the other tasks only
        others = {u: acc[u] for u in tasks if u != t}
        assert prior[t] == pytest.approx(group_prior(others, lambda m: zoo.model_info(m)["arch"]))
        assert out[t] == pytest.approx({m: base[t][m] + beta[t] * prior[t][zoo.model_info(m)["arch"]]
                                        for m in models})
    # rewriting the held-out task's ground truth leaves its ranking unchanged
    acc2 = dict(acc)
    acc2["t0"] = {m: 100.0 - v for m, v in acc["t0"].items()}
    out2, beta2, _ = S.arch_prior_strategy(base, acc2, tasks)
    assert out2["t0"] == pytest.approx(out["t0"]) and beta2["t0"] == beta["t0"]
    # an architecture effect that holds on every task is learned: the best architecture's models rise
    acc3 = {t: {m: (80.0 if m.startswith("convnet") else 40.0) + float(rng.normal()) for m in models}
            for t in tasks}
    noise = {t: {m: 0.01 * float(rng.normal()) for m in models} for t in tasks}  # an uninformative score
    out3, beta3, _ = S.arch_prior_strategy(noise, acc3, tasks)
    assert all(beta3[t] > 0 for t in tasks)
    assert all(min(out3[t][m] for m in models if m.startswith("convnet"))
               > max(out3[t][m] for m in models if not m.startswith("convnet")) for t in tasks)
