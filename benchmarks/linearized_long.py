"""The warm start's linearization error on the long runs, apart from its sketch and subset.

    python -m benchmarks.linearized_long --compare benchmarks/results/predict-long-cpu-2026-11-27-warmup-auto-r8-seed0.json

The recommended prediction (zoo_kernels.warmstart, method="recommended") makes two approximations after its K real
steps: it linearizes the backbone at w_K (the head stays exact), and it integrates that model through a rank-8,
k = 512 sketch on a subset of M = max(N/20, 20 per class) samples. This benchmark removes the second: it runs the
same model *exactly*, in weight space, on all N samples:

    φ(x) = φ_K(x) + J_φ(w_K)(w − w_K)     (forward-mode jvp; no sketch, no subset)
    fixed feature norm: φ ← ‖φ_K(x)‖ φ / ‖φ‖;  logits = W φ + b (the head exact)

The first K steps are the real run's own (the recipe's SGD, its minibatch stream, head of seed 0); the linearized
model then continues with the *same minibatches* and the optimizer's momentum buffers, so the SGD noise realization
is the real run's and only the linearization differs. Its full-training-set loss is measured at the real run's
evaluation steps. Per target, three errors: exact linearization vs real (the linearization error), the saved
prediction vs real (the total error), and the prediction vs the exact linearization (the sketch + subset error).
Writes benchmarks/results/linearized-long-cpu-<date><tag>.{json,md} (-gpu- with --device cuda). The real targets
come from the real run cached on this machine, whose warm-up the linearized run replays.
"""
import argparse
import copy
import datetime
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from benchmarks.predict_long import cached_real_run, p90, rel, targets, task_data
from zoo_kernels import zoo
from zoo_kernels.calibrate import _last_linear, feature_model
from zoo_kernels.predict import auto_subset, subset_batch_size, subset_indices
from zoo_kernels.zoo.finetune import _batches, evaluate


class LinearizedRun:
    """SGD on the head-aware model linearized at the weights of `model` (see the module doc), in weight space."""

    def __init__(self, model, optimizer, x, y, feature_norm="fixed", chunk=128, order=1, along=None):
        """along: a direction v in the backbone's weights (flat, in named_parameters order): order 2 then keeps
        the second-order term along v only (see _z)."""
        self.x, self.y, self.chunk, self.norm, self.order = x, y, chunk, feature_norm, order
        self.feat = feature_model(model)  # the head's input; functional_call puts the model's own weights in
        head = model.get_submodule(_last_linear(model))
        self.names = [n for n, _ in self.feat.named_parameters()]
        self.w_K = [model.get_parameter(n) for n in self.names]
        self.delta = [torch.zeros_like(p, requires_grad=True) for p in self.w_K]
        self.W = head.weight.detach().clone().requires_grad_(True)
        self.b = head.bias.detach().clone().requires_grad_(True)
        lr, mom = optimizer.defaults["lr"], optimizer.defaults["momentum"]
        self.opt = torch.optim.SGD([self.W, self.b] + self.delta, lr=lr, momentum=mom)
        old = [head.weight, head.bias] + self.w_K
        for new, p in zip([self.W, self.b] + self.delta, old):  # carry the momentum buffers
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                self.opt.state[new]["momentum_buffer"] = buf.detach().clone()
        self.v = None
        if along is not None:
            if order != 2:
                raise ValueError("`along` needs order=2")
            v = along.detach().to(self.w_K[0].dtype) / along.norm()
            self.v = dict(zip(self.names, (t.view_as(p) for t, p in zip(v.split([p.numel() for p in self.w_K]),
                                                                         self.w_K))))
        self._expand_here()

    @torch.no_grad()
    def _expand_here(self):
        """φ_K and the fixed norms ← the network's features at the expansion point w_K."""
        self.phi_K = torch.cat([self._features(self.x[s:s + self.chunk]) for s in range(0, len(self.x), self.chunk)])
        self.norm_K = self.phi_K.norm(dim=1, keepdim=True)
        if self.v is not None:  # ∂²φ[v, v] on all samples (constant: the expansion point does not move)
            params = self._params()[0]
            hvv = []
            for s in range(0, len(self.x), self.chunk):
                f = lambda p: self._features(self.x[s:s + self.chunk], p)  # noqa: E731
                hvv.append(jvp(lambda p: jvp(f, (p,), (self.v,))[1], (params,), (self.v,))[1])
            self.hvv = torch.cat(hvv)

    def _features(self, x, params=None):
        """φ(x) at `params` (by name; default the model's weights w_K, with their autograd graph)."""
        return functional_call(self.feat, dict(zip(self.names, self.w_K)) if params is None else params, (x,))

    @torch.no_grad()
    def relinearize(self):
        """Move the expansion point to the model's own current weights: w_K ← w_K + Δ, Δ ← 0, φ_K and the fixed
        norms ← the network's features there (the momentum buffers, in weight space, are kept)."""
        for p, d in zip(self.w_K, self.delta):
            p.add_(d)
            d.zero_()
        self._expand_here()

    def _params(self):
        return ({n: p.detach() for n, p in zip(self.names, self.w_K)},
                {n: d.detach() for n, d in zip(self.names, self.delta)})

    def _z(self, idx):
        """Features of the samples idx, no autograd graph: φ_K + J_φ Δ (order 1), + ½ ∂²φ[Δ, Δ] (order 2)."""
        params, tangents = self._params()
        f = lambda p: self._features(self.x[idx], p)  # noqa: E731
        if self.order == 1:
            return self.phi_K[idx] + jvp(f, (params,), (tangents,))[1]
        if self.v is not None:  # along v only: φ_K + JΔ + a ∂²φ[v, Δ] − ½ a² ∂²φ[v, v], a = ⟨v, Δ⟩ (|v| = 1)
            jd, hvd = jvp(lambda p: jvp(f, (p,), (tangents,))[1], (params,), (self.v,))
            a = sum(float((self.v[n] * tangents[n]).sum()) for n in self.names)
            self._along = (idx, hvd, a)  # for the gradient of the same batch
            return self.phi_K[idx] + jd + a * hvd - 0.5 * a * a * self.hvv[idx]
        jd, hdd = jvp(lambda p: jvp(f, (p,), (tangents,))[1], (params,), (tangents,))
        return self.phi_K[idx] + jd + 0.5 * hdd

    def _backbone_grads(self, idx, u):
        """∂ℓ/∂Δ given u = ∂ℓ/∂φ: J_φ(w_K)ᵀ u (order 1), + (∂²φ[Δ, ·])ᵀ u (order 2: the Jacobian at w_K + Δ to first
        order)."""
        if self.order == 1:
            return torch.autograd.grad(self._features(self.x[idx]), self.w_K, u)  # at w_K
        params, tangents = self._params()
        g = lambda p: grad(lambda q: (self._features(self.x[idx], q) * u).sum())(p)  # noqa: E731
        if self.v is not None:  # (J + a ∂²φ[v, ·])ᵀu + v · uᵀ(∂²φ[v, Δ] − a ∂²φ[v, v])
            done, hvd, a = self._along
            assert done is idx, "_z(idx) must come first"
            g0, g1 = jvp(g, (params,), (self.v,))
            s = float((u * (hvd - a * self.hvv[idx])).sum())
            return [g0[n] + a * g1[n] + s * self.v[n] for n in self.names]
        g0, g1 = jvp(g, (params,), (tangents,))
        return [g0[n] + g1[n] for n in self.names]

    def _logits(self, z, idx):
        phi = z * (self.norm_K[idx] / z.norm(dim=1, keepdim=True)) if self.norm == "fixed" else z
        return phi @ self.W.T + self.b

    def step(self, idx):
        z = self._z(idx).requires_grad_(True)
        loss = F.cross_entropy(self._logits(z, idx), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for d, g in zip(self.delta, self._backbone_grads(idx, z.grad)):
            d.grad = g
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self):
        """(mean cross-entropy, accuracy) of the linearized model on all N samples."""
        loss, correct = 0.0, 0
        for s in range(0, len(self.x), self.chunk):
            idx = torch.arange(s, min(s + self.chunk, len(self.x)))
            logits = self._logits(self._z(idx), idx)
            loss += float(F.cross_entropy(logits, self.y[idx], reduction="sum"))
            correct += int((logits.argmax(1) == self.y[idx]).sum())
        return loss / len(self.x), correct / len(self.x)


def backbone_names(model):
    """The names of the backbone's parameters (those feeding the head's input)."""
    return [n for n, _ in feature_model(model).named_parameters()]


def backbone_weights(model, names=None):
    """The backbone's weights, flat, in backbone_names order (a copy)."""
    return torch.cat([model.get_parameter(n).detach().flatten() for n in names or backbone_names(model)])


def along_direction(rule, model, opt, w_0, x, y, batches, feature_norm="fixed"):
    """The direction of `--along`: "warmup", w_K − w_0 (w_0: the backbone's weights before the warm-up); "real",
    w_L − w_K of the real run continued from the model and optimizer at w_K over `batches` (an oracle); "linear",
    the displacement of the linearized model (LinearizedRun, order 1) over the same batches; "linear:N", that
    direction refined N times: v ← the displacement of the second-order model along v over the same batches;
    "linear-subset", the linearized model's on the predictor's subset (subset="auto", noise-matched batch size)."""
    if rule == "warmup":
        return backbone_weights(model) - w_0
    if rule == "linear-subset":  # as the predictor sees it: subset="auto", the noise-matched batch size
        N, C = len(x), int(y.max()) + 1
        M = auto_subset(N, C)
        sub = subset_indices(N, M, 0).to(x.device)
        x, y = x[sub], y[sub]
        batches = _batches(M, subset_batch_size(len(batches[0]), N, M), len(batches), torch.Generator().manual_seed(1))
    if rule.startswith("linear"):
        v = None
        for _ in range(1 + int(rule.partition(":")[2] or 0)):
            run = LinearizedRun(model, opt, x, y, feature_norm, order=1 if v is None else 2, along=v)
            for idx in batches:
                run.step(idx)
            v = torch.cat([d.detach().flatten() for d in run.delta])
        return v
    twin = copy.deepcopy(model).train()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=opt.defaults["lr"], momentum=opt.defaults["momentum"])
    twin_opt.load_state_dict(opt.state_dict())
    for idx in batches:
        loss = F.cross_entropy(twin(x[idx]), y[idx])
        twin_opt.zero_grad(set_to_none=True)
        loss.backward()
        twin_opt.step()
    return backbone_weights(twin) - backbone_weights(model)


def linearized_run(model_name, C, x, y, lr, batch, momentum, steps, K, horizon, real_t, feature_norm, degree=1,
                   relin=(), along=None):
    """(steps, losses, accuracies, seconds, (t, replayed loss)) of the recipe's run of `steps` steps on (x, y), C
    classes, whose steps from K on are the linearized model's, up to horizon × steps; (t, loss) is the replayed
    warm-up at a step t ≤ K that the real run recorded. relin: the steps (> K) before which it is re-linearized at
    its own weights. along: None, or a rule of along_direction (degree 2 along that direction only)."""
    N = len(x)
    model = zoo.load_model(model_name, num_classes=C, seed=0).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order = _batches(N, batch, int(steps * horizon), torch.Generator().manual_seed(0))  # the real run's prefix
    w_0 = backbone_weights(model)
    t0 = time.perf_counter()
    check = max(t for t in real_t if t <= K)  # a step where the real run's loss was recorded
    model.train()
    for s in range(K):
        if s == check:
            replayed = evaluate(model, x, y, device=x.device)[0]
        loss = F.cross_entropy(model(x[order[s]]), y[order[s]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if check == K:
        replayed = evaluate(model, x, y, device=x.device)[0]
    v = None if along is None else along_direction(along, model, opt, w_0, x, y, order[K:steps], feature_norm)
    lin = LinearizedRun(model, opt, x, y, feature_norm, order=degree, along=v)
    at = sorted({t for t in real_t if t >= K} | set(range(steps, len(order) + 1, 50)))
    ts, ls, acc = [], [], []
    for s in range(K, len(order) + 1):
        if s in at:
            ell, a = lin.evaluate()
            ts.append(s), ls.append(ell), acc.append(a)
            if not math.isfinite(ell):
                break
        if s < len(order):
            if s in relin:
                lin.relinearize()
            lin.step(order[s])
    return np.asarray(ts), np.asarray(ls), np.asarray(acc), time.perf_counter() - t0, (check, replayed)


def relinearization_steps(rule, K, last):
    """The steps in (K, last] before which the model is re-linearized: every P steps ("P"), at 2K, 4K, ...
    ("doubling"), or none ("0")."""
    if rule == "doubling":
        return {K * 2 ** j for j in range(1, 64) if K and K * 2 ** j <= last}
    P = int(rule)
    return set(range(K + P, last + 1, P)) if P > 0 else set()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", help="a predict_long JSON with a head-aware+warmK method (required to run)")
    ap.add_argument("--warmup", type=int, default=100, help="K, the real steps before linearizing")
    ap.add_argument("--feature-norm", choices=("fixed", "linear"), default="fixed")
    ap.add_argument("--horizon", type=float, default=1.5)
    ap.add_argument("--order", type=int, choices=(1, 2), default=1,
                    help="2: the backbone's second-order Taylor model at w_K instead of its linearization")
    ap.add_argument("--relinearize", default="0", metavar="P",
                    help="re-linearize at the linearized model's own weights every P steps after K, or at 2K, 4K, "
                         "8K, ... with 'doubling' (0: never)")
    ap.add_argument("--along", help="with --order 2: the second-order term along one direction only: 'warmup' "
                                    "(w_K − w_0), 'real' (the real run's w_L − w_K, an oracle), 'linear' (the "
                                    "linearized model's), 'linear:N' (refined N times), 'linear-subset' (the linearized "
                                    "model's on the predictor's subset): along_direction")
    ap.add_argument("--only", type=int, nargs="*", help="indices of the records to run (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the runs compute (cuda: deterministic kernels, no TF32; "
                                                     "its real runs differ from a CPU's, so the cache is per device)")
    ap.add_argument("--cache", default=".benchmarks/predict_long_real")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--rescore", metavar="JSON", help="rebuild the tables of a saved result and its .md (no run)")
    ap.add_argument("--real-from-cache", action="store_true",
                    help="with --rescore: take the real targets from this machine's cached real runs (checked "
                         "against the replayed warm-up's loss), as runs made now do")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device != "cpu":  # reproducible runs there: the real run and its replay must be the same computation
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.along and (args.order != 2 or not (args.along in ("warmup", "real", "linear", "linear-subset")
                                                or (args.along.startswith("linear:")
                                                    and args.along[7:].isdigit()))):
        ap.error("--along needs --order 2 and one of warmup, real, linear, linear:N, linear-subset")
    if args.rescore:
        saved = json.load(open(args.rescore))
        if args.real_from_cache:  # rows saved before the real targets came from this machine's cached run
            for row in saved["rows"]:
                C, x, y = task_data(row["task"])
                t, loss, acc, _ = cached_real_run(args.cache, row["model"], row["task"], x, y, C, row["lr"],
                                                  row["batch"], row["momentum"], row["steps"])
                check = row["check"]
                if abs(float(loss[t.tolist().index(check["step"])]) - check["replayed"]) > 1e-6 * check["replayed"]:
                    raise SystemExit(f"{row['model']} -> {row['task']} lr {row['lr']}: the cached real run is not the "
                                     "one the linearized run replayed (another machine's?)")
                row.setdefault("real_compare_file", row["real"])
                row["real"] = targets(t, loss, acc, 0.9)
            with open(args.rescore, "w") as fh:
                json.dump(saved, fh)
        md, path = markdown(saved["rows"], saved["meta"]["K"]), args.rescore[:-len(".json")] + ".md"
        old = open(path).read() if os.path.exists(path) else ""
        with open(path, "w") as fh:  # keep a hand-written preamble
            fh.write((old[:old.index("| comparison |")] if "| comparison |" in old else "") + md + "\n")
        print(md)
        return
    if not args.compare:
        ap.error("--compare is required (or --rescore)")
    saved = json.load(open(args.compare))
    method = f"head-aware+warm{args.warmup}" if args.warmup else "head-aware"
    start, rows = time.time(), []
    stamp = datetime.date.today().isoformat()
    base = os.path.join(args.out, f"linearized-long-{'cpu' if args.device == 'cpu' else 'gpu'}-{stamp}{args.tag}")
    for i, rec in enumerate(saved["records"]):
        if args.only and i not in args.only:
            continue
        C, x, y = task_data(rec["task"])
        x, y = x.to(args.device), y.to(args.device)
        real_t, real_l, real_a, _ = cached_real_run(args.cache, rec["model"], rec["task"], x, y, C, rec["lr"],
                                                    rec["batch"], rec["momentum"], rec["steps"])
        # the real targets of this machine's run: the CPU's rounding makes some runs differ between machines, and
        # the linearized run replays this machine's warm-up (the compare file's may come from another machine)
        real_T = targets(real_t, real_l, real_a, 0.9)
        steps = rec["steps"]
        ts, ls, acc, sec, (t_chk, l_chk) = linearized_run(
            rec["model"], C, x, y, rec["lr"], rec["batch"], rec["momentum"], steps, args.warmup, args.horizon,
            real_t.tolist(), args.feature_norm, args.order, relinearization_steps(args.relinearize, args.warmup,
                                                                                 int(steps * args.horizon)),
            args.along)
        l_real = float(real_l[real_t.tolist().index(t_chk)])  # the replayed warm-up must be the real run
        pre = real_t < args.warmup  # the joined curve: the real run's before step K (as the warm start's)
        lin_T = targets(np.concatenate([real_t[pre], ts]), np.concatenate([real_l[pre], ls]),
                        np.concatenate([real_a[pre], acc]), 0.9)
        row = {"model": rec["model"], "task": rec["task"], "lr": rec["lr"], "batch": rec["batch"],
               "momentum": rec["momentum"], "steps": steps, "seconds": sec, "real": real_T,
               "real_compare_file": rec["real"],
               "linearized": lin_T, "predicted": rec["methods"].get(method, {}).get("T"),
               "check": {"step": t_chk, "replayed": l_chk, "real": l_real},
               "lin_t": ts.tolist(), "lin_loss": [round(float(v), 5) for v in ls],
               "lin_acc": [round(float(v), 5) for v in acc]}
        rows.append(row)
        print(f"[{time.time() - start:5.0f}s] {rec['model']} -> {rec['task']} lr={rec['lr']} B={rec['batch']} "
              f"m={rec['momentum']}: {sec:.0f}s, replayed loss at {t_chk} {l_chk:.4f} (real {l_real:.4f}) | real "
              + "/".join("-" if v is None else f"{v:.0f}" for v in real_T.values())
              + " | linearized " + "/".join("-" if v is None else f"{v:.0f}" for v in lin_T.values())
              + " | predicted " + "/".join("-" if v is None else f"{v:.0f}" for v in (row["predicted"] or {}).values()),
              flush=True)
        meta = {"date": stamp, "compare": args.compare, "K": args.warmup, "order": args.order, "along": args.along,
                "relinearize": args.relinearize,
                "feature_norm": args.feature_norm, "device": args.device,
                "threads": args.threads, "load_average": list(os.getloadavg()), "wall_s": time.time() - start}
        with open(base + ".json", "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh)
    md = markdown(rows, args.warmup)
    with open(base + ".md", "w") as fh:
        fh.write(md + "\n")
    print(md)


def errors(rows, K, a, b, only=None):
    """|T_a − T_b| / T_b and the signed (T_a − T_b) / T_b over the targets the real run reaches after step K
    (only the target named `only`, if given)."""
    abs_, signed = [], []
    for r in rows:
        for key, t_real in r["real"].items():
            if t_real is None or t_real <= K or r[a] is None or r[b] is None or only not in (None, key):
                continue
            ta, tb = r[a].get(key), r[b].get(key)
            if tb is None:
                continue
            abs_.append(rel(ta, tb))
            if ta is not None:
                signed.append((ta - tb) / tb)
    return abs_, signed


def markdown(rows, K):
    out = ["| comparison | targets | median | p90 | within 10 % | within 20 % | median signed |", "|---|---|---|---|---|---|---|"]
    for label, a, b in (("exact linearization at w_K vs real (linearization error)", "linearized", "real"),
                        ("the saved prediction vs real (total error)", "predicted", "real"),
                        ("the saved prediction vs exact linearization (sketch + subset error)", "predicted",
                         "linearized")):
        e, s = errors(rows, K, a, b)
        if e:
            e = np.asarray(e)
            out.append(f"| {label} | {len(e)} | {np.median(e):.3f} | {p90(e):.3f} | {np.mean(e <= 0.1):.2f} | "
                       f"{np.mean(e <= 0.2):.2f} | {np.median(s):+.3f} |")
    keys = list(rows[0]["real"])
    out += ["", "Per target, median error (targets): " + "; ".join(
        f"{label} " + ", ".join(f"{k} {np.median(e):.3f} ({len(e)})" for k in keys
                                for e in [errors(rows, K, a, "real", only=k)[0]] if e)
        for label, a in (("exact linearization vs real:", "linearized"), ("the saved prediction vs real:", "predicted")))]
    f = lambda d: "/".join("-" if v is None else v if isinstance(v, str) else f"{v:.0f}"  # noqa: E731
                           for v in (d or {}).values())
    out += ["", "| model -> task | lr | B | m | steps | real (steps per target) | exact linearization (w: reached in the warm-up) | "
            "saved prediction | replayed warm-up: loss / real |", "|---|---|---|---|---|---|---|---|---|"]
    warm = lambda r: {k: ("w" if r["real"][k] is not None and r["real"][k] <= K else v)  # noqa: E731
                      for k, v in r["linearized"].items()}
    out += [f"| {r['model']} -> {r['task']} | {r['lr']} | {r['batch']} | {r['momentum']} | {r['steps']} | "
            f"{f(r['real'])} | {f(warm(r))} | {f(r['predicted'])} | "
            f"{r['check']['replayed']:.4f} / {r['check']['real']:.4f} at {r['check']['step']} |" for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    main()
