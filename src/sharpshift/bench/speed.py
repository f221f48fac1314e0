"""`sharpshift bench speed`: what a training step costs, measured in one process.

Side by side, for the default backbone and batch: a bare PyTorch loop doing the plain SimCLR step (the
yardstick for framework overhead), every base method and every add-on (as images/s and as a ratio to the
plain step of its base method), the machine's peak matmul throughput against the step's achieved FLOP/s,
and the time split of one plain SimCLR step.

How it is measured: every case runs in rounds, the cases interleaved within each round (bare, split,
simclr, moco, ..., +SAM, ...), so that machine noise hits all alike; a figure is the median of the
post-warm-up steps over all rounds. Each case trains on a subset of two batches, so one epoch is two steps
and the warm-up is one epoch: SAF's buffer is filled, DSA's originals are cached, and every timed step of
SAF and MESA has its term on. The online probe and the kNN monitor are off (they would add the same cost
to every case and pull the ratios towards 1). Absolute times are for this machine only.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sharpshift.config import Config, load_config
from sharpshift.errors import UserError
from sharpshift.methods import METHODS
from sharpshift.precision_choice import cpu_name
from sharpshift.bench.flops import compute_dtype, peak_matmul_flops, simclr_step_flops
from sharpshift.bench.timing import SPLIT_PARTS, SplitTimer, StepTimer, bare_simclr_steps, quiet_lightning, run_steps
from sharpshift.train import build_module, resolve_precision

WARMUP_STEPS = 2  # = one epoch of the two-batch subset each case trains on
PEAK_N = 2048  # matmul size for the peak: large enough to run at the BLAS kernel's best rate


@dataclass(frozen=True)
class Case:
    name: str  # as given to --cases
    base: str  # the base method (shipped config) the case is built on
    overrides: tuple[str, ...] = ()
    note: str = ""


BASES = tuple(METHODS)  # simclr, moco, byol, barlow, simsiam
# Each add-on on SimCLR, switched on by its config keys; SAF and MESA are on for every timed step.
ADDONS = (
    Case("sam", "simclr", ("sam.enabled=true",), "SAM, rho 0.05, backbone perturbed; two passes"),
    Case("asam", "simclr", ("sam.enabled=true", "sam.adaptive=true"), "ASAM, rho 0.5; two passes"),
    Case("saf", "simclr", ("saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=0"),
         "SAF, E=1: term on from epoch 1, i.e. on every timed step"),
    Case("mesa", "simclr", ("mesa.enabled=true", "mesa.start_epoch=0"), "MESA: term on from epoch 0"),
    Case("fourier", "simclr", ("fourier.enabled=true",), "Fourier amplitude-mix views, p 0.5"),
    Case("rsa", "simclr", ("rsa.enabled=true",), "RSA: 2 weak + 2 aggressive views"),
    Case("amcl", "simclr", ("amcl.enabled=true", "optim.grad_clip=1.0"),
         "AMCL, 3 heads, with amcl-simclr's grad clip 1.0"),
    Case("dsa", "simclr", ("dsa.enabled=true", "dsa.prior=random"), "DSA, frozen random prior, originals cached"),
)
CASES: dict[str, Case] = {
    "bare": Case("bare", "simclr", note="bare PyTorch loop: same model, views, NT-Xent; SGD + momentum"),
    "split": Case("split", "simclr", ("trainer.log_every_n_steps=1",), "plain SimCLR step, instrumented"),
    **{m: Case(m, m, note="plain step") for m in BASES},
    **{c.name: c for c in ADDONS},
}


def parse_cases(text: str) -> list[str]:
    """Case names from a comma list ('' or 'all': every case), with the base methods the ratios need."""
    names = list(CASES) if text.strip() in ("", "all") else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise UserError(f"unknown case(s) {', '.join(unknown)} in --cases; use any of {', '.join(CASES)}")
    needed = set(names) | {CASES[n].base for n in names} | {"simclr"}  # simclr: the FLOP count and ratios
    return [n for n in CASES if n in needed]  # the canonical order


def reference(name: str) -> str:
    """The case a ratio is taken to: an add-on's base method; SimCLR for the base methods and the bare loop."""
    return "simclr" if name in BASES or name == "bare" else CASES[name].base


def check_settings(steps: int, rounds: int, batch_size: int) -> None:
    for name, value in (("steps", steps), ("rounds", rounds), ("batch-size", batch_size)):
        if value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")


def case_config(case: Case, batch_size: int) -> Config:
    # CPU: the bare loop, the split and the peak all run there, so the Lightning cases must too
    cfg = load_config(case.base, [f"data.batch_size={batch_size}", "eval.knn_every_n_epochs=0",
                                  "eval.online_probe=false", "trainer.progress_bar=false", "trainer.accelerator=cpu",
                                  *case.overrides])
    return cfg


# --- the benchmark -----------------------------------------------------------------------------------
def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.platform()}"


def run_case(case: Case, cfg: Config, train, steps: int, tmp: Path) -> StepTimer:
    if case.name == "bare":
        timer = StepTimer()
        dtype = compute_dtype(resolve_precision(cfg))
        timer.times = bare_simclr_steps(build_module(cfg, train), train.images, cfg.data.batch_size, steps,
                                        cfg.optim.lr, dtype)
        return timer
    return run_steps(cfg, train, steps, tmp, SplitTimer() if case.name == "split" else None)


def run_speed(cases: list[str], batch_size: int = 256, steps: int = 6, rounds: int = 3, command: str = "",
              log=print) -> dict:
    from sharpshift.data.registry import load_dataset

    check_settings(steps, rounds, batch_size)
    configs = {n: case_config(CASES[n], batch_size) for n in cases}
    base = configs["simclr"]
    train = load_dataset(base.data.dataset, "train", base.data.data_dir)
    if 2 * batch_size > len(train):
        raise UserError(f"--batch-size {batch_size} needs {2 * batch_size} images, {base.data.dataset} has "
                        f"{len(train)}; lower --batch-size")
    train = train.subset(2 * batch_size, seed=0)
    for cfg in configs.values():  # a combination a module refuses fails now, not after minutes of timing
        build_module(cfg, train)
    precision = resolve_precision(base)
    dtype = compute_dtype(precision)
    times: dict[str, list[float]] = {n: [] for n in cases}
    split: list[dict[str, float]] = []
    peak = 0.0
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning():
        for r in range(rounds):
            peak = max(peak, peak_matmul_flops(dtype))
            for name in cases:
                timer = run_case(CASES[name], configs[name], train, steps + WARMUP_STEPS, Path(tmp) / name)
                times[name] += timer.times[WARMUP_STEPS:]
                if isinstance(timer, SplitTimer):
                    split += timer.parts[WARMUP_STEPS:]
            log(f"round {r + 1}/{rounds} done, {time.time() - t_start:.0f} s")
    median = {n: statistics.median(t) for n, t in times.items()}
    rows = {}
    for n in cases:
        c = CASES[n]
        rows[n] = {"base": c.base, "note": c.note, "step_s": round(median[n], 4),
                   "images_per_s": round(batch_size / median[n], 1), "ratio_to": reference(n),
                   "ratio": round(median[n] / median[reference(n)], 3), "steps": len(times[n]),
                   "all_step_s": [round(t, 4) for t in times[n]]}
    flops = simclr_step_flops(base, train)
    achieved = {n: flops["step"] / median[n] for n in ("simclr", "bare") if n in median}
    result = {
        "command": command,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "settings": {"dataset": base.data.dataset, "image_size": train.size, "backbone": base.model.backbone,
                     "width": base.model.width, "batch_size": batch_size, "precision": precision,
                     "steps_per_round": steps, "rounds": rounds, "warmup_steps": WARMUP_STEPS,
                     "subset": len(train), "online_probe": False, "wall_s": round(time.time() - t_start, 1)},
        "peak": {"dtype": str(dtype).removeprefix("torch."), "matmul_n": PEAK_N, "flops_per_s": round(peak)},
        "flops": flops,
        "achieved": {n: {"flops_per_s": round(f), "of_peak": round(f / peak, 4)} for n, f in achieved.items()},
        "cases": rows,
    }
    if split:
        result["split"] = {p: round(statistics.mean(s[p] for s in split), 5) for p in SPLIT_PARTS}
    return result


def write_json(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


# --- the markdown ------------------------------------------------------------------------------------
