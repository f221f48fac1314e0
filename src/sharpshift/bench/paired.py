"""Paired comparisons between grid cells: seed k fixes a cell's pretraining subset, its initialisation and
its view draws' seed, so two cells are compared seed by seed (the difference a - b on each seed both have).

The interval is Student's t on the per-seed differences (scipy.stats.t), two-sided 95%; a difference is
"supported" only when the interval excludes 0. Intervals are per comparison (not adjusted for how many a
table holds; each table states its count, so a reader can judge how many would exclude 0 by chance).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
METRICS = (("linear_top1", "linear"), ("knn_top1", "kNN"))


@dataclass(frozen=True)
class Interval:
    diffs: tuple[float, ...]  # per seed, in the seeds' order
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if len(self.diffs) < 2:
            return "one seed"
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "not shown"


def paired_interval(diffs: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of the differences and its t interval (a zero-width one for a single seed or equal differences)."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        return Interval(tuple(diffs), mean, math.nan, math.nan)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return Interval(tuple(diffs), mean, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    a: str  # the cell compared ...
    b: str  # ... with this one (its base, its equal-cost base, or a floor)
    kind: str  # "equal epochs", "equal cost (x1.3)", "against the floor"


def by_seed(rows: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        out.setdefault(r["cell"], {})[r["seed"]] = r
    return out


def compare(rows: list[dict], comparisons: list[Comparison]) -> list[tuple[Comparison, list[int], dict]]:
    """For each comparison whose cells share seeds: (it, the seeds, {metric: Interval in points})."""
    cells = by_seed(rows)
    out = []
    for c in comparisons:
        seeds = sorted(set(cells.get(c.a, {})) & set(cells.get(c.b, {})))
        if not seeds:
            continue
        intervals = {key: paired_interval([100 * (cells[c.a][s][key] - cells[c.b][s][key]) for s in seeds])
                     for key, _ in METRICS}
        out.append((c, seeds, intervals))
    return out


def _fmt(x: float) -> str:
    return f"{x:+.2f}"


def render_comparisons(results: list[tuple[Comparison, list[int], dict]]) -> str:
    """The paired table: per-seed differences (points), mean, 95% t interval and verdict, per metric."""
    if not results:
        return ""
    lines = [f"{len(results)} comparisons x {len(METRICS)} metrics, differences a - b in points of top-1 on the "
             "test split, paired by seed; 95% Student-t interval over seeds, not adjusted for the number of "
             "comparisons; *higher*/*lower* only where the interval excludes 0.\n",
             "| a | b | compared at | seeds | " + " | ".join(f"{m}: per seed | {m}: mean [95% CI] | {m}"
                                                          for _, m in METRICS) + " |",
             "|---" * (4 + 3 * len(METRICS)) + "|"]
    for c, seeds, intervals in results:
        cols = []
        for key, _ in METRICS:
            iv = intervals[key]
            ci = f"{_fmt(iv.mean)} [{_fmt(iv.low)}, {_fmt(iv.high)}]" if len(seeds) > 1 else _fmt(iv.mean)
            verdict = f"*{iv.verdict}*" if iv.verdict in ("higher", "lower") else iv.verdict
            cols += [" / ".join(_fmt(d) for d in iv.diffs), ci, verdict]
        lines.append(f"| {c.a} | {c.b} | {c.kind} | {','.join(map(str, seeds))} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
