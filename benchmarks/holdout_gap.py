"""Does the holdout gap flag the recommended prediction's misses?

    python -m benchmarks.holdout_gap benchmarks/results/predict-long-cpu-2026-11-27-holdout-{dev,heldout,fresh}.json

The subset model over-fits its M samples: it is trained on them 20× as often as real training visits a sample.
HeadAwarePredictor(holdout=H) moves H more samples by the same dynamics without training on them; the gap
L_holdout / L_subset at a predicted target measures how much of the predicted decrease is memorization. This
asks whether the gap ranks the errors of the predicted steps (Spearman ρ), pooled and within each target (the gap
grows with the target's depth, and so does the error), per set of pairs, on predict_long.py --holdout results.
Targets reached after the warm-up only. A target the prediction reaches within the real run's L steps and the real
run does not counts with the least error it can have, (T_pred − L) / L (signed), as in predict_long's strict
median; one the prediction reaches only after step L is left out (its error may be 0).
"""
import argparse
import json

import numpy as np
import scipy.stats

from benchmarks.predict_long import summary_rows


def rows(records, method):
    """(target, gap, signed error, real reached) for each target with a gap (predicted after the warm-up)."""
    out = []
    for rec in records:
        meth = rec["methods"].get(method, {})
        for tgt, gap in (meth.get("holdout_gap_at") or {}).items():
            t_pred, t_real = meth["T"].get(tgt), rec["real"].get(tgt)
            if gap is None or t_pred is None:
                continue
            if t_real is not None:
                out.append((tgt, gap, (t_pred - t_real) / t_real, True))
            elif t_pred <= rec["steps"]:  # reached by the prediction only: at least this early
                out.append((tgt, gap, (t_pred - rec["steps"]) / rec["steps"], False))
            # predicted after the run's end and never reached by it: the error is unknown (it may be 0)
    return out


def spearman(a, b):
    return float(scipy.stats.spearmanr(a, b)[0]) if len(a) > 2 and len(set(a)) > 1 and len(set(b)) > 1 else None


def summary(rs, threshold=1.5):
    """Pooled and within-target Spearman ρ of the gap against |error| and the signed error, the medians of |error|
    below and above the pooled median gap, and the same split at a fixed `threshold` (the flag: gap ≥ threshold)."""
    if not rs:
        return None
    gap = np.array([r[1] for r in rs])
    err = np.array([r[2] for r in rs])
    within = [spearman(gap[idx], np.abs(err[idx])) for t in sorted({r[0] for r in rs})
              for idx in [np.array([r[0] == t for r in rs])] if idx.sum() > 2]
    within = [w for w in within if w is not None]
    hi = gap > np.median(gap)
    return {"targets": len(rs), "real_never": int(sum(not r[3] for r in rs)),
            "rho_abs": spearman(gap, np.abs(err)), "rho_signed": spearman(gap, err),
            "rho_abs_within_target": float(np.mean(within)) if within else None,
            "median_abs_low_gap": float(np.median(np.abs(err[~hi]))) if (~hi).any() else None,
            "median_abs_high_gap": float(np.median(np.abs(err[hi]))) if hi.any() else None,
            "real_never_in_high_gap": int(sum(h and not r[3] for h, r in zip(hi, rs))),
            "threshold": threshold, **flag_split(gap, err, [r[3] for r in rs], threshold)}


def flag_split(gap, err, reached, threshold):
    """Targets flagged (gap ≥ threshold) or not: counts, median |error|, share within 20 %, real-never flagged."""
    out = {}
    for name, sel in (("flagged", gap >= threshold), ("unflagged", gap < threshold)):
        e = np.abs(err[sel])
        out[name] = {"targets": int(sel.sum()), "median_abs": float(np.median(e)) if e.size else None,
                     "within20": float(np.mean(e <= 0.2)) if e.size else None}
    out["real_never_flagged"] = int(sum(f and not r for f, r in zip(gap >= threshold, reached)))
    return out


def markdown(results):
    f = lambda v: "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    out = ["| set | targets (real never) | ρ(gap, abs err) | ρ within target (mean) | ρ(gap, signed err) | "
           "median abs err, gap ≤ median / > median | real-never targets in the upper half |", "|---|" + "---|" * 6]
    for name, s in results.items():
        out.append(f"| {name} | {s['targets']} ({s['real_never']}) | {f(s['rho_abs'])} | "
                   f"{f(s['rho_abs_within_target'])} | {f(s['rho_signed'])} | {f(s['median_abs_low_gap'])} / "
                   f"{f(s['median_abs_high_gap'])} | {s['real_never_in_high_gap']} of {s['real_never']} |")
    t = next(iter(results.values()))["threshold"]
    out += ["", f"| set | unflagged (gap < {t}): targets, median abs err, within 20 % | flagged (gap ≥ {t}): targets, "
            "median abs err, within 20 % | real-never targets flagged |", "|---|---|---|---|"]
    for name, s in results.items():
        u, g = s["unflagged"], s["flagged"]
        out.append(f"| {name} | {u['targets']}, {f(u['median_abs'])}, {f(u['within20'])} | {g['targets']}, "
                   f"{f(g['median_abs'])}, {f(g['within20'])} | {s['real_never_flagged']} of {s['real_never']} |")
    return "\n".join(out)


def plot(sets, path, threshold=1.5):
    """Signed error against the gap, one marker per set; hollow: the real run never reaches the target (the error
    plotted is its least, (T_pred − L)/L)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, rs), marker in zip(sets.items(), "osD^v<>"):
        for reached in (True, False):
            pts = [(r[1], r[2]) for r in rs if r[3] == reached]
            if pts:
                g, e = zip(*pts)
                ax.scatter(g, e, marker=marker, s=24, facecolors=None if reached else "none",
                           edgecolors=f"C{list(sets).index(name)}", color=f"C{list(sets).index(name)}",
                           label=name if reached else None)
    ax.axvline(threshold, color="k", lw=0.8, ls="--")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("holdout gap at the predicted step (L_holdout / L_subset)")
    ax.set_ylabel("(T_pred - T_real) / T_real")
    ax.set_title("recommended mode: error vs holdout gap (hollow: real run never reaches it)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adaptive_records(base, doubled, method="head-aware+warm100", threshold=1.5):
    """The base records with two more methods: the doubled subset's prediction, and the adaptive rule (per target:
    the doubled subset's step where the base's gap is ≥ threshold, else the base's), whose cost adds the doubled
    prediction's where any target is flagged. Records are matched by (model, task, lr, batch, momentum)."""
    key = lambda r: (r["model"], r["task"], r["lr"], r["batch"], r["momentum"])  # noqa: E731
    twin = {key(r): r for r in doubled}
    out = []
    for rec in base:
        other = twin.get(key(rec))
        if other is None:
            raise ValueError(f"no doubled-subset record for {key(rec)}")
        meth, dbl = rec["methods"][method], other["methods"][method]
        gaps = meth.get("holdout_gap_at") or {}
        flagged = {k for k, g in gaps.items() if g is not None and g >= threshold}
        name = method.rpartition("+warm")
        rec = dict(rec, methods=dict(rec["methods"]))
        rec["methods"][f"{name[0]}[2M]+warm{name[2]}"] = dbl
        cost = meth["cost_s"] + (dbl["cost_s"] if flagged else 0.0)
        rec["methods"][f"{name[0]}[adaptive]+warm{name[2]}"] = {
            "T": {k: (dbl["T"].get(k) if k in flagged else t) for k, t in meth["T"].items()},
            "flagged": sorted(flagged), "cost_s": cost, "total_s": cost}
        out.append(rec)
    return out


def adaptive_markdown(results):
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    out = ["| set | method | targets | median | p90 | median signed | strict median | within 20 % | "
           "median training / prediction |", "|---|---|---|---|---|---|---|---|---|"]
    for name, records in results.items():
        for row in summary_rows(records):
            out.append(f"| {name} | {row['method']} | {row['pairs']} | {f(row['median'])} | {f(row['p90'])} | "
                       f"{f(row['median_signed'])} | {f(row['median_strict'])} | {f(row['within20'])} | "
                       f"{f(row['train_over_pred'])} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", help="predict_long.py --holdout JSONs")
    ap.add_argument("--method", default="head-aware+warm100")
    ap.add_argument("--threshold", type=float, default=1.5, help="the flag: gap >= this")
    ap.add_argument("--pool", nargs="*", default=[], metavar="NAME=JSON,JSON",
                    help="also one set made of several result files (e.g. one per pair)")
    ap.add_argument("--adaptive", nargs=3, action="append", default=[], metavar=("NAME", "BASE", "DOUBLED"),
                    help="also the adaptive rule on one set: comma-separated base and doubled-subset JSONs")
    ap.add_argument("--out", help="write the table and numbers to OUT.md / OUT.json (and the plot to OUT.png)")
    args = ap.parse_args(argv)
    load = lambda paths: [r for p in paths.split(",") for r in json.load(open(p))["records"]]  # noqa: E731
    adaptive = {name: adaptive_records(load(b), load(d), args.method, args.threshold)
                for name, b, d in args.adaptive}
    results, pooled = {}, []
    sets = [(p.rsplit("/", 1)[-1].removesuffix(".json"), [p]) for p in args.results]
    sets += [(spec.split("=", 1)[0], spec.split("=", 1)[1].split(",")) for spec in args.pool]
    per_set = {}
    for name, paths in sets:
        rs = [r for path in paths for r in rows(json.load(open(path))["records"], args.method)]
        results[name], per_set[name] = summary(rs, args.threshold), rs
        pooled += rs
    if pooled:
        results["all"] = summary(pooled, args.threshold)
    md = "\n\n".join(([markdown(results)] if results else []) + ([adaptive_markdown(adaptive)] if adaptive else []))
    print(md)
    if args.out:
        with open(args.out + ".json", "w") as fh:
            json.dump({"gap": results, "adaptive": {n: summary_rows(r) for n, r in adaptive.items()}}, fh, indent=1)
        with open(args.out + ".md", "w") as fh:
            fh.write(md + "\n")
        if per_set:
            plot(per_set, args.out + ".png", args.threshold)


if __name__ == "__main__":
    main()
