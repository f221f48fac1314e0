"""`sharpshift bench accuracy`: a grid of (cell x seed) pretraining runs at one fixed budget, resumable.

A cell is a shipped config plus overrides (CELLS names the ones the docs report; any other shipped config name
is a cell too). Each (cell, seed) gets its own run folder under ROOT; a folder that already has eval.json is
finished and is read, not run again; an unfinished one is started afresh. Diagnostics (`diagnose ...`) run on
the finished folder and their figures are added to the cell's row. The floors (raw pixels, random-init
encoder) are evaluated with the same probe."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sharpshift import plugins
from sharpshift.config import METHOD_DEFAULTS, load_config
from sharpshift.errors import UserError
from sharpshift.train import RUN_DIR_ENV


@dataclass
class Cell:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    kind: str = "pretrain"  # or "supervised" (`sharpshift supervised CONFIG`)
    needs_prior: bool = False  # DSA with prior=checkpoint: the grid trains one prior run per budget


BASE_CELLS = [Cell(m, m) for m in METHOD_DEFAULTS]  # every base method (its shipped config has its name)
CELLS = {c.name: c for c in [
    *BASE_CELLS,
    Cell("ssa-clr", "ssa-clr"), Cell("sam-byol", "sam-byol"), Cell("mesa-simclr", "mesa-simclr"),
    # E=1: the trajectory term needs more than E epochs, and the grid's budgets are 3-5 epochs
    Cell("saf-simclr", "saf-simclr", ["saf.epochs_ago=1"]),
    Cell("fourier-simclr", "fourier-simclr"), Cell("rsa-byol", "rsa-byol"), Cell("rsa-simclr", "rsa-simclr"),
    *[Cell(f"amcl-{m}", f"amcl-{m}") for m in METHOD_DEFAULTS if m in plugins.supported_methods("amcl")],
    # DSA with the documented default prior: an earlier SimCLR run (the grid trains it once per budget)
    Cell("dsa-simclr", "dsa-simclr", ["dsa.prior=checkpoint"], needs_prior=True),
    Cell("dsa-byol", "dsa-byol", ["dsa.prior=checkpoint"], needs_prior=True),
    Cell("supervised", "simclr", kind="supervised"),
    # about SSA-CLR's wall time (its SAM step costs ~1.9x SimCLR's): plain SimCLR with 5/3 of the epochs
    Cell("simclr-5ep", "simclr", ["trainer.max_epochs=5"]),
]}
# the DSA prior: a SimCLR run on another subset draw (seed 100), trained once per budget, never evaluated
PRIOR_CELL = Cell("dsa-prior", "simclr", ["seed=100", "eval.after_training=false"])
# `diagnose` sub-commands the grid can run on a finished cell, with the arguments it uses (cheap settings:
# no landscapes, no t-SNE; run the command yourself on a run folder for the pictures)
DIAGNOSTICS = {  # name: (command, arguments after RUN_DIR, the JSON it writes)
    "sharpness": (["diagnose", "sharpness"], ["--batches", "1", "--hutchinson", "10", "--no-landscapes", "--no-plots"],
                  "sharpness.json"),
    "discriminability": (["diagnose", "discriminability"], ["--tsne-points", "0"], "discriminability.json"),
    # 1000 corrupted test images per (corruption, severity), 500 attacked ones
    "robustness": (["evaluate", "--robustness"], ["robustness.test_subset=1000", "robustness.adversarial_subset=500"],
                   "robustness.json"),
}


NOT_FIGURES = ("seconds", "test_size")  # bookkeeping in the diagnostics' JSON, not results


def cell_named(name: str) -> Cell:
    return CELLS.get(name) or Cell(name, name)
BUDGETS = {
    # the README demo's budget: full Fashion-MNIST, 5 epochs
    "default": ["trainer.max_epochs=5"],
    # the reduced budget the method issues compare at
    "reduced": ["data.subset=10000", "data.test_subset=5000", "trainer.max_epochs=3"],
}


def run_cell(cell: Cell, seed: int, budget: list[str], root: Path, extra: list[str] = (),
             record: Path | None = None, diagnostics: list[str] = ()) -> dict:
    """Run (or read back) one cell. `record`: a folder of small committed JSON rows, so a finished cell
    survives the run folder (runs/ is not versioned) and is not run again on another machine."""
    row_file = record / cell.name / f"seed{seed}.json" if record else None
    run_dir = root / cell.name / f"seed{seed}"
    row = recorded_row(cell.name, seed, record) if record else None
    finished = (run_dir / "eval.json").is_file() and (run_dir / "train.json").is_file()
    if row is None and not finished:
        prior = [f"dsa.prior_path={train_prior(budget, root, extra)}"] if cell.needs_prior else []
        _train(cell, [*budget, *cell.overrides, *extra, *prior, f"seed={seed}"], run_dir)
    if row is None:
        row = collect(run_dir, cell, seed)
    missing = [d for d in diagnostics if d not in row.get("diagnostics", {})]
    if missing and (run_dir / "backbone.safetensors").is_file():
        for d in missing:
            diagnose(run_dir, d, extra)
            row.setdefault("diagnostics", {})[d] = {}
    row.pop("run_dir", None)
    return _record(refresh_headlines(row, root), row_file)


def refresh_headlines(row: dict, root: Path) -> dict:
    """Re-read each diagnostic's figures from its JSON in the run folder, where the folder still exists (so
    that a change of the headline figures reaches rows recorded before it)."""
    run_dir = root / row["cell"] / f"seed{row['seed']}"
    for name in row.get("diagnostics", {}):
        file = run_dir / DIAGNOSTICS[name][2]
        if file.is_file():
            row["diagnostics"][name] = _headline(name, json.loads(file.read_text()), root, row["seed"])
    return row


def recorded_row(name: str, seed: int, record: Path) -> dict | None:
    row_file = record / name / f"seed{seed}.json"
    return json.loads(row_file.read_text()) if row_file.is_file() else None


def _train(cell: Cell, overrides: list[str], run_dir: Path) -> None:
    from sharpshift.supervised import train_supervised
    from sharpshift.train import pretrain

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    cfg = load_config(cell.config, [*overrides, "trainer.progress_bar=false", "eval.knn_every_n_epochs=0"])
    run_dir.mkdir(parents=True)
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        train_supervised(cfg) if cell.kind == "supervised" else pretrain(cfg)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def train_prior(budget: list[str], root: Path, extra: list[str]) -> Path:
    run_dir = root / PRIOR_CELL.name
    if not (run_dir / "backbone.safetensors").is_file():
        _train(PRIOR_CELL, [*budget, *extra, *PRIOR_CELL.overrides], run_dir)
    return run_dir


def diagnose(run_dir: Path, name: str, extra: list[str]) -> None:
    """Run one diagnostic command on a finished run folder, in a fresh process (it writes its JSON there)."""
    command, args, out = DIAGNOSTICS[name]
    data = [f"--data-dir={e.split('=', 1)[1]}" for e in extra if e.startswith("data.data_dir=")]
    cmd = [sys.executable, "-m", "sharpshift.cli", *command, str(run_dir), *args, *data]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(cmd)} failed: {tail}")


def _headline(name: str, result: dict, root: Path, seed: int) -> dict:
    """The figures the tables use (the full JSON stays in the run folder). Robustness adds FGSM and the
    mCE against the SimCLR cell of the same seed (the reference run of the comparison), when it exists."""
    if name == "robustness":
        from sharpshift.evaluation.robustness import corruption_errors, summary
        out = summary(result)
        adv = result["adversarial"]
        out["fgsm_top1"] = {f"{e:g}/255": round(a, 4) for e, a in zip(adv["epsilons_255"], adv["fgsm_top1"])}
        reference = root / "simclr" / f"seed{seed}" / DIAGNOSTICS["robustness"][2]
        if reference.is_file():
            errors = corruption_errors(result, json.loads(reference.read_text()))
            out["mce_vs_simclr"] = round(errors["mce"], 4)
            if errors["relative_mce"] is not None:
                out["relative_mce_vs_simclr"] = round(errors["relative_mce"], 4)
        return out
    if name == "sharpness":
        return {k: result[k] for k in ("loss", "sam_sharpness", "hessian_top_eigenvalue", "hessian_trace")}
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in NOT_FIGURES}


def _record(row: dict, row_file: Path | None) -> dict:
    if row_file:
        row_file.parent.mkdir(parents=True, exist_ok=True)
        row_file.write_text(json.dumps({k: v for k, v in row.items() if k != "run_dir"}, indent=2))
    return row


def collect(run_dir: Path, cell: Cell, seed: int) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    tr = json.loads((run_dir / "train.json").read_text())
    return {"cell": cell.name, "seed": seed, "linear_top1": ev["linear_top1"], "knn_top1": ev["knn_top1"],
            "train_seconds": tr["train_seconds"], "run_dir": str(run_dir), "diagnostics": {}}


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
    cfg = load_config("simclr", budget)  # the cells' protocol: the full train split, no validation hold-out
    train, test = labelled_splits(cfg, cfg.data.data_dir)  # the splits every run's evaluation uses
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


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def render_diagnostics(rows: list[dict], only: list[str] = ()) -> str:
    """One table per diagnostic found in the rows (or in `only`): mean ± sample std over seeds of each numeric
    figure (nested dicts, e.g. sam_sharpness per rho, become one column each)."""
    out = []
    for name in only or DIAGNOSTICS:
        per_cell: dict[str, list[dict]] = {}
        for r in rows:
            if name in r.get("diagnostics", {}):
                per_cell.setdefault(r["cell"], []).append(_flatten(r["diagnostics"][name]))
        if not per_cell:
            continue
        keys = list(dict.fromkeys(k for fs in per_cell.values() for f in fs for k in f))
        out += [f"\n**{name}** (mean ± std over seeds)\n", "| cell | seeds | " + " | ".join(keys) + " |",
                "|---" * (len(keys) + 2) + "|"]
        for cell, fs in per_cell.items():
            vals = [_mean_std([f[k] for f in fs if k in f]) if any(k in f for f in fs) else "-" for k in keys]
            out.append(f"| {cell} | {len(fs)} | " + " | ".join(vals) + " |")
    return "\n".join(out) + ("\n" if out else "")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k} "))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_FIGURES:
            flat[f"{prefix}{k}"] = float(v)
    return flat


def render_plot(summary: list[dict], path: Path) -> None:
    """Linear and kNN top-1 per cell, mean with the sample std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["cell"] for s in summary]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4))
    x = range(len(names))
    for shift, key, label in ((-0.2, "linear", "linear probe"), (0.2, "knn", "kNN")):
        ax.bar([i + shift for i in x], [100 * s[f"{key}_mean"] for s in summary], 0.4, label=label,
               yerr=[100 * s[f"{key}_std"] for s in summary], capsize=2)
    low = min(100 * min(s["linear_mean"], s["knn_mean"]) for s in summary)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_xticks(list(x), names, rotation=45, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_grid(cells: str, seeds: str, budget: str, root: Path, doc: Path, record: Path, diagnose: str, section: str,
             collect_only: bool, data_dir: str | None, command: str, log: Callable[[str], None] = print) -> None:
    """The results grid: cells x seeds at a fixed budget, plus the raw-pixel and random-encoder floors
    (`sharpshift bench accuracy`); rewrites the doc's section and, for the default budget, the README table."""
    from sharpshift.config import list_configs

    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; use one of {sorted(BUDGETS)}")
    names = [c for c in cells.split(",") if c]
    unknown = [n for n in names if cell_named(n).config not in list_configs()]
    if unknown:
        raise UserError(f"unknown cell(s) {', '.join(unknown)}; use shipped config names (sharpshift configs)")
    wanted = [] if diagnose == "none" else [d for d in diagnose.split(",") if d]
    if any(d not in DIAGNOSTICS for d in wanted):
        raise UserError(f"unknown diagnostic in --diagnose {diagnose!r}; use {', '.join(DIAGNOSTICS)}")
    seed_list = [int(s) for s in seeds.split(",") if s]
    extra = [f"data.data_dir={data_dir}"] if data_dir else []
    rows, missing = [], []
    for name in names:
        for seed in seed_list:
            if collect_only:
                row = recorded_row(name, seed, record / budget)
                if row:
                    rows.append(refresh_headlines(row, root / budget))
                else:
                    missing.append(f"{name} seed {seed}")
                continue
            rows.append(run_cell(cell_named(name), seed, BUDGETS[budget] + extra, root / budget,
                                 record=record / budget, diagnostics=wanted))
            log(json.dumps(rows[-1]))
    rows += floors(BUDGETS[budget] + extra, seed_list, root / budget)
    (root / budget).mkdir(parents=True, exist_ok=True)
    (root / budget / "results.json").write_text(json.dumps(rows, indent=2))
    name = section or f"grid-{budget}"
    summary = summarise(rows)
    table = render_table(summary)
    plot = doc.parent / "results" / f"{name}.png"
    render_plot(summary, plot)
    diagnostics = "" if diagnose == "none" else render_diagnostics(rows, wanted)
    body = (f"Command: `{command}`\n\n" + table + f"\n![linear and kNN top-1 per cell](results/{plot.name})\n"
            + (f"\nNot run (yet): {', '.join(missing)}.\n" if missing else "") + diagnostics)
    replace_section(doc, name, body)
    readme = Path("README.md")
    if budget == "default" and readme.is_file() and "<!-- readme-results:start -->" in readme.read_text():
        replace_section(readme, "readme-results", table)  # the README's table is the demo budget's
