"""`sharpshift bench accuracy`: a grid of (cell x seed) pretraining runs at one fixed budget, resumable.

A cell is a shipped config plus overrides. Each (cell, seed) gets its own run folder under ROOT; a folder
that already has eval.json is finished and is read, not run again; an unfinished one is started afresh.
The floors (raw pixels, random-init encoder) are evaluated with the same probe."""
from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sharpshift.config import load_config
from sharpshift.train import RUN_DIR_ENV


@dataclass
class Cell:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)


BASE_CELLS = [Cell(m, m) for m in ("simclr", "moco", "byol", "barlow", "simsiam")]
BUDGETS = {
    # the README demo's budget: full Fashion-MNIST, 5 epochs
    "default": ["trainer.max_epochs=5"],
    # the reduced budget the method issues compare at
    "reduced": ["data.subset=10000", "data.test_subset=5000", "trainer.max_epochs=3"],
}


def run_cell(cell: Cell, seed: int, budget: list[str], root: Path, extra: list[str] = (),
             record: Path | None = None) -> dict:
    """Run (or read back) one cell. `record`: a folder of small committed JSON rows, so a finished cell
    survives the run folder (runs/ is not versioned) and is not run again on another machine."""
    from sharpshift.train import pretrain

    row_file = record / cell.name / f"seed{seed}.json" if record else None
    if row_file and row_file.is_file():
        return json.loads(row_file.read_text())
    run_dir = root / cell.name / f"seed{seed}"
    if (run_dir / "eval.json").is_file() and (run_dir / "train.json").is_file():
        return _record(collect(run_dir, cell, seed), row_file)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    cfg = load_config(cell.config, [*budget, *cell.overrides, *extra, f"seed={seed}", "trainer.progress_bar=false",
                                    "eval.knn_every_n_epochs=0"])
    run_dir.mkdir(parents=True)
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        pretrain(cfg)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    return _record(collect(run_dir, cell, seed), row_file)


def _record(row: dict, row_file: Path | None) -> dict:
    if row_file:
        row_file.parent.mkdir(parents=True, exist_ok=True)
        row_file.write_text(json.dumps({k: v for k, v in row.items() if k != "run_dir"}, indent=2))
    return row


def collect(run_dir: Path, cell: Cell, seed: int) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    tr = json.loads((run_dir / "train.json").read_text())
    return {"cell": cell.name, "seed": seed, "linear_top1": ev["linear_top1"], "knn_top1": ev["knn_top1"],
            "train_seconds": tr["train_seconds"], "run_dir": str(run_dir)}


def floors(budget: list[str], seeds: list[int], root: Path) -> list[dict]:
    """Raw pixels and a random-init encoder under the same probe and kNN (cached in ROOT/floors.json)."""
    from sharpshift.data.loader import channel_stats
    from sharpshift.evaluation.knn import knn_top1
    from sharpshift.evaluation.linear import linear_probe
    from sharpshift.evaluation.run import evaluate_backbone, labelled_splits
    from sharpshift.models import build_backbone

    cache = root / "floors.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = load_config("default", budget)
    train, test = labelled_splits(cfg, cfg.data.data_dir)
    train = train.subset(cfg.data.subset, seed=0)
    rows = []
    px_train, px_test = train.images.flatten(1).float() / 255, test.images.flatten(1).float() / 255
    probe = linear_probe(px_train, train.labels, px_test, test.labels, iterations=cfg.eval.linear_max_iter,
                         weight_decay=cfg.eval.linear_weight_decay)
    knn = knn_top1(px_train, train.labels, px_test, test.labels, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    rows.append({"cell": "raw pixels", "seed": 0, "linear_top1": probe.top1, "knn_top1": knn, "train_seconds": 0.0})
    mean, std = channel_stats(train.images)
    for seed in seeds:
        torch.manual_seed(seed)
        enc = build_backbone(cfg.model.backbone, train.channels, cfg.model.width, cfg.model.cifar_stem)
        enc.arch = {"mean": mean, "std": std}
        ev = evaluate_backbone(enc, cfg, train, test)
        rows.append({"cell": "random encoder", "seed": seed, "linear_top1": ev["linear_top1"],
                     "knn_top1": ev["knn_top1"], "train_seconds": 0.0})
    root.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, indent=2))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample std per cell, in first-seen order."""
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    out = []
    for name, rs in cells.items():
        def stat(key):
            vals = [r[key] for r in rs]
            return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        (lm, ls), (km, ks), (tm, _) = stat("linear_top1"), stat("knn_top1"), stat("train_seconds")
        out.append({"cell": name, "n": len(rs), "linear_mean": lm, "linear_std": ls, "knn_mean": km, "knn_std": ks,
                    "train_seconds": tm})
    return out


def render_table(summary: list[dict]) -> str:
    lines = ["| method | seeds | linear top-1 (%) | kNN top-1 (%) | train time (s) |", "|---|---|---|---|---|"]
    for s in summary:
        spread = lambda m, d: f"{100 * m:.2f} ± {100 * d:.2f}" if s["n"] > 1 else f"{100 * m:.2f}"  # noqa: E731
        lines.append(f"| {s['cell']} | {s['n']} | {spread(s['linear_mean'], s['linear_std'])} | "
                     f"{spread(s['knn_mean'], s['knn_std'])} | {s['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def replace_section(doc: Path, marker: str, body: str) -> None:
    """Rewrite the text between <!-- marker:start --> and <!-- marker:end --> (appended if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = doc.read_text() if doc.is_file() else ""
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
