"""sketch_jacobian against torch.func per-sample Jacobians times the same random matrix."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

import zoo_kernels as zk
from zoo_kernels import ops


class TinyAttention(nn.Module):
    """A transformer block from Linear, LayerNorm and scaled_dot_product_attention."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        N, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(N, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, T, d)
        x = x + self.proj(a)
        return x + self.mlp(self.ln2(x))


class TokenModel(nn.Module):
    def __init__(self, vocab=13, d=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.block = TinyAttention(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        return self.head(self.block(self.emb(ids)).mean(1))


class BasicBlock(nn.Module):
    """ResNet basic block with BatchNorm (eval) and in-place ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def mini_resnet():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         BasicBlock(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def conv_zoo():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, (3, 2), dilation=(2, 1), groups=2, padding=2, padding_mode="reflect"), nn.GroupNorm(3, 6),
        nn.Conv2d(6, 6, 3, groups=6, padding="same", padding_mode="circular"), nn.Tanh(),
        nn.Flatten(), nn.LazyLinear(3))


def conv1d_model():
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding="same"), nn.BatchNorm1d(4), nn.ReLU(),
                         nn.Conv1d(4, 4, 2, stride=2, dilation=2, groups=2), nn.Flatten(), nn.LazyLinear(2))


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), lambda g: torch.randn(6, 5, generator=g)),
    "conv2d": (conv_zoo, lambda g: torch.randn(5, 3, 9, 8, generator=g)),
    "conv1d_bn": (conv1d_model, lambda g: torch.randn(4, 2, 11, generator=g)),
    "resnet_bn": (mini_resnet, lambda g: torch.randn(4, 3, 8, 8, generator=g)),
    "transformer": (TokenModel, lambda g: torch.randint(0, 13, (5, 6), generator=g)),
    "sequence_mlp": (lambda: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Flatten(), nn.Linear(18, 2)),
                     lambda g: torch.randn(5, 3, 4, generator=g)),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    make_model, make_x = MODELS[name]
    model = make_model().double()
    x = make_x(g)
    x = x.double() if x.is_floating_point() else x
    model(x)  # materialize lazy modules
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval(), x


def torch_func_jacobian(model, x):
    """(N, C, P) per-sample Jacobian over the trainable parameters, in model.parameters() order."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def f(p, xi):
        return functional_call(model, {**p, **frozen, **buffers}, (xi.unsqueeze(0),)).reshape(-1)

    J = vmap(jacrev(f), (None, 0))(params, x)
    return torch.cat([J[n].flatten(2) for n in params], 2)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_equals_torch_func_times_R(name):
    model, x = build(name)
    J = torch_func_jacobian(model, x)
    k, seed = 37, 11
    R = ops.random_matrix(J.shape[-1], k, seed, dtype=torch.float64)
    expected = J @ R / math.sqrt(k)
    out = torch.full((1,), float("nan"))  # poisoned name, replaced by the result below
    out = zk.sketch_jacobian(model, x, k, method="dense", seed=seed, batch_size=2)
    assert out.shape == expected.shape and out.dtype == torch.float64
    assert rel_err(out, expected) < 1e-10


@pytest.mark.parametrize("name", ["conv2d", "transformer"])
def test_dense_gaussian_and_float32(name):
    model, x = build(name)
    J = torch_func_jacobian(model, x)
    R = ops.random_matrix(J.shape[-1], 16, 3, "gaussian", dtype=torch.float64)
    expected = J @ R / 4.0
    assert rel_err(zk.sketch_jacobian(model, x, 16, method="dense", seed=3, dist="gaussian"), expected) < 1e-10
    model32 = model.float()
    x32 = x.float() if x.is_floating_point() else x
    out = zk.sketch_jacobian(model32, x32, 16, method="dense", seed=3, dist="gaussian")
    assert out.dtype == torch.float32
    assert rel_err(out.double(), expected) < 1e-5


def test_frozen_parameters_are_left_out():
    model, x = build("conv2d")
    for p in list(model.parameters())[::2]:
        p.requires_grad_(False)
    J = torch_func_jacobian(model, x)
    R = ops.random_matrix(J.shape[-1], 20, 5, dtype=torch.float64)
    out = zk.sketch_jacobian(model, x, 20, method="dense", seed=5)
    assert rel_err(out, J @ R / math.sqrt(20)) < 1e-10


@pytest.mark.parametrize("method", ["dense", "kronecker"])
def test_batch_chunking_and_threads_do_not_change_the_result(method):
    model, x = build("resnet_bn")
    ref = zk.sketch_jacobian(model, x, 64, method=method, seed=2, batch_size=len(x))
    for bs in (1, 3):
        assert torch.allclose(zk.sketch_jacobian(model, x, 64, method=method, seed=2, batch_size=bs), ref,
                              rtol=1e-12, atol=1e-12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = zk.sketch_jacobian(model, x, 64, method=method, seed=2)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(one, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["dense", "kronecker"])
def test_sum_output_is_sum_of_outputs(method):
    model, x = build("mlp")
    full = zk.sketch_jacobian(model, x, 32, method=method, seed=1)
    summed = zk.sketch_jacobian(model, x, 32, method=method, seed=1, output="sum")
    assert summed.shape == (x.shape[0], 1, 32)
    assert torch.allclose(summed[:, 0], full.sum(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["conv2d", "transformer", "resnet_bn"])
def test_kronecker_gram_is_unbiased(name):
    """Mean of S S^T over independent seeds converges to J J^T: every entry within 5 standard errors."""
    model, x = build(name)
    J = torch_func_jacobian(model, x).flatten(0, 1)
    K = J @ J.T
    grams = torch.stack([
        (lambda S: S @ S.T)(zk.sketch_jacobian(model, x, 64, seed=s).flatten(0, 1)) for s in range(200)])
    mean, se = grams.mean(0), grams.std(0) / math.sqrt(len(grams))
    z = (mean - K).abs() / (se + 1e-12 * K.abs().max())
    assert z.max() < 5.5, f"max z-score {z.max():.2f}"
    # The error of the mean shrinks like 1/sqrt(#seeds): JL-type variance, no bias floor.
    err_10 = rel_err(grams[:10].mean(0), K)
    err_200 = rel_err(mean, K)
    assert err_200 < err_10 * 0.6


def test_dense_gram_error_matches_jl_variance():
    """For dense, the Gram error is the JL error: E||S S^T - K||_F^2 = sum_ij (K_ii K_jj + K_ij^2) / k (Gaussian)."""
    model, x = build("mlp")
    J = torch_func_jacobian(model, x).flatten(0, 1)
    K = J @ J.T
    k = 512
    expected = math.sqrt(((torch.outer(K.diag(), K.diag()) + K**2).sum() / k).item())
    errs = [(lambda S: (S @ S.T - K).norm().item())(
        zk.sketch_jacobian(model, x, k, method="dense", seed=s, dist="gaussian").flatten(0, 1)) for s in range(40)]
    rms = math.sqrt(sum(e * e for e in errs) / len(errs))
    assert 0.7 * expected < rms < 1.3 * expected


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_unsupported_module_is_named_or_skipped():
    model = Unsupported().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"module 'Unsupported' \(Unsupported\).*skip_unsupported"):
        zk.sketch_jacobian(model, x, 8)
    with pytest.warns(UserWarning, match="leaving out"):
        skipped = zk.sketch_jacobian(model, x, 8, method="dense", skip_unsupported=True)
    model.scale.requires_grad_(False)
    assert torch.allclose(skipped, zk.sketch_jacobian(model, x, 8, method="dense"))


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer (with nn.MultiheadAttention, key padding mask), then a causal
    cross-attention (batch_first or not, optional kdim/vdim) and a head."""

    def __init__(self, batch_first, kdim=None):
        super().__init__()
        self.batch_first = batch_first
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=batch_first)
        self.kv = nn.Linear(8, kdim or 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        mask[:, -1] = True
        h = self.layer(x, src_key_padding_mask=mask)
        kv = self.kv(x)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        if self.batch_first:
            c, _ = self.cross(h, kv, kv, attn_mask=causal)
        else:
            c, _ = self.cross(h.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), attn_mask=causal)
            c = c.transpose(0, 1)
        return self.head(c.mean(1))


def test_sequence_first_submodules_are_rejected():
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=False), nn.Flatten(0, -1)).eval()
    with pytest.raises(ValueError, match="batch_first"):
        zk.sketch_jacobian(model, torch.randn(3, 4, 8), 8)


@pytest.mark.parametrize("batch_first, kdim", [(True, None), (False, 6)])
def test_multihead_attention_blocks(batch_first, kdim):
    torch.manual_seed(0)
    model = Encoder(batch_first, kdim).double().eval()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    J = torch_func_jacobian(model, x)
    R = ops.random_matrix(J.shape[-1], 24, 9, dtype=torch.float64)
    out = zk.sketch_jacobian(model, x, 24, method="dense", seed=9, batch_size=3)
    assert rel_err(out, J @ R / math.sqrt(24)) < 1e-10
    assert not any("forward" in vars(m) for m in model.modules())  # the decomposed forward is removed
    # Kronecker: q, k, v parts of in_proj_weight get independent factors, so the Gram stays unbiased.
    K = J.flatten(0, 1) @ J.flatten(0, 1).T
    mean = sum((lambda S: S @ S.T)(zk.sketch_jacobian(model, x, 64, seed=s).flatten(0, 1)) for s in range(100)) / 100
    assert rel_err(mean, K) < 0.1


def test_multihead_attention_with_bias_kv_is_rejected():
    model = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
    with pytest.raises(ValueError, match="add_bias_kv"):
        zk.sketch_jacobian(_SelfAttn(model), torch.randn(2, 3, 8), 8)


class _SelfAttn(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x)[0].sum(1)


def test_batchnorm_in_training_mode_is_rejected():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match="model.eval"):
        zk.sketch_jacobian(model, torch.randn(5, 3), 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "`k`"), (dict(k=2.5), "`k`"), (dict(method="exact"), "`method`"), (dict(batch_size=0), "`batch_size`"),
    (dict(output="mean"), "`output`"), (dict(dist="uniform"), "`dist`"),
])
def test_bad_arguments(kwargs, match):
    model, x = build("mlp")
    args = dict(k=8) | kwargs
    with pytest.raises(ValueError, match=match):
        zk.sketch_jacobian(model, x, **args)


def test_bad_inputs():
    model, x = build("mlp")
    with pytest.raises(ValueError, match="`inputs`"):
        zk.sketch_jacobian(model, x[:0], 8)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        zk.sketch_jacobian(model, bad, 8)
    with pytest.raises(TypeError, match="`model`"):
        zk.sketch_jacobian(lambda t: t, x, 8)
    frozen = nn.Linear(5, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        zk.sketch_jacobian(frozen, x.float(), 8)


def test_progress_bar_and_kron_factors(capsys):
    from zoo_kernels.sketch import kron_factors

    assert kron_factors(1024) == (32, 32) and kron_factors(1000) == (25, 40) and kron_factors(7) == (1, 7)
    model, x = build("mlp")
    zk.sketch_jacobian(model, x, 16, progress=True, batch_size=2)
    assert "sketch_jacobian" in capsys.readouterr().err
