"""Shared fixtures and helpers of the zoo_kernels op tests.

* ``devices`` / the ``device`` fixture: "cpu", plus "cuda" (marked ``pytest.mark.cuda``) where a GPU is visible.
* ``TOL``: per-dtype relative tolerance of an op's result against the float64 reference, with ``rel_err``.
* ``seed`` / ``gen``: fresh random inputs in every test, reproducible from the seed printed on failure.
  Set ``ZOO_TEST_SEED=<int>`` to rerun with the base seed of a failed run.
"""
import os
import random
import zlib

import pytest
import torch

import zoo_kernels  # noqa: F401  (registers torch.ops.zoo_kernels)

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

DEVICE_PARAMS = [pytest.param(d, marks=pytest.mark.cuda, id=d) if d == "cuda" else pytest.param(d, id=d) for d in devices]

# Relative tolerance (Frobenius norm, see `rel_err`) of an op's result against the float64 reference.
#  float64: the op computes in float64 with a different summation order than the reference; errors are
#           ~1e-15, 1e-10 leaves wide headroom but still catches any real arithmetic/indexing error.
#  float32: the op accumulates in float32; with at most ~1e4-1e5 summed terms per output, the norm-wise
#           error stays around 1e-7..1e-6.
#  float16/bfloat16: the op upcasts its inputs to float32 and accumulates in float32, so its only error is
#           the float32 accumulation error, PROVIDED the reference is computed (in float64) FROM THE SAME
#           ROUNDED float16/bfloat16 inputs: tests round first (`x = x.to(dtype)`) and pass `x` to both the
#           op and the reference. Rounding itself (2^-11 for fp16, 2^-8 for bf16) is thus not part of the
#           error. We allow 10x the float32 tolerance as headroom for backends that use another float32
#           accumulation order (e.g. split-K GEMMs on GPU); anything coming from low-precision arithmetic
#           would be >= 1e-3 and is still caught.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-4,
    torch.bfloat16: 1e-4,
}

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def rel_err(a, b):
    """||a - b|| / ||b|| (Frobenius), computed in float64 on the CPU."""
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    assert a.shape == b.shape, f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}"
    nb = torch.linalg.vector_norm(b).item()
    assert nb > 0, "rel_err: reference is zero"
    return torch.linalg.vector_norm(a - b).item() / nb


def randn(*shape, gen, dtype=torch.float64, device="cpu", scale=1.0):
    """Standard normal tensor drawn on the CPU from `gen` (so every device gets the same values), then cast."""
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    return x.to(device=device, dtype=dtype)


_BASE_SEED = int(os.environ.get("ZOO_TEST_SEED", random.SystemRandom().randrange(1 << 31)))


def pytest_report_header(config):
    return f"zoo_kernels test base seed: ZOO_TEST_SEED={_BASE_SEED}"


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


@pytest.fixture
def seed(request):
    """Per-test seed: base seed of the run mixed with the test id (stable across processes)."""
    s = (_BASE_SEED * 1000003 + zlib.crc32(request.node.nodeid.encode())) % (1 << 31)
    request.node._zk_seed = s
    return s


@pytest.fixture
def gen(seed):
    """torch.Generator (CPU) seeded with the per-test seed; use it for all random inputs of a test."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture
def restore_threads():
    """Restores torch's intra-op thread count after a test that changes it."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and hasattr(item, "_zk_seed"):
        report.sections.append(
            ("zoo_kernels random inputs",
             f"per-test seed {item._zk_seed}; rerun with ZOO_TEST_SEED={_BASE_SEED} to reproduce"))


def bilinear_problem(n=24, d=5, h=6, C=3, seed=0):
    """(model, x, y): a float64 linear backbone + linear head, where the head-aware model is the network itself."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Linear(h, C)).double()
    return model, x, y


@pytest.fixture
def one_thread():
    """One intra-op thread for tiny problems: avoids OpenMP oversubscription on a shared machine. Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
