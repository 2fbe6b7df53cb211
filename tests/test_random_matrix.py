"""Tests of the counter-based random matrix R(seed): zoo_kernels.ops.random_matrix / derive_seed and the
torch.ops.zoo_kernels.fill_random op.

R(seed)[row, col] must be a pure function of (seed, row, col) (csrc/philox.h): Philox4x32-10 keyed by the
seed with counter (row, col // B); Rademacher takes bit col % 128 of a block of 128, Gaussian a Box-Muller
pair out of a block of 4, under the key seed ^ 0x6A09E667F3BCC909.
"""
import math

import pytest
import torch

from zoo_kernels import ops

from conftest import devices

DISTS = ["rademacher", "gaussian"]
DTYPES = [torch.float32, torch.float64]
M32 = (1 << 32) - 1
M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------------------
# Independent pure-Python model of the generator, checked against published Philox known answers.
# ---------------------------------------------------------------------------------------------------------
def philox4x32_10(ctr, key):
    """Philox4x32-10 (Salmon et al., SC'11 / Random123), written from the published algorithm."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def _words(row, block, key):
    key &= M64
    return philox4x32_10((row & M32, row >> 32, block & M32, block >> 32), (key & M32, key >> 32))


def model_entry(seed, row, col, dist):
    """R(seed)[row, col] as documented in csrc/philox.h, in pure Python."""
    if dist == "rademacher":
        j = col % 128
        w = _words(row, col // 128, seed)
        return -1.0 if (w[j >> 5] >> (j & 31)) & 1 else 1.0
    w = _words(row, col // 4, (seed & M64) ^ 0x6A09E667F3BCC909)
    a, b = (w[0], w[1]) if col % 4 < 2 else (w[2], w[3])
    u1 = (a + 0.5) * 2.3283064365386963e-10
    u2 = b * 2.3283064365386963e-10
    r = math.sqrt(-2.0 * math.log(u1))
    t = 6.283185307179586 * u2
    return r * math.cos(t) if col % 2 == 0 else r * math.sin(t)


# Known-answer vectors of Random123 (tests/kat_vectors): counter[4], key[2] -> output[4].
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT)
def test_python_philox_model_known_answers(ctr, key, expected):
    assert philox4x32_10(ctr, key) == expected


def test_rademacher_row0_is_philox_known_answer():
    # seed 0, row 0, block 0 is the all-zero Random123 known answer: bit j of the 128-bit output is column j.
    R = ops.random_matrix(1, 128, 0, "rademacher", dtype=torch.float64)[0]
    words = PHILOX_KAT[0][2]
    expected = [-1.0 if (words[j >> 5] >> (j & 31)) & 1 else 1.0 for j in range(128)]
    assert R.tolist() == expected


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize(
    "seed", [0, 1, 1234, -1, -(1 << 63), (1 << 63) + 17, (1 << 64) - 2, 0x9E3779B97F4A7C15], ids=str
)
def test_entries_match_python_model(seed, dist, gen):
    # Blocks at small and very large offsets (rows and block indices beyond 32 bits).
    for row0, col0 in [(0, 0), (5, 125), (3, 1 << 33), ((1 << 40) + 7, 3), ((1 << 35) + 1, (1 << 45) + 126)]:
        rows, cols = 2, 7
        got = ops.random_matrix(rows, cols, seed, dist, dtype=torch.float64, row0=row0, col0=col0)
        exp = torch.tensor([[model_entry(seed, row0 + i, col0 + j, dist) for j in range(cols)] for i in range(rows)],
                           dtype=torch.float64)
        if dist == "rademacher":
            assert torch.equal(got, exp), (row0, col0)
        else:
            torch.testing.assert_close(got, exp, rtol=1e-13, atol=1e-13, msg=f"block at ({row0}, {col0})")


# ---------------------------------------------------------------------------------------------------------
# Golden values: a regression pin of OUR OWN generator (computed once from this implementation, not an
# external reference). They fail if R(seed) changes by accident (reordered bits, new block layout, ...),
# which would silently change every stored sketch.
# ---------------------------------------------------------------------------------------------------------
# Bit j of GOLDEN_RADEMACHER_ROWS[i] is 1 where random_matrix(4, 130, seed=1234)[i, j] == -1.
GOLDEN_RADEMACHER_ROWS = [
    0xCBCA470E4401906FDA7CF0AB2090B348,
    0x3147EDD50FA2770931CBE137C9EEEDE35,
    0x3891D3B11CC170B27FC06FA383FC9C8D8,
    0x1E87C375E72CD7B6723B73D6BB6269A3E,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_golden_rademacher(dtype):
    R = ops.random_matrix(4, 130, seed=1234, dtype=dtype)
    assert R[0, :8].tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
    assert R[1, 124:130].tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    assert R[3, 129].item() == 1.0
    assert [(R[i] > 0).sum().item() for i in range(4)] == [74, 57, 65, 54]
    for i in range(4):
        bits = sum(1 << j for j, v in enumerate(R[i].tolist()) if v < 0)
        assert bits == GOLDEN_RADEMACHER_ROWS[i], f"row {i}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_golden_gaussian(dtype):
    G = ops.random_matrix(4, 130, seed=1234, dist="gaussian", dtype=torch.float64)
    pins = {
        (0, 0): 0.7872244959845802,
        (0, 1): -0.3831465908954165,
        (0, 2): 0.7673340082890422,
        (0, 3): 0.8878118331338859,
        (1, 5): -0.49999293132554107,
        (2, 64): 0.5621700021952981,
        (3, 129): 0.67525445278243,
    }
    # rtol: the host math library may differ by an ulp in log/cos/sin between platforms.
    for (i, j), v in pins.items():
        assert G[i, j].item() == pytest.approx(v, rel=1e-13, abs=1e-15), (i, j)
    if dtype == torch.float32:
        G32 = ops.random_matrix(4, 130, seed=1234, dist="gaussian", dtype=dtype)
        for (i, j), v in pins.items():
            assert G32[i, j].item() == pytest.approx(v, rel=1e-7), (i, j)


# ---------------------------------------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_rademacher_entries_are_exactly_pm1(device, dtype):
    R = ops.random_matrix(257, 389, seed=99, dtype=dtype, device=device, row0=3, col0=61).cpu()
    assert R.dtype == dtype and R.shape == (257, 389)
    assert bool(((R == 1) | (R == -1)).all())
    n = R.numel()
    frac = (R == 1).sum().item() / n
    assert abs(frac - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_rademacher_bits_balanced_per_position():
    # Every one of the 128 bit positions of the Philox output is used and is fair (catches a stuck word/bit).
    R = ops.random_matrix(4096, 128, seed=7, dtype=torch.float64)
    frac = (R == 1).double().mean(0)
    assert float((frac - 0.5).abs().max()) < 5 * 0.5 / math.sqrt(4096)


def test_gaussian_statistics():
    # Fixed seed: a deterministic, loose statistical check of N(0, 1).
    import scipy.stats

    G = ops.random_matrix(512, 512, seed=2024, dist="gaussian", dtype=torch.float64)
    x = G.flatten()
    n = x.numel()
    assert bool(torch.isfinite(x).all())
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.std().item() - 1) < 5 * math.sqrt(0.5 / n)
    assert abs(scipy.stats.skew(x.numpy())) < 5 * math.sqrt(6 / n)
    assert abs(scipy.stats.kurtosis(x.numpy())) < 5 * math.sqrt(24 / n)  # excess kurtosis 0
    assert scipy.stats.kstest(x.numpy(), "norm").pvalue > 1e-4
    # u1 >= 2^-33, so |z| <= sqrt(2 ln 2^33) ~ 6.76: no extreme values (no log(0)).
    assert x.abs().max().item() < 6.77
    # Columns within a Box-Muller block (pairs and across pairs) and across blocks are uncorrelated.
    C = torch.corrcoef(G[:, :8].T)
    off = C - torch.eye(8, dtype=C.dtype)
    assert off.abs().max().item() < 5 / math.sqrt(512)


def test_gaussian_float32_is_rounded_float64():
    G64 = ops.random_matrix(33, 301, seed=5, dist="gaussian", dtype=torch.float64, row0=2, col0=3)
    G32 = ops.random_matrix(33, 301, seed=5, dist="gaussian", dtype=torch.float32, row0=2, col0=3)
    assert torch.equal(G32, G64.float())


def test_rows_and_column_blocks_are_not_repeated():
    R = ops.random_matrix(256, 512, seed=11, dtype=torch.float64)
    n = 256 * 128
    # Same columns in the next row, and the next 128-column block in the same row, look independent.
    for a, b in [(R[:-1], R[1:]), (R[:, :384], R[:, 128:])]:
        agree = (a == b).double().mean().item()
        assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_gaussian_and_rademacher_streams_differ():
    R = ops.random_matrix(128, 512, seed=3, dtype=torch.float64)
    G = ops.random_matrix(128, 512, seed=3, dist="gaussian", dtype=torch.float64)
    agree = (torch.sign(G) == R).double().mean().item()
    assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(R.numel())


# ---------------------------------------------------------------------------------------------------------
# Pure function of (seed, row, col)
# ---------------------------------------------------------------------------------------------------------
# (row0, col0, rows, cols) blocks of a 70 x 700 matrix: odd offsets, partial and straddling 128-blocks,
# single entries, the whole matrix and empty blocks.
BLOCKS = [
    (0, 0, 70, 700),
    (3, 5, 17, 250),
    (0, 127, 5, 2),
    (1, 128, 4, 129),
    (33, 1, 37, 699),
    (69, 699, 1, 1),
    (7, 383, 9, 257),
    (11, 255, 13, 131),
    (2, 3, 0, 5),
    (2, 3, 5, 0),
    (41, 129, 29, 3),
    (5, 2, 3, 126),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("dist", DISTS)
def test_blocks_equal_slices_of_full_matrix(device, dist, dtype):
    full = ops.random_matrix(70, 700, 4242, dist, dtype=dtype, device=device)
    for row0, col0, rows, cols in BLOCKS:
        blk = ops.random_matrix(rows, cols, 4242, dist, dtype=dtype, device=device, row0=row0, col0=col0)
        assert blk.shape == (rows, cols)
        assert torch.equal(blk, full[row0:row0 + rows, col0:col0 + cols]), (row0, col0, rows, cols)


@pytest.mark.parametrize("dist", DISTS)
def test_single_entries_equal_full_matrix(dist, gen):
    full = ops.random_matrix(9, 300, -77, dist, dtype=torch.float64)
    idx = torch.randint(0, 9 * 300, (40,), generator=gen).tolist()
    for f in idx:
        i, j = divmod(f, 300)
        e = ops.random_matrix(1, 1, -77, dist, dtype=torch.float64, row0=i, col0=j)
        assert e.item() == full[i, j].item(), (i, j)


@pytest.mark.parametrize("dist", DISTS)
def test_independent_of_thread_count(dist, restore_threads):
    shape = (300, 1000)
    ref = ops.random_matrix(*shape, 8, dist, dtype=torch.float64, row0=1, col0=3)
    outs = []
    for n in (1, 2, max(restore_threads, 2)):
        torch.set_num_threads(n)
        outs.append(ops.random_matrix(*shape, 8, dist, dtype=torch.float64, row0=1, col0=3))
    torch.set_num_threads(restore_threads)
    for out in outs:
        assert torch.equal(out, ref)


@pytest.mark.parametrize("dist", DISTS)
def test_deterministic(dist):
    a = ops.random_matrix(31, 333, 123, dist)
    b = ops.random_matrix(31, 333, 123, dist)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dist", DISTS)
def test_different_seeds_give_different_matrices(dist):
    seeds = [0, 1, 2, -1, 1 << 32, 1 << 63, 12345678901234567]
    Rs = [ops.random_matrix(64, 256, s, dist, dtype=torch.float64) for s in seeds]
    n = 64 * 256
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            if dist == "rademacher":
                agree = (Rs[i] == Rs[j]).double().mean().item()
                assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(n), (seeds[i], seeds[j])
            else:
                corr = (Rs[i] * Rs[j]).mean().item()
                assert abs(corr) < 5 / math.sqrt(n), (seeds[i], seeds[j])


@pytest.mark.parametrize("dist", DISTS)
def test_seed_range_and_wraparound(dist):
    # Seeds are 64-bit patterns: [2^63, 2^64) are the same as the negative int64 with the same bits.
    def R(s):
        return ops.random_matrix(3, 200, s, dist, dtype=torch.float64)

    assert torch.equal(R((1 << 64) - 1), R(-1))
    assert torch.equal(R(1 << 63), R(-(1 << 63)))
    assert torch.equal(R((1 << 63) + 12345), R(-(1 << 63) + 12345))
    assert not torch.equal(R(-1), R(1))
    for s in (-5, -(1 << 63), 1 << 63, (1 << 64) - 1):
        assert R(s).shape == (3, 200)
    for bad in (1 << 64, (1 << 64) + 1, -(1 << 63) - 1, 1 << 100):
        with pytest.raises(ValueError, match="seed"):
            R(bad)
    for bad in (1.0, 1.5, "1", None, True):
        with pytest.raises(TypeError, match="seed"):
            R(bad)


# ---------------------------------------------------------------------------------------------------------
# derive_seed
# ---------------------------------------------------------------------------------------------------------
def test_derive_seed_is_splitmix64():
    # derive_seed(s, stream) = splitmix64 output number `stream` from state s. Published first outputs of
    # SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c) from state 0:
    published = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert [ops.derive_seed(0, s) & M64 for s in range(4)] == published


def test_derive_seed_deterministic_distinct_and_in_range():
    for seed in (0, 1, -1, 1234, -(1 << 63), (1 << 63) + 3, (1 << 64) - 1):
        streams = [ops.derive_seed(seed, s) for s in range(1000)]
        assert streams == [ops.derive_seed(seed, s) for s in range(1000)]
        assert len(set(streams)) == 1000
        assert all(isinstance(z, int) and -(1 << 63) <= z < (1 << 63) for z in streams)
        assert seed not in streams[:2]
    assert ops.derive_seed((1 << 64) - 1, 0) == ops.derive_seed(-1, 0)
    assert ops.derive_seed(1, 0) != ops.derive_seed(2, 0)
    # Derived seeds are valid seeds of random_matrix, and streams give different matrices.
    a = ops.random_matrix(4, 130, ops.derive_seed(7, 0))
    b = ops.random_matrix(4, 130, ops.derive_seed(7, 1))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        ops.derive_seed(1 << 64, 0)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------
def test_random_matrix_bad_inputs():
    with pytest.raises(ValueError, match="`dist`"):
        ops.random_matrix(2, 3, 0, dist="foo")
    with pytest.raises(ValueError, match="`dist`"):
        ops.random_matrix(2, 3, 0, dist="Rademacher")
    with pytest.raises(ValueError, match="`rows`"):
        ops.random_matrix(-1, 3, 0)
    with pytest.raises(ValueError, match="`cols`"):
        ops.random_matrix(2, -3, 0)
    with pytest.raises(ValueError, match="`rows`"):
        ops.random_matrix(2.0, 3, 0)
    for dt in (torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.bool):
        with pytest.raises(TypeError, match="`dtype`"):
            ops.random_matrix(2, 3, 0, dtype=dt)
    with pytest.raises(RuntimeError, match="row0"):
        ops.random_matrix(2, 3, 0, row0=-1)
    with pytest.raises(RuntimeError, match="col0"):
        ops.random_matrix(2, 3, 0, col0=-5)


def test_empty_matrices():
    for rows, cols in [(0, 0), (0, 5), (5, 0)]:
        for dist in DISTS:
            R = ops.random_matrix(rows, cols, 1, dist)
            assert R.shape == (rows, cols) and R.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# fill_random (the raw op)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("dist", DISTS)
def test_fill_random_overwrites_poisoned_output(device, dist, dtype):
    for rows, cols, row0, col0 in [(7, 300, 0, 0), (5, 129, 3, 5), (1, 1, 9, 127), (13, 131, 2, 253), (64, 4, 1, 2)]:
        out = torch.full((rows, cols), float("nan"), dtype=dtype, device=device)
        torch.ops.zoo_kernels.fill_random(out, row0, col0, 31337, dist)
        assert not bool(out.isnan().any()), (rows, cols, row0, col0)
        ref = ops.random_matrix(rows, cols, 31337, dist, dtype=dtype, device=device, row0=row0, col0=col0)
        assert torch.equal(out, ref)


@pytest.mark.parametrize("dist", DISTS)
def test_fill_random_writes_only_its_view(device, dist):
    # A contiguous block of rows inside a NaN-poisoned buffer: everything outside stays NaN.
    buf = torch.full((12, 131), float("nan"), dtype=torch.float64, device=device)
    view = buf[3:10]
    assert view.is_contiguous() and view.storage_offset() > 0
    torch.ops.zoo_kernels.fill_random(view, 4, 7, 5, dist)
    assert bool(buf[:3].isnan().all()) and bool(buf[10:].isnan().all())
    assert not bool(view.isnan().any())
    assert torch.equal(view, ops.random_matrix(7, 131, 5, dist, dtype=torch.float64, device=device, row0=4, col0=7))


def test_fill_random_bad_out():
    fill = torch.ops.zoo_kernels.fill_random
    with pytest.raises(RuntimeError, match="contiguous"):
        fill(torch.empty(3, 4).t(), 0, 0, 0, "rademacher")
    with pytest.raises(RuntimeError, match="2-D"):
        fill(torch.empty(3), 0, 0, 0, "rademacher")
    with pytest.raises(RuntimeError, match="2-D"):
        fill(torch.empty(2, 3, 4), 0, 0, 0, "rademacher")
    for dt in (torch.float16, torch.bfloat16, torch.int32):
        with pytest.raises(RuntimeError, match="float32 or float64"):
            fill(torch.empty(2, 3, dtype=dt), 0, 0, 0, "rademacher")
    with pytest.raises(RuntimeError, match="dist"):
        fill(torch.empty(2, 3), 0, 0, 0, "foo")
    with pytest.raises(RuntimeError, match="row0"):
        fill(torch.empty(2, 3), -1, 0, 0, "gaussian")


# ---------------------------------------------------------------------------------------------------------
# CUDA (run on a GPU machine)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif("cuda" not in devices, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("row0,col0,rows,cols", [(0, 0, 300, 1000), (3, 5, 17, 250), (1, 127, 129, 385)])
@pytest.mark.parametrize("dist", DISTS)
def test_cpu_cuda_identical(dist, row0, col0, rows, cols, dtype):
    for seed in (0, -3, (1 << 63) + 9):
        c = ops.random_matrix(rows, cols, seed, dist, dtype=dtype, row0=row0, col0=col0)
        g = ops.random_matrix(rows, cols, seed, dist, dtype=dtype, device="cuda", row0=row0, col0=col0)
        assert g.device.type == "cuda"
        if dist == "rademacher":
            assert torch.equal(g.cpu(), c)
        else:
            # Host and device math libraries may differ by rounding in log/sin/cos.
            tol = 1e-12 if dtype == torch.float64 else 1e-6
            torch.testing.assert_close(g.cpu(), c, rtol=tol, atol=tol)
