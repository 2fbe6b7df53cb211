"""The MiniZoo fine-tuning recipe (the ground truth of model selection and of training-time prediction).

Recipe (``RECIPE``): fine-tune **all parameters** of the pre-trained model with a **new linear head** (PyTorch's
default uniform init, drawn from the run's seed); plain mini-batch SGD with a constant learning rate, momentum,
no weight decay, no augmentation; mini-batches are consecutive slices of a stream of random permutations of the
training set (seeded), so every batch is full (``batch = min(batch, N)``); a fixed number of steps. The test
accuracy is measured once after the last step. Models are in eval mode for measurement and train mode for the
steps (they have no batch statistics, so both compute the same function).

``finetune(..., record=True)`` also evaluates the loss and accuracy on the **full training set** before the first
step (step 0) and after every step, and the cumulative wall time of the optimization alone (evaluation excluded).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# The accuracy ground truth: SGD(lr=0.003, momentum=0.9), batch 32, 150 steps, 2 seeds. (lr=0.01 was tried first:
# on the noisy texture tasks it collapsed runs to chance, e.g. convnet_textures 29% vs 68% at lr=0.003 on
# texture_orient 50-shot, so the accuracy measured instability more than transfer.)
@dataclass(frozen=True)
class Recipe:
    lr: float = 0.003
    momentum: float = 0.9
    batch: int = 32
    steps: int = 150
    weight_decay: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


RECIPE = Recipe()
SEEDS = (0, 1)
# The SGD grid of the training-time ground truth (per-step full-train loss/accuracy), on the 10-shot splits.
SGD_GRID = {"lr": (0.003, 0.01, 0.03, 0.1), "batch": (16, 64), "momentum": (0.0, 0.9)}
SGD_GRID_STEPS = 100
SGD_GRID_SHOTS = 10


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    """``steps`` index tensors of size ``min(batch, n)`` from a stream of random permutations."""
    b = min(batch, n)
    need = steps * b
    perms = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])
    return perms[:need].view(steps, b)


@torch.no_grad()
def evaluate(model, x, y, device="cpu", chunk: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``(x, y)``."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for s in range(0, x.shape[0], chunk):
        xb, yb = x[s:s + chunk].to(device), y[s:s + chunk].to(device)
        logits = model(xb).float()
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was)
    n = x.shape[0]
    return loss / n, correct / n


def finetune(model, x_train, y_train, x_test=None, y_test=None, *, num_classes: int | None = None,
             lr: float = RECIPE.lr, momentum: float = RECIPE.momentum, batch: int = RECIPE.batch,
             steps: int = RECIPE.steps, weight_decay: float = RECIPE.weight_decay, seed: int = 0,
             record: bool = False, device: str = "cpu") -> dict:
    """Fine-tune ``model`` (a ``nets.ZooNet``) in place with a new head; return the run's measurements.

    Returns a dict with ``test_acc``/``test_loss`` (when a test set is given), ``train_loss``/``train_acc``
    (full training set, after the last step), ``wall_seconds`` (optimization only), ``diverged`` and, with
    ``record``, per-step lists ``steps``: ``{"step", "train_loss", "train_acc", "wall"}`` (step 0 = before
    training; ``wall`` = cumulative optimization seconds).
    """
    if num_classes is None:
        num_classes = int(y_train.max()) + 1
    gen = torch.Generator().manual_seed(int(seed))
    model.reset_head(num_classes, generator=gen)
    model.to(device)
    x_train_d, y_train_d = x_train.to(device), y_train.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    order = _batches(x_train.shape[0], batch, steps, gen)
    trace = {"step": [], "train_loss": [], "train_acc": [], "wall": []} if record else None
    if record:
        l0, a0 = evaluate(model, x_train_d, y_train_d, device)
        for k, v in zip(("step", "train_loss", "train_acc", "wall"), (0, l0, a0, 0.0)):
            trace[k].append(v)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    wall = 0.0
    diverged = False
    model.train()
    for s in range(steps):
        sync()
        t0 = time.perf_counter()
        idx = order[s].to(device)
        loss = F.cross_entropy(model(x_train_d[idx]), y_train_d[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        wall += time.perf_counter() - t0
        if not math.isfinite(float(loss.detach())):
            diverged = True
        if record:
            ls, ac = evaluate(model, x_train_d, y_train_d, device)
            for k, v in zip(("step", "train_loss", "train_acc", "wall"), (s + 1, ls, ac, wall)):
                trace[k].append(v)
            diverged = diverged or not math.isfinite(ls)
        if diverged:
            break
    out = {"lr": lr, "momentum": momentum, "batch": min(batch, x_train.shape[0]), "steps": steps, "seed": seed,
           "n_train": int(x_train.shape[0]), "num_classes": num_classes, "wall_seconds": wall,
           "diverged": diverged}
    if record:
        out["train_loss"], out["train_acc"] = trace["train_loss"][-1], trace["train_acc"][-1]
        out["steps_trace"] = trace
    else:
        out["train_loss"], out["train_acc"] = evaluate(model, x_train_d, y_train_d, device)
    if x_test is not None:
        out["test_loss"], out["test_acc"] = evaluate(model, x_test, y_test, device)
        out["n_test"] = int(x_test.shape[0])
    return out
