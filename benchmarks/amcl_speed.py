"""Step-time ratio of AMCL (C heads + adaptive temperatures) to the single-head method, per base method.

Both variants are built from the same shipped `amcl-<method>` config (so the same optimizer and gradient
clipping), one with amcl.enabled=false, and timed in ONE process (one thread) in alternating rounds, so that
machine noise hits both alike. Each step is timed twice: wall clock, and the CPU time of this process, which on a
shared machine is the steadier measure of the work a step does (other processes steal wall time, not CPU time).
The ratio of the median post-warm-up step times is what counts; absolute times are for this machine only.
`sharpshift bench speed` measures AMCL on SimCLR only (into docs/benchmarks.md); this script covers all four
base methods. Run it on a quiet machine:

    .venv/bin/python benchmarks/amcl_speed.py [--methods simclr,moco,barlow,simsiam] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from sharpshift.bench.speed import machine
from sharpshift.config import load_config
from sharpshift.data.loader import PretrainData
from sharpshift.data.registry import load_dataset
from sharpshift.train import build_module, build_trainer

METHODS = ("simclr", "moco", "barlow", "simsiam")


class StepClock(L.Callback):
    """Wall and process-CPU time of each training step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.wall.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])


def timed_steps(cfg, train, steps: int, tmp: Path) -> StepClock:
    clock = StepClock()
    module = build_module(cfg, train)
    trainer = build_trainer(cfg, tmp, max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                            callbacks=[clock], enable_progress_bar=False)
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed))
    return clock


def variant(method: str, amcl: bool, batch_size: int):
    cfg = load_config(f"amcl-{method}", [f"amcl.enabled={str(amcl).lower()}", f"data.batch_size={batch_size}",
                                         "eval.knn_every_n_epochs=0", "trainer.progress_bar=false",
                                         "trainer.num_threads=1"])
    return cfg


def measure(method: str, train, batch_size: int, rounds: int, steps: int, warmup: int) -> dict:
    times = {(v, k): [] for v in ("single", "amcl") for k in ("wall", "cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, on in (("single", False), ("amcl", True)):
                clock = timed_steps(variant(method, on, batch_size), train, steps + warmup, Path(tmp))
                times[name, "wall"] += clock.wall[warmup:]
                times[name, "cpu"] += clock.cpu[warmup:]
    med = {key: statistics.median(v) for key, v in times.items()}
    row = {"method": method, "steps_each": len(times["amcl", "cpu"])}
    for kind in ("cpu", "wall"):
        row[f"single_{kind}_s"] = round(med["single", kind], 4)
        row[f"amcl_{kind}_s"] = round(med["amcl", kind], 4)
        row[f"ratio_{kind}"] = round(med["amcl", kind] / med["single", kind], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("fashion-mnist", "train")
    t0 = time.time()
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        rows.append(measure(method, train, args.batch_size, args.rounds, args.steps, args.warmup))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine(), "batch_size": args.batch_size, "backbone": "convnet (width 32)",
              "precision": "fp32", "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
              "wall_s": round(time.time() - t0, 1), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print("| method | single head, CPU s/step | AMCL 3 heads, CPU s/step | ratio (CPU) | ratio (wall) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['single_cpu_s']} | {r['amcl_cpu_s']} | {r['ratio_cpu']}x | {r['ratio_wall']}x |")


if __name__ == "__main__":
    main()
