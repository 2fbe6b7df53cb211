"""Streaming sketch Grams, subset spectral estimation, and the 2-process distributed sketch."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import zoo_kernels as zk
from zoo_kernels import ops
from zoo_kernels.distributed import _demo_problem, sketch_gram
from zoo_kernels.spectrum import SketchGram, estimate_spectrum, initial_residual, spectrum_from_measurement


def problem(n=120, d=6, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, C)).double().eval()
    return model, x, y


def test_gram_accumulate_matches_direct_products():
    g = torch.Generator().manual_seed(1)
    S, Y = torch.randn(20000, 40, generator=g), torch.randn(20000, 2, generator=g)
    gram = torch.full((40, 40), 0.0, dtype=torch.float64)
    cross = torch.zeros(40, 2, dtype=torch.float64)
    ops.gram_accumulate_(gram, S, cross, Y)
    ops.gram_accumulate_(gram, S[:7])
    Sd = S.double()
    torch.testing.assert_close(gram, Sd.T @ Sd + Sd[:7].T @ Sd[:7], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(cross, Sd.T @ Y.double(), rtol=1e-12, atol=1e-9)
    torch.library.opcheck(torch.ops.zoo_kernels.gram_accumulate_.default, (gram.clone(), S[:50], cross.clone(), Y[:50]))
    with pytest.raises(RuntimeError, match="`gram` must be float64"):
        ops.gram_accumulate_(gram.float(), S)
    with pytest.raises(RuntimeError, match="`gram` must be \\(10, 10\\) to match `sketch`"):
        ops.gram_accumulate_(gram, S[:, :10])
    bad = S[:3].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        ops.gram_accumulate_(gram.clone(), bad)


def test_sketch_gram_eigh_equals_eigh_of_S_St():
    g = torch.Generator().manual_seed(2)
    S, delta = torch.randn(300, 20, generator=g, dtype=torch.float64), torch.randn(300, generator=g, dtype=torch.float64)
    acc = SketchGram(20)
    for s in range(0, 300, 70):  # streamed in uneven chunks
        acc.update(S[s:s + 70], delta[s:s + 70])
    lam, energies = acc.eigh()
    mu, U = torch.linalg.eigh(S @ S.T)
    mu, U = mu.flip(0)[:20], U.flip(1)[:, :20]
    torch.testing.assert_close(lam, mu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(energies, (U.T @ delta).square(), rtol=1e-8, atol=1e-9)
    assert float(acc.residual_norm2) == pytest.approx(float(delta.square().sum()))


def test_exact_full_spectrum_and_gd_loss_curve_match_direct_simulation():
    model, x, y = problem()
    spec = estimate_spectrum(model, (x, y))
    K = zk.ntk(model, x).permute(0, 2, 1, 3).reshape(360, 360)
    delta = initial_residual(model, x, y).reshape(-1)
    np.testing.assert_allclose(spec.eigenvalues, torch.linalg.eigvalsh(K).flip(0).clamp_min(0).numpy(), rtol=1e-8, atol=1e-8)
    assert spec.energies.sum() == pytest.approx(float(delta.square().sum()), rel=1e-10)
    # Full-batch GD of the linearized model: delta_{t+1} = (I - lr K / N) delta_t, L = |delta|^2 / 2N.
    lr, N = 0.5, 120
    A = torch.eye(360, dtype=torch.float64) - lr * K / N
    d, direct = delta.clone(), []
    for _ in range(51):
        direct.append(float(d.square().sum()) / (2 * N))
        d = A @ d
    np.testing.assert_allclose(spec.mse_gd_loss_curve(lr, 50), direct, rtol=1e-8)


def test_subset_rescaling_and_tail():
    model, x, y = problem(n=200)
    spec = estimate_spectrum(model, (x, y), subset=50, n_total=800, seed=3, trust=0.5)
    assert spec.n_samples == 800 and spec.subset == 50 and spec.n_modes == 2400
    lam, mult, e = spec.modes()
    assert mult.sum() == 2400  # every mode of the full set is represented
    assert e.sum() == pytest.approx(spec.residual_norm2, rel=1e-9)
    assert np.all(np.diff(lam) <= 1e-9 * lam[0])  # descending
    # eigenvalues are the subset's, times N / M
    x50 = x[torch.randperm(200, generator=torch.Generator().manual_seed(3))[:50].sort().values]
    K50 = zk.ntk(model, x50).permute(0, 2, 1, 3).reshape(150, 150)
    top = torch.linalg.eigvalsh(K50).flip(0)[:len(spec.eigenvalues)].numpy() * 800 / 50
    np.testing.assert_allclose(spec.eigenvalues, top, rtol=1e-8)


def test_noise_floor_extrapolation_on_a_known_population():
    # Expected measurement of a subset of M samples from a population with signal s_j per sample in mode j and
    # white noise σ² per mode: e_j^(M) = M s_j + σ², the modes the k-column sketch misses hold σ² each.
    M, N, C, k, sigma2 = 50, 800, 4, 64, 0.3
    j = np.arange(1, k + 1, dtype=np.float64)
    lam, signal = 100.0 * j ** -1.5, 2.0 * j ** -2.0
    e = M * signal + sigma2
    R = e.sum() + (M * C - k) * sigma2
    spec = spectrum_from_measurement(lam, e, R, M, N, C, trust=0.5)
    assert spec.noise_energy == pytest.approx(sigma2, rel=1e-12)
    np.testing.assert_allclose(spec.eigenvalues, lam[:32] * N / M, rtol=1e-12)
    np.testing.assert_allclose(spec.energies, N * signal[:32] + sigma2, rtol=1e-12)  # not (N/M) e_j
    lam_n, mult, e_n = spec.modes()
    assert mult.sum() == N * C and e_n.sum() == pytest.approx(R * N / M, rel=1e-12)
    expected_tail = N * signal[32:].sum() + (N * C - 32) * sigma2
    assert e_n[32:].sum() == pytest.approx(expected_tail, rel=1e-9)
    assert spec.alpha == pytest.approx(1.5, rel=1e-9)
    # the full set itself: energies as measured, the rest spread as noise over the unmeasured modes
    full = spectrum_from_measurement(lam, e, R, M, M, C, trust=1.0)
    np.testing.assert_allclose(full.energies, e, rtol=1e-12)
    assert full.modes()[2].sum() == pytest.approx(R, rel=1e-12)
    with pytest.raises(ValueError, match="NaN or Inf"):
        spectrum_from_measurement(np.array([1.0, np.nan]), e[:2], R, M, N, C)


def test_subset_energies_follow_the_full_set_with_label_noise():
    # A smooth target plus label noise: plain N/M rescaling of the energies puts the noise into the leading
    # modes (too fast a predicted decay); the noise floor keeps it spread over all N·C modes.
    g = torch.Generator().manual_seed(0)
    n, C, M = 600, 2, 200
    x = torch.randn(n, 20, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    y = torch.where(torch.rand(n, generator=g) < 0.25, 1 - y, y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, C)).double().eval()  # P > N·C
    full = estimate_spectrum(model, (x, y))
    assert full.rank is None
    for seed in (1, 2):
        sub = estimate_spectrum(model, (x, y), subset=M, seed=seed, trust=1.0)
        assert sub.noise_energy > 0
        e = sub.modes()[2]
        for j in (100, 300):  # fraction of ‖δ₀‖² in the top-j modes of Θ_N
            ref = full.energies[:j].sum() / full.residual_norm2
            naive = sub.subset_energies[:j].sum() / sub.subset_energies.sum()
            assert abs(e[:j].sum() / e.sum() - ref) < 0.5 * abs(naive - ref), (seed, j)


def test_nested_subsets_approach_the_full_spectrum():
    model, x, y = problem(n=400, d=4, C=2)
    full = estimate_spectrum(model, (x, y))
    errs = [np.abs(estimate_spectrum(model, (x, y), subset=M, seed=5).eigenvalues[:5] / full.eigenvalues[:5] - 1).max()
            for M in (50, 200)]
    assert errs[1] < errs[0] and errs[1] < 0.15


def test_subspace_method_gives_the_exact_top_modes():
    model, x, y = problem(n=150, d=4, C=2)
    exact = estimate_spectrum(model, (x, y), subset=100, n_total=150, seed=2, trust=1.0)
    sub = estimate_spectrum(model, (x, y), subset=100, n_total=150, seed=2, method="subspace", k=12, trust=1.0)
    np.testing.assert_allclose(sub.subset_eigenvalues[:8], exact.subset_eigenvalues[:8], rtol=1e-6)
    np.testing.assert_allclose(sub.subset_energies[:8], exact.subset_energies[:8], rtol=1e-4, atol=1e-10)
    R = sub.residual_norm2 * 100 / 150
    assert sub.noise_energy == pytest.approx((R - sub.subset_energies.sum()) / (200 - 12), rel=1e-9)
    assert sub.modes()[2].sum() == pytest.approx(exact.residual_norm2, rel=1e-9)


def test_sketch_spectrum_close_to_exact_for_large_k():
    model, x, y = problem(n=150, d=4, C=2)
    exact = estimate_spectrum(model, (x, y))
    sk = estimate_spectrum(model, (x, y), k=1024, chunk=64)
    assert sk.method == "sketch"
    np.testing.assert_allclose(sk.eigenvalues[:3], exact.eigenvalues[:3], rtol=0.15)  # JL: ~sqrt(2/k) per entry
    assert sk.residual_norm2 == pytest.approx(exact.residual_norm2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(subset=0), "`subset`"), (dict(subset=10**6), "`subset`"), (dict(trust=0), "`trust`"),
    (dict(method="sketch"), "`k`"), (dict(loss="hinge"), "`loss`"), (dict(method="svd"), "`method`"),
])
def test_bad_arguments(kwargs, match):
    model, x, y = problem(n=20)
    with pytest.raises(ValueError, match=match):
        estimate_spectrum(model, (x, y), **kwargs)


def test_bad_data():
    model, x, y = problem(n=20)
    with pytest.raises(ValueError, match="`labels`"):
        estimate_spectrum(model, (x, y + 5))
    with pytest.raises(ValueError, match="`labels` has"):
        estimate_spectrum(model, (x, y[:5]))
    with pytest.raises(TypeError, match="`data`"):
        estimate_spectrum(model, x)
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        estimate_spectrum(model, (bad, y))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, x, y = _demo_problem(300)
    acc = sketch_gram(model, x, y, 64, chunk=100)
    if rank == 0:
        torch.save({"gram": acc.gram, "cross": acc.cross, "rows": acc.rows}, out)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_sketch_equals_single_process(tmp_path, one_thread):
    # one thread, as in the ranks: another thread count can change the float32 rounding of the model's backward
    # (seen on a 16-core Xeon at 2 threads: 3e-5 relative)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(2, _free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    model, x, y = _demo_problem(300)
    single = sketch_gram(model, x, y, 64, chunk=100)
    assert int(got["rows"]) == 900
    torch.testing.assert_close(got["gram"], single.gram, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got["cross"], single.cross, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["exact", "sketch", "subspace"])
def test_a_dataset_is_read_at_the_subset_only_and_gives_the_tensors_spectrum(method):
    """data as a Dataset: the same Spectrum as the tensors, reading row 0 (the input check) and the M subset rows only
    (method="sketch": in chunks)."""
    model, x, y = problem(n=200)

    class Rows(torch.utils.data.Dataset):
        reads = []

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            self.reads.append(i)
            return x[i], int(y[i])

    kw = dict(subset=60, seed=4, method=method, k=None if method == "exact" else 48, chunk=25)
    a = estimate_spectrum(model, (x, y), **kw)
    ds = Rows()
    b = estimate_spectrum(model, ds, **kw)
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(4))[:60].sort().values.tolist()
    assert ds.reads == [0] + rows
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-9)
    np.testing.assert_allclose(b.energies, a.energies, rtol=1e-9, atol=1e-12)
    assert b.n_samples == 200 and b.subset == 60
    with pytest.raises(TypeError, match="an \\(inputs, labels\\) pair of tensors or a map-style torch Dataset"):
        estimate_spectrum(model, [x])
