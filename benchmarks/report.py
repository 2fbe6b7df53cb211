"""Markdown summary of a pytest-benchmark JSON written by this suite.

    python benchmarks/report.py .benchmarks/last.json > benchmarks/results/cpu-$(date +%F).md

Columns: mean seconds per call; speedup = the same run's baseline seconds / mean; floor fraction = floor /
mean, the floor being the larger of FLOPs at the measured matmul rate and bytes at the measured copy
bandwidth (for sketch_jacobian: the dense JL GEMM 2*N*C*P*k, which the Kronecker sketch beats, hence > 1);
peak RSS of the case in a fresh process (and its increment over the process after import + model build).
"""
import json
import sys


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _seconds(v):
    if v is None:
        return ""
    return f"{v:.3g}" if v >= 1e-3 else f"{v * 1e6:.3g} us"


def facts_of(data):
    facts = dict(data.get("machine_info", {}).get("zoo_kernels_bench", {}))
    if not facts:  # older or partial files: the facts are also in every benchmark's extra_info
        for b in data.get("benchmarks", []):
            ex = b.get("extra_info", {})
            if "matmul_gflops" in ex:
                facts = {k: ex.get(k) for k in ("cpu_model", "logical_cpus", "threads", "torch_version",
                                                "zoo_kernels_version", "matmul_gflops", "bandwidth_gbs", "quick")}
                break
    return facts


def render(data):
    facts = facts_of(data)
    mi = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    lines = ["# zoo_kernels CPU benchmarks", ""]
    cpu = facts.get("cpu_model") or mi.get("cpu", {}).get("brand_raw", "?")
    lines += [
        f"- date: {data.get('datetime', '?')}",
        f"- commit: {commit.get('id', '?')}{' (dirty)' if commit.get('dirty') else ''}",
        f"- CPU: {cpu} ({facts.get('logical_cpus', '?')} logical CPUs), {facts.get('threads', '?')} threads",
        f"- torch {facts.get('torch_version', '?')}, zoo_kernels {facts.get('zoo_kernels_version', '?')}, "
        f"python {mi.get('python_version', '?')}",
        f"- measured fp32 matmul (2048x2048 torch.mm, best of 5): {_fmt(facts.get('matmul_gflops'), '.1f')} GFLOP/s",
        f"- measured copy bandwidth (512 MB, read + write, best of 5): {_fmt(facts.get('bandwidth_gbs'), '.1f')} GB/s",
    ]
    if facts.get("quick"):
        lines.append("- **ZK_BENCH_QUICK=1: reduced sizes, not the target configuration**")
    lines.append("")

    groups = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or "", []).append(b)
    header = ("| benchmark | mean s | stddev s | rounds | speedup | vs | floor fraction | floor | "
              "peak RSS GB | RSS increment GB |")
    for group, benches in groups.items():
        lines += [f"## {group or 'ungrouped'}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for b in benches:
            st, ex = b.get("stats", {}), b.get("extra_info", {})
            mean = st.get("mean")
            base = ex.get("baseline_seconds")
            speedup = base / mean if base and mean else None
            floor = ex.get("floor_s")
            frac = floor / mean if floor and mean else None
            rss = ex.get("peak_rss_gb")
            inc = ex.get("peak_increment_gb")
            if "peak_rss_error" in ex:
                rss_s, inc_s = "error", ""
            else:
                rss_s, inc_s = _fmt(rss, ".2f"), _fmt(inc, ".2f")
            lines.append(
                f"| {b.get('name', '?')} | {_seconds(mean)} | {_seconds(st.get('stddev'))} | {st.get('rounds', '')} | "
                f"{_fmt(speedup, '.2f')} | {ex.get('baseline', '')} | {_fmt(frac, '.3g')} | "
                f"{ex.get('floor_kind', '')} | "
                f"{rss_s} | {inc_s} |")
        lines.append("")
        notes = [f"- {b.get('name')}: {b['extra_info']['peak_rss_error']}" for b in benches
                 if "peak_rss_error" in b.get("extra_info", {})]
        extra = [f"- {b.get('name')}: {b['extra_info']['entries_per_s'] / 1e6:.1f} M entries/s, "
                 f"{b['extra_info']['written_gbs']:.2f} GB/s written "
                 f"({b['extra_info']['bandwidth_fraction']:.2f} of the measured copy bandwidth)"
                 for b in benches if "entries_per_s" in b.get("extra_info", {})]
        if notes or extra:
            lines += extra + notes + [""]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        data = json.load(f)
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
