"""Tests of the projection ops project_dense / project_kron against the float64 references of zoo_kernels.ops
(which materialize R and the per-sample gradients), plus statistics, tiling, chunking, torch.library and
torch.compile integration, and input validation.
"""
import math

import pytest
import torch

from zoo_kernels import ops

from conftest import FLOAT_DTYPES, TOL, devices, randn, rel_err

DISTS = ["rademacher", "gaussian"]


def _dt_id(d):
    return str(d).replace("torch.", "")


def make_inputs(gen, N, T, C, n, o, dtype=torch.float64, device="cpu"):
    """acts (N, n) if T is None else (N, T, n); grads (N, [C,] [T,] o). Already rounded to `dtype`, so the
    float64 references computed from them see exactly what the op sees."""
    a_shape = (N, n) if T is None else (N, T, n)
    g_shape = (N,) + (() if C is None else (C,)) + (() if T is None else (T,)) + (o,)
    return randn(*a_shape, gen=gen, dtype=dtype, device=device), randn(*g_shape, gen=gen, dtype=dtype, device=device)


def out_shape(N, C, k):
    return (N, k) if C is None else (N, C, k)


def expected_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_grads(acts, grads):
    """G_i = sum_t grads[i, (c,) t] (x) acts[i, t], flattened row-major (o, n): (N, [C,] o*n) in float64."""
    a = acts.double() if acts.dim() == 3 else acts.double().unsqueeze(1)
    has_c = grads.dim() == acts.dim() + 1
    g = grads.double() if has_c else grads.double().unsqueeze(1)
    g = g if g.dim() == 4 else g.unsqueeze(2)
    G = torch.einsum("nctp,ntq->ncpq", g, a).flatten(2)
    return G if has_c else G[:, 0]


def _t1_form(acts, grads):
    """2-D acts (T = 1) as the equivalent 3-D form (N, 1, n), grads (N, [C,] 1, o)."""
    return (acts.unsqueeze(1), grads.unsqueeze(-2)) if acts.dim() == 2 else (acts, grads)


# The references are called with 2-D acts rewritten in their T = 1 3-D form; test_reference_2d_acts_with_output_dim
# checks that both forms agree (a regression test of a fixed layout bug in the references).
def ref_dense(acts, grads, k, seed, dist="rademacher", row_offset=0):
    return ops.reference_project_dense(*_t1_form(acts, grads), k, seed, dist, row_offset)


def ref_kron(acts, grads, k_in, k_out, seed, dist="rademacher"):
    return ops.reference_project_kron(*_t1_form(acts, grads), k_in, k_out, seed, dist)


def dense_tiling(rows, n, o, k):
    """Mirror of the tile sizes of project_dense_impl (csrc/common.h): column block kb, output-channel block ob."""
    k_tile = 1 << 22
    kb = min(k, max(128, k_tile // n))
    if kb < k:
        kb = max(128, kb // 128 * 128)
    ob = max(1, min(k_tile // (n * kb), (4 * k_tile) // (rows * n)))
    return kb, min(ob, o)


# (N, T, C, n, o, k): T None = 2-D acts (T = 1), C None = no output dimension in grads.
CASES = [
    (1, None, None, 1, 1, 1),
    (3, None, None, 5, 130, 7),
    (37, None, 2, 130, 5, 128),
    (2, None, 3, 5, 1, 1000),
    (3, 4, None, 130, 1, 300),
    (37, 2, None, 1, 130, 7),
    (1, 3, 3, 5, 5, 1000),
    (3, 5, 2, 130, 130, 300),
    (4, 1, None, 37, 11, 129),
    (3, 1, 2, 7, 3, 128),
]
CASE_IDS = ["N{}-T{}-C{}-n{}-o{}-k{}".format(*c) for c in CASES]

# (N, T, C, n, o, k_in, k_out)
KRON_CASES = [
    (1, None, None, 1, 1, 1, 1),
    (3, None, None, 5, 130, 7, 3),
    (37, None, 2, 130, 5, 128, 1),
    (2, None, 3, 5, 1, 1000, 2),
    (3, 4, None, 130, 1, 300, 5),
    (37, 2, None, 1, 130, 7, 128),
    (1, 3, 3, 5, 5, 13, 300),
    (3, 5, 2, 130, 130, 30, 37),
    (4, 1, None, 37, 11, 129, 7),
]
KRON_IDS = ["N{}-T{}-C{}-n{}-o{}-kin{}-kout{}".format(*c) for c in KRON_CASES]


# ---------------------------------------------------------------------------------------------------------
# Against the references
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dt_id)
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("row_offset", [0, 777])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_project_dense_matches_reference(case, row_offset, dist, dtype, device, gen):
    N, T, C, n, o, k = case
    acts, grads = make_inputs(gen, N, T, C, n, o, dtype, device)
    seed = int(torch.randint(-(1 << 62), 1 << 62, (), generator=gen))
    S = ops.project_dense(acts, grads, k, seed, dist, row_offset=row_offset)
    assert S.shape == out_shape(N, C, k)
    assert S.dtype == expected_dtype(dtype)
    assert S.device == acts.device
    ref = ref_dense(acts, grads, k, seed, dist, row_offset=row_offset)
    assert rel_err(S, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_dt_id)
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("case", KRON_CASES, ids=KRON_IDS)
def test_project_kron_matches_reference(case, dist, dtype, device, gen):
    N, T, C, n, o, k_in, k_out = case
    acts, grads = make_inputs(gen, N, T, C, n, o, dtype, device)
    seed = int(torch.randint(-(1 << 62), 1 << 62, (), generator=gen))
    S = ops.project_kron(acts, grads, k_in, k_out, seed, dist)
    assert S.shape == out_shape(N, C, k_in * k_out)
    assert S.dtype == expected_dtype(dtype)
    assert S.device == acts.device
    ref = ref_kron(acts, grads, k_in, k_out, seed, dist)
    assert rel_err(S, ref) < TOL[dtype]


def test_references_agree_with_definitions(gen):
    # The references themselves, from the definitions S = vec(G_i) R / sqrt(k) and
    # S = vec(R_out^T G_i R_in) / sqrt(k_in k_out), with G_i formed explicitly.
    acts, grads = make_inputs(gen, 4, 3, 2, 6, 5)
    G = per_sample_grads(acts, grads)  # (N, C, o*n)
    R = ops.random_matrix(3 + 30, 11, 9, dtype=torch.float64)[3:]
    torch.testing.assert_close(ops.reference_project_dense(acts, grads, 11, 9, row_offset=3), G @ R / math.sqrt(11))
    R_in = ops.random_matrix(6, 4, ops.derive_seed(9, 0), "gaussian", dtype=torch.float64)
    R_out = ops.random_matrix(5, 3, ops.derive_seed(9, 1), "gaussian", dtype=torch.float64)
    K = (R_out.T @ G.view(4, 2, 5, 6) @ R_in).flatten(2) / math.sqrt(12)
    torch.testing.assert_close(ops.reference_project_kron(acts, grads, 4, 3, 9, "gaussian"), K)


@pytest.mark.parametrize("which", ["dense", "kron"])
def test_reference_2d_acts_with_output_dim(which, gen):
    acts, grads = make_inputs(gen, 2, None, 4, 3, 5)  # acts (2, 3), grads (2, C=4, 5)
    if which == "dense":
        got, exp = ops.reference_project_dense(acts, grads, 6, 0), ref_dense(acts, grads, 6, 0)
    else:
        got, exp = ops.reference_project_kron(acts, grads, 2, 3, 0), ref_kron(acts, grads, 2, 3, 0)
    assert exp.shape == (2, 4, 6)
    assert got.shape == exp.shape
    torch.testing.assert_close(got, exp)


@pytest.mark.parametrize("dist", DISTS)
def test_2d_inputs_equal_t1_inputs(dist, device, gen):
    acts, grads = make_inputs(gen, 5, None, None, 9, 4, device=device)
    for C in (None, 3):
        g = grads if C is None else torch.stack([grads, -grads, 2 * grads], 1)
        a3, g3 = acts.unsqueeze(1), g.unsqueeze(-2)
        assert rel_err(ops.project_dense(acts, g, 50, 1, dist), ops.project_dense(a3, g3, 50, 1, dist)) < 1e-12
        assert rel_err(ops.project_kron(acts, g, 5, 3, 1, dist), ops.project_kron(a3, g3, 5, 3, 1, dist)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_dt_id)
def test_non_contiguous_inputs(dtype, device, gen):
    acts, grads = make_inputs(gen, 6, 4, 3, 10, 7, dtype, device)
    a_nc = acts.transpose(0, 2).contiguous().transpose(0, 2)  # same values, permuted strides
    g_nc = grads.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    a_sl = torch.stack([acts, acts], -1)[..., 0]  # stride 2 in the last dimension
    assert not a_nc.is_contiguous() and not g_nc.is_contiguous() and not a_sl.is_contiguous()
    tol = TOL[dtype]
    for a, g in [(a_nc, g_nc), (a_sl, grads), (acts, g_nc)]:
        assert rel_err(ops.project_dense(a, g, 70, 3), ops.project_dense(acts, grads, 70, 3)) < tol
        assert rel_err(ops.project_kron(a, g, 7, 5, 3), ops.project_kron(acts, grads, 7, 5, 3)) < tol
    # Broadcast (stride-0) inputs.
    a_b = acts[:1].expand_as(acts)
    assert rel_err(ops.project_dense(a_b, grads, 70, 3), ops.project_dense(a_b.contiguous(), grads, 70, 3)) < tol
    assert rel_err(ops.project_kron(a_b, grads, 7, 5, 3), ops.project_kron(a_b.contiguous(), grads, 7, 5, 3)) < tol


@pytest.mark.parametrize("dist", DISTS)
def test_row_offset_stacks_layers(dist, gen):
    # Several layers share one R by stacking their rows: layer 2 uses R[o1*n1:]. The sum of the per-layer
    # projections is the projection of the concatenated per-sample gradient.
    a1, g1 = make_inputs(gen, 5, 3, None, 7, 4)
    a2, g2 = make_inputs(gen, 5, 2, None, 11, 3)
    k = 257
    S = ops.project_dense(a1, g1, k, 77, dist) + ops.project_dense(a2, g2, k, 77, dist, row_offset=7 * 4)
    G = torch.cat([per_sample_grads(a1, g1), per_sample_grads(a2, g2)], 1)
    R = ops.random_matrix(7 * 4 + 11 * 3, k, 77, dist, dtype=torch.float64)
    assert rel_err(S, G @ R / math.sqrt(k)) < 1e-12
    # An offset selects different rows: results differ.
    assert not torch.allclose(ops.project_dense(a2, g2, k, 77, dist), ops.project_dense(a2, g2, k, 77, dist, row_offset=1))


def test_seed_handling(gen):
    acts, grads = make_inputs(gen, 3, None, None, 6, 5)
    for f in (lambda s: ops.project_dense(acts, grads, 40, s), lambda s: ops.project_kron(acts, grads, 5, 4, s)):
        assert torch.equal(f((1 << 64) - 1), f(-1))
        assert torch.equal(f(1 << 63), f(-(1 << 63)))
        assert torch.equal(f(123), f(123))
        assert not torch.allclose(f(123), f(124))
        with pytest.raises(ValueError, match="seed"):
            f(1 << 64)
        with pytest.raises(TypeError, match="seed"):
            f(1.0)


# ---------------------------------------------------------------------------------------------------------
# Tiling, chunking, threads
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "N,n,o,k,dist,dtype",
    [
        # kb = 1280: 3 column tiles (1280, 1280, 440); ob = 1: 3 output-channel tiles.
        (3, 3000, 3, 3000, "rademacher", torch.float64),
        (2, 3000, 3, 3000, "gaussian", torch.float32),
        # n > 2^22 / 128: the minimum column block kb = 128, 3 tiles (128, 128, 4); 2 output-channel tiles.
        (2, 33000, 2, 260, "gaussian", torch.float64),
    ],
    ids=["n3000-rademacher-f64", "n3000-gaussian-f32", "n33000-gaussian-f64"],
)
def test_project_dense_large_k_tiling(N, n, o, k, dist, dtype, gen):
    kb, ob = dense_tiling(N, n, o, k)
    assert math.ceil(k / kb) >= 2 and math.ceil(o / ob) >= 2, "shape no longer tiles; pick a larger one"
    acts, grads = make_inputs(gen, N, None, None, n, o, dtype)
    S = ops.project_dense(acts, grads, k, 4321, dist, row_offset=5)
    ref = ref_dense(acts, grads, k, 4321, dist, row_offset=5)
    assert S.shape == (N, k)
    assert rel_err(S, ref) < TOL[dtype]


def _split(x, sizes):
    return list(torch.split(x, sizes))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_dt_id)
@pytest.mark.parametrize(
    "N,T,C,n,o,k",
    [
        (37, 2, None, 130, 5, 300),
        (10, 3, 2, 20, 7, 1000),
        # Many rows: the output-channel block ob depends on N*C (40 channels in blocks of 27 for the whole
        # batch, of 32 for half of it), so the halves are tiled differently from the whole.
        (600, None, None, 1000, 40, 128),
    ],
    ids=["small", "with-C", "rows-dependent-tiling"],
)
def test_chunk_independence(N, T, C, n, o, k, dtype, device, gen):
    # Projecting the batch in chunks must give the projection of the whole batch: R does not depend on the
    # chunking. The results agree to rounding (not bit for bit, see test_chunk_bit_exact_float64).
    if N == 600:
        assert dense_tiling(N, n, o, k)[1] != dense_tiling(N // 2, n, o, k)[1], "halves no longer tiled differently"
    acts, grads = make_inputs(gen, N, T, C, n, o, dtype, device)
    for f in (lambda a, g: ops.project_dense(a, g, k, 55, "gaussian", row_offset=3),
              lambda a, g: ops.project_kron(a, g, 7, 5, 55, "rademacher")):
        whole = f(acts, grads)
        for sizes in ([N // 2, N - N // 2], [1, N - 1], [N - 1, 1]):
            cat = torch.cat([f(a, g) for a, g in zip(_split(acts, sizes), _split(grads, sizes))])
            assert cat.shape == whole.shape
            assert rel_err(cat, whole) < (1e-13 if dtype == torch.float64 else 1e-6), sizes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=_dt_id)
@pytest.mark.parametrize("dist", DISTS)
def test_thread_count_independence(dist, dtype, gen, restore_threads):
    # R is bit-identical for any thread count (test_random_matrix.py); the GEMM reduction order is the BLAS's
    # choice, so the projections are compared to a tight tolerance.
    acts, grads = make_inputs(gen, 9, 3, 2, 300, 40, dtype)
    outs = []
    for nt in (1, 2, max(2, restore_threads)):
        torch.set_num_threads(nt)
        outs.append((ops.project_dense(acts, grads, 1000, 17, dist), ops.project_kron(acts, grads, 20, 9, 17, dist)))
    torch.set_num_threads(restore_threads)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    for d, kr in outs[1:]:
        assert rel_err(d, outs[0][0]) < tol
        assert rel_err(kr, outs[0][1]) < tol


# ---------------------------------------------------------------------------------------------------------
# Statistics (fixed seeds and inputs: deterministic)
# ---------------------------------------------------------------------------------------------------------
N_SEEDS = 400


def _fixed_inputs(N, T, n, o, seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return make_inputs(g, N, T, None, n, o)


def _assert_unbiased(grams, target, n_se=4.0):
    """grams: (S, N, N) samples of the Gram matrix <S_i, S_j>; target: (N, N) = <G_i, G_j>."""
    mean = grams.mean(0)
    se = grams.std(0) / math.sqrt(grams.shape[0])
    scale = target.diagonal().sqrt()
    scale = scale[:, None] * scale[None, :]  # ||G_i|| ||G_j||
    # The test has power: the standard errors are small next to the signal.
    assert bool((se < 0.25 * scale).all()), se / scale
    z = (mean - target) / se
    assert z.abs().max().item() < n_se, f"max |mean - target| / SE = {z.abs().max().item():.2f}\n{z}"


@pytest.mark.parametrize("dist", DISTS)
def test_project_kron_unbiased(dist):
    acts, grads = _fixed_inputs(3, 4, 6, 5)
    target = per_sample_grads(acts, grads) @ per_sample_grads(acts, grads).T
    grams = []
    for s in range(N_SEEDS):
        S = ops.project_kron(acts, grads, 3, 2, s, dist)
        grams.append(S @ S.T)
    _assert_unbiased(torch.stack(grams), target)


@pytest.mark.parametrize("dist", DISTS)
def test_project_dense_unbiased_and_variance(dist):
    acts, grads = _fixed_inputs(3, 4, 6, 5)
    G = per_sample_grads(acts, grads)
    target = G @ G.T
    k = 8
    grams = torch.stack([(lambda S: S @ S.T)(ops.project_dense(acts, grads, k, s, dist)) for s in range(N_SEEDS)])
    _assert_unbiased(grams, target)
    # Columns of R are independent: Var <S_i, S_j> = (<G_i,G_j>^2 + |G_i|^2 |G_j|^2 - 2 c sum_l G_il^2 G_jl^2) / k
    # with c = 1 for Rademacher, c = 0 for Gaussian (fourth moments 1 and 3). Correlated columns would inflate it.
    c = 1.0 if dist == "rademacher" else 0.0
    sq = G * G
    var = (target ** 2 + torch.outer(target.diagonal(), target.diagonal()) - 2 * c * sq @ sq.T) / k
    ratio = grams.var(0) / var
    assert bool(((ratio > 0.7) & (ratio < 1.4)).all()), ratio


@pytest.mark.parametrize("dist", DISTS)
def test_project_dense_jl_large_k(dist):
    # One draw with large k: <S_i, S_j> concentrates on <G_i, G_j> (Johnson-Lindenstrauss).
    acts, grads = _fixed_inputs(5, 3, 64, 16, seed=1)
    G = per_sample_grads(acts, grads)
    target = G @ G.T
    k = 4096
    S = ops.project_dense(acts, grads, k, 2718, dist)
    gram = S @ S.T
    sd = torch.sqrt((target ** 2 + torch.outer(target.diagonal(), target.diagonal())) / k)  # Gaussian-case SD
    assert ((gram - target).abs() / sd).max().item() < 5
    # Norms preserved to ~ sqrt(2 / k) ~ 2 %.
    rel = (gram.diagonal() / target.diagonal() - 1).abs()
    assert rel.max().item() < 5 * math.sqrt(2 / k)


# ---------------------------------------------------------------------------------------------------------
# torch.library / torch.compile integration
# ---------------------------------------------------------------------------------------------------------
def _opcheck_samples(device):
    g = torch.Generator()
    g.manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float64):
        for N, T, C, n, o in [(3, None, None, 5, 4), (2, 3, None, 6, 5), (2, 2, 3, 4, 3)]:
            a, gr = make_inputs(g, N, T, C, n, o, dtype, device)
            out.append((a, gr))
    return out


def test_opcheck_project_dense(device):
    for i, (a, g) in enumerate(_opcheck_samples(device)):
        dist = DISTS[i % 2]
        torch.library.opcheck(torch.ops.zoo_kernels.project_dense.default, (a, g, 9, -7 + i, dist, i))
        torch.library.opcheck(torch.ops.zoo_kernels.project_dense.default, (a, g, 130, 5), {"dist": dist})


def test_opcheck_project_kron(device):
    for i, (a, g) in enumerate(_opcheck_samples(device)):
        dist = DISTS[i % 2]
        torch.library.opcheck(torch.ops.zoo_kernels.project_kron.default, (a, g, 3, 4, 11 + i, dist))
        torch.library.opcheck(torch.ops.zoo_kernels.project_kron.default, (a, g, 1, 2, -5))


def test_opcheck_fill_random(device):
    for dtype in (torch.float32, torch.float64):
        for dist in DISTS:
            for shape, row0, col0 in [((5, 130), 3, 7), ((1, 1), 0, 0), ((4, 3), 11, 126)]:
                out = torch.empty(shape, dtype=dtype, device=device)
                torch.library.opcheck(torch.ops.zoo_kernels.fill_random.default, (out, row0, col0, 99, dist))


def test_outputs_do_not_require_grad(device, gen):
    a, g = make_inputs(gen, 3, 2, None, 5, 4, device=device)
    assert not ops.project_dense(a, g, 8, 0).requires_grad
    assert not ops.project_kron(a, g, 2, 3, 0).requires_grad


def test_torch_compile_fullgraph(device, gen):
    def f(acts, grads):
        return ops.project_kron(acts, grads, 5, 3, 1234, "gaussian") * 2.0 + 1.0

    def h(acts, grads):
        S = ops.project_dense(acts, grads, 33, (1 << 63) + 1, "rademacher", row_offset=2)
        return S.norm(dim=-1)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    ch = torch.compile(h, fullgraph=True, backend="aot_eager")
    for N in (4, 7):  # a second batch size (recompiles or runs the dynamic graph)
        a, g = make_inputs(gen, N, 3, 2, 6, 5, torch.float32, device)
        torch.testing.assert_close(cf(a, g), f(a, g), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ch(a, g), h(a, g), rtol=1e-6, atol=1e-6)


def test_torch_compile_random_matrix(device):
    def r():
        return ops.random_matrix(5, 130, 8, "gaussian", dtype=torch.float64, device=device, row0=1, col0=3)

    torch.testing.assert_close(torch.compile(r, fullgraph=True, backend="aot_eager")(), r(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------
def _dense(a, g, k=8, **kw):
    return ops.project_dense(a, g, k, 0, **kw)


def _kron(a, g, k_in=3, k_out=2, **kw):
    return ops.project_kron(a, g, k_in, k_out, 0, **kw)


@pytest.mark.parametrize("op", [_dense, _kron], ids=["dense", "kron"])
def test_bad_inputs(op, device, gen):
    a, g = make_inputs(gen, 3, None, None, 5, 4, torch.float32, device)
    a3, g3 = make_inputs(gen, 3, 2, None, 5, 4, torch.float32, device)
    with pytest.raises(RuntimeError, match=r"`grads`.*dtype|dtype.*Half"):
        op(a, g.half())
    with pytest.raises(RuntimeError, match="same dtype"):
        op(a.double(), g)
    with pytest.raises(RuntimeError, match="batch size N"):
        op(a, g[:2])
    with pytest.raises(RuntimeError, match="same T"):
        op(a3, torch.zeros(3, 3, 4, device=device))
    with pytest.raises(RuntimeError, match=r"`acts` must be \(N, n\) or \(N, T, n\)"):
        op(a3.unsqueeze(1), g3.unsqueeze(1))
    with pytest.raises(RuntimeError, match=r"`acts` must be \(N, n\) or \(N, T, n\)"):
        op(a[0], g[0])
    with pytest.raises(RuntimeError, match="`grads` must be"):
        op(a, g3.unsqueeze(1))  # 2-D acts with 4-D grads
    with pytest.raises(RuntimeError, match="`grads` must be"):
        op(a3, g)  # 3-D acts with 2-D grads
    with pytest.raises(RuntimeError, match=r"empty batch \(N = 0\)"):
        op(a[:0], g[:0])
    with pytest.raises(RuntimeError, match="zero-sized"):
        op(a[:, :0], g)
    with pytest.raises(RuntimeError, match="zero-sized"):
        op(a3[:, :0], g3[:, :0])
    for dt in (torch.int32, torch.int64):
        with pytest.raises(RuntimeError, match="`acts` must be float32, float16, bfloat16 or float64"):
            op(a.to(dt), g.to(dt))
    with pytest.raises(RuntimeError, match="`acts` must be float32"):
        op(a.to(torch.complex64), g.to(torch.complex64))
    with pytest.raises(ValueError, match="`dist`"):
        op(a, g, dist="foo")
    for bad, where in [(float("nan"), "acts"), (float("inf"), "acts"), (float("-inf"), "grads"), (float("nan"), "grads")]:
        a2, g2 = a.clone(), g.clone()
        (a2 if where == "acts" else g2)[1, 2] = bad
        with pytest.raises(RuntimeError, match="not finite"):
            op(a2, g2)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        a2 = a.to(dt)
        a2[0, 0] = float("nan")
        with pytest.raises(RuntimeError, match="not finite"):
            op(a2, g.to(dt))


def test_bad_k(device, gen):
    a, g = make_inputs(gen, 3, None, None, 5, 4, torch.float32, device)
    for k in (0, -3):
        with pytest.raises(RuntimeError, match="`k` must be positive"):
            ops.project_dense(a, g, k, 0)
        with pytest.raises(RuntimeError, match="`k_in` must be positive"):
            ops.project_kron(a, g, k, 2, 0)
        with pytest.raises(RuntimeError, match="`k_out` must be positive"):
            ops.project_kron(a, g, 2, k, 0)
    with pytest.raises(RuntimeError, match="`row_offset` must be >= 0"):
        ops.project_dense(a, g, 4, 0, row_offset=-1)


def test_raw_ops_bad_dist(gen):
    a, g = make_inputs(gen, 3, None, None, 5, 4, torch.float32)
    with pytest.raises(RuntimeError, match="`dist`"):
        torch.ops.zoo_kernels.project_dense(a, g, 4, 0, "foo", 0)
    with pytest.raises(RuntimeError, match="`dist`"):
        torch.ops.zoo_kernels.project_kron(a, g, 2, 2, 0, "Gaussian")


# ---------------------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)
# ---------------------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif("cuda" not in devices, reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("case", CASES[:8], ids=CASE_IDS[:8])
def test_cpu_cuda_agree(case, dist, gen):
    N, T, C, n, o, k = case
    acts, grads = make_inputs(gen, N, T, C, n, o, torch.float32)
    ac, gc = acts.cuda(), grads.cuda()
    d_cpu = ops.project_dense(acts, grads, k, 99, dist, row_offset=3)
    d_gpu = ops.project_dense(ac, gc, k, 99, dist, row_offset=3)
    assert d_gpu.device.type == "cuda" and d_gpu.dtype == torch.float32
    assert rel_err(d_gpu, d_cpu) < 1e-5
    k_in, k_out = min(k, 37), 5
    assert rel_err(ops.project_kron(ac, gc, k_in, k_out, 99, dist), ops.project_kron(acts, grads, k_in, k_out, 99, dist)) < 1e-5


@pytest.mark.cuda
@needs_cuda
def test_cuda_mixed_devices_rejected(gen):
    a, g = make_inputs(gen, 3, None, None, 5, 4, torch.float32)
    with pytest.raises(RuntimeError, match="same device"):
        ops.project_dense(a, g.cuda(), 8, 0)
    with pytest.raises(RuntimeError, match="same device"):
        ops.project_kron(a.cuda(), g, 2, 2, 0)
