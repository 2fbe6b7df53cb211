"""`make demo`: an end-to-end sketch of a small CNN's per-sample Jacobian, checked against torch.func.

Prints the build, the time of each method, and how well the sketched NTK Gram (S S^T) matches the exact
empirical NTK (J J^T from torch.func) in Frobenius error and in its top eigenvalues.
"""
import argparse
import math
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from . import build_info, sketch_jacobian


def small_cnn(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


def exact_jacobian(model, x):
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    J = vmap(jacrev(f), (None, 0))(params, x)
    return torch.cat([J[n].flatten(2) for n in params], 2)  # (N, C, P)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=128, help="number of inputs")
    ap.add_argument("--k", type=int, default=1024, help="sketch dimension")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    model = small_cnn().eval()
    x = torch.randn(args.n, 3, 16, 16)
    P = sum(p.numel() for p in model.parameters())
    print(f"zoo_kernels {build_info()}")
    print(f"model: small CNN, {P:,} parameters, N={args.n} inputs of 3x16x16, C=10 outputs, k={args.k}")

    t = time.perf_counter()
    J = exact_jacobian(model, x).flatten(0, 1).double()
    t_exact = time.perf_counter() - t
    K = J @ J.T
    eig = torch.linalg.eigvalsh(K).flip(0)

    rows = [("torch.func vmap(jacrev) (exact J)", t_exact, 0.0, 0.0)]
    for method in ("kronecker", "dense"):
        t = time.perf_counter()
        S = sketch_jacobian(model, x, args.k, method=method, seed=args.seed, batch_size=64)
        dt = time.perf_counter() - t
        Sf = S.flatten(0, 1).double()
        Ks = Sf @ Sf.T
        top = torch.linalg.eigvalsh(Ks).flip(0)[:10]
        rows.append((f"sketch_jacobian {method}", dt, rel(Ks, K), rel(top, eig[:10])))

    print(f"\n{'method':38s} {'seconds':>8s} {'Gram rel.err':>13s} {'top-10 eig err':>15s}")
    for name, dt, e_gram, e_eig in rows:
        print(f"{name:38s} {dt:8.3f} {e_gram:13.4f} {e_eig:15.4f}")
    print(f"\nJL scale for reference: sqrt(2/k) = {math.sqrt(2 / args.k):.4f}")
    print("top-5 NTK eigenvalues (exact):", ", ".join(f"{v:.4g}" for v in eig[:5].tolist()))


if __name__ == "__main__":
    main()
