"""Peak resident memory of one sketch_jacobian case, measured in a fresh process.

    python -m benchmarks.peak_rss <case> <N>      (prints one JSON line)

The child imports torch and zoo_kernels, builds the model and the inputs and reads its peak RSS (VmHWM):
that is `base_rss_gb`, what the process costs before the case runs. It then builds what the case keeps
cached (the dense R of the torch.func baselines: a stand-in of the same size, since its values do not
matter for memory and generating the real one takes seconds), runs the case once and reads the peak RSS
again: `peak_rss_gb` (absolute), and `peak_increment_gb` = peak - base.
"""
import json
import os
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_bytes():
    """Peak resident set size of this process so far (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def measure(case, n, timeout=900):
    """Runs the case in a fresh interpreter; returns {'peak_rss_gb', 'base_rss_gb', 'peak_increment_gb', ...}
    or {'peak_rss_error': message} when the child fails (for example killed for memory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.peak_rss", case, str(n)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"peak_rss_error": f"timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"peak_rss_error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def main(argv):
    case, n = argv[0], int(argv[1])
    from . import common

    common.set_threads()
    model = common.build_model()
    x = common.cnn_inputs(n)
    base = peak_rss_bytes()
    R = common.standin_R(common.num_params(model)) if case in common.NEEDS_R else None
    run = common.sketch_case(case, model, x, R)
    out = run()
    peak = peak_rss_bytes()
    gb = 1e9
    print(json.dumps({
        "peak_rss_gb": round(peak / gb, 3),
        "base_rss_gb": round(base / gb, 3),
        "peak_increment_gb": round((peak - base) / gb, 3),
        "peak_rss_case": case,
        "output_shape": list(out.shape),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
