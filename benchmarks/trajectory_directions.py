"""Where does real fine-tuning move the backbone after the warm-up, and can a cheap model see that direction?

For a long MiniZoo run (predict_long's recipe), the real backbone displacement Δ_t = w_t − w_K after the K warm-up
steps is compared with the directions a predictor could know at w_K:
- u = w_K − w_0, the warm-up's own displacement, and u_late = w_K − w_{K/2}, its second half's;
- the full-training-set gradient g_K and torch's momentum buffer at w_K;
- the displacement of the head-aware model linearized at w_K (linearized_long.LinearizedRun, fixed feature norm),
  run on all N samples with the real run's minibatches, and on the predictor's subset (subset="auto", the
  noise-matched batch size).
Printed and saved: |Δ_t|, the cosines, the energy share of the top singular directions of {Δ_t} (is the real
trajectory low-rank?), and the share of |Δ_L|² inside the span of each set of known directions. A second-order
model restricted to a few directions (the kernel's change along them) can only help if that share is high.

    python -m benchmarks.trajectory_directions --runs convnet_pendigits:texture_orient:0.003:64:0.9:625
"""
import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import cpu_model
from benchmarks.linearized_long import along_direction, backbone_names, backbone_weights
from benchmarks.predict_long import task_data
from zoo_kernels import zoo
from zoo_kernels.predict import auto_subset, subset_batch_size
from zoo_kernels.zoo.finetune import _batches

SPANS = (("u",), ("u_late",), ("lin_sub",), ("u", "lin_sub"), ("u", "u_late", "buf", "g", "lin_sub"), ("lin_all",),
         ("u", "lin_all"))


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def span_share(vs, target):
    """The share of |target|² inside the span of the vectors vs."""
    Q = torch.linalg.qr(torch.stack(vs, 1))[0]
    return float((Q.T @ target).square().sum() / target.square().sum())


def flat(ts):
    return torch.cat([t.detach().flatten().double() for t in ts])


def study(model_name, task, lr, batch, momentum, steps, K=100, linearized_all=True):
    C, x, y = task_data(task)
    N = len(x)
    model = zoo.load_model(model_name, num_classes=C, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order = _batches(N, batch, steps, torch.Generator().manual_seed(0))  # predict_long's real run

    def sgd(m, o, batches):
        m.train()
        for idx in batches:
            loss = F.cross_entropy(m(x[idx]), y[idx])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    def fork():
        m2 = copy.deepcopy(model)
        o2 = torch.optim.SGD(m2.parameters(), lr=lr, momentum=momentum)
        o2.load_state_dict(opt.state_dict())
        return m2, o2

    names = backbone_names(model)
    w = lambda m: backbone_weights(m, names).double()  # noqa: E731
    w0 = w(model)
    sgd(model, opt, order[:K // 2])
    w_half = w(model)
    sgd(model, opt, order[K // 2:K])
    wK = w(model)
    known = {"u": wK - w0, "u_late": wK - w_half}
    if momentum:
        known["buf"] = -flat(opt.state[model.get_parameter(n)]["momentum_buffer"] for n in names)
    model.eval()
    params = [model.get_parameter(n) for n in names]
    g = sum(flat(torch.autograd.grad(F.cross_entropy(model(x[s:s + 500]), y[s:s + 500], reduction="sum") / N,
                                     params)) for s in range(0, N, 500))
    known["g"] = -g
    at = sorted(set(range(K + 50, steps, 50)) | {steps})
    real, (m2, o2) = {}, fork()
    for s in range(K, steps):
        sgd(m2, o2, order[s:s + 1])
        if s + 1 in at:
            real[s + 1] = w(m2) - wK

    # the linearized model's displacement on the predictor's subset, and on all N with the real run's batches
    M = auto_subset(N, C)
    B_M = subset_batch_size(batch, N, M)  # reported; along_direction derives the same
    known["lin_sub"] = along_direction("linear-subset", model, opt, None, x, y, order[K:steps]).double()
    if linearized_all:
        known["lin_all"] = along_direction("linear", model, opt, None, x, y, order[K:steps]).double()
    D = torch.stack([real[t] for t in at])
    sv2 = torch.linalg.svdvals(D).square()
    end = real[steps]
    return {
        "model": model_name, "task": task, "lr": lr, "batch_size": batch, "momentum": momentum, "steps": steps,
        "K": K, "M": M, "B_M": B_M, "n_params": int(end.numel()),
        "t": at, "norm": [float(real[t].norm()) for t in at],
        "cos_with_end": [cos(real[t], end) for t in at],
        "cos_known": {k: [cos(real[t], v) for t in at] for k, v in known.items()},
        "top_energy_share": (sv2.cumsum(0) / sv2.sum()).tolist()[:4],
        "span_share_end": {"+".join(s): span_share([known[k] for k in s], end)
                           for s in SPANS if all(k in known for k in s)},
        "span_share_first": {"+".join(s): span_share([known[k] for k in s], real[at[0]])
                             for s in SPANS if all(k in known for k in s)},
    }


def markdown(rows, meta):
    out = [f"# Real backbone displacement after the warm-up against the directions known at w_K ({meta['date']})", "",
           f"`python -m benchmarks.trajectory_directions` on {meta['cpu']}, torch {meta['torch']}, one thread. "
           "Δ_t = w_t − w_K of the real run (backbone only), K = 100. u = w_K − w_0; g, buf: minus the full-set "
           "gradient and minus the momentum buffer at w_K; lin_all / lin_sub: the displacement of the head-aware "
           "model linearized at w_K after the same number of steps, on all N samples / on the predictor's subset.",
           "", "| run | top-1 / top-2 energy share of {Δ_t} | cos(Δ_150, Δ_L) | cos(Δ_L, ·): u, u_late, g, buf, lin_sub, "
           "lin_all | share of |Δ_L|² in span: " + ", ".join("+".join(s) for s in SPANS) + " |",
           "|---|---|---|---|---|"]
    for r in rows:
        c = r["cos_known"]
        cl = ", ".join(f"{c[k][-1]:+.2f}" if k in c else "–"
                       for k in ("u", "u_late", "g", "buf", "lin_sub", "lin_all"))
        sh = ", ".join(f"{r['span_share_end']['+'.join(s)]:.2f}" if "+".join(s) in r["span_share_end"] else "–"
                       for s in SPANS)
        out.append(f"| {r['model']} → {r['task']}, lr {r['lr']}, B {r['batch_size']}, m {r['momentum']}, "
                   f"{r['steps']} steps | {r['top_energy_share'][0]:.3f} / {r['top_energy_share'][1]:.3f} | "
                   f"{r['cos_with_end'][0]:+.2f} | {cl} | {sh} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="model:task:lr:batch:momentum:steps")
    ap.add_argument("--no-linearized-all", action="store_true", help="skip the all-N linearized run (minutes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.runs:
        m, t, lr, b, mom, steps = spec.split(":")
        t0 = time.perf_counter()
        rows.append(study(m, t, float(lr), int(b), float(mom), int(steps), linearized_all=not args.no_linearized_all))
        r = rows[-1]
        print(f"[{time.perf_counter() - t0:6.0f}s] {spec}: top-1 share {r['top_energy_share'][0]:.3f}, "
              f"span shares {json.dumps({k: round(v, 3) for k, v in r['span_share_end'].items()})}", flush=True)
    stamp = time.strftime("%Y-%m-%d")
    meta = {"date": stamp, "cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads}
    base = os.path.join(args.out, f"trajectory-directions-cpu-{stamp}{args.tag}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
