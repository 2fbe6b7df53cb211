"""Validation of subset-based NTK spectrum estimation (zoo_kernels.estimate_spectrum) against the full set.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/spectrum_validation.py --n 10000 [--json out.json]

Problem: Gaussian class clusters in a 32-dim space with a power-law (anisotropic) covariance, 10% label
noise, an MLP 32-128-128-C (ReLU, eval), MSE on one-hot targets. Its NTK spectrum decays over orders of
magnitude (a few class-structure modes, then a power-law bulk).

1. "Full" spectrum of Θ_N through the sketch: estimate_spectrum(method="sketch", k, subset=None). (N·C rows are
   sketched to k columns: the k sketched eigenvalues are the reference, beyond them the library's own
   power-law tail and noise floor.) Then nested subsets M = N/64, N/32, N/20, N/16, N/8, N/4, N/2 with the same
   k and seed (the same sketch matrix, and randperm(N, seed)[:M] is nested), each extrapolated to N. Every
   sample is sketched once; a subset's Gram is the Gram of its rows, which is what estimate_spectrum computes
   (checked against the library at N/20, whose time is the subset cost; the cost is linear in M).
2. The same with method="exact" at a small N (--exact-n 600, --exact-classes 2: eigh of a 1200 x 1200
   matrix), where the full exact spectrum is known: it separates the sketch error (sketch full vs exact
   full) from the subset error (exact subset vs exact full).

Per M: relative error of the top-20 and top-50 eigenvalues against full (median, max; eigenvalues beyond the
subset's trusted modes come from its power-law tail λ_j = tail_scale·j^(-alpha)); the spectral density
distance over all N·C modes (tail included, with multiplicities): L1 between normalized histograms of
log10 λ on common bins (0..2) and the Wasserstein-1 distance of log10 λ (decades); the implied MSE GD loss
curve (Spectrum.mse_gd_loss_curve's formula, lr = N/λ_max of the full spectrum, up to the step where the full
curve has decayed 1000x): max relative error over the first 100 / 1,000 / 10,000 steps, up to L/L0 = 0.1 and
0.01, and over the whole curve (late times are set by the extrapolated tail of both spectra), and the relative
error of the number of steps
to reach L_t/L_0 = 0.5, 0.1, 0.01; the seconds of the subset estimate against the full one.

Tail trust: the library keeps the top `trust` fraction of measured modes (default 0.25) and fits the power law
on modes t/4..t. The same measured eigenvalues are re-extrapolated with other trust values (--trusts) by
`retrust` (zoo_kernels.spectrum.spectrum_from_measurement, estimate_spectrum's last step); the reference is
re-extrapolated with the same trust.

Targets of the issue: M = N/20 gives the top-20 eigenvalues within 10% and the loss curve within 5%.
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: no spin-waits (set before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import wasserstein_distance  # noqa: E402
from torch import nn  # noqa: E402

import zoo_kernels as zk  # noqa: E402
from zoo_kernels import spectrum as zspec  # noqa: E402

FRACTIONS = (64, 32, 20, 16, 8, 4, 2)  # M = N / f
RATIOS = (0.5, 0.1, 0.01)
DECAY = 1e-3  # the curve is compared up to the step where the full curve reaches DECAY * L_0


# ---------------------------------------------------------------- problem

def make_data(n, classes, dim=32, seed=0, label_noise=0.1, separation=1.5):
    """Class clusters: x = mu_y + D z, D = diag(j^-0.5) (power-law covariance), means ~ D N(0, separation^2 I)
    (1.5: overlapping classes, much of the one-hot target is not a smooth function of x)."""
    g = torch.Generator().manual_seed(1000 + seed)
    scale = torch.arange(1, dim + 1, dtype=torch.float32).pow(-0.5)
    means = torch.randn(classes, dim, generator=g) * separation * scale
    y = torch.randint(classes, (n,), generator=g)
    x = means[y] + torch.randn(n, dim, generator=g) * scale
    flip = torch.rand(n, generator=g) < label_noise
    y = torch.where(flip, torch.randint(classes, (n,), generator=g), y)
    return x, y


def make_model(classes, dim=32, hidden=128, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes)).eval()


# ---------------------------------------------------------------- spectra

def retrust(spec, trust):
    """The Spectrum estimate_spectrum would return with another `trust`, from the same measurement."""
    scale = spec.n_samples / spec.subset
    return zspec.spectrum_from_measurement(spec.subset_eigenvalues / scale, spec.subset_energies,
                                           spec.residual_norm2 / scale, spec.subset, spec.n_samples, spec.n_outputs,
                                           trust=trust, method=spec.method, seconds=spec.seconds)


def sketch_all(model, x, y, k, seed, batch, sketch_method, chunk=1000):
    """Sketch rows S (N, C, k) and residuals (N, C) of every sample, once. A subset's SketchGram is then the Gram
    of its rows: the sketch of sample i depends only on (seed, i's parameters), as in estimate_spectrum."""
    S, d = [], []
    for s in range(0, len(x), chunk):
        S.append(zk.sketch_jacobian(model, x[s:s + chunk], k, method=sketch_method, seed=seed, batch_size=batch))
        d.append(zspec.initial_residual(model, x[s:s + chunk], y[s:s + chunk], "mse", batch))
    return torch.cat(S), torch.cat(d)


def measured_spectrum(S, delta, idx, n_total, trust, seconds=0.0):
    """estimate_spectrum(method="sketch") on the samples idx, from precomputed sketch rows."""
    acc = zspec.SketchGram(S.shape[2])
    for s in range(0, len(idx), 4096):
        i = idx[s:s + 4096]
        acc.update(S[i].flatten(0, 1), delta[i].reshape(-1))
    lam, e = acc.eigh()
    return zspec.spectrum_from_measurement(lam.numpy(), e.numpy(), float(acc.residual_norm2), len(idx), n_total,
                                           S.shape[1], trust=trust, seconds=seconds)


HORIZONS = (100, 1000, 10000)  # steps at lr = N / λ_max


def predicted_eigenvalues(spec, n):
    """The first n eigenvalues of Θ_N the estimate implies: trusted modes, then tail_scale·j^(-alpha) (0 beyond
    a known rank)."""
    lam = np.zeros(n)
    t = min(n, len(spec.eigenvalues))
    lam[:t] = spec.eigenvalues[:t]
    j = np.arange(t + 1, n + 1, dtype=np.float64)
    tail = spec.tail_scale * j ** (-spec.alpha)
    if spec.rank is not None:
        tail = np.where(j > spec.rank, 0.0, tail)
    lam[t:] = tail
    return lam


def loss_at(spec, lr, ts):
    """L_t for integer steps ts: the formula of Spectrum.mse_gd_loss_curve at arbitrary t."""
    lam, _, e = spec.modes()
    rate = (1.0 - lr * lam / spec.n_samples) ** 2
    ts = np.asarray(ts, dtype=np.float64)
    out = np.empty(len(ts))
    for s in range(0, len(ts), 512):
        out[s:s + 512] = (np.power(rate[None, :], ts[s:s + 512, None]) * e[None, :]).sum(1)
    return out / (2 * spec.n_samples)


def steps_to(spec, lr, ratio, cap=10**9):
    """First step t with L_t <= ratio * L_0 (None beyond cap); the curve is non-increasing for lr λ/N < 2."""
    target = ratio * loss_at(spec, lr, [0])[0]
    if loss_at(spec, lr, [1])[0] <= target:
        return 1
    lo, hi = 1, 2  # loss(lo) > target
    while loss_at(spec, lr, [hi])[0] > target:
        lo, hi = hi, hi * 2
        if hi > cap:
            return None
    while hi - lo > 1:  # loss(lo) > target >= loss(hi)
        mid = (lo + hi) // 2
        if loss_at(spec, lr, [mid])[0] > target:
            lo = mid
        else:
            hi = mid
    return hi


def curve_grid(t_end):
    """All steps up to 1000, then 3000 log-spaced steps up to t_end."""
    dense = np.arange(0, min(t_end, 1000) + 1)
    if t_end <= 1000:
        return dense
    return np.unique(np.concatenate([dense, np.geomspace(1000, t_end, 3000).round().astype(np.int64)]))


def log_density(spec):
    lam, mult, _ = spec.modes()
    keep = lam > 0
    return np.log10(lam[keep]), mult[keep]


def compare(est, ref, lr, grid, t_ref):
    """Errors of the estimate `est` against the reference spectrum `ref` (same N)."""
    out = {"subset": est.subset, "seconds": est.seconds, "trusted_modes": len(est.eigenvalues),
           "alpha": est.alpha, "noise_energy": est.noise_energy}
    for top in (20, 50):
        r = ref.eigenvalues[:top] if len(ref.eigenvalues) >= top else predicted_eigenvalues(ref, top)
        rel = np.abs(predicted_eigenvalues(est, top) - r) / r
        out[f"top{top}_median"], out[f"top{top}_max"] = float(np.median(rel)), float(rel.max())
        out[f"top{top}_extrapolated"] = max(0, top - len(est.eigenvalues))
    (a, wa), (b, wb) = log_density(est), log_density(ref)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi, 51)
    ha, _ = np.histogram(a, edges, weights=wa)
    hb, _ = np.histogram(b, edges, weights=wb)
    out["density_l1"] = float(np.abs(ha / ha.sum() - hb / hb.sum()).sum())
    out["density_w1_decades"] = float(wasserstein_distance(a, b, wa, wb))
    la, lb = loss_at(est, lr, grid), loss_at(ref, lr, grid)
    out["loss_curve_max_rel"] = float(np.max(np.abs(la - lb) / lb))
    out["loss_l0_rel"] = float(abs(la[0] - lb[0]) / lb[0])
    for r in RATIOS:
        te = steps_to(est, lr, r)
        tr = t_ref[r]
        out[f"steps_{r}"] = te
        out[f"steps_{r}_rel"] = None if te is None or tr is None else abs(te - tr) / tr
    for h in HORIZONS:  # the curve over the first h steps
        g = np.unique(np.concatenate([grid[grid <= h], [h]]))
        out[f"loss_curve_max_rel_t{h}"] = float(np.max(np.abs(loss_at(est, lr, g) - loss_at(ref, lr, g))
                                                        / loss_at(ref, lr, g)))
    for r in (0.1, 0.01):  # the curve up to the step where the reference reaches L/L0 = r only
        if t_ref[r] is not None:
            g = grid[grid <= t_ref[r]]
            out[f"loss_curve_max_rel_to_{r}"] = float(np.max(np.abs(loss_at(est, lr, g) - loss_at(ref, lr, g))
                                                             / loss_at(ref, lr, g)))
    return out


def reference_curve(ref):
    lr = ref.n_samples / float(ref.eigenvalues[0])  # the largest stable-and-monotone step: top mode in 1 step
    t_ref = {r: steps_to(ref, lr, r) for r in RATIOS}
    t_end = steps_to(ref, lr, DECAY, cap=10**7) or 10**7
    return lr, t_ref, t_end, curve_grid(t_end)


# ---------------------------------------------------------------- runs

def run_sketch(args, seed, log):
    x, y = make_data(args.n, args.classes, seed=seed, label_noise=args.label_noise, separation=args.separation)
    model = make_model(args.classes, hidden=args.hidden, seed=seed)
    kw = dict(k=args.k, method="sketch", sketch_method=args.sketch_method, seed=seed, batch_size=args.batch)
    start = time.perf_counter()
    S, delta = sketch_all(model, x, y, args.k, seed, args.batch, args.sketch_method)
    full_seconds = time.perf_counter() - start
    perm = torch.randperm(args.n, generator=torch.Generator().manual_seed(seed))  # estimate_spectrum's subsets
    full = measured_spectrum(S, delta, torch.arange(args.n), args.n, zspec.DEFAULT_TRUST, full_seconds)
    log(f"[seed {seed}] full N={args.n}: {full_seconds:.1f} s; top eigenvalues "
        + ", ".join(f"{v:.4g}" for v in full.eigenvalues[:5]) + f"; alpha={full.alpha:.3f}")
    M20 = args.n // 20  # the library itself on N/20: same numbers as the fast path, and its time
    lib = zk.estimate_spectrum(model, (x, y), subset=M20, **kw)
    fast = measured_spectrum(S, delta, perm[:M20].sort().values, args.n, zspec.DEFAULT_TRUST)
    np.testing.assert_allclose(fast.subset_eigenvalues[:50], lib.subset_eigenvalues[:50], rtol=1e-4)
    subsets = {}
    for f in FRACTIONS:
        M = args.n // f
        subsets[M] = measured_spectrum(S, delta, perm[:M].sort().values, args.n, zspec.DEFAULT_TRUST,
                                       lib.seconds * M / M20)  # estimate_spectrum's cost is linear in M
    rows = {}
    for tr in args.trusts:
        ref = retrust(full, tr)
        lr, t_ref, t_end, grid = reference_curve(ref)
        rows[tr] = [dict(compare(retrust(s, tr), ref, lr, grid, t_ref), fraction=f)
                    for f, s in zip(FRACTIONS, subsets.values())]
    lr, t_ref, t_end, grid = reference_curve(full)
    info = dict(seed=seed, full_seconds=full_seconds, lr=lr, steps_ref=t_ref, t_end=int(t_end),
                subset_seconds_n20=lib.seconds, full_top=full.eigenvalues[:50].tolist(), full_alpha=full.alpha,
                noise_energy=full.noise_energy,
                full_decay_at_t_end=float(loss_at(full, lr, [t_end])[0] / loss_at(full, lr, [0])[0]),
                full_spectrum_head=spectrum_head(full))
    return info, rows


def spectrum_head(spec):
    lam = spec.eigenvalues
    idx = [i for i in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if i <= len(lam)]
    e = spec.energies
    return {"eigenvalue": {i: float(lam[i - 1]) for i in idx},
            "energy_fraction_top": {i: float(e[:i].sum() / spec.residual_norm2) for i in idx}}


def run_exact(args, seed, log):
    n, C = args.exact_n, args.exact_classes
    x, y = make_data(n, C, seed=seed, label_noise=args.label_noise, separation=args.separation)
    model = make_model(C, hidden=args.hidden, seed=seed)
    ex = dict(method="exact", seed=seed, batch_size=args.batch)
    sk = dict(method="sketch", k=args.k, sketch_method=args.sketch_method, seed=seed, batch_size=args.batch)
    full = zk.estimate_spectrum(model, (x, y), **ex)
    full_sk = zk.estimate_spectrum(model, (x, y), **sk)
    log(f"[seed {seed}] exact N={n}, C={C}: {full.seconds:.1f} s (sketch full {full_sk.seconds:.1f} s)")
    lr, t_ref, t_end, grid = reference_curve(full)
    out = {"sketch_full_vs_exact_full": compare(full_sk, full, lr, grid, t_ref)}
    rows_exact, rows_sketch = {tr: [] for tr in args.trusts}, {tr: [] for tr in args.trusts}
    for f in FRACTIONS:
        M = max(2, n // f)
        se = zk.estimate_spectrum(model, (x, y), subset=M, **ex)
        ss = zk.estimate_spectrum(model, (x, y), subset=M, **sk)
        for tr in args.trusts:
            rows_exact[tr].append(dict(compare(retrust(se, tr), full, lr, grid, t_ref), fraction=f))
            rows_sketch[tr].append(dict(compare(retrust(ss, tr), full, lr, grid, t_ref), fraction=f))
    info = dict(seed=seed, n=n, classes=C, full_seconds=full.seconds, sketch_full_seconds=full_sk.seconds, lr=lr,
                steps_ref=t_ref, t_end=int(t_end), full_spectrum_head=spectrum_head(full),
                full_decay_at_t_end=float(loss_at(full, lr, [t_end])[0] / loss_at(full, lr, [0])[0]), **out)
    return info, rows_exact, rows_sketch


# ---------------------------------------------------------------- report

def _f(v, spec=".3f"):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def table(rows, full_seconds=None):
    head = ("| M | trusted | top-20 rel. err median / max | top-50 median / max (extrap.) | density L1 | "
            "density W1 (decades) | loss max rel. err, t ≤ 100 / 1e3 / 1e4 | up to L/L0=0.1 | up to 0.01 | all | "
            "steps err 0.5 / 0.1 / 0.01 | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        secs = f"{r['seconds']:.1f}" + (f" ({r['seconds'] / full_seconds:.2f}x full)" if full_seconds else "")
        lines.append(
            f"| N/{r['fraction']} = {r['subset']} | {r['trusted_modes']} | "
            f"{_f(r['top20_median'])} / {_f(r['top20_max'])} | "
            f"{_f(r['top50_median'])} / {_f(r['top50_max'])} ({r['top50_extrapolated']}) | {_f(r['density_l1'])} | "
            f"{_f(r['density_w1_decades'])} | "
            + " / ".join(_f(r.get(f"loss_curve_max_rel_t{h}")) for h in HORIZONS) + " | "
            f"{_f(r.get('loss_curve_max_rel_to_0.1'))} | "
            f"{_f(r.get('loss_curve_max_rel_to_0.01'))} | {_f(r['loss_curve_max_rel'])} | "
            + " / ".join(_f(r[f"steps_{q}_rel"]) for q in RATIOS) + f" | {secs} |")
    return "\n".join(lines)


def target_line(rows, label):
    r = next(r for r in rows if r["fraction"] == 20)
    ok20 = r["top20_max"] <= 0.10
    h = HORIZONS[-1]
    okc = r[f"loss_curve_max_rel_t{h}"] <= 0.05
    return (f"- {label}: M=N/20: top-20 max rel. err {r['top20_max']:.3f} (target 0.10: {'PASS' if ok20 else 'FAIL'}), "
            f"loss curve max rel. err over the first {h} steps {r[f'loss_curve_max_rel_t{h}']:.3f} "
            f"(target 0.05: {'PASS' if okc else 'FAIL'}), over the whole decay to 1e-3 L0 {r['loss_curve_max_rel']:.3f}")


def _mean_rows(runs, key):
    """Rows (one per M) averaged over seeds: mean of each metric, and the worst seed for *_max metrics."""
    out = []
    for i, first in enumerate(runs[0][key]):
        row = dict(first)
        for name, v in first.items():
            vals = [r[key][i][name] for r in runs if r[key][i][name] is not None]
            if isinstance(v, (int, float)) and name not in ("subset", "fraction", "trusted_modes", "top20_extrapolated",
                                                            "top50_extrapolated"):
                row[name] = (max(vals) if name.endswith("_max") else float(np.mean(vals))) if vals else None
        out.append(row)
    return out


TRUST_METRICS = ("top50_median", "top50_max", "density_l1", "density_w1_decades", "loss_curve_max_rel_t1000",
                 "loss_curve_max_rel_t10000", "loss_curve_max_rel_to_0.1",
                 "loss_curve_max_rel_to_0.01", "loss_curve_max_rel", "steps_0.1_rel", "steps_0.01_rel")


def trust_table(runs, key, trusts, n_label):
    """Per trust: each metric averaged over seeds and over all subset sizes M."""
    head = "| trust | " + " | ".join(TRUST_METRICS) + " |"
    lines = [f"Trust comparison ({n_label}; mean over seeds and over M = N/64 ... N/2):", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for tr in trusts:
        vals = []
        for name in TRUST_METRICS:
            xs = [row[name] for r in runs for row in r[key][str(tr)] if row.get(name) is not None]
            vals.append(_f(float(np.mean(xs))) if xs else "n/a")
        lines.append(f"| {tr}{' (default)' if tr == zspec.DEFAULT_TRUST else ''} | " + " | ".join(vals) + " |")
    return lines + [""]


def summary(paths):
    """Compact markdown tables from the JSON files of earlier runs (means over seeds; *_max: worst seed)."""
    lines = []
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        a = res["args"]
        lines += [f"### {os.path.basename(path)}: N={a['n']}, C={a['classes']}, k={a['k']} ({a['sketch_method']}), "
                  f"label noise {a.get('label_noise')}, separation {a.get('separation', 1.5)}, seeds {a['seeds']}", ""]
        if res["sketch"]:
            runs = res["sketch"]
            for r in runs:
                i = r["info"]
                lines.append(f"- seed {i['seed']}: full {i['full_seconds']:.0f} s, steps to L/L0 = 0.5/0.1/0.01: "
                             + "/".join(str(i['steps_ref'][str(q)]) for q in RATIOS)
                             + ", energy in the k measured modes of the full sketch: "
                             + f"{list(i['full_spectrum_head']['energy_fraction_top'].values())[-1]:.3f}")
            lines.append("")
            lines += trust_table(runs, "rows", a["trusts"], "sketch subsets vs the full sketch")
            for tr in a["trusts"]:
                rows = _mean_rows([dict(rows=r["rows"][str(tr)]) for r in runs], "rows")
                full_s = float(np.mean([r["info"]["full_seconds"] for r in runs]))
                lines += [f"Sketch subsets vs full sketch, trust = {tr}{' (default)' if tr == zspec.DEFAULT_TRUST else ''} "
                          "(mean over seeds; max columns: worst seed):", "", table(rows, full_s), ""]
        if res["exact"]:
            runs = res["exact"]
            for r in runs:
                i, s = r["info"], r["info"]["sketch_full_vs_exact_full"]
                lines.append(f"- exact N={i['n']}, C={i['classes']}, seed {i['seed']}: full exact "
                             f"{i['full_seconds']:.1f} s; "
                             f"sketch error (full sketch vs full exact): top-20 median/max {s['top20_median']:.3f}/"
                             f"{s['top20_max']:.3f}, top-50 {s['top50_median']:.3f}/{s['top50_max']:.3f}, density W1 "
                             f"{s['density_w1_decades']:.3f}, loss curve max rel. err {s['loss_curve_max_rel']:.3f} "
                             f"(up to L/L0=0.1: {_f(s.get('loss_curve_max_rel_to_0.1'))}), "
                             "steps to L/L0 = 0.5/0.1/0.01: "
                             + "/".join(str(i['steps_ref'][str(q)]) for q in RATIOS))
            lines.append("")
            lines += trust_table(runs, "rows_exact", a["trusts"], "exact subsets vs the exact full spectrum")
            lines += trust_table(runs, "rows_sketch", a["trusts"], "sketch subsets vs the exact full spectrum")
            for tr in a["trusts"]:
                for key, label in (("rows_exact", "exact subsets vs exact full"),
                                   ("rows_sketch", "sketch subsets vs exact full")):
                    rows = _mean_rows([dict(rows=r[key][str(tr)]) for r in runs], "rows")
                    full_s = float(np.mean([r["info"]["full_seconds"] for r in runs]))
                    lines += [f"{label}, trust = {tr}{' (default)' if tr == zspec.DEFAULT_TRUST else ''} (mean over seeds; max "
                              "columns: worst seed; seconds vs the full exact):", "", table(rows, full_s), ""]
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--summary", nargs="+", default=None, help="print compact tables from earlier --json files")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--sketch-method", default="dense", choices=("dense", "kronecker"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--label-noise", type=float, default=0.1)
    ap.add_argument("--separation", type=float, default=1.5, help="scale of the class means")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--trusts", default="0.25,0.5,0.75,1.0")
    ap.add_argument("--exact-n", type=int, default=600)
    ap.add_argument("--exact-classes", type=int, default=2)
    ap.add_argument("--skip-exact", action="store_true")
    ap.add_argument("--skip-sketch", action="store_true")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ZK_BENCH_THREADS", "2")))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    args.trusts = [float(t) for t in args.trusts.split(",")]
    if zspec.DEFAULT_TRUST not in args.trusts:
        args.trusts.insert(0, zspec.DEFAULT_TRUST)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = dict(args=vars(args), torch=torch.__version__, threads=torch.get_num_threads(),
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), sketch=[], exact=[])
    P = sum(p.numel() for p in make_model(args.classes, hidden=args.hidden).parameters())
    out = [f"# estimate_spectrum validation (N={args.n}, C={args.classes}, MLP 32-{args.hidden}-{args.hidden}-"
           f"{args.classes}, P={P}, k={args.k}, {args.sketch_method} sketch, seeds {seeds})", ""]
    if not args.skip_sketch:
        for seed in seeds:
            info, rows = run_sketch(args, seed, log)
            result["sketch"].append(dict(info=info, rows={str(t): r for t, r in rows.items()}))
            out += [f"## Sketch, N={args.n}, seed {seed}: subsets against the full sketched spectrum", "",
                    f"full: {info['full_seconds']:.1f} s, lr = N/λ_max = {info['lr']:.4g}, steps to L/L0 = "
                    + ", ".join(f"{r}: {info['steps_ref'][r]}" for r in RATIOS)
                    + f"; curve compared up to t = {info['t_end']} (L/L0 = {info['full_decay_at_t_end']:.2e}); "
                    + "energy fraction in the top modes of the full sketch: " + ", ".join(
                        f"{i}: {v:.3f}" for i, v in info["full_spectrum_head"]["energy_fraction_top"].items()), ""]
            for tr, r in rows.items():
                out += [f"trust = {tr}{' (library default)' if tr == zspec.DEFAULT_TRUST else ''}:", "", table(r, info["full_seconds"]),
                        "", target_line(r, f"trust {tr}"), ""]
    if not args.skip_exact:
        for seed in seeds:
            info, rows_e, rows_s = run_exact(args, seed, log)
            result["exact"].append(dict(info=info, rows_exact={str(t): r for t, r in rows_e.items()},
                                        rows_sketch={str(t): r for t, r in rows_s.items()}))
            s = info["sketch_full_vs_exact_full"]
            out += [f"## Exact, N={info['n']}, C={info['classes']}, seed {seed}", "",
                    f"full exact: {info['full_seconds']:.1f} s (eigh {info['n'] * info['classes']}^2), "
                    f"full sketch: {info['sketch_full_seconds']:.1f} s; lr = {info['lr']:.4g}, steps to L/L0 = "
                    + ", ".join(f"{r}: {info['steps_ref'][r]}" for r in RATIOS), "",
                    f"Sketch error (full sketch k={args.k} vs full exact): top-20 median/max {s['top20_median']:.3f}/"
                    f"{s['top20_max']:.3f}, top-50 {s['top50_median']:.3f}/{s['top50_max']:.3f}, density L1 "
                    f"{s['density_l1']:.3f}, W1 {s['density_w1_decades']:.3f} decades, loss curve max rel. err "
                    f"{s['loss_curve_max_rel']:.3f}", ""]
            for tr in args.trusts:
                out += [f"exact subsets vs exact full, trust = {tr}:", "", table(rows_e[tr], info["full_seconds"]), "",
                        target_line(rows_e[tr], f"exact, trust {tr}"), "",
                        f"sketch subsets vs exact full (sketch + subset error), trust = {tr}:", "",
                        table(rows_s[tr], info["full_seconds"]), "", target_line(rows_s[tr], f"sketch, trust {tr}"), ""]
    result["wall_seconds"] = time.perf_counter() - start
    out.append(f"total wall time {result['wall_seconds']:.0f} s, {torch.get_num_threads()} threads, "
               f"OMP_WAIT_POLICY={result['omp_wait_policy']}")
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)


if __name__ == "__main__":
    main()
