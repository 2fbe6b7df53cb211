"""GPU benchmarks (pytest-benchmark), each against the plain-torch code a user would run on the same GPU, in the
same run. Skipped without CUDA. Timed callables end with torch.cuda.synchronize(), so a mean is wall time of
finished work. TF32 is off (fp32 everywhere, as in the CPU suite).

Ceilings measured once (session): fp32 matmul rate (8192^3 torch.mm, best of 5) and copy bandwidth (1 GiB
device-to-device copy, bytes read + written, best of 5). extra_info: seconds, baseline_seconds, speedup,
floor_s (max of FLOPs / matmul rate, bytes / bandwidth) and floor_fraction = floor_s / seconds.

  python -m pytest benchmarks/gpu -q --benchmark-json=bench.json     (benchmarks/gpu/run.sh does this)
  ZK_GPU_BENCH_DEVICE=cpu ZK_BENCH_QUICK=1: the same code on the CPU at tiny sizes, to check it without a GPU.
"""
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

import zoo_kernels as zk
from zoo_kernels import ops
from zoo_kernels.sketch import kron_factors

from .. import common
from ..models import cnn620k, cnn_inputs, cnn_small

DEV = os.environ.get("ZK_GPU_BENCH_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
Q = common.QUICK
LAYERS = {"linear": (32, 1, 256, 64, 256) if Q else (1024, 1, 2048, 256, 1024),
          "conv": (32, 64, 72, 16, 256) if Q else (1024, 256, 288, 64, 1024)}
N_SKETCH, K = (8, 256) if Q else (512, 1024)
N_NTK = 16 if Q else 1024
_BASE = {}


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    def run():
        out = fn()
        sync()
        return out
    return run


@pytest.fixture(scope="module", autouse=True)
def fp32_only():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _best(fn, reps=5):
    fn()
    sync()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.fixture(scope="module")
def ceilings():
    n = 1024 if Q else 8192
    a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
    src = torch.ones((64 if Q else 256) << 20, device=DEV)
    dst = torch.empty_like(src)
    facts = {"device_name": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
             "fp32_matmul_tflops": 2 * n**3 / _best(lambda: torch.mm(a, b)) / 1e12,
             "copy_bandwidth_gbs": 2 * src.numel() * 4 / _best(lambda: dst.copy_(src)) / 1e9}
    del a, b, src, dst
    return facts


def record(benchmark, ceilings, baseline=None, flops=None, nbytes=None, **info):
    ex = benchmark.extra_info
    ex.update(ceilings, **info)
    secs = common.mean_seconds(benchmark)
    ex["seconds"] = secs
    floors = []
    if flops:
        floors.append(flops / (ceilings["fp32_matmul_tflops"] * 1e12))
    if nbytes:
        floors.append(nbytes / (ceilings["copy_bandwidth_gbs"] * 1e9))
    if floors and secs:
        ex["floor_s"], ex["floor_fraction"] = max(floors), max(floors) / secs
    if baseline is not None and baseline in _BASE and secs:
        ex["baseline"], ex["baseline_seconds"] = baseline, _BASE[baseline]
        ex["speedup"] = _BASE[baseline] / secs


def bench(benchmark, fn, rounds=5, warmup=1):
    return benchmark.pedantic(timed(fn), rounds=rounds, iterations=1, warmup_rounds=warmup)


# ---------------------------------------------------------------- random_matrix

def test_random_matrix(benchmark, ceilings):
    benchmark.group = "random_matrix"
    n = 1024 if Q else 8192
    R = bench(benchmark, lambda: ops.random_matrix(n, n, 0, device=DEV), rounds=10)
    assert R.shape == (n, n) and R.device.type == torch.device(DEV).type
    record(benchmark, ceilings, nbytes=4 * n * n, rows=n, cols=n)


# ---------------------------------------------------------------- one layer's projections

@pytest.fixture(scope="module")
def layer():
    cache = {}

    def get(name):
        if name not in cache:
            N, T, n, o, k = LAYERS[name]
            g = torch.Generator().manual_seed(0)
            sa, sg = ((N, n), (N, o)) if T == 1 else ((N, T, n), (N, T, o))
            acts, grads = torch.randn(*sa, generator=g).to(DEV), torch.randn(*sg, generator=g).to(DEV)
            k_out, k_in = kron_factors(k)
            cache[name] = dict(N=N, T=T, n=n, o=o, k=k, k_in=k_in, k_out=k_out, acts=acts, grads=grads,
                               R=ops.random_matrix(o * n, k, 0, device=DEV).div_(math.sqrt(k)),
                               R_in=ops.random_matrix(n, k_in, ops.derive_seed(0, 0), device=DEV),
                               R_out=ops.random_matrix(o, k_out, ops.derive_seed(0, 1), device=DEV))
        return cache[name]

    yield get
    cache.clear()


def _io_bytes(L):
    return 4 * (L["acts"].numel() + L["grads"].numel() + L["N"] * L["k"])


@pytest.mark.parametrize("name", list(LAYERS))
def test_project_dense(benchmark, name, layer, ceilings):
    benchmark.group = f"project {name}"
    L = layer(name)
    base_fn = timed(lambda: common.per_sample_grads(L["acts"], L["grads"]) @ L["R"])
    ref = base_fn()
    _BASE[f"torch_dense {name}"] = _best(base_fn, 3)
    S = bench(benchmark, lambda: ops.project_dense(L["acts"], L["grads"], L["k"], 0))
    assert common.rel_err(S, ref) < 1e-4
    record(benchmark, ceilings, baseline=f"torch_dense {name}", flops=2 * L["N"] * L["o"] * L["n"] * L["k"],
           nbytes=_io_bytes(L), layer=name, N=L["N"], T=L["T"], n=L["n"], o=L["o"], k=L["k"])


@pytest.mark.parametrize("name", list(LAYERS))
def test_project_kron(benchmark, name, layer, ceilings):
    benchmark.group = f"project {name}"
    L = layer(name)
    N, o, n, scale = L["N"], L["o"], L["n"], 1 / math.sqrt(L["k"])
    acts, grads = L["acts"], L["grads"]
    if acts.dim() == 2:  # the smart plain-torch way: no per-sample gradient is formed
        base = lambda: torch.einsum("na,nb->nab", grads @ L["R_out"], acts @ L["R_in"]).reshape(N, -1) * scale
    else:
        base = lambda: torch.bmm((grads @ L["R_out"]).transpose(1, 2), acts @ L["R_in"]).reshape(N, -1) * scale
    ref = timed(base)()
    _BASE[f"torch_kron_factored {name}"] = _best(timed(base), 3)
    S = bench(benchmark, lambda: ops.project_kron(acts, grads, L["k_in"], L["k_out"], 0))
    assert common.rel_err(S, ref) < 1e-4
    T, ko, ki = L["T"], L["k_out"], L["k_in"]
    record(benchmark, ceilings, baseline=f"torch_kron_factored {name}",
           flops=2 * N * T * (o * ko + n * ki + ko * ki), nbytes=_io_bytes(L), layer=name, N=N, k=L["k"])


# ---------------------------------------------------------------- sketch_jacobian on the 620K CNN

@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = (cnn_small() if Q else cnn620k()).eval().to(DEV)
    return model, cnn_inputs(N_SKETCH).to(DEV), common.num_params(model)


def test_sketch_jacobian_baseline(benchmark, cnn, ceilings):
    """torch.func vmap(jacrev) per-sample Jacobian (N, C, P) @ cached R (P, k), on the GPU."""
    benchmark.group = f"sketch_jacobian N={N_SKETCH}"
    model, x, P = cnn
    R = ops.random_matrix(P, K, 0, device=DEV).div_(math.sqrt(K))
    out = bench(benchmark, common.sketch_case("vmap_jacrev", model, x, R), rounds=3)
    assert out.shape == (N_SKETCH, 10, K)
    _BASE["vmap_jacrev"] = common.mean_seconds(benchmark)
    record(benchmark, ceilings, flops=2 * N_SKETCH * 10 * P * K, P=P, k=K)


@pytest.mark.parametrize("method,batch", [("kronecker", 128), ("dense", 128)])
def test_sketch_jacobian(benchmark, cnn, ceilings, method, batch):
    benchmark.group = f"sketch_jacobian N={N_SKETCH}"
    model, x, P = cnn
    S = bench(benchmark, lambda: zk.sketch_jacobian(model, x, K, method=method, seed=0, batch_size=batch))
    assert S.shape == (N_SKETCH, 10, K) and torch.isfinite(S).all()
    record(benchmark, ceilings, baseline="vmap_jacrev", flops=2 * N_SKETCH * 10 * P * K, P=P, k=K, method=method)


# ---------------------------------------------------------------- exact NTK on the small CNN

@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    model = cnn_small().eval().to(DEV)
    return model, cnn_inputs(N_NTK).to(DEV), common.num_params(model)


def test_ntk_baseline(benchmark, small_cnn, ceilings):
    """The PyTorch NTK tutorial's Jacobian contraction (torch.func), on the GPU."""
    benchmark.group = f"ntk N={N_NTK}"
    model, x, P = small_cnn
    out = bench(benchmark, lambda: common.func_ntk_jac_contraction(model, x), rounds=3)
    _BASE["func_jac_contraction"] = common.mean_seconds(benchmark)
    _BASE["func_result"] = out
    record(benchmark, ceilings, flops=2 * (N_NTK * 10) ** 2 * P, P=P)


def test_ntk_exact(benchmark, small_cnn, ceilings):
    benchmark.group = f"ntk N={N_NTK}"
    model, x, P = small_cnn
    K_ = bench(benchmark, lambda: zk.ntk(model, x, mode="full", batch_size=256), rounds=3)
    if "func_result" in _BASE:
        assert common.rel_err(K_, _BASE["func_result"]) < 1e-3
    record(benchmark, ceilings, baseline="func_jac_contraction", flops=2 * (N_NTK * 10) ** 2 * P, P=P)


# ---------------------------------------------------------------- training-time prediction against training

PAIR = ("resnet_multi", "pendigits_inverted")
SETTING = dict(lr=0.01, batch_size=64, momentum=0.9)
EPOCHS = 1 if Q else 10


@pytest.fixture(scope="module")
def finetune_problem():
    from zoo_kernels import zoo
    from zoo_kernels.zoo import data as D
    C = D.TARGETS[PAIR[1]][0]
    x, y = D.make_target(PAIR[1], "train", 20 if Q else round(4000 / C))
    return C, x.to(DEV), y.to(DEV), lambda: zoo.load_model(PAIR[0], num_classes=C, seed=0).to(DEV)


def test_finetune_baseline(benchmark, finetune_problem, ceilings):
    """The training a prediction replaces: EPOCHS epochs of the MiniZoo recipe's SGD (optimization only)."""
    benchmark.group = "predict vs train"
    C, x, y, load = finetune_problem
    N, B = len(x), SETTING["batch_size"]
    steps = EPOCHS * (N // B)

    def train():
        model = load().train()
        opt = torch.optim.SGD(model.parameters(), lr=SETTING["lr"], momentum=SETTING["momentum"])
        g = torch.Generator().manual_seed(0)
        for s in range(steps):
            if s % (N // B) == 0:
                perm = torch.randperm(N, generator=g).to(DEV)
            idx = perm[(s % (N // B)) * B:(s % (N // B) + 1) * B]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss)

    loss = bench(benchmark, train, rounds=2)
    assert math.isfinite(loss)
    _BASE["finetune"] = common.mean_seconds(benchmark)
    record(benchmark, ceilings, N=N, steps=steps, epochs=EPOCHS, **SETTING)


@pytest.mark.parametrize("warmup,threads", [(0, None), (100, None), (0, 1), (0, 16), (100, 16)])
def test_predict(benchmark, finetune_problem, ceilings, warmup, threads):
    """predict_after_warmup (head-aware; warmup 0 is the plain head-aware prediction) in the recommended mode of
    docs/PREDICT.md (subset "auto", k 512, Kronecker sketch, feature_rank 8, eval_every 10, fixed feature norm),
    all EPOCHS epochs predicted."""
    from zoo_kernels.warmstart import predict_after_warmup
    benchmark.group = "predict vs train"
    C, x, y, load = finetune_problem
    N, B = len(x), SETTING["batch_size"]
    steps = EPOCHS * (N // B)
    model = load()
    run = lambda: predict_after_warmup(model, (x, y), max_steps=steps, warmup_steps=min(warmup, steps - 1),
                                       subset="auto", k=512, seed=0, feature_rank=8, eval_every=10,
                                       sketch_method="kronecker", feature_norm="fixed", sampling="stream",
                                       on_divergence="truncate", **SETTING)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)  # 1 and 16: does the CPU simulation gain from threads?
    try:
        pred = bench(benchmark, run, rounds=2)
    finally:
        torch.set_num_threads(saved)
    assert len(pred.loss_curve) == steps + 1
    record(benchmark, ceilings, baseline="finetune", N=N, steps=steps, warmup=warmup, threads=threads or saved,
           predicted_steps_to_half_loss=pred.steps_to(fraction=0.5), **SETTING)
