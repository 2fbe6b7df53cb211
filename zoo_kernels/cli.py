"""zoo-kernels: command line of zoo_kernels.

    zoo-kernels rank --task pendigits_inverted                       # rank the MiniZoo experts (table)
    zoo-kernels rank --data target.pt --checkpoint a.pt b.pt --arch convnet --format json
    zoo-kernels predict-time --model convnet_latin --task pendigits_inverted --lr 0.01 --batch-size 64 \\
        --momentum 0.9 --max-steps 300 --target fraction=0.25 --target accuracy=0.8 --plot curves.png
    zoo-kernels predict-time --model convnet_latin --task latin_heldout --recommend --lrs 0.003 0.01 0.03 \\
        --batch-sizes 16 64 --momentum 0.9
    zoo-kernels bench --quick                                        # the pytest-benchmark suites

Models: MiniZoo names (`--model`, `--models`), or checkpoint files (`--checkpoint`) read with
torch.load(weights_only=True) (no code is unpickled): a MiniZoo checkpoint, or a state_dict with `--arch`
(a MiniZoo architecture) or `--factory pkg.module:function` (your code, called as function(num_classes)).
Data: a MiniZoo task (`--task`, `--shots`), or a file (`--data`): .pt/.pth (weights_only, memory-mapped) holding
{"inputs"|"x": float tensor, "labels"|"y": int tensor} or an (inputs, labels) pair, or .npz with x, y; for
predict-time also your Dataset (`--dataset package.module:function`), read only where the prediction needs it.

Exit codes: 0 success, 2 bad input (the message says which), 1 other failures. Progress bars go to stderr,
so `--format json` output on stdout stays machine-readable.
"""
import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

TARGET_KINDS = ("loss", "fraction", "accuracy", "epsilon")
PREDICT_METHODS = ("sketch", "exact", "head-aware", "recommended")
DEFAULT_SCORES = ("logme", "lfc", "leep", "hscore_shrinkage", "linear_probe")


class InputError(ValueError):
    """Bad command-line input; reported with exit code 2."""


# ------------------------------------------------------------------------------------------------ loading

def _first(d, keys, what, path):
    for k in keys:
        if k in d:
            return d[k]
    raise InputError(f"{path}: no {what} (expected one of the keys {list(keys)})")


def load_data_file(path):
    """(inputs, labels) from a .pt/.pth (torch.load weights_only=True) or .npz (allow_pickle=False) file."""
    if not os.path.isfile(path):
        raise InputError(f"data file not found: {path}")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                obj = {k: torch.from_numpy(z[k]) for k in z.files}
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    else:
        try:  # memory-mapped: a prediction reads the rows it needs only (zoo_kernels.samples)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001  (a legacy, non-zip file cannot be mapped)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"{path}: not a loadable weights-only torch file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict):
        x = _first(obj, ("inputs", "x", "images", "data"), "inputs", path)
        y = _first(obj, ("labels", "y", "targets"), "labels", path)
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    else:
        raise InputError(f"{path}: expected a dict with inputs/labels or an (inputs, labels) pair, "
                         f"got {type(obj).__name__}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    return check_data(x, y, path)


def check_data(x, y, where="data"):
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise InputError(f"{where}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} must have the same number "
                         "of samples, with 1-D labels")
    if x.shape[0] < 2:
        raise InputError(f"{where}: at least 2 samples are needed, got {x.shape[0]}")
    if not x.is_floating_point():
        x = x.float()
    from .samples import all_finite  # noqa: PLC0415

    if not all_finite(x):
        raise InputError(f"{where}: the inputs contain NaN or Inf")
    if y.is_floating_point():
        if not torch.isfinite(y).all():
            raise InputError(f"{where}: the labels contain NaN or Inf")
        if (y != y.round()).any():
            raise InputError(f"{where}: labels must be integer class indices")
    y = y.long()
    if int(y.min()) < 0:
        raise InputError(f"{where}: labels must be non-negative class indices, got {int(y.min())}")
    return x, y


def _callable(spec, flag):
    """The function named by `flag`'s package.module:function."""
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise InputError(f"{flag} must look like package.module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(f"{flag} {spec}: {e}") from e


def _factory(spec):
    return _callable(spec, "--factory")


def load_checkpoint_file(path, arch=None, factory=None):
    """A model from a checkpoint file, read with torch.load(weights_only=True) and validated."""
    from .zoo import nets  # noqa: PLC0415

    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and obj.get("format") == nets.CKPT_FORMAT:
        try:
            model, _ = nets.load_checkpoint(path, expect_arch=arch)
        except nets.CheckpointError as e:
            raise InputError(str(e)) from e
        return model.eval()
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise InputError(f"{path}: neither a MiniZoo checkpoint nor a state_dict of tensors")
    heads = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    if not heads:
        raise InputError(f"{path}: the state_dict has no linear layer (head)")
    num_classes = int(sd[heads[-1]].shape[0])
    if factory is not None:
        model = _factory(factory)(num_classes)
    elif arch is not None:
        if arch not in nets.ARCHS:
            raise InputError(f"--arch must be one of {sorted(nets.ARCHS)}, got {arch!r}")
        model = nets.build(arch, num_classes)
    else:
        raise InputError(f"{path} is a plain state_dict: say which network it belongs to with --arch "
                         f"({'/'.join(sorted(nets.ARCHS))}) or --factory package.module:function")
    ref = model.state_dict()
    missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    bad = [k for k in ref if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    if missing or extra or bad:
        raise InputError(f"{path}: the state_dict does not match the network: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}, wrong shapes {bad[:4]}")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in sd.values()):
        raise InputError(f"{path}: the checkpoint has non-finite weights")
    model.load_state_dict({k: sd[k].to(ref[k].dtype) for k in ref})
    return model.eval()


def fresh_head(model, num_classes, seed=0):
    """Replace the head (MiniZoo reset_head, else the last nn.Linear) by a new seeded one with num_classes outputs.

    MiniZoo nets use reset_head(num_classes, generator=manual_seed(seed)) exactly as the fine-tuning recipe does."""
    gen = torch.Generator().manual_seed(int(seed))
    if hasattr(model, "reset_head"):
        model.reset_head(num_classes, generator=gen)
        return model
    from .calibrate import _last_linear  # noqa: PLC0415

    try:
        name = _last_linear(model)
    except ValueError:
        raise InputError("the model has no nn.Linear head to replace") from None
    old = model.get_submodule(name)
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    bound = 1.0 / math.sqrt(old.in_features)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=gen)
        if head.bias is not None:
            head.bias.uniform_(-bound, bound, generator=gen)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, head.to(old.weight.device))
    return model


def load_target(args):
    """(x, y, num_classes, description) from --task/--shots or --data."""
    from . import zoo  # noqa: PLC0415

    dataset = getattr(args, "dataset", None)
    if sum(v is not None for v in (args.task, args.data, dataset)) != 1:
        raise InputError("give exactly one of --task (a MiniZoo task), --data (a file)"
                         + (" or --dataset (your Dataset)" if hasattr(args, "dataset") else ""))
    if dataset is not None:
        return _load_dataset(dataset, args.num_classes, args.workers)
    if args.task is not None:
        if args.task not in zoo.tasks("full"):
            raise InputError(f"unknown task {args.task!r}; MiniZoo tasks: {', '.join(zoo.tasks('full'))}")
        try:
            x, y, _, _ = zoo.load_task(args.task, shots=args.shots)
        except ValueError as e:
            raise InputError(f"--shots: {e}") from e
        C = zoo.task_info(args.task)["num_classes"]
        return x, y, C, f"{args.task} ({args.shots}-shot)" if args.shots else args.task
    x, y = load_data_file(args.data)
    return x, y, int(y.max()) + 1, os.path.basename(args.data)


def _load_dataset(spec, num_classes, workers=0):
    """(Samples, labels or None, num_classes, description) from --dataset package.module:function: your code,
    called as function(), returning a map-style Dataset of (input, label) rows, read where a prediction needs them."""
    from .samples import Samples  # noqa: PLC0415

    make = _callable(spec, "--dataset")
    try:
        data = Samples(make(), num_workers=workers)
    except (TypeError, ValueError) as e:
        raise InputError(f"--dataset {spec}: {e}") from e
    if len(data) < 2:
        raise InputError(f"--dataset {spec}: at least 2 samples are needed, got {len(data)}")
    if data.labels is None and num_classes is None:
        raise InputError(f"--dataset {spec}: the Dataset has no `targets` (N integer labels): give --num-classes")
    C = num_classes if data.labels is None else int(data.labels.max()) + 1
    return data, data.labels, C, spec


def _parse_target(spec):
    kind, eq, value = spec.partition("=")
    if not eq or kind not in TARGET_KINDS:
        raise InputError(f"--target must be KIND=VALUE with KIND in {TARGET_KINDS}, got {spec!r}")
    try:
        v = float(value)
    except ValueError:
        raise InputError(f"--target {spec!r}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"--target {spec!r}: the value must be finite")
    if kind == "fraction" and not 0 < v <= 1:
        raise InputError(f"--target fraction must be in (0, 1], got {v}")
    if kind == "accuracy" and not 0 < v <= 1:
        raise InputError(f"--target accuracy must be in (0, 1], got {v}")
    if kind in ("loss", "epsilon") and v <= 0:
        raise InputError(f"--target {kind} must be > 0, got {v}")
    return kind, v


def _target_label(kind, v, L0):
    return {"loss": f"loss <= {v:g}", "fraction": f"loss <= {v:g} L0 ({v * L0:.3g})",
            "accuracy": f"accuracy >= {v:g}", "epsilon": f"|L_t - L_T| < {v:g}"}[kind]


# ------------------------------------------------------------------------------------------------ output

def _fmt(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def table(rows, cols):
    """A markdown table of dict rows."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _emit(args, text, obj):
    out = json.dumps(obj, indent=2, default=_json_default) if args.format == "json" else text
    if args.output:
        with open(args.output, "w") as f:
            f.write(out + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(out)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ------------------------------------------------------------------------------------------------ rank

def cmd_rank(args):
    from . import evaluation, zoo  # noqa: PLC0415
    from .ranking import SCORES, ZOO_SCORES, rank  # noqa: PLC0415

    unknown = [s for s in args.scores if s not in SCORES and s not in ZOO_SCORES]
    if unknown:
        raise InputError(f"unknown scores {unknown}; known: {', '.join(sorted(SCORES) + sorted(ZOO_SCORES))}")
    by = args.by or args.scores[0]
    if by not in args.scores:
        raise InputError(f"--by {by!r} is not one of the computed --scores {args.scores}")
    x, y, C, desc = load_target(args)
    entries = {}
    if args.checkpoint:
        if args.models:
            raise InputError("give MiniZoo --models or --checkpoint files, not both")
        for path in args.checkpoint:
            name = os.path.splitext(os.path.basename(path))[0]
            if name in entries:
                raise InputError(f"two checkpoints named {name!r}")
            entries[name] = load_checkpoint_file(path, arch=args.arch, factory=args.factory)  # validate now
    else:
        known = zoo.models("full")
        names = args.models or zoo.models(args.tier, include_random=args.include_random)
        bad = [n for n in names if n not in known]
        if bad:
            raise InputError(f"unknown MiniZoo models {bad}; known: {', '.join(known)}")
        for n in names:  # loaded lazily by rank(), one at a time; source heads (LEEP), controls get C outputs
            entries[n] = (lambda n=n: zoo.load_model(n, num_classes=C if n.endswith("_random") else None))
    t0 = time.perf_counter()
    tab = rank(entries, (x, y), scores=args.scores, progress=not args.no_progress, seed=args.seed)
    seconds = time.perf_counter() - t0
    order = tab.ranking(by)
    gt = {}
    if args.task is not None and not args.checkpoint and args.shots:
        for tier in ("full", "small"):
            try:
                gt = {r["model"]: r["accuracy"] for r in zoo.ground_truth(tier)
                      if r["task"] == args.task and r["shots"] == args.shots}
            except FileNotFoundError:
                gt = {}
            if gt:
                break
    rows = []
    for i, name in enumerate(order, 1):
        r = {"rank": i, "model": name, **{s: tab[name][s] for s in args.scores}}
        if gt:
            r["finetuned_acc"] = gt.get(name)
        rows.append(r)
    agreement = {}
    common = [m for m in order if m in gt]
    if len(common) >= 3:
        for s in args.scores:
            agreement[s] = evaluation.weighted_tau({m: tab[m][s] for m in common}, {m: gt[m] for m in common})
    obj = {"target": desc, "num_samples": int(x.shape[0]), "num_classes": C, "by": by, "best": order[0],
           "scores": args.scores, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows],
           "seconds": seconds}
    if agreement:
        obj["weighted_tau_vs_ground_truth"] = agreement
        obj["ground_truth_models"] = len(common)
        obj["ground_truth_best"] = max(common, key=gt.get)
    cols = ["rank", "model"] + list(args.scores) + (["finetuned_acc"] if gt else [])
    text = [f"Ranking {len(order)} models for {desc} (N={x.shape[0]}, C={C}) by {by}; {seconds:.1f} s", "",
            table(rows, cols), "", f"best by {by}: {order[0]}"]
    if agreement:
        text.append(f"ground truth (MiniZoo fine-tuning, {len(common)} models): best {obj['ground_truth_best']}; "
                    "weighted tau per score: " + ", ".join(f"{s} {v:.2f}" for s, v in agreement.items()))
    _emit(args, "\n".join(text), obj)
    return 0


# ------------------------------------------------------------------------------------------------ predict-time

def build_predictor(model, data, args):
    from .calibrate import HeadAwarePredictor  # noqa: PLC0415
    from .predict import Predictor  # noqa: PLC0415

    kw = dict(loss=args.loss, subset=args.subset, seed=args.seed, sketch_method=args.sketch_method,
              progress=not args.no_progress)
    if args.method == "head-aware":
        return HeadAwarePredictor(model, data, k=args.k or 512, feature_rank=args.feature_rank,
                                  holdout=args.holdout, **kw)
    if args.feature_rank is not None:
        raise ValueError("--feature-rank applies to --method head-aware only")
    if args.holdout or args.holdout_self:
        raise ValueError("--holdout and --holdout-self apply to --method head-aware and recommended only")
    return Predictor(model, data, method=args.method, k=args.k or 1024, **kw)


def _sgd_kwargs(args, lr=None, batch_size=None):
    kw = dict(lr=args.lr if lr is None else lr, batch_size=args.batch_size if batch_size is None else batch_size,
              momentum=args.momentum, dampening=args.dampening, nesterov=args.nesterov,
              weight_decay=args.weight_decay, schedule=args.schedule, sampling=args.sampling)
    if args.schedule == "step":
        kw.update(step_size=args.step_size, gamma=args.gamma)
    return kw


def _head_kwargs(args):
    """predict() options that only the head-aware predictor takes."""
    if args.method != "head-aware":
        return {}
    return {"feature_norm": args.feature_norm, "eval_every": args.eval_every, "eval_growth": args.eval_growth,
            "holdout_self": args.holdout_self}


def _read_off_holdout(p, args):
    """--holdout-self: the prediction's loss curve read off the holdout rows (docs/PREDICT.md)."""
    return p.from_holdout() if args.holdout_self else p


def _subset_arg(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an int, got {text!r}") from None


def _check_predict_args(args, n):
    for name in ("lr", "momentum", "dampening", "weight_decay"):
        v = getattr(args, name)
        if v is not None and not math.isfinite(v):
            raise InputError(f"--{name.replace('_', '-')} must be finite, got {v}")
    if not args.recommend or args.lr is not None:
        if args.lr is None or args.lr <= 0:
            raise InputError(f"--lr must be > 0, got {args.lr}")
    if not args.recommend or args.batch_size is not None:
        if args.batch_size is None or not 1 <= args.batch_size <= n:
            raise InputError(f"--batch-size must be in [1, N={n}] (the number of training samples), "
                             f"got {args.batch_size}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.subset is not None and args.subset != "auto" and not 2 <= args.subset <= n:
        raise InputError(f"--subset must be 'auto' or in [2, N={n}], got {args.subset}")
    if args.recommend:
        if any(v <= 0 or not math.isfinite(v) for v in args.lrs):
            raise InputError(f"--lrs must all be > 0, got {args.lrs}")
        if any(not 1 <= b <= n for b in args.batch_sizes):
            raise InputError(f"--batch-sizes must all be in [1, N={n}], got {args.batch_sizes}")


def _prediction_summary(pred, targets, L0):
    from .predict import GAP_FLAG  # noqa: PLC0415

    rows = []
    for kind, v in targets:
        t = pred.time_to(**{kind: v})
        rows.append({"target": _target_label(kind, v, L0), "kind": kind, "value": v, **t})
        if pred.holdout_loss_curve is not None:  # the reliability flag (docs/PREDICT.md, "The holdout gap")
            gap = _clean(pred.holdout_gap(t["steps"]))
            rows[-1].update(holdout_gap=gap, flag="memorized" if gap is not None and gap >= GAP_FLAG else "")
    return rows


def cmd_predict(args):
    from . import zoo  # noqa: PLC0415

    if args.model is not None and args.checkpoint:
        raise InputError("give --model (MiniZoo) or --checkpoint, not both")
    if args.model is None and not args.checkpoint:
        raise InputError("give --model (a MiniZoo name) or --checkpoint (a file)")
    from .dynamics import LOSSES  # noqa: PLC0415

    if args.loss not in LOSSES:
        raise InputError(f"--loss must be one of {LOSSES} (cross-entropy or squared error), got {args.loss!r}")
    x, y, C, desc = load_target(args)
    C = args.num_classes or C
    if y is not None and int(y.max()) >= C:
        raise InputError(f"labels go up to {int(y.max())} but the head has {C} outputs (--num-classes)")
    from .samples import Samples  # noqa: PLC0415

    # --dataset: Samples already, read where needed; tensors: checked by load_target, not read whole again
    data = x if args.dataset else Samples((x, y), _checked=True)
    if args.workers and not args.dataset:
        raise InputError("--workers reads a --dataset's rows: give --dataset")
    if args.dataset and args.verify:
        raise InputError("--verify fine-tunes on all the data in memory: not with --dataset")
    _check_predict_args(args, len(x))
    targets = [_parse_target(t) for t in (args.target or ["fraction=0.5", "fraction=0.25", "fraction=0.1"])]
    if args.model is not None:
        if args.model not in zoo.models("full"):
            raise InputError(f"unknown MiniZoo model {args.model!r}; known: {', '.join(zoo.models('full'))}")
        model = zoo.load_model(args.model, num_classes=C, seed=args.head_seed)
        mname = args.model
    else:
        if len(args.checkpoint) != 1:
            raise InputError("predict-time takes one --checkpoint")
        model = load_checkpoint_file(args.checkpoint[0], arch=args.arch, factory=args.factory)
        if not args.keep_head:
            fresh_head(model, C, args.head_seed)
        mname = os.path.basename(args.checkpoint[0])
    if args.sampling is None:  # the MiniZoo recipe's sampling for MiniZoo models and --verify
        args.sampling = "stream" if (args.model is not None or args.verify) else "epoch"
    if args.verify and not hasattr(model, "reset_head"):
        raise InputError("--verify fine-tunes with the MiniZoo recipe, which needs a MiniZoo network")
    if args.verify and (args.nesterov or args.dampening or args.schedule != "constant" or args.loss != "ce"):
        raise InputError("--verify runs the MiniZoo recipe: constant lr, plain momentum, cross-entropy")
    model.eval()
    label = args.method
    if args.method == "recommended":  # head-aware with the validated settings (predict.RECOMMENDED)
        from .predict import (RECOMMENDED, recommended_holdout, recommended_settings,  # noqa: PLC0415
                              recommended_subset)

        if args.recommend or args.schedule != "constant":
            raise InputError("--method recommended runs real steps for one setting: not with --recommend or a "
                             "schedule")
        try:
            chosen = recommended_settings(model, args.max_steps, len(x), args.batch_size, cli=True,
                                          **{key: getattr(args, key) for key in RECOMMENDED})
        except ValueError as e:
            raise InputError(str(e)) from e
        vars(args).update(chosen, method="head-aware", subset=recommended_subset(len(x), C))
        args.holdout = recommended_holdout(len(x), C, args.holdout)  # the curves are read off the holdout rows
        args.holdout_self = args.holdout > 0
    if args.holdout_self and args.holdout < 1:
        raise InputError(f"--holdout-self reads the curves off the holdout rows: it needs --holdout H > 0, got "
                         f"{args.holdout}")
    if args.method != "head-aware" and (args.warmup_steps or args.feature_norm != "linear" or args.eval_every != 1
                                        or args.eval_growth):
        raise InputError("--warmup-steps, --feature-norm, --eval-every and --eval-growth apply to --method "
                         "head-aware only")
    if args.warmup_steps and (args.recommend or args.schedule != "constant"):
        raise InputError("--warmup-steps runs real steps for one setting: not with --recommend or a schedule")
    try:
        pred = None if args.warmup_steps else build_predictor(model, data, args)
    except ValueError as e:
        raise InputError(str(e)) from e
    from .predict import resolve_subset  # noqa: PLC0415

    subset = pred.subset if pred else resolve_subset(args.subset, len(x), C)
    obj = {"model": mname, "target_data": desc, "num_samples": int(len(x)), "num_classes": C,
           "method": label, "sketch_method": None if args.method == "exact" else args.sketch_method,
           "k": pred.k if pred else (args.k or 512),
           "subset": subset, "holdout": args.holdout, "loss_read_off_holdout": args.holdout_self, "loss": args.loss,
           "setup_seconds": pred.setup_seconds if pred else None, "warmup_steps": args.warmup_steps,
           "feature_norm": args.feature_norm if args.method == "head-aware" else None, "units": {
               "step": "one SGD update on one minibatch", "epoch": "N / batch_size steps (steps * B / N)",
               "seconds": "steps x the measured wall time of one real SGD step (forward, backward, update) "
                          "at this batch size on this machine, now"}}
    from .predict import validation_note  # noqa: PLC0415

    obj["validation"] = validation_note(label, args.warmup_steps, args.feature_norm)
    if label == "recommended":
        from .predict import recommended_scope  # noqa: PLC0415

        obj["scope_warning"] = recommended_scope(len(x), args.batch_size, args.max_steps)
    if args.recommend:
        return _recommend(args, pred, targets, obj)
    kw = _sgd_kwargs(args)
    try:
        if pred is None:  # K real steps, then the head-aware model at w_K
            from .warmstart import predict_after_warmup  # noqa: PLC0415

            p = predict_after_warmup(model, data, max_steps=args.max_steps, warmup_steps=args.warmup_steps,
                                     paths=args.paths, k=args.k or 512, subset=args.subset, seed=args.seed,
                                     loss=args.loss, feature_norm=args.feature_norm, feature_rank=args.feature_rank,
                                     sketch_method=args.sketch_method, eval_every=args.eval_every,
                                     eval_growth=args.eval_growth, holdout=args.holdout, holdout_self=args.holdout_self,
                                     progress=not args.no_progress,
                                     **{k: v for k, v in kw.items() if k != "schedule"})
        else:
            p = pred.predict(max_steps=args.max_steps, paths=args.paths, measure_time=not args.no_step_time,
                             **kw, **_head_kwargs(args))
    except FloatingPointError as e:
        raise InputError(f"the predicted dynamics diverge: {e}. Lower --lr (outside the linear regime the "
                         "prediction does not apply)") from e
    except ValueError as e:
        raise InputError(str(e)) from e
    p = _read_off_holdout(p, args)
    L0 = float(p.loss_curve[0])
    rows = _prediction_summary(p, targets, L0)
    obj.update({"hyper_parameters": {k: v for k, v in kw.items()}, "max_steps": args.max_steps,
                "steps_per_epoch": p.steps_per_epoch, "step_seconds": _clean(p.step_seconds),
                "prediction_seconds": p.cost_seconds, "initial_loss": L0,
                "initial_accuracy": float(p.accuracy_curve[0]), "final_loss": float(p.loss_curve[-1]),
                "final_accuracy": float(p.accuracy_curve[-1]), "targets": rows})
    if args.curves:
        obj["loss_curve"], obj["accuracy_curve"] = p.loss_curve.tolist(), p.accuracy_curve.tolist()
    real = None
    if args.verify:
        real = _verify(model, x, y, C, args, obj, targets)
    if args.plot:
        from . import plots  # noqa: PLC0415

        title = (f"{mname} -> {desc}: lr={args.lr} B={args.batch_size} m={args.momentum} "
                 f"({args.method})")
        try:
            plots.plot_prediction(args.plot, p, real_loss=None if real is None else real["train_loss"],
                                  real_accuracy=None if real is None else real["train_acc"], title=title,
                                  fractions=[v for k, v in targets if k == "fraction"] or (0.5, 0.25, 0.1))
        except ImportError as e:
            raise InputError(str(e)) from e
        obj["plot"] = args.plot
    text = _predict_text(obj, p, args)
    _emit(args, text, obj)
    return 0


def _verify(model, x, y, C, args, obj, targets):
    import copy  # noqa: PLC0415

    from .zoo.finetune import finetune  # noqa: PLC0415

    m = copy.deepcopy(model)
    print(f"verifying: fine-tuning for real ({args.max_steps} steps, MiniZoo recipe)...", file=sys.stderr)
    r = finetune(m, x, y, num_classes=C, lr=args.lr, momentum=args.momentum, batch=args.batch_size,
                 steps=args.max_steps, weight_decay=args.weight_decay, seed=args.head_seed, record=True)
    tr = r["steps_trace"]
    L, A, W = np.asarray(tr["train_loss"]), np.asarray(tr["train_acc"]), np.asarray(tr["wall"])
    real_rows = []
    for kind, v in targets:
        if kind == "loss":
            hit = L <= v
        elif kind == "fraction":
            hit = L <= v * L[0]
        elif kind == "accuracy":
            hit = A >= v
        else:
            far = np.flatnonzero(np.abs(L - L[-1]) >= v)
            hit = np.zeros(len(L), bool)
            hit[(far[-1] + 1 if far.size else 0):] = True
        w = np.flatnonzero(hit)
        s = int(w[0]) if w.size else None
        real_rows.append({"steps": s, "seconds": None if s is None else float(W[s])})
    for row, rr in zip(obj["targets"], real_rows):
        row["real_steps"], row["real_seconds"] = rr["steps"], rr["seconds"]
        if rr["steps"] and row["steps"] is not None:
            row["rel_error"] = abs(row["steps"] - rr["steps"]) / rr["steps"]
    obj["verify"] = {"train_seconds": r["wall_seconds"], "final_loss": float(L[-1]), "final_accuracy": float(A[-1]),
                     "diverged": r["diverged"]}
    return tr


def _predict_text(obj, p, args):
    hp = obj["hyper_parameters"]
    sub = f", subset M={obj['subset']}" if obj["subset"] != obj["num_samples"] else ""
    if obj.get("holdout"):
        sub += f", holdout H={obj['holdout']}" + (", loss read off it" if obj["loss_read_off_holdout"] else "")
    lines = [f"{obj['model']} -> {obj['target_data']}: N={obj['num_samples']}, C={obj['num_classes']}; "
             f"method {obj['method']} (k={obj['k']}{sub})",
             f"SGD lr={hp['lr']} batch={hp['batch_size']} momentum={hp['momentum']}"
             + (" nesterov" if hp["nesterov"] else "") + (f" wd={hp['weight_decay']}" if hp["weight_decay"] else "")
             + (f" schedule={hp['schedule']}" if hp["schedule"] != "constant" else "")
             + f" sampling={hp['sampling']}; one epoch = N/B = {obj['num_samples'] / hp['batch_size']:.3g} steps"]
    if obj["step_seconds"] is not None:
        lines.append(f"one real SGD step: {obj['step_seconds'] * 1e3:.1f} ms (measured now on this machine)")
    cols = ["target", "steps", "epochs", "seconds"]
    if any("holdout_gap" in r for r in obj["targets"]):
        cols += ["holdout_gap", "flag"]
    if "verify" in obj:
        cols += ["real_steps", "real_seconds", "rel_error"]
    lines += ["", table(obj["targets"], cols), ""]
    lines.append(f"predicted: loss {obj['initial_loss']:.4g} -> {obj['final_loss']:.4g}, accuracy "
                 f"{obj['initial_accuracy']:.3f} -> {obj['final_accuracy']:.3f} after {obj['max_steps']} steps "
                 "(expected full-training-set values; '-' = not reached within --max-steps)")
    if obj["warmup_steps"]:
        lines.append(f"prediction cost: {obj['prediction_seconds']:.2f} s, including {obj['warmup_steps']} real "
                     "warm-up steps (the first steps of the curves are measured, not predicted)")
    else:
        lines.append(f"prediction cost: {obj['prediction_seconds']:.2f} s (setup {obj['setup_seconds']:.2f} s, "
                     "shared by every setting of one predictor)")
    if "validation" in obj:
        lines.append(f"accuracy of --method {obj['method']}: {obj['validation']}")
    if obj.get("scope_warning"):
        lines.append(f"warning: {obj['scope_warning']}")
    if any("holdout_gap" in r for r in obj["targets"]):
        from .predict import GAP_FLAG, GAP_VALIDATION  # noqa: PLC0415

        lines.append(f"holdout_gap: the loss of the {obj['holdout']} holdout samples (moved but never trained on; "
                     f"without their own kernel block), over the subset's, at the predicted step; 'memorized' "
                     f"(>= {GAP_FLAG}): the predicted decrease leans on memorizing the subset. {GAP_VALIDATION}")
    if "verify" in obj:
        v = obj["verify"]
        lines.append(f"real fine-tuning: {v['train_seconds']:.2f} s of optimization, final loss {v['final_loss']:.4g}, "
                     f"accuracy {v['final_accuracy']:.3f}")
    if "plot" in obj:
        lines.append(f"plot: {obj['plot']}")
    return "\n".join(lines)


def _recommend(args, pred, targets, obj):
    kind, v = targets[0]
    lrs = args.lrs if args.lr is None else [args.lr]
    bss = args.batch_sizes if args.batch_size is None else [args.batch_size]
    rows = []
    grid = [(lr, b) for lr in lrs for b in bss]
    for lr, b in tqdm(grid, desc="recommend", unit="setting", disable=args.no_progress):
        try:
            p = pred.predict(max_steps=args.max_steps, paths=args.paths,
                             measure_time=(args.by == "seconds" and not args.no_step_time),
                             **_sgd_kwargs(args, lr=lr, batch_size=b), **_head_kwargs(args))
            p = _read_off_holdout(p, args)
            rows.append({"lr": lr, "batch_size": b, **p.time_to(**{kind: v}), "diverged": False})
        except FloatingPointError:
            rows.append({"lr": lr, "batch_size": b, "steps": None, "epochs": None, "seconds": None, "diverged": True})
    by = args.by if not (args.by == "seconds" and args.no_step_time) else "steps"
    rows.sort(key=lambda r: (r[by] is None or (isinstance(r[by], float) and math.isnan(r[by])),
                             r[by] if r[by] is not None else 0))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    obj.update({"recommend": {"target": _target_label(kind, v, float("nan")).split(" (")[0], "by": by,
                              "momentum": args.momentum, "max_steps": args.max_steps,
                              "rows": [{k: _clean(x) for k, x in r.items()} for r in rows]},
                "best": None if rows[0][by] is None else {"lr": rows[0]["lr"], "batch_size": rows[0]["batch_size"]}})
    text = [f"{obj['model']} -> {obj['target_data']}: predicted time to {obj['recommend']['target']} "
            f"({args.method}, momentum {args.momentum}, up to {args.max_steps} steps), best first by {by}", "",
            table(rows, ["rank", "lr", "batch_size", "steps", "epochs", "seconds", "diverged"]), ""]
    text.append("recommended: " + ("none reaches the target within --max-steps" if obj["best"] is None else
                                   f"lr={obj['best']['lr']} batch_size={obj['best']['batch_size']}"))
    _emit(args, "\n".join(text), obj)
    return 0


# ------------------------------------------------------------------------------------------------ bench

def _repo_root():
    for base in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if os.path.isdir(os.path.join(base, "benchmarks")) and os.path.isfile(os.path.join(base, "benchmarks",
                                                                                              "conftest.py")):
            return base
    raise InputError("benchmarks/ not found: run `zoo-kernels bench` from a source checkout of zoo_kernels")


def cmd_bench(args):
    root = _repo_root()
    env = dict(os.environ)
    cmds = []
    if args.suite in ("kernels", "all"):
        cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "--benchmark-columns=mean,stddev,rounds"]
        if args.json:
            cmd.append(f"--benchmark-json={args.json}")
        if args.quick:
            env.update(ZK_BENCH_QUICK="1", ZK_BENCH_MEMORY="0")
        cmds.append(cmd + list(args.pytest_args))
    if args.suite in ("predict", "all"):
        cmds.append([sys.executable, "-m", "benchmarks.predict_validation"] + (["--quick"] if args.quick else []))
    rc = 0
    for cmd in cmds:
        print(("would run: " if args.dry_run else "running: ") + " ".join(cmd)
              + (" (ZK_BENCH_QUICK=1 ZK_BENCH_MEMORY=0)" if args.quick and "pytest" in cmd else ""),
              file=sys.stderr, flush=True)
        if args.dry_run:
            continue
        rc = subprocess.run(cmd, cwd=root, env=env).returncode or rc
    return rc


# ------------------------------------------------------------------------------------------------ parser

def _common(p):
    p.add_argument("--task", help="a MiniZoo target task")
    p.add_argument("--shots", type=int, default=10, help="training images per class of --task (default 10)")
    p.add_argument("--data", help="a data file (.pt/.pth or .npz) with inputs and integer labels")
    p.add_argument("--checkpoint", nargs="+", help="checkpoint file(s), read with torch.load(weights_only=True)")
    p.add_argument("--arch", help="MiniZoo architecture of a plain state_dict checkpoint (convnet/resnet/mobilenet)")
    p.add_argument("--factory", help="package.module:function(num_classes) building the network of a state_dict")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--output", help="write the output to this file instead of stdout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser():
    ap = argparse.ArgumentParser(prog="zoo-kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("rank", help="rank MiniZoo experts or checkpoints for a target task")
    _common(r)
    r.add_argument("--models", nargs="+", help="MiniZoo model names (default: the experts of --tier)")
    r.add_argument("--tier", choices=("small", "full"), default="full")
    r.add_argument("--include-random", action="store_true", help="also rank the random-init controls")
    r.add_argument("--scores", nargs="+", default=list(DEFAULT_SCORES), help="scores (zoo_kernels.ranking.SCORES)")
    r.add_argument("--by", help="the score that orders the table (default: the first of --scores)")
    r.set_defaults(func=cmd_rank)

    p = sub.add_parser("predict-time", help="predict SGD steps / epochs / seconds of fine-tuning to a target")
    _common(p)
    p.add_argument("--model", help="a MiniZoo model name")
    p.add_argument("--dataset", help="package.module:function() returning a map-style Dataset of (input, label): "
                   "read only where the prediction needs it, for data too large for memory (--num-classes when "
                   "it has no `targets`)")
    p.add_argument("--workers", type=int, default=0, help="with --dataset: DataLoader worker processes that read its "
                   "rows (default 0: read in this process)")
    p.add_argument("--num-classes", type=int, help="outputs of the new head (default: the task's / max label + 1)")
    p.add_argument("--head-seed", type=int, default=0, help="seed of the new head (the MiniZoo run seed)")
    p.add_argument("--keep-head", action="store_true", help="keep the checkpoint's head instead of a new one")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--dampening", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=("constant", "step", "cosine"), default="constant")
    p.add_argument("--step-size", type=int, default=1000, help="'step' schedule: steps between decays")
    p.add_argument("--gamma", type=float, default=0.1, help="'step' schedule: decay factor")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--loss", default="ce", help="ce (cross-entropy) or mse")
    p.add_argument("--method", choices=PREDICT_METHODS, default="head-aware",
                   help="head-aware (linearized backbone, exact head; default), sketch or exact (full linearization), "
                        "or recommended (head-aware after max(100, N / 2B) real steps, with the validated settings; "
                        "docs/PREDICT.md)")
    p.add_argument("--k", type=int, help="sketch width (default 512 head-aware, 1024 sketch)")
    p.add_argument("--holdout", type=int, default=0,
                   help="head-aware/recommended: H samples outside the subset moved by the same dynamics but never "
                        "trained on; adds each target's holdout gap and a 'memorized' flag (recommended: default "
                        "min(200, N - M))")
    p.add_argument("--holdout-self", action="store_true",
                   help="with --holdout: the holdout rows also get their own kernel block at the full data's "
                        "weight, and the loss curve is read off them (--method recommended does this with "
                        "H = min(200, N - M); docs/PREDICT.md)")
    p.add_argument("--feature-rank", type=int, default=None,
                   help="head-aware: move the features only in their top-r energy directions (r backward passes "
                        "per sample instead of the feature width; default: all)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="head-aware: compute the full-set curves every E steps, interpolated in between (faster)")
    p.add_argument("--eval-growth", type=float, default=0.0,
                   help="head-aware: space those evaluations max(E, g*t) steps apart (geometric late; long runs)")
    p.add_argument("--sketch-method", choices=("dense", "kronecker"), default="dense",
                   help="Jacobian sketch: dense (exact JL; default) or kronecker (3-4x cheaper setup, same k)")
    p.add_argument("--feature-norm", choices=("linear", "fixed"), default="linear",
                   help="head-aware: 'fixed' keeps each sample's feature norm (as GroupNorm/ReLU features do)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="head-aware: run the first K steps for real, then linearize at w_K (costs K real steps)")
    p.add_argument("--subset", type=_subset_arg,
                   help="predict from M random samples (subset mode); 'auto': max(N/20, 20 per class)")
    p.add_argument("--paths", type=int, default=4, help="Monte-Carlo SGD paths")
    p.add_argument("--sampling", choices=("epoch", "stream"),
                   help="minibatches: epoch (DataLoader shuffle) or stream (MiniZoo recipe; default for MiniZoo)")
    p.add_argument("--target", action="append", help="KIND=VALUE, KIND in loss/fraction/accuracy/epsilon "
                                                     "(repeatable; default fraction=0.5,0.25,0.1)")
    p.add_argument("--no-step-time", action="store_true", help="do not measure a real step (no seconds)")
    p.add_argument("--curves", action="store_true", help="include the predicted curves in the JSON")
    p.add_argument("--plot", help="write predicted (and with --verify real) curves to this PNG")
    p.add_argument("--verify", action="store_true", help="also fine-tune for real (MiniZoo recipe) and compare")
    p.add_argument("--recommend", action="store_true", help="grid of --lrs x --batch-sizes, fastest first")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--by", choices=("seconds", "steps", "epochs"), default="seconds")
    p.set_defaults(func=cmd_predict)

    b = sub.add_parser("bench", help="run the benchmark suites (pytest-benchmark; prediction validation)")
    b.add_argument("--quick", action="store_true", help="tiny sizes (ZK_BENCH_QUICK=1); quick validation")
    b.add_argument("--suite", choices=("kernels", "predict", "all"), default="kernels")
    b.add_argument("--json", help="pytest-benchmark JSON output path")
    b.add_argument("--dry-run", action="store_true", help="print the commands only")
    b.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    b.set_defaults(func=cmd_bench)
    return ap


def main(argv=None):
    """Entry point of `zoo-kernels`; returns the exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or an argparse error (already printed)
        return int(e.code or 0)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except InputError as e:
        print(f"zoo-kernels {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        print(f"zoo-kernels {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
