"""Figures for the report, as PNG bytes. Matplotlib's object API with the Agg canvas: no pyplot, no
global backend switch, no display needed."""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = dict[str, tuple[list[float], list[float]]]  # name -> (steps, values)


def png(fig: Figure, dpi: int = 90) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _grid(n: int, width: float = 4.2, height: float = 3.0, cols: int = 2):
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def curves(panels: dict[str, dict[str, Series]]) -> bytes:
    """One subplot per panel title; each panel maps a line label (a run, or a metric) to its series."""
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels.items()):
        for label, (x, y) in lines.items():
            ax.plot(x, y, marker="o" if len(x) <= 12 else None, ms=3, lw=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def embedding(points: np.ndarray, labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    fig = Figure(figsize=(6.2, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    for c in np.unique(labels):
        sel = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(points[sel, 0], points[sel, 1], s=5, alpha=0.7, label=name, color=_colour(int(c)))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return png(fig)


def _colour(i: int):
    from matplotlib import colormaps

    return colormaps["tab10" if i < 10 else "tab20"](i % 20)


def severity_lines(severities: list[int], lines: dict[str, list[float]], bold: dict[str, list[float]],
                   title: str, ylabel: str = "linear probe top-1") -> bytes:
    """Thin lines (e.g. one per corruption) and bold lines (e.g. the mean, or one per run)."""
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, y in lines.items():
        ax.plot(severities, y, lw=0.9, alpha=0.75, label=label)
    for label, y in bold.items():
        ax.plot(severities, y, lw=2.6, color="black" if len(bold) == 1 else None, label=label)
    ax.set_xticks(severities)
    ax.set_xlabel("severity", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return png(fig)


def attack_lines(epsilons: list[float], lines: dict[str, list[float]], title: str) -> bytes:
    fig = Figure(figsize=(5.6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for label, y in lines.items():
        ax.plot(epsilons, y, marker="o", ms=4, lw=1.5, ls="--" if "fgsm" in label.lower() else "-", label=label)
    ax.set_xlabel("epsilon (x 1/255, L-inf)", fontsize=9)
    ax.set_ylabel("top-1 under attack", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def image_grid(rows: list[tuple[str, list[np.ndarray]]], col_titles: list[str]) -> bytes:
    """Rows of images (H, W) or (H, W, 3) uint8, a label per row."""
    n_cols = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(1.0 * n_cols + 1.6, 1.0 * len(rows)))
    for i, (label, imgs) in enumerate(rows):
        for j, img in enumerate(imgs):
            ax = fig.add_subplot(len(rows), n_cols, i * n_cols + j + 1)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return png(fig)
