"""Sketch spectra beyond one machine: each rank sketches its shard, the k × k Grams are all-reduced.

    torchrun --nproc_per_node=2 -m zoo_kernels.distributed --samples 20000 --k 512

(gloo on CPU, NCCL on GPU.) The result equals the single-process one: the random matrix depends only on
(seed, indices), so every rank projects with the same R, and the Gram is a sum over samples.

`ntk_eigh` does the same for the top eigenpairs of the exact NTK: each rank holds the rows (samples) of its
shard, the range-finder products Jᵀ V are all-reduced, and the orthonormalizations are TSQR over the ranks:

    torchrun --nproc_per_node=2 -m zoo_kernels.distributed --samples 4000 --eigs 20
"""
import argparse
import os

import torch
import torch.distributed as dist

from .eigs import JacobianOperator, TorchDistComm, _check_args
from .sketch import sketch_jacobian
from .spectrum import SketchGram, initial_residual


def shard(n, rank, world):
    """The contiguous range of sample indices of one rank."""
    per = -(-n // world)
    return range(min(n, rank * per), min(n, (rank + 1) * per))


def sketch_gram(model, inputs, labels, k, *, loss="mse", seed=0, batch_size=64, chunk=1024,
                sketch_method="dense", group=None, progress=False):
    """SketchGram of (inputs, labels); with torch.distributed initialized, of this rank's shard, all-reduced."""
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if dist.is_initialized() else (0, 1)
    idx = shard(len(inputs), rank, world)
    acc = None
    device = next(model.parameters()).device
    for s in range(idx.start, idx.stop, chunk):
        xs, ys = inputs[s:min(s + chunk, idx.stop)], labels[s:min(s + chunk, idx.stop)]
        S = sketch_jacobian(model, xs, k, method=sketch_method, seed=seed, batch_size=batch_size, progress=progress)
        acc = acc or SketchGram(k, device=S.device)
        acc.update(S.flatten(0, 1), initial_residual(model, xs, ys, loss, batch_size).reshape(-1).to(S.device))
    acc = acc or SketchGram(k, device=device)  # an empty shard still joins the all-reduce
    return acc.all_reduce(group) if world > 1 else acc


def ntk_eigh(model, inputs, rank, *, method="subspace", oversample=10, iters=2, seed=0, batch_size=64,
             cache_bytes=1 << 30, skip_unsupported=False, group=None, progress=False):
    """Top-`rank` eigenpairs of the exact NTK of `model` on all of `inputs`, each rank working on its shard.

    With torch.distributed initialized, rank r takes the samples `shard(len(inputs), r, world)` (every rank needs
    at least one), and the result equals `eigs.ntk_eigh` in one process up to rounding: Ω is indexed by the
    global (sample, output) row, Jᵀ V is all-reduced (a sum over samples), and QR factorizations are TSQR.
    Returns (eigenvalues (rank,), eigenvectors (n_shard, C, rank) of this rank's rows, range of its samples).
    Without torch.distributed: the single-process result, range(len(inputs)).
    """
    seed = _check_args(rank, method, oversample, iters, seed)
    rank_, world = (dist.get_rank(group), dist.get_world_size(group)) if dist.is_initialized() else (0, 1)
    idx = shard(len(inputs), rank_, world)
    empty = [r for r in range(world) if len(shard(len(inputs), r, world)) == 0]
    if empty:  # every rank sees it and raises: none is left waiting in a collective
        raise ValueError(f"ntk_eigh: {len(inputs)} samples for {world} ranks leave rank(s) {empty} without samples; "
                         "every rank needs at least one")
    comm = TorchDistComm(group) if world > 1 else None
    op = JacobianOperator(model, inputs[idx.start:idx.stop], batch_size=batch_size, cache_bytes=cache_bytes,
                          skip_unsupported=skip_unsupported, progress=progress, comm=comm, row0=idx.start)
    lam, vecs = op.eigh(rank, method=method, oversample=oversample, iters=iters, seed=seed)
    return lam, vecs, idx


def _demo_problem(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4] > 0.5).long()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 3)).eval()
    return model, x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description="Distributed sketch spectrum of a demo MLP (run under torchrun)")
    ap.add_argument("--samples", "--n", dest="n", type=int, default=20000,
                    help="N (spell it --samples under torchrun, which takes --n for its own --nnodes)")
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--eigs", type=int, default=0, help="also the top EIGS eigenpairs of the exact NTK (ntk_eigh)")
    args = ap.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    model, x, y = _demo_problem(args.n)
    if backend == "nccl":  # NCCL reduces CUDA tensors: one GPU per rank
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        model = model.cuda()
    if args.eigs:
        lam, _, _ = ntk_eigh(model, x, args.eigs)
        if dist.get_rank() == 0:
            print(f"{dist.get_world_size()} ranks ({backend}), N={args.n}: top-5 exact eigenvalues of Θ (ntk_eigh):",
                  ", ".join(f"{v:.4g}" for v in lam[:5].tolist()))
    acc = sketch_gram(model, x, y, args.k)
    lam, energies = acc.eigh()
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks ({backend}), N={args.n}, k={args.k}: rows={int(acc.rows)}")
        print("top-5 eigenvalues of Θ:", ", ".join(f"{v:.4g}" for v in lam[:5].tolist()))
        print(f"energy captured by the sketch: {float(energies.sum() / acc.residual_norm2):.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
