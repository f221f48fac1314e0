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


@dataclass(frozen=True)
class Metric:
    label: str
    path: tuple[str, ...]  # keys into a row: ("knn_top1",), ("diagnostics", "sharpness", "hessian_trace")
    scale: float = 1.0  # 100: top-1 fractions as points

    def of(self, row: dict) -> float | None:
        value = row
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return None if value is None else self.scale * float(value)


ACCURACY = (Metric("linear", ("linear_top1",), 100.0), Metric("kNN", ("knn_top1",), 100.0))


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


# a row kept from another machine type (grid.KEPT_ROWS): not a cell's row of its own, only a partner for rows
# of that type; fp32 rows repeat bit for bit on one machine type and not across types (docs/results.md)
KEPT = "kept_for_pairing"


def by_seed(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """{cell: {seed: row}} of each cell's own rows (rows kept for pairing left out)."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if not r.get(KEPT):
            out.setdefault(r["cell"], {})[r["seed"]] = r
    return out


class Partners:
    """A cell's row to pair with another row of the same seed: the one made on the same machine type where one
    is kept, else the cell's own row."""

    def __init__(self, rows: list[dict]):
        self.own = by_seed(rows)
        self.kept = {(r["cell"], r["seed"], r.get("machine")): r for r in rows if r.get(KEPT)}

    def of(self, cell: str, seed: int, like: dict) -> dict | None:
        own = self.own.get(cell, {}).get(seed)
        if own is None or own.get("machine") == like.get("machine"):
            return own
        return self.kept.get((cell, seed, like.get("machine")), own)


def compare(rows: list[dict], comparisons: list[Comparison], metrics: tuple[Metric, ...] = ACCURACY
            ) -> list[tuple[Comparison, list[int], dict]]:
    """For each comparison whose cells share seeds with every metric: (it, the seeds, {label: Interval}); each
    of a's rows is paired with b's row of its seed and, where one is kept, of its machine type."""
    cells, partners = by_seed(rows), Partners(rows)
    out = []
    for c in comparisons:
        pairs = {s: (r, partners.of(c.b, s, r)) for s, r in sorted(cells.get(c.a, {}).items())}
        seeds = [s for s, (x, y) in pairs.items() if y is not None and all(m.of(x) is not None and m.of(y) is not None
                                                                         for m in metrics)]
        if seeds:
            out.append((c, seeds, {m.label: paired_interval([m.of(pairs[s][0]) - m.of(pairs[s][1]) for s in seeds])
                                   for m in metrics}))
    return out


def render_comparisons(results: list[tuple[Comparison, list[int], dict]], unit: str = "points of top-1 on the "
                       "test split", digits: int = 2) -> str:
    """The paired table: per-seed differences, mean, 95% t interval and verdict, per metric."""
    if not results:
        return ""
    labels = list(results[0][2])
    fmt = lambda x: f"{x:+.{digits}f}"  # noqa: E731
    lines = [f"{len(results)} comparisons x {len(labels)} metrics; differences a - b in {unit}, paired by seed; "
             "95% Student-t interval over seeds, not adjusted for the number of comparisons; *higher*/*lower* "
             "only where the interval excludes 0.\n",
             "| a | b | compared at | seeds | " + " | ".join(f"{m}: per seed | {m}: mean [95% CI] | {m}"
                                                          for m in labels) + " |",
             "|---" * (4 + 3 * len(labels)) + "|"]
    for c, seeds, intervals in results:
        cols = []
        for label in labels:
            iv = intervals[label]
            ci = f"{fmt(iv.mean)} [{fmt(iv.low)}, {fmt(iv.high)}]" if len(seeds) > 1 else fmt(iv.mean)
            verdict = f"*{iv.verdict}*" if iv.verdict in ("higher", "lower") else iv.verdict
            cols += [" / ".join(fmt(d) for d in iv.diffs), ci, verdict]
        lines.append(f"| {c.a} | {c.b} | {c.kind} | {','.join(map(str, seeds))} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
