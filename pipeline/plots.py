"""Curves of every figure training records, against epoch (PNG, PDF or SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SKIP = {"epoch"}
# What the curves may be written as, by the file's suffix; a path without one gets PNG.
FORMATS = ("png", "pdf", "svg")


def check_format(path: str | Path) -> None:
    """A ValueError naming the suffix where ``path`` asks for a format the curves are not
    written in, before any work is done."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in FORMATS:
        shown = ", ".join(f".{f}" for f in FORMATS)
        raise ValueError(
            f"{path}: curves are written as {shown} (or PNG without a suffix), not .{suffix}"
        )


def plot_history(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel per recorded figure (loss, recon, kl, beta, teacher_forcing, bleu4, ...),
    written to ``path`` in the format its suffix names (PNG without one)."""
    check_format(path)
    path = Path(path)
    image = render_history(history, path.suffix.lower().lstrip(".") or "png", title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)
    return path


def render_history(history: Sequence[dict[str, Any]], fmt: str = "png", title: str = "") -> bytes:
    """plot_history's figure as the bytes of a PNG, PDF or SVG file."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("no epoch figures to plot")
    if fmt not in FORMATS:
        raise ValueError(f"curves are written as {', '.join(FORMATS)}, not {fmt!r}")
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
    out = io.BytesIO()
    fig.savefig(out, dpi=90, format=fmt)
    plt.close(fig)
    return out.getvalue()
