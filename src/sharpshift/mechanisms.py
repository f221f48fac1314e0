"""Mechanism checks: is each add-on's mechanism on in this run?

Every `trainer.log_every_n_steps` optimizer steps, each enabled add-on with an entry in
sharpshift.plugins.MECHANISMS reports figures (AMCL's temperature quantiles, DSA's relation statistics, ...);
at the end of training the check of each add-on turns its series into a summary and, when the mechanism is
off, a one-line warning. All of it goes to the run's mechanisms.json, the warnings are printed and the
report shows both. A resumed run records the steps of its own session only.

A figure is a float, or a list of floats (one per head).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FILE = "mechanisms.json"


@dataclass
class Mechanism:
    """probe(method, ctx, out) -> figures or None, called once per optimizer step when due; check(series) ->
    (summary, warnings), series = {figure: [(step, value), ...]}."""

    probe: Callable[[Any, Any, Any], dict | None]
    check: Callable[[dict], tuple[dict, list[str]]]


class MechanismLog:
    def __init__(self, every: int):
        self.every = every
        self.series: dict[str, dict[str, list]] = {}

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(self, addon: str, step: int, figures: dict[str, Any]) -> None:
        per_addon = self.series.setdefault(addon, {})
        for name, value in figures.items():
            per_addon.setdefault(name, []).append((int(step), _plain(value)))

    def results(self, table: dict[str, Mechanism]) -> dict[str, dict]:
        out = {}
        for addon, series in self.series.items():
            summary, warnings = table[addon].check(series)
            out[addon] = {"summary": summary, "warnings": warnings, "series": series}
        return out


def _plain(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return float(value)


def values(series: dict, name: str) -> list:
    """The recorded values of one figure, in step order."""
    return [v for _, v in series.get(name, [])]


def mean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def write(run_dir: Path, results: dict, write_text: Callable[[Path, str], None]) -> list[str]:
    """mechanisms.json, and the warnings, one line each (returned for printing)."""
    write_text(Path(run_dir) / FILE, json.dumps(results, indent=1))
    return [f"warning: {w}" for r in results.values() for w in r["warnings"]]


def read(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else None
