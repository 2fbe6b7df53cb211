"""rank(): score every model of a zoo on a labelled target set, with shared feature / gradient caches.

    table = rank({"resnet_a": model_a, "cnn_b": lambda: load_b()}, (inputs, labels),
                 scores=["logme", "lfc", "leep", "lgc"])
    print(table.to_markdown())
    table.ranking("logme")          # model names, best first
    table.evaluate(finetune_acc)    # {score: weighted tau, ...} against ground truth

Per model, one pass over the data gives the penultimate features (the input of the last nn.Linear, by a forward
hook, or `features_fn`) and the outputs (softmax = the source probabilities of LEEP, argmax = NCE's source
labels); one gradient sketch (zoo_kernels.sketch_jacobian, the extension's kernels on CPU or GPU) serves LGC. All
scores of the model reuse them. Whole-zoo scores (ETran) are combined after every model is scored.
"""
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import evaluation
from .scores import correlation, prior, probabilistic, zoo
from .scores.gbc import gbc
from .scores.hscore import hscore, hscore_shrinkage
from .scores.knn import knn_accuracy
from .scores.krr import krr_loo_accuracy
from .scores.linear_probe import linear_probe_accuracy
from .scores.transrate import transrate
from .scores._common import as_tensor, check_labels

__all__ = ["rank", "RankingTable", "ScoreError", "SCORES", "ZOO_SCORES", "DEFAULT_SCORES"]


class ScoreError(RuntimeError):
    """A score failed on a model (raised by rank with on_error="raise")."""


def _nce_from_logits(logits, labels, **kw):
    return probabilistic.nce(logits.argmax(1), labels, **kw)


def _leep_from_logits(logits, labels, **kw):
    return probabilistic.leep(logits, labels, logits=True, **kw)


# name -> (input kind, function). Kinds: "features" f(features, labels), "logits" f(logits, labels),
# "model" f(model, inputs, labels), "unlabelled" f(features), "prior" f(model) / a value per model.
SCORES = {
    "lfc": ("features", correlation.lfc),
    "logme": ("features", probabilistic.logme),
    "hscore": ("features", hscore),
    "hscore_shrinkage": ("features", hscore_shrinkage),
    "transrate": ("features", transrate),
    "gbc": ("features", gbc),
    "nleep": ("features", probabilistic.nleep),
    "knn": ("features", knn_accuracy),
    "krr_loo": ("features", krr_loo_accuracy),
    "linear_probe": ("features", linear_probe_accuracy),
    "lda": ("features", zoo.lda_score),
    "energy": ("unlabelled", zoo.energy_score),
    "leep": ("logits", _leep_from_logits),
    "nce": ("logits", _nce_from_logits),
    "lgc": ("gradients", None),
    "num_params": ("prior", None),
    "source_accuracy": ("prior", None),
}
# whole-zoo scores: (combiner over the models, component weights)
ZOO_SCORES = {
    "etran": (zoo.combine, {"lda": 0.85, "energy": 0.15}),  # min-max normalized weighted sum (ETran)
    # the selection strategy of docs/SCORES.md: rank-average of 1-NN and KRR LOO accuracy (pre-registered,
    # held-out 15-shot MiniZoo level: above every single score, within noise)
    "knn_krr": (zoo.rank_average, {"knn": 1.0, "krr_loo": 1.0}),
}
DEFAULT_SCORES = ("lfc", "logme", "hscore_shrinkage", "nleep", "transrate", "gbc", "knn", "linear_probe", "leep",
                  "nce", "num_params")
HEADS = ("random", "zero", "source")


@dataclass
class RankingTable:
    """Per-model scores, ranks (1 = best) and costs in seconds.

    rows: one dict per model: "model", then for each score s: s (value), "rank_" + s, s + "_s" (seconds spent in
    that score, excluding the shared extraction), and "features_s" / "gradients_s" (shared extraction time).
    """
    rows: list
    scores: list
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.rows:
                if r["model"] == key:
                    return r
            raise KeyError(key)
        return self.rows[key]

    @property
    def models(self):
        return [r["model"] for r in self.rows]

    def column(self, name):
        """{model: value} of a column (a score, "rank_<score>", "<score>_s", "features_s", ...)."""
        return {r["model"]: r.get(name) for r in self.rows}

    def ranking(self, score):
        """Model names, best first, by `score`."""
        self._check_score(score)
        return sorted(self.models, key=lambda m: self[m]["rank_" + score])

    def best(self, score):
        return self.ranking(score)[0]

    def _check_score(self, score):
        if score not in self.scores:
            raise KeyError(f"no score {score!r} in this table; it has {self.scores}")

    def evaluate(self, accuracy, metric="weighted_tau", ks=(1, 3)):
        """{score: metrics dict} (or {score: value} for one metric name) against {model: fine-tuned accuracy}."""
        out = {}
        for s in self.scores:
            res = evaluation.evaluate(self.column(s), accuracy, ks)
            out[s] = res if metric is None else res[metric]
        return out

    def to_dicts(self):
        return [dict(r) for r in self.rows]

    def to_markdown(self, digits=4, costs=True):
        cols = ["model"]
        for s in self.scores:
            cols += [s, "rank_" + s]
        if costs:
            cols += [c for c in ("features_s", "gradients_s") if any(c in r for r in self.rows)]
            cols += [s + "_s" for s in self.scores]

        def fmt(v):
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.{digits}g}"
            return "" if v is None else str(v)

        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()


# ------------------------------------------------------------------------------------------------ data

def _materialize(data):
    """(inputs, labels) tensors from a pair, or from an iterable of (x, y) batches (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = data
    else:
        xs, ys = [], []
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("`data` must be (inputs, labels) or an iterable of (x, y) batches")
            xs.append(as_tensor(batch[0], "inputs"))
            ys.append(as_tensor(batch[1], "labels"))
        if not xs:
            raise ValueError("`data` is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    x = as_tensor(x, "inputs")
    if x.dim() < 1 or x.shape[0] < 2:
        raise ValueError(f"`data` needs at least 2 samples, got inputs of shape {tuple(x.shape)}")
    return x, y


def _extract(model, x, features_fn, batch_size, device, need_logits):
    """(features (N, D), logits (N, Cs) or None), float32 on the CPU, in eval mode without gradients."""
    feats, outs = [], []
    captured = {}
    hook = None
    if features_fn is None:
        head = prior._last_linear(model)
        if head is None:
            raise ValueError("the model has no nn.Linear layer to hook; pass `features_fn(model, x)`")
        hook = head.register_forward_hook(lambda mod, inp, out: captured.__setitem__("f", inp[0]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size].to(device)
                out = None
                if features_fn is None:
                    out = model(xb)
                    if "f" not in captured:
                        raise ValueError("the last nn.Linear of the model was not called in forward; pass "
                                         "`features_fn(model, x)`")
                    f = captured.pop("f")
                else:
                    res = features_fn(model, xb)
                    f, out = res if isinstance(res, (tuple, list)) else (res, None)
                    if out is None and need_logits:
                        out = model(xb)
                feats.append(f.reshape(f.shape[0], -1).float().cpu())
                if need_logits:
                    if not torch.is_tensor(out) or out.dim() != 2:
                        raise ValueError("LEEP/NCE need the model's outputs as (N, Cs) logits, got "
                                         f"{getattr(out, 'shape', type(out))}")
                    outs.append(out.float().cpu())
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    return torch.cat(feats), (torch.cat(outs) if need_logits else None)


_CORR_KEYS = ("centering", "regression")


def _lgc_gradients(model, x, num_classes, device, kwargs, seed, entry_cache):
    """(sketch (N, C, k) or kernel (N, N), seconds); cached in entry_cache per option set (not for a kernel
    callable)."""
    kw = {k: v for k, v in kwargs.items() if k not in _CORR_KEYS}
    head = kw.pop("head", "random")
    std = kw.pop("head_std", None)
    if head not in HEADS:
        raise ValueError(f"lgc `head` must be one of {HEADS}, got {head!r}")
    kw.setdefault("k", 1024)
    kw.setdefault("seed", seed)
    key = None
    if kw.get("kernel") is None:
        key = ("lgc", head, std, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items())))
        if key in entry_cache:
            return entry_cache[key], 0.0
    t0 = time.perf_counter()
    if head != "source":
        model = correlation.with_target_head(model, num_classes, init=head, std=std, seed=seed)
    was_training = model.training
    model = model.to(device).eval()
    try:
        grad = correlation.gradient_kernel(model, x.to(device), **kw)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    if key is not None:
        entry_cache[key] = grad.detach().cpu()
    return grad, seconds


def _lgc_correlate(grad, y, kwargs):
    kw = {k: v for k, v in kwargs.items() if k in _CORR_KEYS}
    if kwargs.get("method", "sketch") == "sketch":
        return correlation.lgc_from_sketch(grad, y, **kw)
    return correlation.lgc_from_kernel(grad, y, **kw)


def _resolve(models):
    if not isinstance(models, dict) or not models:
        raise TypeError("`models` must be a non-empty dict {name: nn.Module or callable returning one}")
    return list(models.items())


def rank(models, data, scores=DEFAULT_SCORES, *, features_fn=None, source_accuracy=None, score_kwargs=None,
         device=None, batch_size=256, seed=0, progress=True, cache=None, on_error="raise"):
    """Scores every model of `models` on `data` and returns a RankingTable (ranks: 1 = best).

    models: {name: nn.Module, or a callable returning one (loaded when its turn comes, released after)}.
    data: (inputs, labels) tensors/arrays, or an iterable of (x, y) batches; labels are class indices.
    scores: names from SCORES (per model) and ZOO_SCORES (whole-zoo, e.g. "etran").
        features: lfc logme hscore hscore_shrinkage transrate gbc nleep knn krr_loo linear_probe lda energy
        outputs:  leep nce (softmax / argmax of the model's outputs)
        gradients: lgc (sketch of the trace NTK with a target head: score_kwargs["lgc"]["head"] = "random"
                   (default), "zero" (LGC = LFC) or "source" (the model's own outputs); other keys go to
                   scores.lgc, e.g. k, sketch, layers, output, method)
        priors:   num_params (backbone parameters, prior.model_size: the last nn.Linear is left out),
                  source_accuracy (needs source_accuracy={name: value})
    features_fn: f(model, x) -> features (B, D), or (features, logits); default: a forward hook on the input of
        the model's last nn.Linear (the classifier), whose outputs are the logits.
    score_kwargs: {score name: {keyword: value}} passed to the score functions.
    device: where the models run (default: where their parameters are); scores run on the CPU in float64.
    cache: a dict kept across calls: features/logits and LGC's gradient sketches (per option set) of each model
        name are stored there and reused.
    on_error: "raise", or "nan" to record NaN and the message in row["errors"] and go on.
    """
    scores = list(scores)
    unknown = [s for s in scores if s not in SCORES and s not in ZOO_SCORES]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; known: {sorted(SCORES) + sorted(ZOO_SCORES)}")
    if on_error not in ("raise", "nan"):
        raise ValueError(f"`on_error` must be 'raise' or 'nan', got {on_error!r}")
    score_kwargs = dict(score_kwargs or {})
    items = _resolve(models)
    if "source_accuracy" in scores:
        if not isinstance(source_accuracy, dict) or set(source_accuracy) != {n for n, _ in items}:
            raise ValueError("score 'source_accuracy' needs `source_accuracy` = {model name: value} for every model")
    x, y_raw = _materialize(data)
    y, num_classes = check_labels(y_raw, x.shape[0])
    per_model = [s for s in scores if s in SCORES]
    for z in scores:
        if z in ZOO_SCORES:
            per_model += [c for c in ZOO_SCORES[z][1] if c not in per_model]
    kinds = {SCORES[s][0] for s in per_model}
    need_features = bool(kinds & {"features", "unlabelled"})
    need_logits = "logits" in kinds
    cache = cache if cache is not None else {}

    rows = []
    bar = tqdm(items, desc="rank", unit="model", disable=not progress)
    for name, entry in bar:
        row = {"model": name}
        errors = {}
        model = None
        try:
            model = entry() if (callable(entry) and not isinstance(entry, torch.nn.Module)) else entry
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"model {name!r} is not an nn.Module (got {type(model).__name__})")
            dev = device if device is not None else next(model.parameters()).device
            model.to(dev)
            entry_cache = cache.setdefault(name, {})
            feats = entry_cache.get("features")
            logits = entry_cache.get("logits")
            if (need_features and feats is None) or (need_logits and logits is None):
                bar.set_postfix_str(f"{name}: features")
                t0 = time.perf_counter()
                feats, logits = _extract(model, x, features_fn, batch_size, dev, need_logits)
                row["features_s"] = time.perf_counter() - t0
                entry_cache["features"], entry_cache["logits"] = feats, logits
            elif need_features or need_logits:
                row["features_s"] = 0.0
            for s in per_model:
                kind, fn = SCORES[s]
                kw = score_kwargs.get(s, {})
                bar.set_postfix_str(f"{name}: {s}")
                t0 = time.perf_counter()
                try:
                    if kind == "features":
                        val = fn(feats, y, **kw)
                    elif kind == "unlabelled":
                        val = fn(feats, **kw)
                    elif kind == "logits":
                        val = fn(logits, y, **kw)
                    elif kind == "gradients":
                        grad, row["gradients_s"] = _lgc_gradients(model, x, num_classes, dev, kw, seed, entry_cache)
                        t0 = time.perf_counter()  # the score's own time: the correlation
                        val = _lgc_correlate(grad, y, kw)
                    elif s == "num_params":
                        val = prior.model_size(model, **kw)
                    else:
                        val = prior.source_accuracy(value=source_accuracy[name])
                except Exception as e:  # noqa: BLE001 (reported per on_error)
                    if on_error == "raise":
                        raise ScoreError(f"score {s!r} failed on model {name!r}: {type(e).__name__}: {e}") from e
                    val, errors[s] = float("nan"), f"{type(e).__name__}: {e}"
                row[s] = float(val)
                row[s + "_s"] = time.perf_counter() - t0
        except ScoreError:
            raise
        except Exception as e:  # noqa: BLE001
            if on_error == "raise":
                raise
            errors["model"] = f"{type(e).__name__}: {e}"
            for s in per_model:
                row.setdefault(s, float("nan"))
        finally:
            del model
        if errors:
            row["errors"] = errors
        rows.append(row)
    bar.close()

    for z in scores:
        if z not in ZOO_SCORES:
            continue
        combiner, weights = ZOO_SCORES[z]
        comps = {c: {r["model"]: r[c] for r in rows} for c in weights}
        finite = all(math.isfinite(v) for c in comps.values() for v in c.values())
        combined = combiner(comps, weights) if finite else {r["model"]: float("nan") for r in rows}
        for r in rows:
            r[z] = combined[r["model"]]
            r[z + "_s"] = sum(r[c + "_s"] for c in weights)
    # components computed only for a zoo score are not reported as scores
    for r in rows:
        for c in per_model:
            if c not in scores:
                r.pop(c, None)
                r.pop(c + "_s", None)
    for s in scores:
        _add_ranks(rows, s)
    return RankingTable(rows=rows, scores=scores, info={"num_samples": int(x.shape[0]), "num_classes": num_classes})


def _add_ranks(rows, score):
    """rank_<score>: 1 + the number of models with a strictly higher score (ties share a rank; NaN last)."""
    vals = [r[score] for r in rows]
    for r, v in zip(rows, vals):
        if math.isnan(v):
            r["rank_" + score] = len(rows)
        else:
            r["rank_" + score] = 1 + sum(1 for u in vals if not math.isnan(u) and u > v)
