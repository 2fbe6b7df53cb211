"""Fixtures of the benchmark suite (pytest-benchmark).

* ``machine`` (session): the measured fp32 matmul rate (``matmul_gflops``, best of 5 torch.mm 2048x2048) and
  copy bandwidth (``bandwidth_gbs``, bytes read + written of a 512 MB copy, best of 5) at ZK_BENCH_THREADS
  threads (default 2), with the CPU model and versions. Recorded in every benchmark's extra_info and in the
  JSON's machine_info["zoo_kernels_bench"] (benchmarks/report.py prints them).
* ``baselines`` (session): the time of each pure-torch baseline, measured once per session (by the
  baseline's own benchmark, which runs first, or on demand), so that speedups come from the same run.
* ``peak_rss``: peak RSS of a sketch_jacobian case in a fresh subprocess (benchmarks/peak_rss.py).
* ``record``: fills a benchmark's extra_info with seconds, speedup, floor and fraction of floor.

Run:  make bench   (or: python -m pytest benchmarks -q --benchmark-json=.benchmarks/last.json)
      ZK_BENCH_QUICK=1 python -m pytest benchmarks -q     (sanity run with tiny sizes)
See benchmarks/common.py for the other environment switches.
"""
import os
import time
import warnings

import pytest

from . import common, peak_rss as _peak_rss
from .common import mean_seconds

_FACTS = {}


def pytest_configure(config):
    common.set_threads()
    out = config.getoption("benchmark_json", None)  # `make bench` writes .benchmarks/last.json: make the folder
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(str(out))), exist_ok=True)


def pytest_benchmark_update_machine_info(config, machine_info):
    if _FACTS:
        machine_info["zoo_kernels_bench"] = dict(_FACTS)


@pytest.fixture(scope="session")
def machine():
    if not _FACTS:
        _FACTS.update(common.machine_facts())
    return _FACTS


@pytest.fixture(autouse=True)
def _machine_facts_in_extra_info(request, machine):
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(machine)
    common.set_threads()  # in case a test changed it


class Baselines:
    """Seconds (and result) of each baseline, measured once per session."""

    def __init__(self):
        self.seconds_of, self.result_of, self.source_of = {}, {}, {}

    def measure(self, key, fn, benchmark=None, rounds=1, warmup_rounds=0):
        """Times fn (with benchmark.pedantic where given, else once with perf_counter) and records it."""
        if benchmark is not None:
            out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
            secs, source = mean_seconds(benchmark), "benchmark"
        else:
            t = time.perf_counter()
            out = fn()
            secs, source = time.perf_counter() - t, "single untimed-by-pytest run"
        if secs is not None:
            self.seconds_of[key], self.source_of[key] = secs, source
        self.result_of[key] = out
        return out

    def seconds(self, key, make_fn):
        """The recorded seconds of `key`, measuring it now (one run) if its benchmark did not run."""
        if key not in self.seconds_of:
            self.measure(key, make_fn())
        return self.seconds_of.get(key)


@pytest.fixture(scope="session")
def baselines():
    return Baselines()


@pytest.fixture
def peak_rss(request):
    """peak_rss(case, N) -> dict of peak RSS numbers (empty with ZK_BENCH_MEMORY=0)."""

    def run(case, n):
        if not common.MEMORY:
            return {}
        info = _peak_rss.measure(case, n)
        if "peak_rss_error" in info:
            warnings.warn(f"peak RSS of {case} (N={n}) not measured: {info['peak_rss_error']}", stacklevel=2)
        return info

    return run


@pytest.fixture
def record(machine):
    """record(benchmark, flops=None, nbytes=None, baseline=None, baseline_seconds=None, **info).

    floor_s = max(flops / measured matmul rate, nbytes / measured bandwidth); floor_fraction = floor_s / mean
    (above 1 means faster than that floor, e.g. the Kronecker sketch against the dense GEMM floor).
    speedup = baseline_seconds / mean."""

    def fill(benchmark, flops=None, nbytes=None, baseline=None, baseline_seconds=None, floor_kind=None, **info):
        ex = benchmark.extra_info
        secs = mean_seconds(benchmark)
        ex.update(info)
        ex["seconds"] = secs
        if flops is not None:
            ex["gemm_flops"] = flops
            ex["gemm_floor_s"] = flops / (machine["matmul_gflops"] * 1e9)
        if nbytes is not None:
            ex["bytes_moved"] = nbytes
            ex["bandwidth_floor_s"] = nbytes / (machine["bandwidth_gbs"] * 1e9)
        floors = [ex[f] for f in ("gemm_floor_s", "bandwidth_floor_s") if f in ex]
        if floors:
            ex["floor_s"] = max(floors)
            ex["floor_kind"] = floor_kind or ("gemm" if ex.get("gemm_floor_s", 0) >= ex.get("bandwidth_floor_s", 0)
                                              else "bandwidth")
            if secs:
                ex["floor_fraction"] = ex["floor_s"] / secs
        if baseline is not None:
            ex["baseline"] = baseline
            ex["baseline_seconds"] = baseline_seconds
            if secs and baseline_seconds:
                ex["speedup"] = baseline_seconds / secs
        return ex

    return fill

