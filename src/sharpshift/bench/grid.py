"""`sharpshift bench accuracy`: a grid of (cell x seed) pretraining runs at one fixed budget, resumable.

A cell is a shipped config plus overrides (CELLS names the ones the docs report; any other shipped config name
is a cell too, and "BASE@1.3x" is BASE trained for 1.3 times the budget's steps: the equal-cost reference of
an add-on whose step costs 1.3 times its base's). Each (cell, seed) gets its own run folder under ROOT; a
folder with eval.json made under the budget's protocol is finished and is read, not run again; any other is
started afresh. Every row records the protocol's fingerprint (bench.protocol), the digests of the splits it
used, its validation figures and its kNN learning curve. The floors (raw pixels, a random encoder) are rows
too, one per seed. Diagnostics (`diagnose ...`) run on the finished folder; their figures and the settings
they ran with are added to the row. Rows name the machine type they were trained on (fp32 runs repeat bit for
bit on one type only); a row replaced by a retrain on another type is kept (KEPT_ROWS) for pairing."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sharpshift import plugins
from sharpshift.bench import grid_tables
from sharpshift.bench.curves import read_curve, render_curves
from sharpshift.bench.floors import FLOORS, evaluate_floor
from sharpshift.bench.paired import Comparison, Metric, compare, render_comparisons
from sharpshift.bench.protocol import PROTOCOL_PRECISION, budget_overrides, check_row, fingerprint, protocol_config
from sharpshift.config import METHOD_DEFAULTS, load_config
from sharpshift.errors import UserError
from sharpshift.mechanisms import FILE as MECHANISMS_FILE
from sharpshift.train import RUN_DIR_ENV

BENCHMARKS = Path(__file__).resolve().parents[3] / "docs" / "benchmarks.json"  # `bench speed`'s step-time ratios
GRID_FILE = "grid.json"  # in a run folder: the protocol fingerprint it was trained under
EQUAL_COST = "@"  # "simclr@1.3x"
README_BUDGET = "reduced"  # the budget whose base-method table the README shows (3 seeds of every base method)


@dataclass
class Cell:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    kind: str = "pretrain"  # or "supervised" (`sharpshift supervised CONFIG`), or "floor" (nothing trained)
    needs_prior: bool = False  # DSA with prior=checkpoint: the prior is the same seed's SimCLR cell
    base: str | None = None  # an add-on cell: the base cell it is compared with
    cost: tuple[str, ...] = ()  # `bench speed` cases whose step-time ratios multiply to its cost over the base
    steps_scale: float = 1.0  # an equal-cost base cell: the budget's steps times this


BASE_CELLS = [Cell(m, m) for m in METHOD_DEFAULTS]  # every base method (its shipped config has its name)
CELLS = {c.name: c for c in [
    *[Cell(name, "simclr", kind="floor") for name in FLOORS], *BASE_CELLS,
    Cell("ssa-clr", "ssa-clr", base="simclr", cost=("sam", "fourier")),
    Cell("sam-simclr", "sam-simclr", base="simclr", cost=("sam",)),
    Cell("sam-byol", "sam-byol", base="byol", cost=("sam",)),
    Cell("mesa-simclr", "mesa-simclr", base="simclr", cost=("mesa",)),
    # E=1: the trajectory term needs more than E epochs, and the reduced budget has 3
    Cell("saf-simclr", "saf-simclr", ["saf.epochs_ago=1"], base="simclr", cost=("saf",)),
    # the long budget's SAF (8 epochs): E = 2, the term on from epoch 2 (30% of 8 and never before E)
    Cell("saf-simclr-e2", "saf-simclr", ["saf.epochs_ago=2"], base="simclr", cost=("saf",)),
    Cell("fourier-simclr", "fourier-simclr", base="simclr", cost=("fourier",)),
    Cell("rsa-simclr", "rsa-simclr", base="simclr", cost=("rsa",)),
    Cell("rsa-byol", "rsa-byol", base="byol", cost=("rsa",)),
    Cell("byol-aa", "byol-aa", base="byol", cost=("rsa",)),  # RSA's baseline: its views, no weighting
    Cell("rsa-byol-constant", "rsa-byol", ["rsa.schedule=constant"], base="byol", cost=("rsa",)),  # beta fixed
    # the shipped AMCL configs clip gradients at 1.0; their bases get the same clip (BASE-clip), so that the
    # comparison changes one thing. amcl-simclr-noclip: without it (its temperatures collapse, docs/results.md)
    *[c for m in METHOD_DEFAULTS if m in plugins.supported_methods("amcl") for c in (
        Cell(f"{m}-clip", m, ["optim.grad_clip=1.0"], base=m),  # compared with its base: the clip's own effect
        Cell(f"amcl-{m}", f"amcl-{m}", base=f"{m}-clip", cost=("amcl",)))],
    Cell("amcl-simclr-noclip", "amcl-simclr", ["optim.grad_clip=0"], base="simclr", cost=("amcl",)),
    # Barlow Twins trains with LARS, whose weight decay erases phi when phi shares the encoder's optimiser
    # (docs/amcl.md, "phi under LARS"), so amcl-barlow gives phi its own Adam; this arm puts phi back in LARS
    # (the shipped config until its rows showed every temperature equal)
    Cell("amcl-barlow-phi-lars", "amcl-barlow", ["amcl.phi_lr=null"], base="barlow-clip", cost=("amcl",)),
    # the official v2.0 losses (their temperatures run to tau_min, docs/amcl.md), same clip as the base; phi in
    # the encoder's optimiser, as the official code has it (said explicitly for Barlow Twins: amcl.phi_lr)
    *[Cell(f"amcl-{m}-official", f"amcl-{m}", ["amcl.form=official", *(["amcl.phi_lr=null"] if m == "barlow" else [])],
           base=f"{m}-clip", cost=("amcl",))
      for m in METHOD_DEFAULTS if m in plugins.supported_methods("amcl")],
    # the control for AMCL-SimSiam's official form (1/tau = 1e5, so the clip at 1.0 binds on every step and SGD takes
    # steps of length lr along the gradient's direction): one head, the clip binding at 1e-4 and lr and weight
    # decay rescaled by 1e4 and 1e-4, so that lr * clipped gradient and lr * weight decay are the shipped ones
    Cell("simsiam-unit-steps", "simsiam", ["optim.grad_clip=0.0001", "optim.lr=500.0", "optim.weight_decay=5.0e-8"],
         base="simsiam"),
    # DSA with the documented default prior, an earlier SimCLR run: the SimCLR cell of the same seed (same
    # pretraining images and budget; its training is not counted in DSA's cost)
    Cell("dsa-simclr", "dsa-simclr", ["dsa.prior=checkpoint"], needs_prior=True, base="simclr", cost=("dsa",)),
    Cell("dsa-byol", "dsa-byol", ["dsa.prior=checkpoint"], needs_prior=True, base="byol", cost=("dsa",)),
    *[Cell(f"dsa-{m}-official", f"dsa-{m}", ["dsa.prior=checkpoint", "dsa.form=official"], needs_prior=True,
           base=m, cost=("dsa",)) for m in ("simclr", "byol")],  # the released relations (they reach M = 1/N)
    # the control: L_w with M = 1/N and s = 1 fixed (pure repulsion between all pairs), no prior needed
    *[Cell(f"dsa-{m}-uniform", f"dsa-{m}", ["dsa.form=uniform", "dsa.prior=random"], base=m, cost=("dsa",))
      for m in ("simclr", "byol")],
    # the composition (claim 7): AMCL + SAF on SimCLR against each alone, every arm with AMCL's clip (so
    # that the comparisons change one add-on each); SAF with the long budget's E = 2
    Cell("saf-simclr-e2-clip", "saf-simclr", ["saf.epochs_ago=2", "optim.grad_clip=1.0"], base="simclr-clip",
         cost=("saf",)),
    Cell("amcl-saf-simclr", "amcl-saf-simclr", ["saf.epochs_ago=2"], base="simclr-clip", cost=("amcl", "saf")),
    Cell("supervised", "simclr", kind="supervised"),
]}
# a cell's rows from other machine types, kept when a retrain on another type replaced its row: each pairs
# with the rows made on its own type (paired.Partners); under docs/grid/<budget>/<cell>/machines/<type>/
KEPT_ROWS = "machines"
PRIOR = "simclr"  # the cell whose run folder of the same seed is DSA's prior
# `diagnose` sub-commands the grid can run on a finished cell, with the arguments it uses (cheap settings:
# no landscapes, no t-SNE; run the command yourself on a run folder for the pictures). Sharpness is measured
# on the plain SimCLR views for every cell, so that a method's own views do not enter its flatness.
DIAGNOSTICS = {  # name: (command, arguments after RUN_DIR, the JSON it writes)
    "sharpness": (["diagnose", "sharpness"], ["--batches", "1", "--hutchinson", "10", "--no-landscapes", "--no-plots",
                                              "--views", "reference"], "sharpness_reference.json"),
    "discriminability": (["diagnose", "discriminability"], ["--tsne-points", "0"], "discriminability.json"),
    # per projection head, the AUC of positive over negative pairs' cosine similarity on 512 test images
    "separation": (["diagnose", "amcl"], ["--no-plot"], "amcl_similarity.json"),
    # 1000 corrupted test images per (corruption, severity), 500 attacked ones
    "robustness": (["evaluate", "--robustness"], ["robustness.test_subset=1000", "robustness.adversarial_subset=500"],
                   "robustness.json"),
}


# the diagnostics' figures compared seed by seed (add-on against base), as the accuracies are
PAIRED_FIGURES = {
    "sharpness": (Metric("Hessian trace", ("diagnostics", "sharpness", "hessian_trace")),
                  Metric("top eigenvalue", ("diagnostics", "sharpness", "hessian_top_eigenvalue")),
                  Metric("SAM-sharpness 0.05", ("diagnostics", "sharpness", "sam_sharpness", "0.05"))),
    "discriminability": (Metric("crowding", ("diagnostics", "discriminability", "crowding")),
                         Metric("variance ratio", ("diagnostics", "discriminability", "variance_ratio"))),
    "separation": (Metric("separation (AUC), mean over heads", ("diagnostics", "separation", "separation_mean")),
                   Metric("separation (AUC), worst head", ("diagnostics", "separation", "separation_min"))),
    "robustness": (Metric("corrupted top-1 (pts)", ("diagnostics", "robustness", "mean_corruption_top1"), 100.0),
                   Metric("relative mCE vs SimCLR", ("diagnostics", "robustness", "relative_mce_vs_simclr"))),
}


def cell_named(name: str) -> Cell:
    if name in CELLS:
        return CELLS[name]
    base, _, scale = name.partition(EQUAL_COST)
    if scale.endswith("x"):
        try:
            of = cell_named(base)
            return Cell(name, of.config, list(of.overrides), steps_scale=float(scale[:-1]))
        except ValueError:
            pass
    return Cell(name, name)


def cell_spec(cell: Cell) -> dict:
    """What a cell trains: a recorded row whose spec differs (the cell was redefined) is made again."""
    return {"config": cell.config, "overrides": list(cell.overrides), "kind": cell.kind,
            "steps_scale": cell.steps_scale}


def same_spec(row: dict, cell: Cell) -> bool:
    return row.get("cell_spec", cell_spec(cell)) == cell_spec(cell)  # rows from before specs were recorded: same


def step_costs(path: Path = BENCHMARKS) -> dict[str, float]:
    """Each `bench speed` case's step-time ratio to its base method's plain step, measured in one process."""
    if not path.is_file():
        return {}
    return {name: case["ratio"] for name, case in json.loads(path.read_text())["cases"].items()}


def equal_cost_name(cell: Cell, costs: dict[str, float]) -> str | None:
    """The base cell at the add-on's cost (the ratio rounded to 0.1, so that add-ons of about the same cost
    share one), or None when the cost is not measured or rounds to 1 (equal epochs is then equal cost)."""
    if cell.base is None or not cell.cost or any(c not in costs for c in cell.cost):
        return None
    ratio = round(math.prod(costs[c] for c in cell.cost), 1)
    return f"{cell.base}{EQUAL_COST}{ratio:.1f}x" if ratio > 1.0 else None


def scaled_budget(overrides: list[str], scale: float) -> list[str]:
    """The budget stretched to `scale` times its steps: the schedule spans the longer run and its last epoch is
    cut at the step count."""
    from sharpshift.data.splits import pretraining_split

    cfg = protocol_config(overrides)
    images = len(pretraining_split(cfg)[0])
    steps = round(cfg.trainer.max_epochs * (images // cfg.data.batch_size) * scale)
    return [f"trainer.max_epochs={math.ceil(cfg.trainer.max_epochs * scale)}", f"trainer.max_steps={steps}"]


def run_cell(cell: Cell, seed: int, budget: list[str], root: Path, extra: list[str] = (),
             record: Path | None = None, diagnostics: list[str] = (), log: Callable[[str], None] = print) -> dict:
    """Run (or read back) one cell under `budget` (protocol overrides included). `record`: a folder of small
    committed JSON rows, so a finished cell survives the run folder (runs/ is not versioned) and is not run
    again on another machine. A recorded row or run folder from another protocol is made again."""
    expected = fingerprint([*budget, *extra])
    row_file = record / cell.name / f"seed{seed}.json" if record else None
    run_dir = root / cell.name / f"seed{seed}"
    row = recorded_row(cell.name, seed, record) if record else None
    if row is not None and row.get("protocol") != expected:
        log(f"{cell.name} seed {seed}: recorded under protocol {row.get('protocol')}, now {expected}: made again")
        row = None
    if row is not None and row.get("precision") not in (None, PROTOCOL_PRECISION):
        log(f"{cell.name} seed {seed}: trained in {row['precision']}, the protocol's is {PROTOCOL_PRECISION}: "
            "made again")
        row = None
        shutil.rmtree(run_dir, ignore_errors=True)
    if row is not None and not same_spec(row, cell):
        log(f"{cell.name} seed {seed}: recorded as {row['cell_spec']}, now defined as {cell_spec(cell)}: made again")
        row = None
        shutil.rmtree(run_dir, ignore_errors=True)
    if row is not None and cell.kind != "floor" and finished(run_dir, expected) and (
            other := folder_machine(run_dir)) and row.get("machine") and other != row["machine"]:
        # the folder was trained again on another machine type (DSA's prior is remade where runs/ is empty): it
        # is not the row's model, so the row becomes the folder's, its diagnostics measured again
        log(f"{cell.name} seed {seed}: recorded on {row['machine']}, its run folder on {other}: the row is the "
            "folder's now")
        diagnostics = [*diagnostics, *[d for d in row.get("diagnostics", {}) if d not in diagnostics]]
        row = _keep_other_type(record, cell.name, seed, row, collect(run_dir, cell, seed, expected))
    if row is None and cell.kind == "floor":
        cfg = load_config(cell.config, [*budget, *extra, f"seed={seed}"])
        row = floor_row(cell.name, seed, evaluate_floor(cell.name, cfg), expected)
    if row is None:
        if not finished(run_dir, expected):
            _remake_folder(cell, seed, budget, extra, root, run_dir, expected, record, log)
        row = collect(run_dir, cell, seed, expected)
    missing = [d for d in diagnostics if d not in row.get("diagnostics", {})]
    if missing and cell.kind != "floor" and not finished(run_dir, expected):
        # the row came from elsewhere (or its folder from another protocol): diagnostics need this row's own
        # model, so train its folder again (same config and seed) before measuring it
        log(f"{cell.name} seed {seed}: no run folder under protocol {expected}; training it again for {missing}")
        _remake_folder(cell, seed, budget, extra, root, run_dir, expected, record, log)
        # a retrained model is not the recorded one (another CPU, other kernels): the row becomes the new
        # folder's, accuracy and every diagnostic alike (those the old row had are measured again, so that none
        # is lost and no row mixes two models' figures); the old row, where it names another machine type, is
        # kept to pair with the rows made on that type
        missing = [*diagnostics, *[d for d in row.get("diagnostics", {}) if d not in diagnostics]]
        row = _keep_other_type(record, cell.name, seed, row, collect(run_dir, cell, seed, expected))
    if missing and finished(run_dir, expected):
        for d in missing:
            diagnose(run_dir, d, extra)
            row.setdefault("diagnostics", {})[d] = {}
            row.setdefault("diagnostics_settings", {})[d] = " ".join([*DIAGNOSTICS[d][0], "RUN", *DIAGNOSTICS[d][1]])
    return _record(refresh_headlines(row, root), row_file)


def _remake_folder(cell: Cell, seed: int, budget: list[str], extra: list[str], root: Path, run_dir: Path,
                   expected: str, record: Path | None, log: Callable[[str], None]) -> None:
    overrides = [*budget, *extra]
    if cell.steps_scale != 1.0:
        overrides += scaled_budget(overrides, cell.steps_scale)
    prior = [f"dsa.prior_path={prior_run(seed, budget, root, extra, record, log)}"] if cell.needs_prior else []
    _train(cell, [*overrides, *cell.overrides, *prior, f"seed={seed}"], run_dir, expected)


def finished(run_dir: Path, expected: str) -> bool:
    grid_file = run_dir / GRID_FILE
    return ((run_dir / "eval.json").is_file() and (run_dir / "train.json").is_file() and grid_file.is_file()
            and json.loads(grid_file.read_text()).get("protocol") == expected)


def refresh_headlines(row: dict, root: Path) -> dict:
    """Re-read each diagnostic's figures from its JSON in the run folder, where the folder still exists (so
    that a change of the headline figures reaches rows recorded before it)."""
    run_dir = root / row["cell"] / f"seed{row['seed']}"
    if not finished(run_dir, row["protocol"]):  # no folder, or one from another protocol: the row as recorded
        return row
    row.update(run_figures(run_dir))  # rows recorded before these figures were
    for name in row.get("diagnostics", {}):
        file = run_dir / DIAGNOSTICS[name][2]
        if file.is_file():
            row["diagnostics"][name] = _headline(name, json.loads(file.read_text()), root, row["seed"])
    return row


def _keep_other_type(record: Path | None, name: str, seed: int, old: dict, new: dict) -> dict:
    """`new` replaces `old`; where `old` names another machine type it is kept, to pair with that type's rows."""
    if record and old.get("machine") and old["machine"] != new.get("machine"):
        _record(old, kept_file(record, name, seed, old["machine"]))
    return new


def kept_file(record: Path, name: str, seed: int, machine: str) -> Path:
    return record / name / KEPT_ROWS / re.sub(r"[^a-z0-9]+", "-", machine.lower()).strip("-") / f"seed{seed}.json"


def kept_rows(name: str, seed: int, record: Path) -> list[dict]:
    """The cell's rows of `seed` kept from other machine types (KEPT_ROWS), each naming its type."""
    return [json.loads(f.read_text()) for f in sorted((record / name / KEPT_ROWS).glob(f"*/seed{seed}.json"))]


def recorded_row(name: str, seed: int, record: Path) -> dict | None:
    row_file = record / name / f"seed{seed}.json"
    return json.loads(row_file.read_text()) if row_file.is_file() else None


def recorded_seeds(name: str, record: Path) -> list[int]:
    return sorted(int(f.stem[4:]) for f in (record / name).glob("seed*.json") if f.stem[4:].isdigit())


def _train(cell: Cell, overrides: list[str], run_dir: Path, protocol: str) -> None:
    from sharpshift.supervised import train_supervised
    from sharpshift.train import pretrain

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run or one from another protocol: start it again
    cfg = load_config(cell.config, [*overrides, "trainer.progress_bar=false", "report.after_training=false",
                                    f"trainer.precision={PROTOCOL_PRECISION}"])
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
    (run_dir / GRID_FILE).write_text(json.dumps({"protocol": protocol, "overrides": overrides}, indent=2))


def prior_run(seed: int, budget: list[str], root: Path, extra: list[str], record: Path | None,
              log: Callable[[str], None]) -> Path:
    """The same seed's SimCLR run folder, run first when the grid has none (its row is recorded like any)."""
    run_dir = root / PRIOR / f"seed{seed}"
    if not finished(run_dir, fingerprint([*budget, *extra])):
        if record and recorded_row(PRIOR, seed, record):  # the row came from elsewhere: remake only the folder
            _remake_folder(CELLS[PRIOR], seed, budget, extra, root, run_dir, fingerprint([*budget, *extra]), record, log)
        # the row follows the folder where it was made on another machine type (run_cell replaces it)
        run_cell(CELLS[PRIOR], seed, budget, root, extra, record=record, log=log)
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
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in grid_tables.NOT_FIGURES}


def _record(row: dict, row_file: Path | None) -> dict:
    if row_file:
        row_file.parent.mkdir(parents=True, exist_ok=True)
        row_file.write_text(json.dumps(row, indent=2))
    return row


EVAL_FIGURES = ("linear_top1", "knn_top1", "val_linear_top1", "val_knn_top1")


def run_figures(run_dir: Path) -> dict:
    """The probe's accuracy on its own training images, the encoder's kNN on its pretraining images and on the
    hold-out (evaluation.run.pretraining_gap), and each add-on's mechanism summary (mechanisms.json)."""
    out = {}
    if (run_dir / "eval.json").is_file():
        ev = json.loads((run_dir / "eval.json").read_text())
        out.update({k: ev[k] for k in ("linear_train_top1", "pretrain_knn_top1", "heldout_knn_top1") if k in ev})
    if (run_dir / MECHANISMS_FILE).is_file():
        out["mechanisms"] = {addon: entry["summary"]
                             for addon, entry in json.loads((run_dir / MECHANISMS_FILE).read_text()).items()}
    return out


def floor_row(name: str, seed: int, ev: dict, protocol: str) -> dict:
    return {"cell": name, "seed": seed, "protocol": protocol, "cell_spec": cell_spec(CELLS[name]),
            **{k: ev.get(k) for k in EVAL_FIGURES},
            "train_seconds": 0.0, "splits": ev["splits"], "diagnostics": {}}


def collect(run_dir: Path, cell: Cell, seed: int, protocol: str) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    tr = json.loads((run_dir / "train.json").read_text())
    return {"cell": cell.name, "seed": seed, "protocol": protocol, "cell_spec": cell_spec(cell),
            **{k: ev.get(k) for k in EVAL_FIGURES}, "train_seconds": tr["train_seconds"], "steps": tr["steps"],
            "precision": tr.get("precision"), "cpu": tr.get("cpu"), "machine": machine_type(tr),
            "val_knn_curve": read_curve(run_dir), **({"grad_clip": tr["grad_clip"]} if "grad_clip" in tr else {}),
            "splits": {**tr.get("splits", {}), **ev.get("splits", {})}, "diagnostics": {}, **run_figures(run_dir)}


def folder_machine(run_dir: Path) -> str | None:
    return machine_type(json.loads((run_dir / "train.json").read_text()))


def machine_type(train: dict) -> str | None:
    """The machine type a run was trained on: its CPU and its bf16 units (None where train.json predates them)."""
    if "bf16_units" not in train:
        return None
    return f"{train.get('cpu')}, bf16 units: {', '.join(train['bf16_units']) or 'none'}"


def comparisons(names: list[str], costs: dict[str, float]) -> list[Comparison]:
    """Each base method against SimCLR; each add-on against its base at equal epochs and, where its cell is in
    the grid, at equal cost; every trained cell against both floors (the random encoder is the higher linear
    floor, raw pixels the higher kNN floor on Fashion-MNIST)."""
    out = [Comparison(m, "simclr", "equal epochs") for m in METHOD_DEFAULTS  # the base methods side by side
           if m != "simclr" and m in names and "simclr" in names]
    for name in names:
        cell = cell_named(name)
        if cell.base in names:
            out.append(Comparison(name, cell.base, "equal epochs"))
            equal = equal_cost_name(cell, costs)
            if equal in names:
                out.append(Comparison(name, equal, f"equal cost (x{equal.rsplit(EQUAL_COST, 1)[1][:-1]})"))
    for name in names:
        for floor in FLOORS:
            if cell_named(name).kind != "floor" and floor in names:
                out.append(Comparison(name, floor, "against the floor"))
    return out


def grid_cells(requested: list[str], costs: dict[str, float], equal_compute: bool) -> list[str]:
    """The floors first, then the requested cells, then the equal-cost base cells they need."""
    names = [f for f in FLOORS if f not in requested] + list(requested)
    if equal_compute:
        for name in requested:
            equal = equal_cost_name(cell_named(name), costs)
            if equal and equal not in names:
                names.append(equal)
    return names


def parse_seeds(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds {seeds!r} is not a comma-separated list of integers; e.g. --seeds 0,1,2") from None


def run_grid(cells: str, seeds: str, budget: str, root: Path, doc: Path, record: Path, diagnose: str, section: str,
             collect_only: bool, data_dir: str | None, command: str, equal_compute: bool = True,
             log: Callable[[str], None] = print) -> None:
    """The results grid: cells x seeds at a fixed budget with the floors and the equal-cost base cells;
    rewrites the doc's section (table, paired comparisons, learning curves, diagnostics) and, for
    README_BUDGET's main section, the README's table of base methods and floors."""
    from sharpshift.config import list_configs

    overrides = budget_overrides(budget)
    requested = [c for c in cells.split(",") if c]
    unknown = [n for n in requested if cell_named(n).config not in list_configs()]
    if unknown:
        raise UserError(f"unknown cell(s) {', '.join(unknown)}; use shipped config names (sharpshift configs)")
    wanted = [] if diagnose == "none" else [d for d in diagnose.split(",") if d]
    if any(d not in DIAGNOSTICS for d in wanted):
        raise UserError(f"unknown diagnostic in --diagnose {diagnose!r}; use {', '.join(DIAGNOSTICS)}")
    seed_list = parse_seeds(seeds)
    extra = [f"data.data_dir={data_dir}"] if data_dir else []
    expected = fingerprint([*overrides, *extra])
    costs = step_costs()
    names = grid_cells(requested, costs, equal_compute)
    rows, missing = [], []
    for name in names:
        for seed in seed_list:
            if collect_only:
                row = recorded_row(name, seed, record / budget)
                if row:
                    row_file = record / budget / name / f"seed{seed}.json"
                    check_row(row, expected, row_file)
                    if not same_spec(row, cell_named(name)):
                        raise UserError(f"{name} seed {seed}: {row_file} was made as {row['cell_spec']}, the cell is "
                                        f"now {cell_spec(cell_named(name))}; run the grid without --collect-only "
                                        "to make it again, or leave the cell out")
                    rows.append(refresh_headlines(row, root / budget))
                else:
                    missing.append(f"{name} seed {seed}")
                continue
            rows.append(run_cell(cell_named(name), seed, overrides, root / budget, extra,
                                 record=record / budget, diagnostics=wanted, log=log))
            log(json.dumps({k: rows[-1][k] for k in ("cell", "seed", *EVAL_FIGURES)}))
    (root / budget).mkdir(parents=True, exist_ok=True)
    (root / budget / "results.json").write_text(json.dumps(rows, indent=2))
    if rows:
        write_section(rows, missing, names, costs, budget, doc, section, wanted, diagnose, command, expected)


def write_section(rows, missing, names, costs, budget, doc, section, wanted, diagnose, command, expected) -> None:
    name = section or f"grid-{budget}"
    summary = grid_tables.summarise(rows)
    table = grid_tables.render_table(summary)
    plot = doc.parent / "results" / f"{name}.png"
    grid_tables.render_plot(summary, plot)
    curves = doc.parent / "results" / f"{name}_curves.png"
    has_curves = render_curves(rows, curves)
    shown = wanted or list(DIAGNOSTICS)
    diagnostics = "" if diagnose == "none" else grid_tables.render_diagnostics(rows, shown)
    pairs = comparisons(names, costs)
    against_base = [c for c in pairs if c.b not in FLOORS]
    paired = render_comparisons(compare(rows, against_base))
    floors = render_comparisons(compare(rows, [c for c in pairs if c.b in FLOORS]))
    for diag in ([] if diagnose == "none" else shown):
        figures = render_comparisons(compare(rows, against_base, PAIRED_FIGURES[diag]), unit="the figure's units",
                                     digits=4)
        diagnostics += f"\n**{diag}, paired**: {figures}" if figures else ""
    body = (f"Command: `{command}` (protocol {expected})\n\n" + table
            + f"\n![linear and kNN top-1 per cell](results/{plot.name})\n"
            + (f"\nNot run (yet): {', '.join(missing)}.\n" if missing else "")
            + (f"\n**Against SimCLR and add-ons against their bases, paired**: {paired}" if paired else "")
            + (f"\n**Against the floors, paired**: {floors}" if floors else "")
            + (f"\n![kNN on the validation hold-out per epoch, mean over seeds](results/{curves.name})\n"
               if has_curves else "")
            + diagnostics)
    grid_tables.replace_section(doc, name, body)
    readme = doc.resolve().parent.parent / "README.md"  # docs/results.md -> the repository's README
    if (budget == README_BUDGET and not section and readme.is_file()
            and "<!-- readme-results:start -->" in readme.read_text()):  # the base methods and the floors
        shown_cells = {*FLOORS, *METHOD_DEFAULTS}
        grid_tables.replace_section(readme, "readme-results", f"`{command}` (protocol {expected})\n\n"
                                    + grid_tables.render_table([s for s in summary if s["cell"] in shown_cells]))
