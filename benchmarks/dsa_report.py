"""Summarise benchmarks/dsa_grid.sh: mean +- std over seeds per cell, the share of the SSL-SL gap that DSA
closes, and one figure with the seed-0 t-SNE plots side by side.

    .venv/bin/python benchmarks/dsa_report.py [/tmp/dsa-runs] [--out docs/results]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CELLS = ["simclr", "simclr+dsa", "byol", "byol+dsa", "supervised"]
METRICS = [("linear_top1", "linear top-1", 100), ("knn_top1", "kNN top-1", 100),
           ("intra_class_variance", "intra-class var", 1), ("inter_class_distance", "inter-centroid dist", 1),
           ("variance_ratio", "var / dist^2", 1), ("crowding", "crowding", 100), ("alignment", "alignment", 1),
           ("uniformity", "uniformity", 1), ("train_seconds", "train s", 1)]


def load_rows(root: Path) -> list[dict]:
    rows = []
    for line in (root / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        run = Path(r["run"])
        for name in ("eval.json", "discriminability.json", "train.json"):
            if (run / name).is_file():
                r.update(json.loads((run / name).read_text()))
        rows.append(r)
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for cell in CELLS:
        mine = [r for r in rows if r["cell"] == cell]
        if not mine:
            continue
        out[cell] = {"seeds": sorted(r["seed"] for r in mine)}
        for key, _, _ in METRICS:
            vals = [r[key] for r in mine if key in r]
            if vals:
                out[cell][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def gap_closed(s: dict, base: str, key: str) -> float | None:
    """(base+DSA - base) / (supervised - base): 1 = the whole gap closed, 0 = none, < 0 = wider."""
    if not all(c in s and key in s[c] for c in (base, base + "+dsa", "supervised")):
        return None
    gap = s["supervised"][key][0] - s[base][key][0]
    return (s[base + "+dsa"][key][0] - s[base][key][0]) / gap if gap else None


def table(s: dict) -> str:
    head = "| cell | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for cell, v in s.items():
        cells = []
        for key, _, scale in METRICS:
            if key in v:
                m, sd = v[key]
                digits = 1 if scale == 100 or key == "train_seconds" else 4
                cells.append(f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}")
            else:
                cells.append("–")
        lines.append(f"| {cell} | {len(v['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Share of the SSL-to-supervised gap closed by DSA, (X+DSA - X) / (SL - X), on the means:", "",
              "| base | " + " | ".join(label for key, label, _ in METRICS if key != "train_seconds") + " |",
              "|---|" + "---|" * (len(METRICS) - 1)]
    for base in ("simclr", "byol"):
        vals = [gap_closed(s, base, key) for key, _, _ in METRICS if key != "train_seconds"]
        lines.append(f"| {base} | " + " | ".join("–" if v is None else f"{v:+.2f}" for v in vals) + " |")
    return "\n".join(lines)


def tsne_figure(rows: list[dict], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, Path(r["run"]) / "tsne.png") for c in CELLS for r in rows
              if r["cell"] == c and r["seed"] == 0 and (Path(r["run"]) / "tsne.png").is_file()]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), dpi=100)
    for ax, (cell, png) in zip(list(axes) if len(panels) > 1 else [axes], panels):
        ax.imshow(plt.imread(png))
        ax.set_title(cell, fontsize=12)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", type=Path, default=Path("/tmp/dsa-runs"))
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args()
    rows = load_rows(args.root)
    s = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dsa_grid.json").write_text(json.dumps({"summary": s, "runs": rows}, indent=2, default=str))
    fig = tsne_figure(rows, args.out / "dsa_tsne.png")
    print(table(s))
    print(f"\nt-SNE figure: {fig}")


if __name__ == "__main__":
    main()
