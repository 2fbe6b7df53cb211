"""No-target-data priors: rank the zoo by what is known before seeing the target data.

Ranking torchvision's ImageNet models by their ImageNet top-1 accuracy gives a mean weighted Kendall tau of
0.654 on the 11 x 11 fine-tuning table that LogME/SFDA/NCTI/ETran evaluate against, above several published
scores (tests/fixtures): any zoo benchmark should report these priors as baselines.
"""
import torch

from ._common import _integer_labels, as_tensor

__all__ = ["model_size", "source_accuracy"]


def model_size(model, *, trainable_only=False):
    """Number of parameters of `model` (an nn.Module), as a float score (bigger = ranked higher)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


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
