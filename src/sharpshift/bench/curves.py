"""Learning curves: the kNN monitor's top-1 on the validation hold-out after every epoch of a run, read from
its metrics.csv into the grid row, and plotted per results section (mean over seeds per cell), so a reader
sees whether a method is still improving when the budget ends."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

COLUMN = "val/knn_top1"


def read_curve(run_dir: Path) -> list[float]:
    """Validation kNN top-1 after epochs 1, 2, ... (empty without a monitor). A resumed run may log an epoch
    twice: the later value wins."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get(COLUMN):
                by_epoch[int(row["epoch"])] = float(row[COLUMN])
    return [by_epoch[e] for e in sorted(by_epoch)]


def mean_curves(rows: list[dict]) -> dict[str, list[float]]:
    """Per cell, the mean over its seeds of each epoch's value (up to the shortest of its curves)."""
    per_cell: dict[str, list[list[float]]] = {}
    for r in rows:
        if r.get("val_knn_curve"):
            per_cell.setdefault(r["cell"], []).append(r["val_knn_curve"])
    return {cell: [statistics.mean(c[i] for c in curves) for i in range(min(map(len, curves)))]
            for cell, curves in per_cell.items()}


def render_curves(rows: list[dict], path: Path) -> bool:
    """One line per cell; False (and no file) when no row has a curve."""
    curves = mean_curves(rows)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.cm.tab20.colors  # 20 colours and 3 line styles: no two of up to 60 cells look alike
    for i, (cell, values) in enumerate(curves.items()):
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o" if len(values) < 8 else None,
                markersize=3, label=cell, color=colours[i % 20], linestyle=("-", "--", ":")[i // 20 % 3])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1, validation hold-out (%)\nmemory: 5,000 pretraining images")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
