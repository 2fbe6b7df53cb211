"""MiniZoo API: model and task names, loaders, and the stored fine-tuning ground truth.

    from zoo_kernels import zoo
    zoo.models()                      # 21 names: 18 experts + 3 random-init controls
    zoo.tasks()                       # 13 target tasks
    model = zoo.load_model("resnet_latin", num_classes=26)     # pre-trained backbone, fresh head
    xtr, ytr, xte, yte = zoo.load_task("latin_heldout", shots=10)
    rows = zoo.ground_truth()         # full tier: [{"model", "task", "shots", "accuracy", ...}]
    runs = zoo.sgd_runs("small")      # per-step full-train loss/accuracy and wall time of the SGD grid

Tiers: ``"small"`` (6 models x 3 tasks, for CI) and ``"full"`` (every model x every task).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import zlib
from collections import defaultdict

import torch

from . import data as D
from . import nets as M

CKPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
DOMAINS = tuple(D.SOURCES)  # latin, greekcyr, pendigits, shapes, textures
EXPERT_DOMAINS = DOMAINS + ("multi",)


def expert_names() -> list[str]:
    return [f"{a}_{d}" for d in EXPERT_DOMAINS for a in M.ARCHS]


def split_name(name: str) -> tuple[str, str]:
    arch, _, domain = name.partition("_")
    if arch not in M.ARCHS or domain not in EXPERT_DOMAINS + ("random",):
        raise KeyError(f"unknown model {name!r}")
    return arch, domain


def name_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TIERS = ("small", "full")
SHOTS = (10, 50)  # the shot levels of both tiers, and the default levels of scoring, evaluation and reports
# The full tier also holds held-out levels for testing pre-registered model-selection strategies: 25 shots (added
# 2026-11-27 03:00 UTC) and 15 shots (added 2026-11-27 06:00 UTC, after the 25-shot level had been seen). They are
# not in SHOTS, so nothing evaluates or prints them by default.
HELDOUT_SHOTS = (15, 25)

# The small tier: one expert per kind of source + the multi-domain expert + a random control, on three targets
# whose best expert differs (pen digits / Latin glyphs / textures).
SMALL_MODELS = ("convnet_pendigits", "convnet_latin", "convnet_textures", "convnet_shapes", "resnet_multi",
                "convnet_random")
SMALL_TASKS = ("pendigits_inverted", "latin_heldout", "texture_orient")


def _check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    return tier


def models(tier: str = "full", include_random: bool = True) -> list[str]:
    """Model names: ``{arch}_{domain}`` for domain in the 5 sources + ``multi``, and ``{arch}_random`` controls."""
    if _check_tier(tier) == "small":
        return [m for m in SMALL_MODELS if include_random or not m.endswith("_random")]
    names = [f"{a}_{d}" for d in EXPERT_DOMAINS for a in M.ARCHS]
    if include_random:
        names += [f"{a}_random" for a in M.ARCHS]
    return names


def tasks(tier: str = "full") -> list[str]:
    return list(SMALL_TASKS) if _check_tier(tier) == "small" else list(D.TARGETS)


def sources() -> list[str]:
    return list(D.SOURCES)


@functools.lru_cache(maxsize=1)
def manifest() -> dict:
    """The checkpoint manifest (per model: file, sha256, params, source validation accuracy, training seconds)."""
    with open(os.path.join(CKPT_DIR, "manifest.json")) as f:
        return json.load(f)


def model_info(name: str) -> dict:
    arch, domain = split_name(name)
    if domain == "random":
        m = M.build(arch, 1)
        return {"arch": arch, "domain": "random", "params": M.num_params(m), "num_classes": None,
                "source_val_acc": None}
    return dict(manifest()["models"][name])


def load_model(name: str, num_classes: int | None = None, seed: int = 0, verify_hash: bool = False) -> M.ZooNet:
    """The pre-trained model ``name`` (float32, CPU, eval mode) with a fresh ``head`` of ``num_classes`` outputs.

    ``num_classes=None`` keeps the source classifier head (for source-prediction metrics such as LEEP; the
    multi-domain expert's head is the joint head over all source classes, see ``model_info(...)["domain_offsets"]``
    in the checkpoint meta). The new head's initialization is drawn from ``seed``. Random-init controls
    (``*_random``) are built from a fixed seed per name, so they are the same network in every call. Checkpoints
    are read with ``torch.load(weights_only=True)`` and validated key by key and shape by shape
    (``nets.CheckpointError`` otherwise); ``verify_hash`` also checks the file's SHA-256 against the manifest.
    """
    arch, domain = split_name(name)
    if domain == "random":
        if num_classes is None:
            raise ValueError("random-init controls have no source head: pass num_classes")
        model = M.build(arch, num_classes, seed=name_seed(name))
    else:
        path = os.path.join(CKPT_DIR, f"{name}.pt")
        if verify_hash:
            want = manifest()["models"][name]["sha256"]
            if sha256_file(path) != want:
                raise M.CheckpointError(f"{path}: SHA-256 differs from the manifest")
        model, _ = M.load_checkpoint(path, expect_arch=arch)
    if num_classes is not None:
        model.reset_head(num_classes, generator=torch.Generator().manual_seed(int(seed)))
    return model.eval()


@functools.lru_cache(maxsize=32)
def _task_arrays(name: str):
    c = D.TARGETS[name][0]
    xtr, ytr = D.make_target(name, "train", D.TRAIN_PER_CLASS)
    xte, yte = D.make_target(name, "test", D.test_per_class(c))
    return xtr, ytr, xte, yte


def task_info(name: str) -> dict:
    c, _, desc = D.TARGETS[name]
    return {"name": name, "num_classes": c, "description": desc, "train_pool_per_class": D.TRAIN_PER_CLASS,
            "test_per_class": D.test_per_class(c)}


def load_task(name: str, shots: int | None = None):
    """``(x_train, y_train, x_test, y_test)``: images [N,1,32,32] float32 in [0,1], labels int64.

    ``shots=k`` keeps the first ``k`` training images of each class of the 50-per-class pool (nested splits:
    the 10-shot set is inside the 50-shot set); ``None`` gives the whole pool. The test split is fixed.
    """
    if name not in D.TARGETS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(D.TARGETS)}")
    xtr, ytr, xte, yte = _task_arrays(name)
    if shots is not None:
        if not 1 <= shots <= D.TRAIN_PER_CLASS:
            raise ValueError(f"shots must be in 1..{D.TRAIN_PER_CLASS}")
        n = shots * D.TARGETS[name][0]
        xtr, ytr = xtr[:n], ytr[:n]
    return xtr.clone(), ytr.clone(), xte.clone(), yte.clone()


# ---------------------------------------------------------------------------------------------------------
# ground truth files (zoo_kernels/zoo/data/)


def gt_path(kind: str, tier: str) -> str:
    """kind: "finetune" (one row per model x task x shots x seed), "sgd_runs" (grid configs), "sgd_steps"."""
    return os.path.join(DATA_DIR, f"{kind}_{_check_tier(tier)}.csv")


_INT = {"shots", "seed", "steps", "batch", "n_train", "n_test", "num_classes", "run", "step"}
_FLOAT = {"test_acc", "test_loss", "train_loss", "train_acc", "wall_seconds", "lr", "momentum", "wall",
          "weight_decay"}


def _read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not computed; see `python -m zoo_kernels.zoo.groundtruth --help`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k in _INT:
                r[k] = int(v)
            elif k in _FLOAT:
                r[k] = float(v)
            elif k == "diverged":
                r[k] = v in ("1", "True", "true")
    return rows


def finetune_runs(tier: str = "full") -> list[dict]:
    """One row per fine-tuning run (model, task, shots, seed, test_acc, train_loss, wall_seconds, recipe...)."""
    return _read_csv(gt_path("finetune", tier))


def ground_truth(tier: str = "full") -> list[dict]:
    """Rows ``{"model", "task", "shots", "accuracy", "accuracy_std", "seeds", "wall_seconds", ...}``.

    ``accuracy`` is the test accuracy of the documented recipe (``finetune.RECIPE``), mean over the seeds
    present (``seeds``; see docs/MINIZOO.md for what the stored full tier covers: ``SHOTS`` and the held-out
    ``HELDOUT_SHOTS`` level).
    """
    groups = defaultdict(list)
    for r in finetune_runs(tier):
        groups[(r["model"], r["task"], r["shots"])].append(r)
    out = []
    for (m, t, s), rs in groups.items():
        acc = torch.tensor([r["test_acc"] for r in rs], dtype=torch.float64)
        out.append({"model": m, "task": t, "shots": s, "accuracy": float(acc.mean()),
                    "accuracy_std": float(acc.std()) if len(rs) > 1 else 0.0, "seeds": len(rs),
                    "train_loss": sum(r["train_loss"] for r in rs) / len(rs),
                    "wall_seconds": sum(r["wall_seconds"] for r in rs) / len(rs),
                    "n_train": rs[0]["n_train"], "num_classes": rs[0]["num_classes"],
                    "lr": rs[0]["lr"], "momentum": rs[0]["momentum"], "batch": rs[0]["batch"],
                    "steps": rs[0]["steps"]})
    out.sort(key=lambda r: (r["task"], r["shots"], r["model"]))
    return out


def sgd_runs(tier: str = "small", with_steps: bool = True) -> list[dict]:
    """The SGD-grid runs: config + summary per run; with ``with_steps`` each has ``"steps"``: per-step
    ``{"step": [...], "train_loss": [...], "train_acc": [...], "wall": [...]}`` (full training set; step 0 is
    before the first update; ``wall`` is cumulative optimization seconds)."""
    runs = _read_csv(gt_path("sgd_runs", tier))
    if with_steps:
        traces = defaultdict(lambda: {"step": [], "train_loss": [], "train_acc": [], "wall": []})
        for r in _read_csv(gt_path("sgd_steps", tier)):
            t = traces[r["run"]]
            for k in ("step", "train_loss", "train_acc", "wall"):
                t[k].append(r[k])
        for r in runs:
            r["steps"] = traces[r["run"]]
    return runs


def best_models(tier: str = "full", shots: int | None = None) -> dict:
    """``{(task, shots): (best model, accuracy)}`` from ``ground_truth(tier)`` (every stored shot level, the
    full tier's held-out ``HELDOUT_SHOTS`` included, unless ``shots`` is given)."""
    best = {}
    for r in ground_truth(tier):
        if shots is not None and r["shots"] != shots:
            continue
        k = (r["task"], r["shots"])
        if k not in best or r["accuracy"] > best[k][1]:
            best[k] = (r["model"], r["accuracy"])
    return best
