"""Everything a report shows about one run folder, read once: config, results, logs, diagnostics."""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from sharpshift.errors import UserError

# Files with their own section; every other *.json / *.png in the folder counts as a diagnostic.
OWN_FILES = {"config.yaml", "eval.json", "train.json", "backbone.json", "robustness.json", "hparams.yaml",
             "mechanisms.json"}
SKIP_DIRS = {"checkpoints", "tensorboard", "logs", "report_files", "__pycache__"}
MAX_JSON_BYTES = 5_000_000
ASSET_DIR = "report_files"

Series = tuple[list[float], list[float]]  # (steps, values)


@dataclass
class RunData:
    path: Path
    label: str
    config_text: str = ""
    config: object = None  # sharpshift.config.Config, or None when config.yaml cannot be read
    config_error: str = ""
    eval: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    robustness: dict | None = None
    mechanisms: dict | None = None  # mechanisms.json: add-on -> {summary, warnings, series}
    metrics: dict[str, Series] = field(default_factory=dict)
    diagnostics: dict[str, dict] = field(default_factory=dict)  # path relative to the run -> parsed JSON
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why it was not parsed
    images: list[str] = field(default_factory=list)  # PNGs, relative to the run

    def flat_config(self) -> dict:
        return flatten_dataclass(self.config) if self.config is not None else {}


def flatten_dataclass(obj, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten_dataclass(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def read_metrics(path: Path) -> dict[str, Series]:
    """Lightning's CSV log -> column -> (steps, values), skipping the empty cells of other columns."""
    series: dict[str, Series] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None or cell in ("", None):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
    return series


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {"value": data}


def _diagnostic_files(run_dir: Path, suffix: str) -> list[Path]:
    found = []
    for p in sorted(run_dir.rglob(f"*{suffix}")):
        rel = p.relative_to(run_dir)
        if len(rel.parts) > 3 or any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if len(rel.parts) == 1 and rel.name in OWN_FILES:
            continue
        if p.is_file() and not p.name.startswith("."):
            found.append(p)
    return found


def load_run(path: str | Path, label: str | None = None) -> RunData:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder made by `sharpshift pretrain`")
    run = RunData(run_dir, label or run_dir.name)
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        run.config_text = cfg_file.read_text()
        try:
            from sharpshift.config import load_config

            run.config = load_config(str(cfg_file))
        except UserError as e:  # e.g. written by a newer version with other keys: still show the text
            run.config_error = str(e)
    for name in ("eval", "train", "robustness", "mechanisms"):
        file = run_dir / f"{name}.json"
        if file.is_file():
            try:
                setattr(run, name, _read_json(file))
            except (json.JSONDecodeError, OSError) as e:
                run.unreadable[file.name] = str(e)
    metrics = run_dir / "logs" / "metrics.csv"
    if metrics.is_file():
        run.metrics = read_metrics(metrics)
    for p in _diagnostic_files(run_dir, ".json"):
        rel = str(p.relative_to(run_dir))
        if p.stat().st_size > MAX_JSON_BYTES:
            run.unreadable[rel] = f"{p.stat().st_size / 1e6:.0f} MB, too large to show"
            continue
        try:
            run.diagnostics[rel] = _read_json(p)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            run.unreadable[rel] = str(e).splitlines()[0]
    run.images = [str(p.relative_to(run_dir)) for p in _diagnostic_files(run_dir, ".png")]
    return run


def flatten_json(obj, prefix: str = "", limit: int = 300) -> list[tuple[str, object]]:
    """(dotted key, value) rows for a table: nested dicts descend, short number lists stay inline,
    long lists are summarised, lists of dicts descend with [i] (the first 20)."""
    rows: list[tuple[str, object]] = []

    def visit(value, key: str) -> None:
        if len(rows) >= limit:
            return
        if isinstance(value, dict):
            if not value:
                rows.append((key, "{}"))
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            if value and all(isinstance(v, dict) for v in value):
                for i, v in enumerate(value[:20]):
                    visit(v, f"{key}[{i}]")
                if len(value) > 20:
                    rows.append((key, f"... {len(value) - 20} more entries"))
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and len(value) > 8:
                rows.append((key, f"{len(value)} values, min {min(value):.4g}, max {max(value):.4g}, "
                                  f"last {value[-1]:.4g}"))
            else:
                rows.append((key, "[" + ", ".join(_short(v) for v in value[:8])
                             + (", ..." if len(value) > 8 else "") + "]"))
        else:
            rows.append((key, value))

    visit(obj, prefix)
    if len(rows) >= limit:
        rows.append(("...", f"cut at {limit} rows"))
    return rows


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."
