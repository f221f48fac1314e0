"""Tables of the sharpness comparison from the JSON lines the experiment script writes.

    .venv/bin/python benchmarks/sharpness_results.py /tmp/sharpness-runs/results.jsonl [--doc docs/results/sharpness.md]

Rewrites the `results` section of the doc: equal epochs (mean ± sample std over seeds), equal wall time, and
the rank correlation between each sharpness figure and linear top-1 over all runs at equal epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

NAMES = {"simclr": "SimCLR", "ssa-clr": "SSA-CLR (SimCLR + SAM, extractor, rho 0.05)", "saf": "SimCLR + SAF (E=1)",
         "mesa": "SimCLR + MESA", "simclr-6ep": "SimCLR, 6 epochs", "saf-6ep": "SimCLR + SAF (E=1), 6 epochs",
         "mesa-5ep": "SimCLR + MESA, 5 epochs"}
EQUAL_EPOCHS = ["simclr", "ssa-clr", "saf", "mesa"]
EQUAL_TIME = ["ssa-clr", "simclr-6ep", "saf-6ep", "mesa-5ep"]


def figures(row: dict) -> dict:
    s = row.get("sam_sharpness") or {}
    return {"linear": 100 * row["linear_top1"], "knn": 100 * row["knn_top1"], "train_s": row["train_seconds"],
            "sam01": s.get("0.01"), "sam05": s.get("0.05"), "sam1": s.get("0.1"),
            "eig": row.get("hessian_top_eigenvalue"), "trace": row.get("hessian_trace"), "loss": row.get("loss")}


def cell(values: list, digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: dict[str, list[dict]], labels: list[str]) -> list[str]:
    out = ["| run | seeds | linear top-1 (%) | kNN top-1 (%) | train s | SSL loss | SAM-sharpness rho=0.01 | rho=0.05 "
           "| rho=0.1 | top Hessian eig. | Hessian trace |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        fs = [figures(r) for r in rows.get(label, [])]
        if not fs:
            continue
        col = lambda k, d: cell([f[k] for f in fs], d)  # noqa: E731
        out.append(f"| {NAMES.get(label, label)} | {len(fs)} | {col('linear', 2)} | {col('knn', 2)} | {col('train_s', 0)} "
                   f"| {col('loss', 3)} | {col('sam01', 4)} | {col('sam05', 4)} | {col('sam1', 4)} | {col('eig', 2)} "
                   f"| {col('trace', 1)} |")
    return out


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def correlations(rows: dict[str, list[dict]]) -> list[str]:
    fs = [figures(r) for label in EQUAL_EPOCHS for r in rows.get(label, [])]
    fs = [f for f in fs if f["eig"] is not None]
    out = [f"Spearman rank correlation over the {len(fs)} equal-epoch runs (negative = flatter runs probe better):", "",
           "| sharpness figure | with linear top-1 | with kNN top-1 |", "|---|---|---|"]
    for key, name in (("sam05", "SAM-sharpness rho=0.05"), ("eig", "top Hessian eigenvalue"), ("trace", "Hessian trace")):
        out.append(f"| {name} | {spearman([f[key] for f in fs], [f['linear'] for f in fs]):+.2f} "
                   f"| {spearman([f[key] for f in fs], [f['knn'] for f in fs]):+.2f} |")
    return out


def paired_deltas(rows: dict[str, list[dict]]) -> list[str]:
    base = {r["seed"]: r for r in rows.get("simclr", [])}
    out = ["Paired by seed, difference to SimCLR (points of top-1, mean ± std over seeds):", "",
           "| run | Δ linear | Δ kNN |", "|---|---|---|"]
    for label in EQUAL_EPOCHS[1:]:
        d_lin = [100 * (r["linear_top1"] - base[r["seed"]]["linear_top1"]) for r in rows.get(label, []) if r["seed"] in base]
        d_knn = [100 * (r["knn_top1"] - base[r["seed"]]["knn_top1"]) for r in rows.get(label, []) if r["seed"] in base]
        if d_lin:
            out.append(f"| {NAMES[label]} | {cell(d_lin, 2)} | {cell(d_knn, 2)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--doc", type=Path, default=Path("docs/results/sharpness.md"))
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {}
    for line in args.results.read_text().splitlines():
        r = json.loads(line)
        if "label" in r and "error" not in r:
            rows.setdefault(r["label"], []).append(r)
    body = ["## Equal epochs (3 epochs, seeds 0, 1, 2)", "", *table(rows, EQUAL_EPOCHS), "", *paired_deltas(rows), "",
            *correlations(rows), "", "## Equal wall time (seed 0 only)", "", *table(rows, EQUAL_TIME)]
    from sharpshift.bench.grid import replace_section

    replace_section(args.doc, "results", "\n".join(body) + "\n")
    print("\n".join(body))


if __name__ == "__main__":
    main()
