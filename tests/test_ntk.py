"""Exact (ghost) and sketched NTK against torch.func's NTK."""
import pytest
import torch
from test_sketch_jacobian import MODELS, Encoder, build, rel_err, torch_func_jacobian

import zoo_kernels as zk
from zoo_kernels import ops


def func_ntk(model, x1, x2=None):
    J1 = torch_func_jacobian(model, x1)
    J2 = J1 if x2 is None else torch_func_jacobian(model, x2)
    return torch.einsum("icp,jdp->ijcd", J1, J2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_ntk_equals_torch_func_float64(name):
    model, x = build(name)
    K = func_ntk(model, x)
    out = zk.ntk(model, x, batch_size=2)
    assert out.shape == K.shape and out.dtype == torch.float64
    assert rel_err(out, K) < 1e-10
    tr = zk.ntk(model, x, mode="trace", batch_size=3)
    assert rel_err(tr, K.diagonal(0, 2, 3).sum(-1)) < 1e-10


@pytest.mark.parametrize("name", ["conv2d", "resnet_bn", "transformer", "conv1d_bn"])
def test_exact_ntk_float32_within_1e4(name):
    model, x = build(name)
    K = func_ntk(model, x)
    model = model.float()
    x = x.float() if x.is_floating_point() else x
    assert rel_err(zk.ntk(model, x, batch_size=2).double(), K) < 1e-4


def test_cross_ntk_and_attention():
    torch.manual_seed(0)
    model = Encoder(True).double().eval()
    x1, x2 = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(4, 5, 8, dtype=torch.float64)
    K = func_ntk(model, x1, x2)
    out = zk.ntk(model, x1, x2, batch_size=2)
    assert out.shape == (3, 4, 3, 3)
    assert rel_err(out, K) < 1e-10


def test_ntk_kernel_paths_agree_with_reference():
    """ntk_block's three algorithms (T = 1, ghost, explicit) against explicit per-sample gradients."""
    g = torch.Generator().manual_seed(5)
    for T, n, o in [(1, 7, 6), (9, 2, 3), (3, 40, 50)]:  # T = 1; explicit (T^2 > o*n); ghost (T^2 < o*n)
        a1, a2 = torch.randn(5, T, n, generator=g, dtype=torch.float64), torch.randn(4, T, n, generator=g, dtype=torch.float64)
        g1, g2 = torch.randn(5, 3, T, o, generator=g, dtype=torch.float64), torch.randn(4, 3, T, o, generator=g, dtype=torch.float64)
        out = torch.full((5, 3, 4, 3), float("nan"), dtype=torch.float64)
        out = ops.ntk_block(a1, g1, a2, g2)
        assert rel_err(out, ops.reference_ntk_block(a1, g1, a2, g2)) < 1e-12
        tr = ops.ntk_block(a1, g1, a2, g2, trace=True)
        assert rel_err(tr, ops.reference_ntk_block(a1, g1, a2, g2, trace=True)) < 1e-12


def test_ntk_block_opcheck_and_errors():
    a, gr = torch.randn(4, 3, 5), torch.randn(4, 2, 3, 6)
    torch.library.opcheck(torch.ops.zoo_kernels.ntk_block.default, (a, gr, a[:3], gr[:3], False))
    torch.library.opcheck(torch.ops.zoo_kernels.ntk_block.default, (a, gr, a, gr, True))
    with pytest.raises(RuntimeError, match="same T, n and o"):
        ops.ntk_block(a, gr, torch.randn(4, 3, 4), gr)
    with pytest.raises(RuntimeError, match="`acts1` and `acts2` must have the same dtype"):
        ops.ntk_block(a, gr, a.double(), gr.double())
    bad = gr.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="not finite"):
        ops.ntk_block(a, bad, a, gr)


@pytest.mark.parametrize("sketch_method", ["dense", "kronecker"])
def test_sketch_ntk(sketch_method):
    model, x = build("conv2d")
    K = zk.ntk(model, x)
    S = zk.sketch_jacobian(model, x, 64, method=sketch_method, seed=4)
    approx = zk.ntk(model, x, method="sketch", k=64, seed=4, sketch_method=sketch_method)
    assert torch.allclose(approx, torch.einsum("ick,jdk->ijcd", S, S))
    # JL: the error shrinks like 1/sqrt(k) (16x more columns: about 4x smaller).
    exact = K.diagonal(0, 2, 3).sum(-1)
    err = [rel_err(zk.ntk(model, x, method="sketch", k=k, sketch_method="dense", mode="trace", seed=1), exact)
           for k in (512, 8192)]
    assert err[1] < err[0] / 2.5 and err[1] < 0.1


def test_frozen_parameters_are_left_out_of_the_ntk():
    model, x = build("mlp")
    model[0].weight.requires_grad_(False)
    assert rel_err(zk.ntk(model, x), func_ntk(model, x)) < 1e-10


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(mode="diag"), ValueError, "`mode`"), (dict(method="ghost"), ValueError, "`method`"),
    (dict(method="sketch"), ValueError, "`k`"), (dict(batch_size=0), ValueError, "`batch_size`"),
])
def test_bad_arguments(kwargs, err, match):
    model, x = build("mlp")
    with pytest.raises(err, match=match):
        zk.ntk(model, x, **kwargs)


def test_bad_inputs():
    model, x = build("mlp")
    with pytest.raises(ValueError, match="`x2`"):
        zk.ntk(model, x, x[:, :3])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`x1` contains NaN"):
        zk.ntk(model, bad)


def test_ntk_block_float32_paths_and_symmetric_blocks():
    """float32 (oneDNN GEMMs on CPU) against the float64 reference, for the three algorithms, with distinct
    sides and with the same captures on both sides (the symmetric shortcut)."""
    g = torch.Generator().manual_seed(7)
    for T, n, o in [(1, 33, 12), (16, 3, 4), (3, 40, 50)]:  # T = 1; explicit; ghost
        a1, a2 = torch.randn(9, T, n, generator=g), torch.randn(6, T, n, generator=g)
        g1, g2 = torch.randn(9, 4, T, o, generator=g), torch.randn(6, 4, T, o, generator=g)
        for trace in (False, True):
            assert rel_err(ops.ntk_block(a1, g1, a2, g2, trace).double(),
                           ops.reference_ntk_block(a1, g1, a2, g2, trace)) < 1e-5
            assert rel_err(ops.ntk_block(a1, g1, a1, g1, trace).double(),
                           ops.reference_ntk_block(a1, g1, a1, g1, trace)) < 1e-5


class SharedLayers(torch.nn.Module):
    """A convolution and a Linear each called twice (their per-sample gradients sum over the calls)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.lin = torch.nn.Linear(3 * 5 * 5, 3 * 5 * 5)
        self.head = torch.nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(torch.tanh(self.conv(x))))
        h = torch.tanh(self.lin(torch.tanh(self.lin(h.flatten(1)))))
        return self.head(h)


def test_shared_layers_chunks_and_cross_ntk():
    torch.manual_seed(3)
    model = SharedLayers().double().eval()
    x1, x2 = torch.randn(7, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    K = func_ntk(model, x1)
    for batch_size in (3, 7):
        assert rel_err(zk.ntk(model, x1, batch_size=batch_size), K) < 1e-10
        assert rel_err(zk.ntk(model, x1, mode="trace", batch_size=batch_size), K.diagonal(0, 2, 3).sum(-1)) < 1e-10
    Kx = func_ntk(model, x1, x2)
    assert rel_err(zk.ntk(model, x1, x2, batch_size=3), Kx) < 1e-10
    assert rel_err(zk.ntk(model, x1, x2, mode="trace", batch_size=2), Kx.diagonal(0, 2, 3).sum(-1)) < 1e-10
    # float32: the explicit Gram and the kernels on the oneDNN path
    model32 = model.float()
    assert rel_err(zk.ntk(model32, x1.float(), batch_size=3).double(), K) < 1e-4
    assert rel_err(zk.ntk(model32, x1.float(), x2.float(), batch_size=3).double(), Kx) < 1e-4


def test_capture_skips_first_layer_backward_and_weight_gradients():
    """The backward passes stop at the first layer's output and compute no weight gradient: only the second
    convolution's input gradient (one per output), never a weight gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Convs(TorchDispatchMode):
        masks = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default:
                self.masks.append(tuple(args[-1]))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(3, 3, 3),
                                torch.nn.Flatten(), torch.nn.Linear(12, 5)).double().eval()
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    with Convs():
        K = zk.ntk(model, x, batch_size=6)
    assert Convs.masks == [(True, False, False)] * 5
    assert rel_err(K, func_ntk(model, x)) < 1e-10


class ScaledInput(torch.nn.Module):
    """An unsupported module with a trainable parameter below the captured layers."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, x):
        return x * self.scale


def test_skipped_module_below_the_captured_layers():
    torch.manual_seed(1)
    model = torch.nn.Sequential(ScaledInput(), torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x = torch.randn(5, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match="leaving out"):
        out = zk.ntk(model, x, batch_size=2, skip_unsupported=True)
    model[0].scale.requires_grad_(False)
    assert rel_err(out, func_ntk(model, x)) < 1e-10


def test_non_finite_parameters():
    model, x = build("conv2d")
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="not finite"):
        zk.ntk(model, x)
