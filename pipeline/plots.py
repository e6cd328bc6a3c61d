"""PNG curves of every figure training records, against epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SKIP = {"epoch"}


def plot_history(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel per recorded figure (loss, recon, kl, beta, teacher_forcing, bleu4, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("no epoch figures to plot")
    names = [k for k in history[0] if k not in SKIP]
    for h in history:
        names += [k for k in h if k not in SKIP and k not in names]
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = [(h["epoch"], h[name]) for h in history if name in h]
        ax.plot(
            [p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None
        )
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
