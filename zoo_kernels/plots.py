"""PNG plots of predicted against real training curves (matplotlib, imported lazily: an optional dependency).

    from zoo_kernels import plots
    plots.plot_prediction("out.png", prediction, real_loss=losses, real_accuracy=accs, title="...")
    plots.plot_runs("grid.png", [{"title": ..., "real_loss": ..., "predicted": {"linear": curve, ...}}, ...])
"""
import math

import numpy as np

__all__ = ["plot_prediction", "plot_runs", "require_matplotlib"]

_STYLES = {"real": dict(color="black", lw=2.0)}
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def require_matplotlib():
    """matplotlib.pyplot with the non-interactive Agg backend, or a clear ImportError."""
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _steps(curve):
    return np.arange(len(curve))


def _draw(ax, real, predicted, ylabel, log=False, targets=()):
    if real is not None:
        ax.plot(_steps(real), real, label="real SGD", **_STYLES["real"])
    for i, (name, curve) in enumerate(predicted.items()):
        if curve is None:
            continue
        curve = np.asarray(curve, dtype=np.float64)
        ok = np.isfinite(curve)
        ax.plot(_steps(curve)[ok], curve[ok], label=name, color=_COLORS[i % len(_COLORS)], lw=1.5,
                ls="--" if i else "-")
    for y, text in targets:
        ax.axhline(y, color="grey", lw=0.7, ls=":")
        ax.text(0, y, text, fontsize=7, color="grey", va="bottom", clip_on=True)
    if log:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: PLC0415

        ax.set_yscale("log")
        if real is not None:  # keep the real curve and the targets readable when a prediction blows up
            r = np.asarray(real, dtype=np.float64)
            r = r[np.isfinite(r) & (r > 0)]
            if r.size:
                lo = min([r.min() / 1.5] + [0.8 * y for y, _ in targets])
                ax.set_ylim(lo, r.max() * 2)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("SGD step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_prediction(path, prediction, real_loss=None, real_accuracy=None, title=None, fractions=(0.5, 0.25, 0.1),
                    others=None, max_steps=None, label="predicted"):
    """Loss (left) and accuracy (right) of a Prediction, with the real curves when given; writes a PNG.

    others: {label: Prediction} drawn as well (e.g. a calibrated or head-aware prediction); label: the legend
    entry of `prediction`.
    max_steps: clip the x-axis (default: the longest curve)."""
    plt = require_matplotlib()
    preds = {label: prediction, **(others or {})}
    n = max_steps
    clip = (lambda c: None if c is None else np.asarray(c)[: n + 1]) if n is not None else (lambda c: c)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    L0 = prediction.loss_curve[0]
    _draw(axes[0], clip(real_loss), {k: clip(p.loss_curve) for k, p in preds.items()}, "training loss", log=True,
          targets=[(f * L0, f"{f:g}·L0") for f in fractions])
    _draw(axes[1], clip(real_accuracy), {k: clip(p.accuracy_curve) for k, p in preds.items()}, "training accuracy")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(path, panels, cols=3, log=True, suptitle=None):
    """A grid of loss panels: each {"title", "real_loss" (array or None), "predicted": {label: curve}}; a PNG."""
    plt = require_matplotlib()
    if not panels:
        raise ValueError("no panels to plot")
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        real = panel.get("real_loss")
        horizon = len(real) if real is not None else None
        pred = {k: (None if v is None else np.asarray(v)[:horizon]) for k, v in panel["predicted"].items()}
        _draw(ax, real, pred, "training loss", log=log, targets=panel.get("targets", ()))
        ax.set_title(panel.get("title", ""), fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
