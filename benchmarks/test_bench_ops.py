"""The projection ops on one layer's captures (fp32), against the pure-torch code a user would write, and
the random_matrix generation throughput.

Layers (N, T, n, o, k): "linear" (256, 1, 2048, 256, 1024), a Linear layer on vectors; "conv"
(256, 256, 288, 64, 1024), a 3x3 conv with 32 input / 64 output channels on a 16x16 map.

Baselines (defined first so that they run first; the speedups are against the same run):
  torch_dense:          G = per-sample gradients (N, o*n) (einsum / bmm of grads and acts), then G @ R with
                        R = random_matrix(o*n, k) / sqrt(k) cached (built outside the timed region).
  torch_kron:           G materialized as (N, o, n), then einsum with the cached factors R_out, R_in.
  torch_kron_factored:  (extra) no G: (grads @ R_out)^T (acts @ R_in) per sample, the smart plain-torch way.
Floors: dense 2*N*o*n*k FLOPs (the GEMM) at the measured matmul rate; kron the FLOPs of the cheapest
order; both against the bytes of inputs and output at the measured bandwidth (the larger one counts).
"""
import math

import pytest
import torch

from zoo_kernels import ops
from zoo_kernels.sketch import kron_factors

from . import common

LAYER_PARAMS = [pytest.param(name, id=name) for name in common.LAYERS]


@pytest.fixture(scope="module")
def layer():
    """layer(name) -> dict of inputs and cached matrices, built once (not timed)."""
    cache = {}

    def get(name):
        if name not in cache:
            N, T, n, o, k = common.LAYERS[name]
            acts, grads = common.layer_inputs(name)
            k_out, k_in = kron_factors(k)
            cache[name] = dict(
                N=N, T=T, n=n, o=o, k=k, k_out=k_out, k_in=k_in, acts=acts, grads=grads,
                R=common.dense_R(o * n, k, common.SEED),
                R_in=ops.random_matrix(n, k_in, ops.derive_seed(common.SEED, 0)),
                R_out=ops.random_matrix(o, k_out, ops.derive_seed(common.SEED, 1)),
            )
        return cache[name]

    yield get
    cache.clear()


def torch_dense(L):
    acts, grads, R = L["acts"], L["grads"], L["R"]
    return lambda: common.per_sample_grads(acts, grads) @ R


def torch_kron(L):
    acts, grads, R_in, R_out = L["acts"], L["grads"], L["R_in"], L["R_out"]
    N, o, n, scale = L["N"], L["o"], L["n"], 1 / math.sqrt(L["k"])
    return lambda: torch.einsum("noi,oa,ib->nab", common.per_sample_grads(acts, grads).view(N, o, n),
                                R_out, R_in).reshape(N, -1) * scale


def torch_kron_factored(L):
    acts, grads, R_in, R_out = L["acts"], L["grads"], L["R_in"], L["R_out"]
    N, scale = L["N"], 1 / math.sqrt(L["k"])
    if acts.dim() == 2:
        return lambda: torch.einsum("na,nb->nab", grads @ R_out, acts @ R_in).reshape(N, -1) * scale
    return lambda: torch.bmm((grads @ R_out).transpose(1, 2), acts @ R_in).reshape(N, -1) * scale


BASELINES = {"torch_dense": torch_dense, "torch_kron": torch_kron}


def dense_flops(L):
    return 2 * L["N"] * L["o"] * L["n"] * L["k"]


def kron_flops(L):
    N, T, n, o, ko, ki = L["N"], L["T"], L["n"], L["o"], L["k_out"], L["k_in"]
    return 2 * N * T * (o * ko + n * ki + ko * ki)


def io_bytes(L):
    return 4 * (L["acts"].numel() + L["grads"].numel() + L["N"] * L["k"])


def _info(name, L, method):
    return dict(layer=name, method=method, N=L["N"], T=L["T"], n=L["n"], o=L["o"], k=L["k"],
                k_out=L["k_out"], k_in=L["k_in"], nbytes=io_bytes(L), threads=common.THREADS)


def _flops(method, L):
    return dense_flops(L) if "dense" in method else kron_flops(L)


def _bench(benchmark, fn):
    return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", LAYER_PARAMS)
@pytest.mark.parametrize("method", ["torch_dense", "torch_kron"])
def test_baseline(benchmark, method, name, layer, baselines, record):
    benchmark.group = f"project {name}"
    L = layer(name)
    out = baselines.measure((method, name), BASELINES[method](L), benchmark, rounds=3, warmup_rounds=1)
    assert out.shape == (L["N"], L["k"])
    record(benchmark, flops=_flops(method, L), baseline=method,
           baseline_seconds=baselines.seconds_of.get((method, name)), **_info(name, L, method))


@pytest.mark.parametrize("name", LAYER_PARAMS)
def test_project_dense(benchmark, name, layer, baselines, record):
    benchmark.group = f"project {name}"
    L = layer(name)
    base = baselines.seconds(("torch_dense", name), lambda: torch_dense(L))
    S = _bench(benchmark, lambda: ops.project_dense(L["acts"], L["grads"], L["k"], common.SEED))
    ref = baselines.result_of.get(("torch_dense", name))
    if ref is not None:
        assert common.rel_err(S, ref) < 1e-4
    record(benchmark, flops=dense_flops(L), baseline="torch_dense", baseline_seconds=base,
           **_info(name, L, "zk project_dense"))


@pytest.mark.parametrize("name", LAYER_PARAMS)
def test_project_kron(benchmark, name, layer, baselines, record):
    benchmark.group = f"project {name}"
    L = layer(name)
    base = baselines.seconds(("torch_kron", name), lambda: torch_kron(L))
    S = _bench(benchmark, lambda: ops.project_kron(L["acts"], L["grads"], L["k_in"], L["k_out"], common.SEED))
    ref = baselines.result_of.get(("torch_kron", name))
    if ref is not None:
        assert common.rel_err(S, ref) < 1e-4
    info = _info(name, L, "zk project_kron")
    dense_base = baselines.seconds_of.get(("torch_dense", name))
    if dense_base and common.mean_seconds(benchmark):
        info["speedup_vs_torch_dense"] = dense_base / common.mean_seconds(benchmark)
    record(benchmark, flops=kron_flops(L), baseline="torch_kron", baseline_seconds=base, **info)


@pytest.mark.parametrize("name", LAYER_PARAMS)
def test_torch_kron_factored(benchmark, name, layer, baselines, record):
    """Not a target: the best plain-torch Kronecker projection, for reference."""
    benchmark.group = f"project {name}"
    L = layer(name)
    base = baselines.seconds(("torch_kron", name), lambda: torch_kron(L))
    S = _bench(benchmark, torch_kron_factored(L))
    ref = baselines.result_of.get(("torch_kron", name))
    if ref is not None:
        assert common.rel_err(S, ref) < 1e-4
    record(benchmark, flops=kron_flops(L), baseline="torch_kron", baseline_seconds=base,
           **_info(name, L, "torch kron, factored"))


@pytest.mark.parametrize("dist", ops.DISTS)
def test_random_matrix(benchmark, dist, record):
    benchmark.group = "random_matrix"
    size = common.RANDOM_MATRIX_SIZE
    R = benchmark.pedantic(lambda: ops.random_matrix(size, size, common.SEED, dist), rounds=5, iterations=1,
                           warmup_rounds=1)
    assert R.shape == (size, size)
    secs = common.mean_seconds(benchmark)
    info = dict(rows=size, cols=size, dist=dist, threads=common.THREADS)
    if secs:
        info.update(entries_per_s=size * size / secs, written_gbs=size * size * 4 / secs / 1e9)
        info["bandwidth_fraction"] = info["written_gbs"] / benchmark.extra_info["bandwidth_gbs"]
    record(benchmark, nbytes=size * size * 4, floor_kind="bandwidth (bytes written)", **info)
