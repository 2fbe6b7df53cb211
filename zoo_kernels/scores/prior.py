"""No-target-data priors: rank the zoo by what is known before seeing the target data.

model_size counts the backbone's parameters (the classifier head is left out by default).

Ranking torchvision's ImageNet models by their ImageNet top-1 accuracy gives a mean weighted Kendall tau of
0.654 on the 11 x 11 fine-tuning table that LogME/SFDA/NCTI/ETran evaluate against, above several published
scores (tests/fixtures): any zoo benchmark should report these priors as baselines.
"""
import torch

from ._common import _integer_labels, as_tensor

__all__ = ["model_size", "source_accuracy"]


def _last_linear(model):
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last


def model_size(model, *, trainable_only=False, include_head=False, head=None):
    """Number of parameters of the **backbone** of `model` (an nn.Module), as a float score (bigger = ranked
    higher).

    The classifier head is left out by default, because it depends on the source task's number of classes (a
    142-way multi-domain head would otherwise make a model look bigger) and is replaced before fine-tuning.
    The head is `head` (an nn.Module inside `model`, or the name of one, e.g. "fc"); by default the model's last
    nn.Linear, the layer whose input rank() uses as the features. A model without any nn.Linear has no head to
    leave out: all its parameters are counted. include_head=True counts every parameter. trainable_only=True
    counts only parameters with requires_grad. Shared (tied) parameters are counted once.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if head is not None and include_head:
        raise ValueError("pass `head` or include_head=True, not both")
    if isinstance(head, str):
        modules = dict(model.named_modules())
        if head not in modules:
            raise ValueError(f"`head` {head!r} is not a submodule of the model; submodules: "
                             f"{[n for n in modules if n][:20]}")
        head = modules[head]
    elif head is not None:
        if not isinstance(head, torch.nn.Module):
            raise TypeError(f"`head` must be an nn.Module or a submodule name, got {type(head).__name__}")
        if not any(m is head for m in model.modules()):
            raise ValueError("`head` is not a submodule of `model`")
    elif not include_head:
        head = _last_linear(model)
    skip = set() if head is None else {id(p) for p in head.parameters()}
    return float(sum(p.numel() for p in model.parameters()
                     if id(p) not in skip and (p.requires_grad or not trainable_only)))


def source_accuracy(model=None, inputs=None, labels=None, *, value=None, batch_size=256):
    """The model's accuracy on its source task, in [0, 1] (or in the user's units when `value` is given).

    Either value=<published accuracy> (returned as a float after checks), or model + source-domain inputs and
    labels: the fraction of argmax predictions equal to the labels (eval mode, no gradients).
    """
    if value is not None:
        if model is not None or inputs is not None or labels is not None:
            raise ValueError("pass either `value` or (`model`, `inputs`, `labels`), not both")
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"`value` must be finite, got {value!r}")
        return v
    if model is None or inputs is None or labels is None:
        raise ValueError("source_accuracy needs `value`, or `model`, `inputs` and `labels`")
    x = as_tensor(inputs, "inputs")
    y = _integer_labels(labels, "labels")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"`labels` has {y.shape[0]} entries but `inputs` has {x.shape[0]}")
    if y.numel() == 0 or int(y.min()) < 0:
        raise ValueError("`labels` must be a non-empty array of integers in [0, C)")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                out = model(x[start:start + batch_size])
                correct += int((out.argmax(1).cpu() == y[start:start + batch_size].cpu()).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]
