"""The three MiniZoo architectures (32x32 grayscale input, < 60K parameters each) and their checkpoints.

Every model has ``features(x) -> [N, feature_dim]`` (the penultimate features, after global average pooling)
and a replaceable linear classifier ``head``; ``forward(x) = head(features(x))``. Inputs are images in [0, 1];
the models center them internally. Normalization is GroupNorm everywhere, so train and eval modes compute the
same function and per-sample gradients need no batch statistics. (A first ConvNet without normalization
fine-tuned unstably with SGD at lr 0.005-0.01, which made the architecture, not the source, decide the ranking.)
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class ZooNet(nn.Module):
    feature_dim: int

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) * 4.0
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int, generator: torch.Generator | None = None) -> nn.Linear:
        """Replace ``head`` by a fresh ``nn.Linear(feature_dim, num_classes)`` (PyTorch's default init)."""
        head = nn.Linear(self.feature_dim, num_classes)
        if generator is not None:
            bound = 1.0 / self.feature_dim ** 0.5
            with torch.no_grad():
                head.weight.uniform_(-bound, bound, generator=generator)
                head.bias.uniform_(-bound, bound, generator=generator)
        self.head = head.to(next(self.parameters()).device)
        self.num_classes = num_classes
        return self.head


class ConvNet(ZooNet):
    """Plain (VGG-style) ConvNet-4: four 3x3 conv + GroupNorm + ReLU layers, max-pooling after the first three."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10, widths=(16, 32, 48, 64)):
        super().__init__(num_classes)
        layers, cin = [], 1
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.GroupNorm(4, w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, num_classes)

    def body(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.gn1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))

    def forward(self, x):
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet8(ZooNet):
    """ResNet-8 with GroupNorm: 3x3 stem + three BasicBlocks (16, 32, 48 channels, each of stride 2: 32->16->8->4)."""

    feature_dim = 48

    def __init__(self, num_classes: int = 10, widths=(16, 32, 48)):
        super().__init__(num_classes)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.GroupNorm(4, widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, num_classes)

    def body(self, x):
        return self.blocks(self.stem(x))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.gn1 = nn.GroupNorm(4, cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.gn2 = nn.GroupNorm(4, cout)

    def forward(self, x):
        return F.relu(self.gn2(self.pw(F.relu(self.gn1(self.dw(x))))))


class MobileNet(ZooNet):
    """MobileNet-like: a 3x3 stem then depthwise-separable blocks (depthwise 3x3 + pointwise 1x1, GroupNorm)."""

    feature_dim = 96

    def __init__(self, num_classes: int = 10, plan=((32, 2), (32, 1), (64, 2), (64, 1), (96, 2), (96, 1))):
        super().__init__(num_classes)
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.GroupNorm(4, 16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in plan:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = cin
        self.head = nn.Linear(self.feature_dim, num_classes)

    def body(self, x):
        return self.blocks(self.stem(x))


ARCHS = {"convnet": ConvNet, "resnet": ResNet8, "mobilenet": MobileNet}


def build(arch: str, num_classes: int, seed: int | None = None) -> ZooNet:
    """A freshly initialized model; with ``seed`` the initialization is reproducible."""
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    if seed is None:
        return ARCHS[arch](num_classes)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return ARCHS[arch](num_classes)
    finally:
        torch.random.set_rng_state(state)


def num_params(model: nn.Module, with_head: bool = False) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if with_head or not n.startswith("head."))


# ---------------------------------------------------------------------------------------------------------
# checkpoints: {"format", "arch", "num_classes", "state_dict" (float16 tensors), "meta"}, read with
# torch.load(weights_only=True) and validated against the architecture before use.

CKPT_FORMAT = "minizoo-ckpt-v1"


class CheckpointError(ValueError):
    """A checkpoint that is not a MiniZoo checkpoint or does not match its architecture."""


def save_checkpoint(path: str, model: ZooNet, arch: str, meta: dict, dtype=torch.float16) -> None:
    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).clone()
          for k, v in model.state_dict().items()}
    torch.save({"format": CKPT_FORMAT, "arch": arch, "num_classes": int(model.num_classes), "state_dict": sd,
                "meta": meta}, path)


def load_checkpoint(path: str, expect_arch: str | None = None) -> tuple[ZooNet, dict]:
    """Safely load a checkpoint (no pickled code) into a float32 model; raise CheckpointError on any mismatch."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a truncated file or a pickle with code both land here)
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a {CKPT_FORMAT} checkpoint")
    arch = obj.get("arch")
    if arch not in ARCHS or (expect_arch is not None and arch != expect_arch):
        raise CheckpointError(f"{path}: architecture {arch!r} (expected {expect_arch or sorted(ARCHS)})")
    num_classes = obj.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"{path}: bad num_classes {num_classes!r}")
    model = ARCHS[arch](num_classes)
    ref = model.state_dict()
    sd = obj.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: no state_dict")
    missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    if missing or extra:
        raise CheckpointError(f"{path}: state_dict keys differ from {arch}: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in ref.items():
        t = sd[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(v.shape):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{path}: {k} has shape {shape}, {arch} needs {tuple(v.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: {k} has non-finite values")
    model.load_state_dict({k: sd[k].to(ref[k].dtype) for k in ref})
    return model, dict(obj.get("meta") or {})
