"""Sizes, machine measurements and the benchmarked callables, shared by the pytest-benchmark suite and by
the peak-memory subprocess (benchmarks/peak_rss.py), so that both run exactly the same code.

Environment:
  ZK_BENCH_QUICK=1      tiny sizes (small CNN, N=8, k=256, small layers) for a sanity run in seconds
  ZK_BENCH_THREADS=<n>  intra-op threads (default 2)
  ZK_BENCH_N=32,128     sample counts of the sketch_jacobian benchmarks (default 128; quick: 8)
  ZK_BENCH_MEMORY=0     skip the peak-RSS subprocesses (they rerun each sketch_jacobian case once)
"""
import math
import os
import platform
import time

import torch
from torch.func import functional_call, grad, jacrev, vmap

import zoo_kernels
from zoo_kernels import ops

from .models import cnn620k, cnn_inputs, cnn_small


def _flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("ZK_BENCH_QUICK")
THREADS = int(os.environ.get("ZK_BENCH_THREADS", "2"))
MEMORY = _flag("ZK_BENCH_MEMORY", "1")
SEED = 0

# sketch_jacobian on the CNN
K = 256 if QUICK else 1024
NS = [int(s) for s in os.environ.get("ZK_BENCH_N", "8" if QUICK else "128").split(",") if s.strip()]
KRON_BATCH = 4 if QUICK else 64
DENSE_BATCH = 8 if QUICK else 128

# one layer's captures: name -> (N, T, n, o, k); T = 1 means 2-D acts/grads (Linear on vectors)
LAYERS = {
    "linear": (32, 1, 256, 64, 256) if QUICK else (256, 1, 2048, 256, 1024),
    "conv": (32, 64, 72, 16, 256) if QUICK else (256, 256, 288, 64, 1024),
}
RANDOM_MATRIX_SIZE = 1024 if QUICK else 4096


def set_threads():
    torch.set_num_threads(THREADS)


def build_model():
    """The benchmarked model (eval), with fixed weights so every process builds the same one."""
    torch.manual_seed(SEED)
    return (cnn_small() if QUICK else cnn620k()).eval()


def num_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- machine facts

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(size=2048, reps=5):
    """Best-of-reps fp32 torch.mm rate (GFLOP/s, 2 FLOPs per multiply-add) at the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    c = torch.empty(size, size)
    torch.mm(a, b, out=c)  # warm-up
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def copy_bandwidth_gbs(nbytes=512 << 20, reps=5):
    """Best-of-reps memory bandwidth of a large fp32 copy, counting bytes read + bytes written (GB/s)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touches the pages
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def machine_facts():
    """Measured once per session (conftest) and recorded in every benchmark's extra_info and in machine_info."""
    set_threads()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "zoo_kernels_version": zoo_kernels.__version__,
        "matmul_gflops": round(matmul_gflops(), 2),
        "bandwidth_gbs": round(copy_bandwidth_gbs(), 2),
        "quick": QUICK,
    }


# ---------------------------------------------------------------- sketch_jacobian cases

SKETCH_CASES = ("vmap_jacrev", "vmap_grad_sum", "sketch_kron", "sketch_dense", "sketch_kron_sum")
NEEDS_R = ("vmap_jacrev", "vmap_grad_sum")


def dense_R(num_rows, k=K, seed=SEED):
    """The cached dense projection a user of plain torch would keep: random_matrix(P, k, seed) / sqrt(k)."""
    return ops.random_matrix(num_rows, k, seed).div_(math.sqrt(k))


def standin_R(num_rows, k=K):
    """Same size and residency as dense_R, in a fraction of the time; for memory measurements only."""
    return torch.full((num_rows, k), 1 / math.sqrt(k))


def per_sample_fn(model):
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    return params, f


def sketch_case(name, model, x, R=None):
    """Zero-argument callable of one case; R (P, K) is the cached dense matrix the baselines multiply by."""
    N = x.shape[0]
    if name == "vmap_jacrev":  # (N, C, P) Jacobian with torch.func, flattened, times the cached R
        params, f = per_sample_fn(model)
        jac = vmap(jacrev(f), in_dims=(None, 0))

        def run():
            J = jac(params, x)
            J = torch.cat([J[n].reshape(N, J[n].shape[1], -1) for n in params], dim=2)
            return J @ R

        return run
    if name == "vmap_grad_sum":  # per-sample gradient of the summed outputs, (N, P), times R
        params, f = per_sample_fn(model)
        g = vmap(grad(lambda p, xi: f(p, xi).sum()), in_dims=(None, 0))

        def run():
            G = g(params, x)
            return (torch.cat([G[n].reshape(N, -1) for n in params], dim=1) @ R).unsqueeze(1)

        return run
    if name == "sketch_kron":
        return lambda: zoo_kernels.sketch_jacobian(model, x, K, method="kronecker", seed=SEED, batch_size=KRON_BATCH)
    if name == "sketch_dense":
        return lambda: zoo_kernels.sketch_jacobian(model, x, K, method="dense", seed=SEED, batch_size=DENSE_BATCH)
    if name == "sketch_kron_sum":
        return lambda: zoo_kernels.sketch_jacobian(model, x, K, method="kronecker", seed=SEED,
                                                   batch_size=KRON_BATCH, output="sum")
    raise ValueError(f"unknown case {name!r}; one of {SKETCH_CASES}")


def sketch_gemm_flops(N, C, P, k=K):
    """FLOPs of the dense JL product (N*C, P) @ (P, k): the floor of any dense projection of the Jacobian."""
    return 2 * N * C * P * k


# ---------------------------------------------------------------- one layer's captures

def layer_inputs(name, dtype=torch.float32):
    N, T, n, o, _ = LAYERS[name]
    g = torch.Generator().manual_seed(SEED)
    shape_a, shape_g = ((N, n), (N, o)) if T == 1 else ((N, T, n), (N, T, o))
    return torch.randn(*shape_a, generator=g, dtype=dtype), torch.randn(*shape_g, generator=g, dtype=dtype)


def per_sample_grads(acts, grads):
    """G_i = sum_t grads_t (x) acts_t as (N, o*n), the way a user of plain torch would form them."""
    if acts.dim() == 2:
        return torch.einsum("no,ni->noi", grads, acts).reshape(acts.shape[0], -1)
    return torch.bmm(grads.transpose(1, 2), acts).reshape(acts.shape[0], -1)


# ---------------------------------------------------------------- helpers

def mean_seconds(benchmark):
    """Mean seconds per call of a finished benchmark (None with --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.mean if stats is not None else None


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def norm_ratio(a, b):
    return a.double().norm().item() / b.double().norm().item()


# ---------------------------------------------------------------- empirical NTK with torch.func (baselines)
# The two methods of the PyTorch "Neural Tangent Kernels" tutorial (torch.func): Jacobian contraction
# (vmap(jacrev) per parameter, then einsum and a sum over parameters) and NTK-vector products (vmap over
# vjp, then jvp, against the basis of the outputs). Results (N1, N2, C, C), or (N1, N2) for mode="trace".

def omp_wait_policy():
    """OMP_WAIT_POLICY of this process ("unset" when the OpenMP default applies)."""
    return os.environ.get("OMP_WAIT_POLICY", "unset")


def func_ntk_jac_contraction(model, x1, x2=None, mode="full"):
    """The tutorial's Jacobian-contraction NTK: per-parameter Jacobians (N, C, P_p), einsum, sum."""
    params, f = per_sample_fn(model)
    jac = vmap(jacrev(f), in_dims=(None, 0))
    j1 = [j.flatten(2) for j in jac(params, x1).values()]
    j2 = j1 if x2 is None else [j.flatten(2) for j in jac(params, x2).values()]
    expr = "Naf,Maf->NM" if mode == "trace" else "Naf,Mbf->NMab"
    return torch.stack([torch.einsum(expr, a, b) for a, b in zip(j1, j2)]).sum(0)


def func_ntk_vps(model, x1, x2=None, mode="full", chunk=8):
    """The tutorial's NTK-vector-products NTK: for each pair (x1_i, x2_j), vjp of f(x1_i) against the output
    basis, then jvp of f(x2_j) along each vjp; vmap over pairs. Rows of x1 are processed `chunk` at a time
    (memory ~0.4 GB per row of x1 for the small CNN at N2=256); mode="trace" takes the trace of the full
    result, as the tutorial does."""
    params, f = per_sample_fn(model)
    x2 = x1 if x2 is None else x2

    def get_ntk(a, b):
        out, vjp_fn = torch.func.vjp(lambda p: f(p, a), params)

        def ntk_slice(vec):
            (v,) = vjp_fn(vec)
            return torch.func.jvp(lambda p: f(p, b), (params,), (v,))[1]

        return vmap(ntk_slice)(torch.eye(out.numel(), dtype=out.dtype, device=out.device))

    pairs = vmap(vmap(get_ntk, (None, 0)), (0, None))
    K = torch.cat([pairs(x1[s:s + chunk], x2) for s in range(0, x1.shape[0], chunk)])
    return torch.einsum("NMKK->NM", K) if mode == "trace" else K
