"""Top eigenpairs of the exact empirical NTK Θ = J Jᵀ, without forming Θ (N·C × N·C) or per-sample gradients.

`JacobianOperator` applies J (N·C × P) and Jᵀ from the per-layer captures of `per_sample.chunk_blocks`:
for a weight block (acts (N, T, n), grads (N, C, T, o)) through the `jacobian_t_matmul` / `jacobian_matmul`
kernels, for a bias or norm block (its per-sample gradient (N, C, o)) by one einsum. Θ V = J (Jᵀ V) costs two
passes over the captures and O(b · P) memory for Jᵀ V (one layer's share, b · P_layer, when all captures are
cached). The captures are cached while they fit in `cache_bytes`; the rest is recomputed (one forward and C
backward passes per chunk) on each pass.

`ntk_eigh` runs, on that operator, a randomized range finder (Halko, Martinsson & Tropp 2011, Alg. 4.4):
Q = orth(Θ^(iters+1) Ω) with re-orthonormalization after every product, then either

- method="subspace": Rayleigh–Ritz, eigh of Qᵀ Θ Q = (Jᵀ Q)ᵀ (Jᵀ Q) (one more Jᵀ pass), or
- method="nystrom": the stabilized Nyström approximation Θ ≈ Y (Qᵀ Y)⁻¹ Yᵀ with Y = Θ Q (Tropp, Yurtsever, Udell
  & Cevher 2017, Alg. 3), one pass fewer than "subspace".

The small dense algebra (QR, Cholesky, eigh, SVD) is float64. Ω is the Gaussian `random_matrix(N·C, l, seed)`
indexed by (sample, output), so the result does not depend on the chunking, the device or the sharding:
`distributed.ntk_eigh` runs the same algorithm on per-rank shards of the rows, with the Jᵀ V products all-reduced
and the orthonormalizations done as TSQR, and gives the single-process eigenpairs.
"""
import math
from collections import namedtuple

import torch
from tqdm.auto import tqdm

from . import ops
from .per_sample import check_model_inputs, chunk_blocks

METHODS = ("subspace", "nystrom")
NtkEigh = namedtuple("NtkEigh", ["eigenvalues", "eigenvectors"])


class LocalComm:
    """The collectives of one process: identities."""

    world, rank = 1, 0

    def all_reduce(self, t, op="sum"):
        return t

    def all_gather(self, t):
        return [t]


class TorchDistComm:
    """The collectives of a torch.distributed process group (gloo on CPU tensors, NCCL on CUDA tensors)."""

    def __init__(self, group=None):
        import torch.distributed as dist  # noqa: PLC0415

        self.dist, self.group = dist, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def all_reduce(self, t, op="sum"):
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM if op == "sum" else self.dist.ReduceOp.MIN, group=self.group)
        return t

    def all_gather(self, t):
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t.contiguous(), group=self.group)
        return out


def _key(block):
    return block.param_index, block.row_offset, block.kind


def _nbytes(blocks):
    seen, total = set(), 0
    for b in blocks:
        for t in (b.acts, b.grads):
            if t is not None and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


class JacobianOperator:
    """J, the Jacobian (N·C × P) of a model's outputs on `inputs` w.r.t. its trainable parameters, as an operator.

    Rows are ordered (sample, output), as in `ntk(...).permute(0, 2, 1, 3).reshape(N*C, N*C)`. Parameter space is
    a dict {key: tensor} over the captured parameter blocks, key = (param_index, row_offset, kind) and tensor
    (b, o, n) for weights, (b, o) for biases and norm parameters.

    rmatmul(V): Jᵀ V for V (N, C, b); matmul(W): J W -> (N, C, b); theta_matmul(V): Θ V = J Jᵀ V.
    Results are float32 (float64 for a float64 model) on the model's device; V may have any float dtype or device.
    cache_bytes: the captures of the leading chunks are kept while their total stays within it; 0 recomputes
    every chunk on every pass (memory O(batch_size · activations + b · P)).
    comm: collectives over the ranks holding the other rows (see distributed.ntk_eigh); Jᵀ V is all-reduced.
    """

    def __init__(self, model, inputs, *, batch_size=64, cache_bytes=1 << 30, skip_unsupported=False,
                 progress=False, comm=None, row0=0):
        check_model_inputs(model, inputs, batch_size)
        if not isinstance(cache_bytes, int) or isinstance(cache_bytes, bool) or cache_bytes < 0:
            raise ValueError(f"`cache_bytes` must be a non-negative int, got {cache_bytes!r}")
        self.model, self.inputs, self.batch_size = model, inputs, batch_size
        self.skip_unsupported, self.progress = skip_unsupported, progress
        self.comm = comm or LocalComm()
        self.N, self.row0 = inputs.shape[0], row0
        self._cache, used = [], 0
        gen = self._chunks_from(0)
        try:
            for n, C, blocks in gen:
                if not self._cache:
                    self._describe(C, blocks)
                size = _nbytes(blocks)
                if used + size > cache_bytes:
                    break
                self._cache.append(self._by_key(blocks, n))
                used += size
        finally:
            gen.close()
        self.cached_samples = sum(n for _, n in self._cache)
        self.cache_nbytes = used
        full = torch.tensor([1 if self.cached_samples == self.N else 0], device=self.device)
        # Every rank takes the same path (layer by layer when all captures are cached), so collectives match.
        self._layerwise = bool(self.comm.all_reduce(full, op="min").item())

    def _chunks_from(self, start):
        return chunk_blocks(self.model, self.inputs[start:], self.batch_size, "all", self.skip_unsupported,
                            False, "ntk_eigh")

    def _describe(self, C, blocks):
        self.C = C
        g = blocks[0].grads
        self.dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
        self.device = g.device
        shapes = {}
        for b in blocks:
            shapes[_key(b)] = (b.grads.shape[-1], b.acts.shape[-1]) if b.kind == "outer" else (b.grads.shape[-1],)
        self.keys = sorted(shapes)
        self.shapes = shapes
        self.offsets, off = {}, 0
        for k in self.keys:
            self.offsets[k] = off
            off += math.prod(shapes[k])
        self.P = off  # captured parameters (shared or repeated blocks counted once)

    def _by_key(self, blocks, n):
        by = {}
        for b in blocks:
            if _key(b) not in self.shapes:
                raise RuntimeError(f"parameter block {_key(b)} appears in a later chunk but not in the first one")
            by.setdefault(_key(b), []).append(b)
        return by, n

    def _chunks(self):
        """(start, n, {key: blocks}) over all chunks: cached ones, then the rest recomputed."""
        start = 0
        for by, n in self._cache:
            yield start, n, by
            start += n
        if start < self.N:
            for n, _, blocks in self._chunks_from(start):
                yield start, n, self._by_key(blocks, n)[0]
                start += n

    def _check_v(self, V):
        if not torch.is_tensor(V) or not V.is_floating_point():
            got = V.dtype if torch.is_tensor(V) else type(V).__name__
            raise TypeError(f"`V` must be a floating-point tensor, got {got}")
        if V.dim() != 3 or V.shape[:2] != (self.N, self.C) or V.shape[2] == 0:
            raise ValueError(f"`V` must have shape (N, C, b) = ({self.N}, {self.C}, b) with b > 0, "
                             f"got {tuple(V.shape)}")
        return V.to(self.device, self.dtype)

    # -- one block ------------------------------------------------------------------------------------------
    def _rmat_block(self, blk, Vc):
        v = Vc if blk.output is None else Vc[:, blk.output:blk.output + 1]
        if blk.kind == "vector":
            return torch.einsum("ncb,nco->bo", v, blk.grads.to(self.dtype))
        return ops.jacobian_t_matmul(blk.acts, blk.grads, v)

    def _mat_block(self, blk, W, out):
        if blk.kind == "vector":
            r = torch.einsum("nco,bo->ncb", blk.grads.to(self.dtype), W)
        else:
            r = ops.jacobian_matmul(blk.acts, blk.grads, W)
        if blk.output is None:
            out += r
        else:
            out[:, blk.output] += r[:, 0]

    # -- products -------------------------------------------------------------------------------------------
    def _rmat(self, V, keys):
        b = V.shape[-1]
        W = {k: torch.zeros((b,) + self.shapes[k], dtype=self.dtype, device=self.device) for k in keys}
        for start, n, by in self._chunks():
            Vc = V[start:start + n]
            for k in keys:
                for blk in by.get(k, ()):
                    W[k] += self._rmat_block(blk, Vc)
        if self.comm.world > 1:  # one collective over a flat buffer
            flat = self.comm.all_reduce(torch.cat([W[k].reshape(-1) for k in keys]))
            off = 0
            for k in keys:
                W[k] = flat[off:off + W[k].numel()].view_as(W[k])
                off += W[k].numel()
        return W

    def _mat(self, W, keys, out):
        for start, n, by in self._chunks():
            o = out[start:start + n]
            for k in keys:
                for blk in by.get(k, ()):
                    self._mat_block(blk, W[k], o)
        return out

    def rmatmul(self, V):
        """Jᵀ V for V (N, C, b): {key: (b, o, n) or (b, o)}, summed over the ranks of `comm`."""
        return self._rmat(self._check_v(V), self.keys)

    def matmul(self, W):
        """J W for W = {key: (b, o, n) or (b, o)} (every key of `keys`): (N, C, b) rows of this operator."""
        if not isinstance(W, dict) or set(W) != set(self.keys):
            raise ValueError("`W` must be a dict with the operator's keys (as returned by rmatmul)")
        b = W[self.keys[0]].shape[0]
        W = {k: v.to(self.device, self.dtype) for k, v in W.items()}
        for k in self.keys:
            if W[k].shape != (b,) + self.shapes[k]:
                raise ValueError(f"`W[{k}]` must have shape {(b,) + self.shapes[k]}, got {tuple(W[k].shape)}")
        return self._mat(W, self.keys, torch.zeros(self.N, self.C, b, dtype=self.dtype, device=self.device))

    def theta_matmul(self, V, gram=False):
        """Θ V = J Jᵀ V (N, C, b); with gram=True also Vᵀ Θ V = (Jᵀ V)ᵀ (Jᵀ V) (b, b) in float64 (global)."""
        out, G = self._passes(V, apply_j=True)
        return (out, G) if gram else out

    def gram(self, V):
        """Vᵀ Θ V = (Jᵀ V)ᵀ (Jᵀ V) (b, b) in float64: one Jᵀ pass."""
        return self._passes(V, apply_j=False)[1]

    def _passes(self, V, apply_j):
        """(Θ V or None, Vᵀ Θ V): Jᵀ V layer group by layer group, its Gram, and J (Jᵀ V) when apply_j."""
        V = self._check_v(V)
        out = torch.zeros(V.shape, dtype=self.dtype, device=self.device) if apply_j else None
        G = torch.zeros(V.shape[-1], V.shape[-1], dtype=torch.float64, device=self.device)
        for keys in ([[k] for k in self.keys] if self._layerwise else [self.keys]):
            W = self._rmat(V, keys)
            for k in keys:
                Wk = W[k].reshape(V.shape[-1], -1).double()
                G += Wk @ Wk.T
            if apply_j:
                self._mat(W, keys, out)
        return out, G

    # -- eigenpairs -----------------------------------------------------------------------------------------
    def eigh(self, rank, *, method="subspace", oversample=10, iters=2, seed=0, progress=None):
        """Top-`rank` eigenpairs of Θ (over the rows of all ranks); see `ntk_eigh`. Returns NtkEigh with
        eigenvalues (rank,) descending and eigenvectors (N, C, rank) (this operator's rows), both float64."""
        seed = _check_args(rank, method, oversample, iters, seed)
        comm = self.comm
        rows = self.N * self.C
        total = int(comm.all_reduce(torch.tensor([rows], dtype=torch.float64, device=self.device)).item())
        if rank > total:
            raise ValueError(f"`rank` must be at most N·C = {total}, got {rank}")
        ell = min(rank + oversample, total)
        passes = 2 * (iters + 1) + (1 if method == "subspace" else 0)
        show = self.progress if progress is None else progress
        bar = tqdm(total=passes, desc="ntk_eigh", unit="pass", disable=not show)
        r0 = self.row0 * self.C
        omega = ops.random_matrix(rows, ell, seed, "gaussian", dtype=torch.float64, device=self.device, row0=r0)

        def theta(Q, gram=False):
            res = self.theta_matmul(Q.reshape(self.N, self.C, ell), gram=gram)
            bar.update(2)
            return (res[0].reshape(rows, ell).double(), res[1]) if gram else res.reshape(rows, ell).double()

        Q, _ = _tsqr(omega, comm)
        for _ in range(iters + (1 if method == "subspace" else 0)):
            Q, _ = _tsqr(theta(Q), comm)
        if method == "subspace":
            B = self.gram(Q.reshape(self.N, self.C, ell))
            bar.update(1)
            lam, U = torch.linalg.eigh((B + B.T) / 2)
            lam, U = lam.flip(0)[:rank].clamp_min(0.0), U.flip(1)[:, :rank]
            vecs = Q @ U
        else:
            Y, B = theta(Q, gram=True)
            eps = torch.finfo(self.dtype).eps
            nu = eps * math.sqrt(total) * math.sqrt(float(comm.all_reduce(Y.square().sum().reshape(1)).item()))
            nu = max(nu, torch.finfo(torch.float64).tiny)
            eye = torch.eye(ell, dtype=torch.float64, device=self.device)
            for _ in range(8):
                L, info = torch.linalg.cholesky_ex((B + B.T) / 2 + nu * eye)
                if int(info) == 0:
                    break
                nu *= 10
            else:
                raise RuntimeError("ntk_eigh: the Nyström core matrix is not positive definite; try method='subspace'")
            F = torch.linalg.solve_triangular(L.T, Y + nu * Q, upper=True, left=False)  # (Y + νQ) L⁻ᵀ
            QF, RF = _tsqr(F, comm)
            Ur, sig, _ = torch.linalg.svd(RF)
            lam = (sig[:rank].square() - nu).clamp_min(0.0)
            vecs = QF @ Ur[:, :rank]
        bar.close()
        if not torch.isfinite(lam).all():
            raise RuntimeError("ntk_eigh: the eigenvalues are not finite; check the model and inputs")
        # Deterministic signs: positive projection on a fixed Gaussian vector (global sum over the ranks).
        w = ops.random_matrix(rows, 1, ops.derive_seed(seed, 1), "gaussian", dtype=torch.float64,
                              device=self.device, row0=r0)
        s = comm.all_reduce((w.T @ vecs).reshape(-1))
        vecs = vecs * torch.where(s < 0, -1.0, 1.0).to(vecs.dtype)
        return NtkEigh(lam, vecs.reshape(self.N, self.C, rank))


def _tsqr(Y, comm):
    """Q with orthonormal columns spanning the rows of all ranks' Y (m_r, l), and the (l, l) R (global).

    One rank: Householder QR. Several: TSQR, the local R factors gathered and factored once more."""
    Q1, R1 = torch.linalg.qr(Y)  # (m, k), (k, l), k = min(m, l)
    if comm.world == 1:
        return Q1, R1
    ell, k = Y.shape[1], R1.shape[0]
    counts = [int(c.item()) for c in comm.all_gather(torch.tensor([k], device=Y.device))]
    padded = torch.zeros(ell, ell, dtype=Y.dtype, device=Y.device)
    padded[:k] = R1
    stack = torch.cat([r[:c] for r, c in zip(comm.all_gather(padded), counts)])  # (sum k, l), sum k >= l
    Q2, R = torch.linalg.qr(stack)
    off = sum(counts[:comm.rank])
    return Q1 @ Q2[off:off + k], R


def _check_args(rank, method, oversample, iters, seed):
    for name, v, lo in (("rank", rank, 1), ("oversample", oversample, 0), ("iters", iters, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}, got {v!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    return ops._check_seed(seed)


def ntk_eigh(model, x, rank, *, method="subspace", oversample=10, iters=2, seed=0, batch_size=64,
             cache_bytes=1 << 30, skip_unsupported=False, progress=False):
    """Top-`rank` eigenpairs of the exact empirical NTK Θ (N·C × N·C, rows (sample, output)) of `model` on `x`.

    Randomized range finder on Θ = J Jᵀ applied through per-layer captures (`JacobianOperator`): neither Θ nor
    any per-sample gradient is formed. l = rank + oversample columns; `iters` power iterations, each followed by
    a re-orthonormalization. method="subspace" (Rayleigh–Ritz, 2·iters + 3 passes over the data) or "nystrom"
    (stabilized Nyström, 2·iters + 2 passes). Memory O(N·C·l + l·P) plus the cached captures (`cache_bytes`).
    Same modules as sketch_jacobian; frozen parameters are left out. Reproducible from `seed` for any batch size,
    device or sharding. Returns NtkEigh(eigenvalues (rank,) descending, eigenvectors (N, C, rank)), float64 on
    the model's device; eigenvector signs are fixed (positive projection on a seeded Gaussian vector).

    Accuracy: the relative error of λ_j decays roughly like (λ_{l+1}/λ_j)^(2·iters + 2); float32 models give the
    well-separated top eigenvalues to about 1e-7 relative (the matvecs are float32, the dense algebra float64).
    """
    _check_args(rank, method, oversample, iters, seed)
    op = JacobianOperator(model, x, batch_size=batch_size, cache_bytes=cache_bytes,
                          skip_unsupported=skip_unsupported, progress=progress)
    return op.eigh(rank, method=method, oversample=oversample, iters=iters, seed=seed)
