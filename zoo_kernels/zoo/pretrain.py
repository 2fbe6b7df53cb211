"""Pre-train the MiniZoo experts and write their checkpoints.

    python -m zoo_kernels.zoo.pretrain                      # all 18 experts (5 domains + multi) x 3 archs
    python -m zoo_kernels.zoo.pretrain --models convnet_latin resnet_multi
    python -m zoo_kernels.zoo.pretrain --out /tmp/ckpt --device cuda

Recipe (every expert): AdamW (lr 2e-3, weight decay 5e-4), batch 64, cosine decay to 0, on ``--n-train`` images
per source domain (10000, generated from seed 0; the validation split is 1000 images of another seed).
Single-domain experts train ``--epochs`` (6) epochs; the multi-domain expert trains on the union of the five
domains for ``--multi-epochs`` (3) epochs with one softmax per domain (a joint head of 142 outputs whose
logits outside the sample's domain are masked), as the multi-domain expert of Deshpande et al. Weights are
stored in float16 (``nets.save_checkpoint``); the validation accuracy is measured after the float16 round trip.
The manifest (``checkpoints/manifest.json``) records per model: file SHA-256, parameters, source validation
accuracy, and training seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from . import data as D
from . import nets as M
from .api import CKPT_DIR, DOMAINS, expert_names, name_seed, sha256_file, split_name

def domain_offsets() -> dict[str, tuple[int, int]]:
    """Class range of each domain inside the multi-domain expert's joint head."""
    out, o = {}, 0
    for d in DOMAINS:
        c = D.SOURCES[d][0]
        out[d] = (o, o + c)
        o += c
    return out


def _train(model, x, y, mask, *, epochs, lr, wd, batch, seed, device, log):
    """AdamW + cosine; ``mask`` [N, C] bool (None: all classes) masks logits outside the sample's domain."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    n = x.shape[0]
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    step = 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot, correct = 0.0, 0
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            xb, yb = x[idx].to(device), y[idx].to(device)
            logits = model(xb)
            if mask is not None:
                logits = logits.masked_fill(~mask[idx].to(device), float("-inf"))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        log(f"    epoch {ep + 1}/{epochs}: loss {tot / n:.3f} train-acc {correct / n:.3f}")
    return model


@torch.no_grad()
def _accuracy(model, x, y, mask=None, device="cpu", batch=512):
    model.eval()
    correct = 0
    for s in range(0, x.shape[0], batch):
        logits = model(x[s:s + batch].to(device))
        if mask is not None:
            logits = logits.masked_fill(~mask[s:s + batch].to(device), float("-inf"))
        correct += int((logits.argmax(1).cpu() == y[s:s + batch]).sum())
    return correct / x.shape[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None, help="expert names (default: all 18)")
    ap.add_argument("--out", default=CKPT_DIR)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--multi-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = args.models or expert_names()
    for nm in names:
        if split_name(nm)[1] == "random":
            raise SystemExit("random-init controls have no checkpoint (they are built from a seed)")
    os.makedirs(args.out, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731

    t0 = time.time()
    need = sorted({d for nm in names for d in ([split_name(nm)[1]] if split_name(nm)[1] != "multi" else DOMAINS)})
    train, val = {}, {}
    for d in need:
        ts = time.time()
        train[d] = D.make_source(d, args.n_train, seed=0, split="train")
        val[d] = D.make_source(d, args.n_val, seed=0, split="val")
        log(f"data {d}: {args.n_train}+{args.n_val} images in {time.time() - ts:.1f}s")
    offs = domain_offsets()
    total_classes = sum(D.SOURCES[d][0] for d in DOMAINS)

    def joint(split):
        xs, ys, ms = [], [], []
        for d in DOMAINS:
            x, y = split[d]
            lo, hi = offs[d]
            m = torch.zeros(x.shape[0], total_classes, dtype=torch.bool)
            m[:, lo:hi] = True
            xs.append(x), ys.append(y + lo), ms.append(m)
        return torch.cat(xs), torch.cat(ys), torch.cat(ms)

    manifest_path = os.path.join(args.out, "manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {"models": {}}
    for nm in names:
        arch, dom = split_name(nm)
        ts = time.time()
        if dom == "multi":
            x, y, mask = joint(train)
            xv, yv, maskv = joint(val)
            c, epochs = total_classes, args.multi_epochs
        else:
            (x, y), (xv, yv) = train[dom], val[dom]
            mask = maskv = None
            c, epochs = D.SOURCES[dom][0], args.epochs
        model = M.build(arch, c, seed=name_seed(nm))
        log(f"{nm}: {M.num_params(model)} params (+head {c}), {x.shape[0]} images x {epochs} epochs on {device}")
        _train(model, x, y, mask, epochs=epochs, lr=args.lr, wd=args.wd, batch=args.batch, seed=name_seed(nm),
               device=device, log=log)
        secs = time.time() - ts
        model.cpu()
        acc32 = _accuracy(model, xv, yv, maskv)
        path = os.path.join(args.out, f"{nm}.pt")
        meta = {"name": nm, "arch": arch, "domain": dom, "epochs": epochs, "n_train": int(x.shape[0]),
                "lr": args.lr, "weight_decay": args.wd, "batch": args.batch, "train_seconds": round(secs, 1),
                "device": device, "threads": args.threads, "torch": str(torch.__version__),
                "data_version": D.DATA_VERSION, "freetype": D.freetype_version()}
        if dom == "multi":
            meta["domain_offsets"] = {d: list(v) for d, v in offs.items()}
        M.save_checkpoint(path, model, arch, meta)
        loaded, _ = M.load_checkpoint(path, expect_arch=arch)
        acc16 = _accuracy(loaded, xv, yv, maskv)
        log(f"  {nm}: val acc {acc32:.4f} (float32) {acc16:.4f} (float16 checkpoint), {secs:.1f}s")
        manifest["models"][nm] = {"file": f"{nm}.pt", "sha256": sha256_file(path), "bytes": os.path.getsize(path),
                                  "arch": arch, "domain": dom, "params": M.num_params(model),
                                  "num_classes": c, "source_val_acc": round(acc16, 4),
                                  "source_val_acc_fp32": round(acc32, 4), "train_seconds": round(secs, 1),
                                  "epochs": epochs, "n_train": int(x.shape[0]), "device": device,
                                  "host": platform.machine(), "threads": args.threads}
        manifest.update({"format": M.CKPT_FORMAT, "data_version": D.DATA_VERSION, "freetype": D.freetype_version()})
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
    log(f"done: {len(names)} models in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
