"""sketch_jacobian on the 620K-parameter CNN (eval), N=128 inputs, C=10 outputs, k=1024, 2 threads, against
what a user of plain torch would run: the per-sample Jacobian from torch.func (vmap(jacrev) of a
functional_call), flattened to (N, C, P), times a cached dense R = random_matrix(P, k) / sqrt(k) built once
outside the timed region.

The baselines are defined first so that they run first; their times are kept by the session `baselines`
fixture and every speedup is against the baseline of the same run. Floor: the dense JL GEMM,
2*N*C*P*k FLOPs at the measured matmul rate (the Kronecker sketch does far fewer FLOPs, so its
floor_fraction is above 1). Peak RSS: each case once more in a fresh subprocess (ZK_BENCH_MEMORY=0 skips).
"""
import pytest

from . import common

N_PARAMS = [pytest.param(n, id=f"N{n}") for n in common.NS]
OUTPUTS = 10  # classes of the CNN


@pytest.fixture(scope="session")
def cnn():
    """cnn(N) -> (model, x, P), built once per N."""
    cache = {}

    def get(n):
        if n not in cache:
            model = common.build_model()
            cache[n] = (model, common.cnn_inputs(n), common.num_params(model))
        return cache[n]

    return get


@pytest.fixture(scope="module")
def cached_R(cnn):
    """The dense (P, k) matrix of the baselines, generated once (not timed); freed after this module."""
    holder = {}

    def get():
        if "R" not in holder:
            holder["R"] = common.dense_R(cnn(common.NS[0])[2])
        return holder["R"]

    yield get
    holder.clear()


def _baseline(name, n, cnn, cached_R):
    model, x, _ = cnn(n)
    return lambda: common.sketch_case(name, model, x, cached_R())


def _info(n, P, method, outputs=OUTPUTS, **kw):
    return dict(N=n, C=outputs, P=P, k=common.K, method=method, threads=common.THREADS,
                flops=common.sketch_gemm_flops(n, outputs, P), floor_kind="dense JL GEMM 2*N*C*P*k", **kw)


@pytest.mark.parametrize("n", N_PARAMS)
def test_vmap_jacrev_baseline(benchmark, n, cnn, cached_R, baselines, record, peak_rss):
    """Baseline: torch.func per-sample Jacobian (N, C, P) @ cached R. One round: ~15-40 s and ~9 GB."""
    benchmark.group = f"sketch_jacobian N={n}"
    model, x, P = cnn(n)
    out = baselines.measure(("vmap_jacrev", n), _baseline("vmap_jacrev", n, cnn, cached_R)(), benchmark)
    assert out.shape == (n, OUTPUTS, common.K)
    info = _info(n, P, "torch.func vmap(jacrev) @ R", cached_R_gb=P * common.K * 4 / 1e9)
    record(benchmark, baseline="vmap_jacrev", baseline_seconds=baselines.seconds_of.get(("vmap_jacrev", n)),
           **info, **peak_rss("vmap_jacrev", n))


@pytest.mark.parametrize("n", N_PARAMS)
def test_vmap_grad_sum_baseline(benchmark, n, cnn, cached_R, baselines, record, peak_rss):
    """Baseline of output="sum": torch.func per-sample gradient of the summed outputs (N, P) @ cached R."""
    benchmark.group = f"sketch_jacobian N={n}"
    model, x, P = cnn(n)
    out = baselines.measure(("vmap_grad_sum", n), _baseline("vmap_grad_sum", n, cnn, cached_R)(), benchmark,
                            rounds=2, warmup_rounds=0)
    assert out.shape == (n, 1, common.K)
    info = _info(n, P, "torch.func vmap(grad(sum)) @ R", outputs=1, output="sum", cached_R_gb=P * common.K * 4 / 1e9)
    record(benchmark, baseline="vmap_grad_sum", baseline_seconds=baselines.seconds_of.get(("vmap_grad_sum", n)),
           **info, **peak_rss("vmap_grad_sum", n))


@pytest.mark.parametrize("n", N_PARAMS)
def test_sketch_kronecker(benchmark, n, cnn, cached_R, baselines, record, peak_rss):
    benchmark.group = f"sketch_jacobian N={n}"
    model, x, P = cnn(n)
    base = baselines.seconds(("vmap_jacrev", n), _baseline("vmap_jacrev", n, cnn, cached_R))
    S = benchmark.pedantic(common.sketch_case("sketch_kron", model, x), rounds=5, iterations=1, warmup_rounds=1)
    assert S.shape == (n, OUTPUTS, common.K)
    ref = baselines.result_of.get(("vmap_jacrev", n))
    if ref is not None:  # unbiased sketch of the same Jacobian: the overall norms agree loosely
        assert 0.5 < common.norm_ratio(S, ref) < 2
    record(benchmark, baseline="vmap_jacrev", baseline_seconds=base,
           **_info(n, P, "kronecker", batch_size=common.KRON_BATCH), **peak_rss("sketch_kron", n))


@pytest.mark.parametrize("n", N_PARAMS)
def test_sketch_dense(benchmark, n, cnn, cached_R, baselines, record, peak_rss):
    benchmark.group = f"sketch_jacobian N={n}"
    model, x, P = cnn(n)
    base = baselines.seconds(("vmap_jacrev", n), _baseline("vmap_jacrev", n, cnn, cached_R))
    S = benchmark.pedantic(common.sketch_case("sketch_dense", model, x), rounds=1, iterations=1, warmup_rounds=0)
    ref = baselines.result_of.get(("vmap_jacrev", n))
    if ref is not None:  # the same projection (same R) as the baseline
        err = common.rel_err(S, ref)
        assert err < 1e-3, f"dense sketch differs from the torch.func baseline: rel. error {err:.2e}"
    record(benchmark, baseline="vmap_jacrev", baseline_seconds=base,
           **_info(n, P, "dense", batch_size=common.DENSE_BATCH), **peak_rss("sketch_dense", n))


@pytest.mark.parametrize("n", N_PARAMS)
def test_sketch_kronecker_sum(benchmark, n, cnn, cached_R, baselines, record, peak_rss):
    benchmark.group = f"sketch_jacobian N={n}"
    model, x, P = cnn(n)
    base = baselines.seconds(("vmap_grad_sum", n), _baseline("vmap_grad_sum", n, cnn, cached_R))
    S = benchmark.pedantic(common.sketch_case("sketch_kron_sum", model, x), rounds=5, iterations=1, warmup_rounds=1)
    assert S.shape == (n, 1, common.K)
    record(benchmark, baseline="vmap_grad_sum", baseline_seconds=base,
           **_info(n, P, "kronecker", outputs=1, output="sum", batch_size=common.KRON_BATCH),
           **peak_rss("sketch_kron_sum", n))
