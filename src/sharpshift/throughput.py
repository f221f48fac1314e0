"""How fast a run really went, for train.json: warm-up, steady state, whole run and the slowest stretch.

A whole-run average hides a slow start (the first steps allocate and tune kernels) and a stretch where
another job shared the CPU; the steady figure and the slowest stretch show both.
"""
from __future__ import annotations

import statistics
import sys
import time

import lightning as L

WARMUP_STEPS = 10  # steps counted as warm-up (fewer when the run is shorter)
STRETCH_STEPS = 20  # the window of consecutive steps the slowest stretch is taken over
SLOWDOWN_WARNING = 3.0  # a stretch this many times slower than the run's median step is reported once


class Throughput(L.Callback):
    """Records the end time of every training step of this session."""

    def __init__(self) -> None:
        self.start = 0.0
        self.ends: list[float] = []
        self.warned = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.start, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        n = len(self.ends)
        if not self.warned and n >= WARMUP_STEPS + 2 * STRETCH_STEPS and n % STRETCH_STEPS == 0:
            factor = slowdown(self.ends[WARMUP_STEPS:])
            if factor >= SLOWDOWN_WARNING and trainer.is_global_zero:
                self.warned = True
                print(f"warning: the last {STRETCH_STEPS} steps ran {factor:.1f}x slower than this run's median "
                      "step; another job is probably sharing the CPU (start runs that share the cores with "
                      "OMP_WAIT_POLICY=PASSIVE, see docs/benchmarks.md)", file=sys.stderr, flush=True)

    def summary(self, images_per_step: int, views_per_image: int, train_seconds: float) -> dict:
        return speed_summary(self.start, self.ends, images_per_step, views_per_image, train_seconds)


def slowdown(ends: list[float]) -> float:
    """Mean period of the last STRETCH_STEPS steps over the median period of all of them (1.0 when steady)."""
    periods = [b - a for a, b in zip(ends, ends[1:])]
    if len(periods) < 2 * STRETCH_STEPS:
        return 1.0
    return statistics.mean(periods[-STRETCH_STEPS:]) / max(statistics.median(periods), 1e-9)


def speed_summary(start: float, ends: list[float], images_per_step: int, views_per_image: int,
                  train_seconds: float) -> dict:
    """Step periods (end to end, so data loading, checkpoints and the epoch-end monitor count) -> figures."""
    steps = len(ends)
    whole = steps * images_per_step / max(train_seconds, 1e-9)
    out = {"images_per_step": images_per_step, "views_per_image": views_per_image, "steps": steps,
           "whole_run_images_per_second": round(whole, 1), "whole_run_views_per_second": round(whole * views_per_image, 1)}
    if not steps:
        return out
    warmup = min(WARMUP_STEPS, steps // 2)
    periods = [b - a for a, b in zip([start, *ends[:-1]], ends)]
    steady = periods[warmup:] or periods
    rate = images_per_step / statistics.median(steady)
    window = min(STRETCH_STEPS, len(steady))
    sums = [sum(steady[i:i + window]) for i in range(len(steady) - window + 1)]
    worst = max(range(len(sums)), key=sums.__getitem__)
    out.update(
        warmup_steps=warmup, warmup_seconds=round(ends[warmup - 1] - start if warmup else 0.0, 2),
        steady_images_per_second=round(rate, 1), steady_views_per_second=round(rate * views_per_image, 1),
        steady_how=f"from the median step period after the first {warmup} steps",
        slowest_stretch={"first_step": warmup + worst, "steps": window, "seconds": round(sums[worst], 2),
                         "images_per_second": round(window * images_per_step / sums[worst], 1)})
    return out
