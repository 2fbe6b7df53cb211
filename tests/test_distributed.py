"""distributed.ntk_eigh on 2 gloo processes (loopback) equals the single-process eigs.ntk_eigh."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import zoo_kernels as zk
from zoo_kernels import distributed

# (N, rank, oversample, iters, method): uneven shards; the second has fewer local rows (N·C/2) than columns l.
SETTINGS = [(61, 6, 8, 2, "subspace"), (61, 6, 8, 2, "nystrom"), (7, 4, 8, 1, "subspace"), (7, 4, 8, 1, "nystrom")]


def _problem(n):
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(12)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double().eval()
    return model, torch.randn(n, 6, generator=g, dtype=torch.float64)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = []
    for n, r, oversample, iters, method in SETTINGS:
        model, x = _problem(n)
        lam, vecs, idx = distributed.ntk_eigh(model, x, r, method=method, oversample=oversample, iters=iters,
                                              seed=3, batch_size=5)
        results.append({"lam": lam, "vecs": vecs, "start": idx.start, "stop": idx.stop})
    torch.save(results, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ntk_eigh_equals_single_process(tmp_path):
    out = str(tmp_path / "eigs")
    mp.spawn(_rank_main, args=(2, _free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for s, (n, r, oversample, iters, method) in enumerate(SETTINGS):
        model, x = _problem(n)
        single = zk.ntk_eigh(model, x, r, method=method, oversample=oversample, iters=iters, seed=3, batch_size=7)
        got0, got1 = ranks[0][s], ranks[1][s]
        assert (got0["start"], got0["stop"], got1["start"], got1["stop"]) == (0, (n + 1) // 2, (n + 1) // 2, n)
        torch.testing.assert_close(got0["lam"], got1["lam"], rtol=0, atol=0)  # every rank gets the same values
        torch.testing.assert_close(got0["lam"], single.eigenvalues, rtol=1e-10, atol=0)
        vecs = torch.cat([got0["vecs"], got1["vecs"]])
        assert vecs.shape == single.eigenvectors.shape
        torch.testing.assert_close(vecs, single.eigenvectors, rtol=0, atol=1e-8)


def test_without_process_group_is_single_process():
    model, x = _problem(20)
    lam, vecs, idx = distributed.ntk_eigh(model, x, 3, seed=1)
    single = zk.ntk_eigh(model, x, 3, seed=1)
    assert idx == range(20)
    assert torch.equal(lam, single.eigenvalues) and torch.equal(vecs, single.eigenvectors)
    with pytest.raises(ValueError, match="`rank`"):
        distributed.ntk_eigh(model, x, 0)
