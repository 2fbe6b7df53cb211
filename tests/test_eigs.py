"""jacobian_t_matmul / jacobian_matmul against float64 references and torch.func Jacobians; ntk_eigh against
torch.linalg.eigh of the exact NTK (zoo_kernels.ntk and torch.func)."""
import pytest
import torch
from conftest import FLOAT_DTYPES, TOL, devices, randn, rel_err
from test_ntk import func_ntk
from test_sketch_jacobian import build, torch_func_jacobian

import zoo_kernels as zk
from zoo_kernels import ops
from zoo_kernels.eigs import JacobianOperator

# (N, T, C, n, o, b); T or C None: the op's T-less / C-less input forms. Comments: the path the cost model picks.
CASES = [
    (5, None, None, 4, 3, 2),  # factored, T = 1
    (6, None, 3, 7, 5, 4),     # factored
    (7, 9, 2, 3, 2, 5),        # factored
    (4, 3, 2, 40, 50, 3),      # factored
    (5, 4, None, 6, 3, 2),     # factored, no C
    (6, 30, 1, 3, 2, 8),       # explicit (C o n (T + b) < T b o (C + n))
    (3, 50, 2, 2, 2, 16),      # explicit
    (4, None, 3, 2, 3, 40),    # explicit, T = 1, b > n
]


def _uses_explicit(T, C, n, o, b):
    T, C = T or 1, C or 1
    return C * o * n * (T + b) < T * b * o * (C + n)


def test_cases_cover_both_paths():
    paths = {_uses_explicit(T, C, n, o, b) for _, T, C, n, o, b in CASES}
    assert paths == {True, False}


def make(gen, N, T, C, n, o, b, dtype, device):
    a = randn(*((N, n) if T is None else (N, T, n)), gen=gen, dtype=dtype, device=device)
    g_shape = (N,) + (() if C is None else (C,)) + (() if T is None else (T,)) + (o,)
    g = randn(*g_shape, gen=gen, dtype=dtype, device=device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    V = randn(*((N, b) if C is None else (N, C, b)), gen=gen, dtype=acc, device=device)
    W = randn(b, o, n, gen=gen, dtype=acc, device=device)
    return a, g, V, W


def _poison(shape, dtype, device):
    """Leaves NaN in memory the allocator is likely to hand out next (freed blocks of the same size)."""
    for _ in range(3):
        t = torch.full(shape, float("nan"), dtype=dtype, device=device)
        del t


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_ops_match_reference(case, dtype, device, gen):
    N, T, C, n, o, b = case
    a, g, V, W = make(gen, N, T, C, n, o, b, dtype, device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ref_t = ops.reference_jacobian_t_matmul(a, g, V)
    ref = ops.reference_jacobian_matmul(a, g, W)
    for max_tile in (0, 1, 37):  # default, one sample per tile, a few samples per tile
        _poison((b, o, n), acc, device)
        out_t = ops.jacobian_t_matmul(a, g, V, max_tile)
        assert out_t.shape == (b, o, n) and out_t.dtype == acc and out_t.device == a.device
        assert rel_err(out_t, ref_t) < TOL[dtype], max_tile
        _poison(ref.shape, acc, device)
        out = ops.jacobian_matmul(a, g, W, max_tile)
        assert out.shape == ref.shape and out.dtype == acc and out.device == a.device
        assert torch.isfinite(out).all()
        assert rel_err(out, ref) < TOL[dtype], max_tile


def test_references_are_adjoint_and_match_definition(gen):
    """<J W, V> = <W, Jᵀ V>, and the references equal loops over explicit per-sample gradients."""
    a, g, V, W = make(gen, 4, 3, 2, 5, 6, 3, torch.float64, "cpu")
    lhs = (ops.reference_jacobian_matmul(a, g, W) * V).sum()
    rhs = (ops.reference_jacobian_t_matmul(a, g, V) * W).sum()
    assert abs(lhs - rhs) < 1e-10 * abs(rhs)
    G = torch.stack([torch.stack([sum(torch.outer(g[i, c, t], a[i, t]) for t in range(3)) for c in range(2)])
                     for i in range(4)])  # (N, C, o, n)
    expect_t = torch.stack([(V[:, :, j, None, None] * G).sum((0, 1)) for j in range(3)])
    expect = torch.einsum("icpq,bpq->icb", G, W)
    assert rel_err(ops.reference_jacobian_t_matmul(a, g, V), expect_t) < 1e-14
    assert rel_err(ops.reference_jacobian_matmul(a, g, W), expect) < 1e-14
    assert rel_err(ops.jacobian_matmul(a, g, W), expect) < 1e-12


def test_non_contiguous_inputs(device, gen):
    a, g, V, W = make(gen, 6, 4, 3, 5, 7, 3, torch.float32, device)
    a2, g2 = a.transpose(1, 2).contiguous().transpose(1, 2), g[:, :, :, :].transpose(0, 0)
    V2 = V.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    W2 = W.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    assert not a2.is_contiguous() and not V2.is_contiguous() and not W2.is_contiguous()
    assert rel_err(ops.jacobian_t_matmul(a2, g2, V2), ops.reference_jacobian_t_matmul(a, g, V)) < 1e-5
    assert rel_err(ops.jacobian_matmul(a2, g2, W2), ops.reference_jacobian_matmul(a, g, W)) < 1e-5


def test_opcheck_and_no_grad(device, gen):
    for case in [(3, None, None, 5, 4, 2), (2, 3, 2, 4, 3, 3), (3, 20, 1, 2, 2, 6)]:
        for dtype in (torch.float32, torch.float64):
            a, g, V, W = make(gen, *case, dtype, device)
            torch.library.opcheck(torch.ops.zoo_kernels.jacobian_t_matmul.default, (a, g, V, 0))
            torch.library.opcheck(torch.ops.zoo_kernels.jacobian_matmul.default, (a, g, W, 1))
    a, g, V, W = make(gen, 3, 2, 2, 4, 3, 2, torch.float32, device)
    assert not ops.jacobian_t_matmul(a, g, V).requires_grad
    assert not ops.jacobian_matmul(a, g, W).requires_grad


def test_torch_compile_fullgraph(device, gen):
    def f(acts, grads, V):
        W = ops.jacobian_t_matmul(acts, grads, V)
        return ops.jacobian_matmul(acts, grads, W * 2.0)  # J (2 Jᵀ V)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for N in (4, 7):  # a second batch size (recompiles or runs the dynamic graph)
        a, g, V, _ = make(gen, N, 3, 2, 6, 5, 3, torch.float32, device)
        torch.testing.assert_close(cf(a, g, V), f(a, g, V), rtol=1e-5, atol=1e-5)


def test_half_inputs_give_float32_and_v_is_converted(gen):
    a, g, V, W = make(gen, 5, 3, 2, 4, 3, 2, torch.bfloat16, "cpu")
    out = ops.jacobian_t_matmul(a, g, V.double())  # float64 V is converted to the float32 accumulation
    assert out.dtype == torch.float32
    assert rel_err(out, ops.reference_jacobian_t_matmul(a, g, V.float())) < 1e-5


def test_errors(device, gen):
    a, g, V, W = make(gen, 4, 3, 2, 5, 6, 3, torch.float32, device)
    with pytest.raises(RuntimeError, match=r"jacobian_t_matmul: `V` must be \(N, C, b\)"):
        ops.jacobian_t_matmul(a, g, V[:, 0])
    with pytest.raises(RuntimeError, match="`V` must have N = 4 and C = 2"):
        ops.jacobian_t_matmul(a, g, V[:3])
    with pytest.raises(RuntimeError, match=r"`V` must be \(N, b\)"):
        ops.jacobian_t_matmul(a, g[:, 0], V)
    with pytest.raises(RuntimeError, match=r"b > 0"):
        ops.jacobian_t_matmul(a, g, V[..., :0])
    with pytest.raises(RuntimeError, match="`V` must be float32, float16, bfloat16 or float64"):
        ops.jacobian_t_matmul(a, g, V.long())
    with pytest.raises(RuntimeError, match=r"jacobian_matmul: `W` must be \(b, o, n\) = \(b, 6, 5\)"):
        ops.jacobian_matmul(a, g, W.transpose(1, 2))
    with pytest.raises(RuntimeError, match="b > 0"):
        ops.jacobian_matmul(a, g, W[:0])
    with pytest.raises(RuntimeError, match="`max_tile` must be >= 0"):
        ops.jacobian_matmul(a, g, W, -1)
    with pytest.raises(RuntimeError, match="same batch size N"):
        ops.jacobian_matmul(a, g[:3], W)
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.jacobian_matmul(a.double(), g, W)
    for where in ("acts", "grads", "V"):
        a2, g2, V2 = a.clone(), g.clone(), V.clone()
        {"acts": a2, "grads": g2, "V": V2}[where].view(-1)[3] = float("nan")
        with pytest.raises(RuntimeError, match="not finite"):
            ops.jacobian_t_matmul(a2, g2, V2)
    W2 = W.clone()
    W2[0, 0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="jacobian_matmul: the result is not finite"):
        ops.jacobian_matmul(a, g, W2)


@pytest.mark.cuda
@pytest.mark.skipif("cuda" not in devices, reason="needs a CUDA device")
def test_cpu_cuda_agree_and_devices_checked(gen):
    a, g, V, W = make(gen, 40, 7, 3, 20, 30, 6, torch.float32, "cpu")
    ac, gc, Vc, Wc = a.cuda(), g.cuda(), V.cuda(), W.cuda()
    assert rel_err(ops.jacobian_t_matmul(ac, gc, Vc), ops.jacobian_t_matmul(a, g, V)) < 1e-5
    assert rel_err(ops.jacobian_matmul(ac, gc, Wc), ops.jacobian_matmul(a, g, W)) < 1e-5
    with pytest.raises(RuntimeError, match="`V` must be on the device of `acts`"):
        ops.jacobian_t_matmul(ac, gc, V)
    with pytest.raises(RuntimeError, match="`W` must be on the device of `acts`"):
        ops.jacobian_matmul(ac, gc, W)


# ---------------------------------------------------------------------------------------------------------
# JacobianOperator against torch.func
# ---------------------------------------------------------------------------------------------------------
def _flat(op, W):
    """{key: (b, ...)} -> (b, P) in the trainable-parameter order of torch_func_jacobian."""
    b = next(iter(W.values())).shape[0]
    P = max(k[1] + v[0].numel() for k, v in W.items())
    out = torch.zeros(b, P, dtype=torch.float64)
    for (_, off, _), v in W.items():
        out[:, off:off + v[0].numel()] += v.reshape(b, -1).double().cpu()
    return out


@pytest.mark.parametrize("name", ["mlp", "conv2d", "transformer", "resnet_bn", "conv1d_bn", "sequence_mlp"])
@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_operator_matches_torch_func(name, cache_bytes, gen):
    model, x = build(name)
    J = torch_func_jacobian(model, x)  # (N, C, P)
    N, C, P = J.shape
    op = JacobianOperator(model, x, batch_size=2, cache_bytes=cache_bytes)
    assert (op.N, op.C, op.P) == (N, C, P)
    assert op.cached_samples == (N if cache_bytes else 0)
    V = torch.randn(N, C, 3, generator=gen, dtype=torch.float64)
    W = op.rmatmul(V)
    JtV = torch.einsum("icp,icb->bp", J, V)
    assert rel_err(_flat(op, W), JtV) < 1e-10
    Wd = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in W.items()}
    assert rel_err(op.matmul(Wd), torch.einsum("icp,bp->icb", J, _flat(op, Wd))) < 1e-10
    TV, G = op.theta_matmul(V, gram=True)
    K = torch.einsum("icp,jdp->icjd", J, J).reshape(N * C, N * C)
    assert rel_err(TV.reshape(N * C, 3), K @ V.reshape(N * C, 3)) < 1e-10
    assert rel_err(G, V.reshape(N * C, 3).T @ K @ V.reshape(N * C, 3)) < 1e-10
    assert rel_err(op.gram(V), G) < 1e-12


def test_operator_partial_cache_and_errors(gen):
    model, x = build("conv2d")
    full = JacobianOperator(model, x, batch_size=1)
    part = JacobianOperator(model, x, batch_size=1, cache_bytes=2 * full.cache_nbytes // x.shape[0] + 1)
    assert part.cached_samples == 2 and part.cache_nbytes > 0
    V = torch.randn(x.shape[0], full.C, 2, generator=gen, dtype=torch.float64)
    assert rel_err(part.theta_matmul(V), full.theta_matmul(V)) < 1e-12
    with pytest.raises(ValueError, match=r"`V` must have shape \(N, C, b\)"):
        full.rmatmul(V[:2])
    with pytest.raises(TypeError, match="`V` must be a floating-point tensor"):
        full.rmatmul(V.long())
    with pytest.raises(ValueError, match="`W` must be a dict"):
        full.matmul(V)
    with pytest.raises(ValueError, match="`cache_bytes`"):
        JacobianOperator(model, x, cache_bytes=-1)


# ---------------------------------------------------------------------------------------------------------
# ntk_eigh against torch.linalg.eigh of the exact NTK
# ---------------------------------------------------------------------------------------------------------
def exact_eigh(model, x):
    K = zk.ntk(model, x)
    N, _, C, _ = K.shape
    lam, U = torch.linalg.eigh(K.permute(0, 2, 1, 3).reshape(N * C, N * C))
    return lam.flip(0), U.flip(1), N, C


def _cos_angles(U, V):
    """Cosines of the principal angles between the column spans of U and V (orthonormal)."""
    return torch.linalg.svdvals(U.T @ V)


@pytest.mark.parametrize("method", ["subspace", "nystrom"])
@pytest.mark.parametrize("name", ["mlp", "conv2d", "transformer", "resnet_bn", "conv1d_bn", "sequence_mlp"])
def test_full_range_is_exact(name, method):
    """With l = N·C columns the range finder spans everything: eigh to rounding."""
    model, x = build(name)
    lam, U, N, C = exact_eigh(model, x)
    r = 4
    out = zk.ntk_eigh(model, x, r, method=method, oversample=N * C, iters=0, batch_size=2)
    assert out.eigenvalues.shape == (r,) and out.eigenvectors.shape == (N, C, r)
    assert out.eigenvalues.dtype == torch.float64 and out.eigenvectors.dtype == torch.float64
    assert torch.all(out.eigenvalues[:-1] >= out.eigenvalues[1:])
    assert (out.eigenvalues - lam[:r]).abs().max() < 1e-10 * lam[0]
    V = out.eigenvectors.reshape(N * C, r)
    assert (V.T @ V - torch.eye(r, dtype=torch.float64)).abs().max() < 1e-12
    assert _cos_angles(U[:, :r], V).min() > 1 - 1e-10


@pytest.mark.parametrize("method", ["subspace", "nystrom"])
@pytest.mark.parametrize("name", ["mlp", "transformer", "sequence_mlp"])
def test_power_iterations_converge(name, method):
    """l = rank + 5 < N·C: the error shrinks with iters, to rounding at iters = 12; eigenvectors too."""
    model, x = build(name)
    lam, U, N, C = exact_eigh(model, x)
    r = 3
    err = []
    for iters in (0, 2, 12):
        out = zk.ntk_eigh(model, x, r, method=method, oversample=5, iters=iters, batch_size=4)
        err.append(float(((out.eigenvalues - lam[:r]).abs() / lam[:r]).max()))
    assert err[2] < 1e-10 and err[1] <= err[0] + 1e-12, err
    V = out.eigenvectors.reshape(N * C, r)
    cos = (U[:, :r] * V).sum(0)  # fixed signs: matching directions (the top eigenvalues here are simple)
    assert cos.abs().min() > 1 - 1e-10


def test_matches_torch_func_ntk():
    model, x = build("conv1d_bn")
    K = func_ntk(model, x)
    N, _, C, _ = K.shape
    lam, U = torch.linalg.eigh(K.permute(0, 2, 1, 3).reshape(N * C, N * C))
    out = zk.ntk_eigh(model, x, 3, oversample=4, iters=8, batch_size=3)
    assert rel_err(out.eigenvalues, lam.flip(0)[:3]) < 1e-10
    assert _cos_angles(U.flip(1)[:, :3], out.eigenvectors.reshape(N * C, 3)).min() > 1 - 1e-10


def test_float32_model():
    model, x = build("conv2d")
    lam, U, N, C = exact_eigh(model, x)
    out = zk.ntk_eigh(model.float(), x.float(), 5, method="subspace", oversample=N * C, iters=0)
    assert out.eigenvalues.dtype == torch.float64
    assert (out.eigenvalues - lam[:5]).abs().max() < 1e-5 * lam[0]
    out = zk.ntk_eigh(model.float(), x.float(), 5, method="nystrom", oversample=N * C, iters=0)
    assert (out.eigenvalues - lam[:5]).abs().max() < 1e-5 * lam[0]


def test_larger_mlp_top_eigenpairs():
    """N·C = 600 rows, rank 10 of a slowly decaying spectrum (λ_21/λ_10 = 0.61): the error of λ_j falls like
    (λ_21/λ_j)^(2·iters + 2); the top three (separated from λ_4 by a gap) converge first."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 3)).double().eval()
    x = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lam, U, N, C = exact_eigh(model, x)
    for method in ("subspace", "nystrom"):
        rel = {}
        for iters in (3, 10):
            out = zk.ntk_eigh(model, x, 10, method=method, oversample=10, iters=iters, batch_size=64)
            rel[iters] = (out.eigenvalues - lam[:10]).abs() / lam[:10]
        assert rel[3][:3].max() < 1e-4 and rel[3].max() < 1e-2, (method, rel[3])
        assert rel[10][:3].max() < 1e-11 and rel[10].max() < 1e-5, (method, rel[10])
        V = out.eigenvectors.reshape(N * C, 10)
        assert _cos_angles(U[:, :3], V[:, :3]).min() > 1 - 1e-10
        assert _cos_angles(U[:, :10], V).min() > 1 - 1e-5


def test_seed_reproducibility():
    model, x = build("conv2d")
    kw = dict(oversample=2, iters=1)
    a = zk.ntk_eigh(model, x, 3, seed=5, batch_size=2, **kw)
    b = zk.ntk_eigh(model, x, 3, seed=5, batch_size=2, **kw)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    c = zk.ntk_eigh(model, x, 3, seed=5, batch_size=3, cache_bytes=0, **kw)  # other chunking, recomputed
    assert rel_err(c.eigenvalues, a.eigenvalues) < 1e-12 and rel_err(c.eigenvectors, a.eigenvectors) < 1e-10
    d = zk.ntk_eigh(model, x, 3, seed=6, batch_size=2, **kw)  # a truncated run depends on the start
    assert not torch.allclose(d.eigenvalues, a.eigenvalues, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(rank=0), ValueError, "`rank` must be an int >= 1"),
    (dict(rank=2.0), ValueError, "`rank`"),
    (dict(rank=100), ValueError, r"`rank` must be at most N·C = 18"),
    (dict(method="lanczos"), ValueError, "`method` must be one of"),
    (dict(oversample=-1), ValueError, "`oversample`"),
    (dict(iters=True), ValueError, "`iters`"),
    (dict(seed="a"), TypeError, "`seed` must be an int"),
    (dict(batch_size=0), ValueError, "`batch_size`"),
    (dict(cache_bytes=-5), ValueError, "`cache_bytes`"),
])
def test_bad_arguments(kwargs, err, match):
    model, x = build("mlp")
    kw = dict(rank=2) | kwargs
    with pytest.raises(err, match=match):
        zk.ntk_eigh(model, x, kw.pop("rank"), **kw)


def test_bad_inputs():
    model, x = build("mlp")
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="`inputs` contains NaN"):
        zk.ntk_eigh(model, bad, 2)
    model[0].weight.data[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        zk.ntk_eigh(model, x, 2)
