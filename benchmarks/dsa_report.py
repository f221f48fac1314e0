"""Tables for the "DSA and discriminability" section of docs/results.md, from `sharpshift bench accuracy` rows.

Per cell (SimCLR, SimCLR+DSA, BYOL, BYOL+DSA, supervised): mean ± std over seeds of linear and kNN top-1 and
every discriminability figure; then the share of the SSL-to-supervised gap that DSA closes, per figure; and,
with --figure, the seed-0 t-SNE plots side by side. It only reads: the rows recorded by the grid
(docs/grid/<budget>/<cell>/seed<n>.json, with the discriminability diagnostic) and, for the figure, each
cell's seed-0 run folder. The grid runs the diagnostic without t-SNE; make the plots first with

    sharpshift diagnose discriminability runs/grid/reduced/<cell>/seed0 --num-threads 1

    .venv/bin/python benchmarks/dsa_report.py [--record docs/grid/reduced] [--runs runs/grid/reduced] [--figure PNG]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CELLS = ["simclr", "dsa-simclr", "byol", "dsa-byol", "supervised"]
BASES = {"simclr": "dsa-simclr", "byol": "dsa-byol"}  # base cell -> its DSA cell
METRICS = [("linear_top1", "linear top-1 %", 100), ("knn_top1", "kNN top-1 %", 100),
           ("intra_class_variance", "intra-class var", 1), ("inter_class_distance", "inter-centroid dist", 1),
           ("variance_ratio", "var / dist²", 1), ("crowding", "crowding %", 100), ("alignment", "alignment", 1),
           ("uniformity", "uniformity", 1), ("train_seconds", "train s", 1)]


def load_rows(record: Path) -> dict[str, list[dict]]:
    """cell -> its recorded rows, each with the discriminability figures flattened in."""
    rows: dict[str, list[dict]] = {}
    for cell in CELLS:
        for f in sorted((record / cell).glob("seed*.json")):
            r = json.loads(f.read_text())
            rows.setdefault(cell, []).append({**r, **r.get("diagnostics", {}).get("discriminability", {})})
    return rows


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """cell -> {"seeds": [...], metric: (mean, sample std)}."""
    out = {}
    for cell, mine in rows.items():
        out[cell] = {"seeds": sorted(r["seed"] for r in mine)}
        for key, _, _ in METRICS:
            vals = [r[key] for r in mine if key in r]
            if vals:
                out[cell][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def gap_closed(s: dict, base: str, key: str) -> float | None:
    """(base+DSA - base) / (supervised - base) on the means: 1 = the whole gap closed, 0 = none, < 0 = wider."""
    dsa = BASES[base]
    if not all(c in s and key in s[c] for c in (base, dsa, "supervised")):
        return None
    gap = s["supervised"][key][0] - s[base][key][0]
    return (s[dsa][key][0] - s[base][key][0]) / gap if gap else None


def table(s: dict) -> str:
    lines = ["| cell | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    for cell, v in s.items():
        cells = []
        for key, _, scale in METRICS:
            digits = 1 if scale == 100 or key == "train_seconds" else 4
            cells.append(f"{v[key][0] * scale:.{digits}f} ± {v[key][1] * scale:.{digits}f}" if key in v else "–")
        lines.append(f"| {cell} | {len(v['seeds'])} | " + " | ".join(cells) + " |")
    shown = [(key, label) for key, label, _ in METRICS if key != "train_seconds"]
    lines += ["", "Share of the SSL-to-supervised gap closed by DSA, (X+DSA - X) / (SL - X), on the means:", "",
              "| base | " + " | ".join(label for _, label in shown) + " |", "|---|" + "---|" * len(shown)]
    for base in BASES:
        vals = [gap_closed(s, base, key) for key, _ in shown]
        lines.append(f"| {base} | " + " | ".join("–" if v is None else f"{v:+.2f}" for v in vals) + " |")
    return "\n".join(lines)


def tsne_figure(runs: Path, out: Path) -> list[str]:
    """The seed-0 tsne.png of every cell that has one, side by side; returns the cells shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, runs / c / "seed0" / "tsne.png") for c in CELLS if (runs / c / "seed0" / "tsne.png").is_file()]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=100, squeeze=False)
    for ax, (cell, png) in zip(axes[0], panels):
        ax.imshow(plt.imread(png))
        ax.set_title(cell, fontsize=12)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")  # the titles sit above the images
    plt.close(fig)
    return [c for c, _ in panels]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, default=Path("docs/grid/reduced"), help="the grid's recorded rows")
    ap.add_argument("--runs", type=Path, default=Path("runs/grid/reduced"), help="the grid's run folders")
    ap.add_argument("--figure", type=Path, default=None, help="write the side-by-side t-SNE figure here")
    args = ap.parse_args()
    s = summarise(load_rows(args.record))
    print(table(s))
    if args.figure:
        shown = tsne_figure(args.runs, args.figure)
        missing = [c for c in CELLS if c not in shown]
        print(f"\nt-SNE figure: {args.figure} ({', '.join(shown) or 'no panels'})"
              + (f"; no seed-0 tsne.png for {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
