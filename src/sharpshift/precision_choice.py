"""What `trainer.precision=auto` resolves to, and why.

bf16 pays on a CPU only where it has bf16 matrix units (AMX-BF16, AVX512-BF16); without them it is
emulated and ~25x slower than fp32. Even with the units it is not always faster, so auto times a short
probe (a few training steps of the configured backbone in each precision, interleaved) and takes bf16 only
when it is at least MIN_SPEEDUP faster. The probe's result is cached per CPU, torch version, thread count
and backbone, so it runs once per machine.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpshift.process_env import BUSY_ENV

FORCE_ENV = "SHARPSHIFT_AUTO_PRECISION"  # auto resolves to this without probing (the test suite's switch)
CHOICE_ENV = "SHARPSHIFT_PRECISION_CHOICE"  # the first process's choice, read by the processes DDP launches
CACHE_ENV = "SHARPSHIFT_CACHE_DIR"
BF16_UNITS = ("amx_bf16", "avx512_bf16")
MIN_SPEEDUP = 1.1  # below this, bf16's rounding is not worth it
PROBE_STEPS = 6  # timed steps per precision, after 2 warm-up steps


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # as Lightning's Trainer takes it
    reason: str



def normalise(precision: str) -> str:
    return "32-true" if precision in ("32", "fp32") else precision


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def cpu_name() -> str:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def bf16_units() -> list[str]:
    flags = cpu_flags()
    return [u for u in BF16_UNITS if u in flags]


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "sharpshift")
    return Path(root) / "precision.json"


def probe_step_seconds(backbone: str, width: int, steps: int = PROBE_STEPS) -> dict[str, float]:
    """Median seconds of a forward + backward + SGD step of the backbone, per precision, interleaved."""
    from sharpshift.models import build_backbone

    channels, size, batch = (1, 28, 256) if backbone == "convnet" else (3, 32, 32)
    torch.manual_seed(0)
    model = build_backbone(backbone, channels, width)
    model = nn.Sequential(model, nn.Linear(model.feat_dim, 128)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
    for i in range(steps + 2):
        for precision in times:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
            t0 = time.perf_counter()
            with autocast:
                loss = model(x).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times[precision].append(time.perf_counter() - t0)
    return {p: statistics.median(t) for p, t in times.items()}


def cached_probe(backbone: str, width: int) -> tuple[dict[str, float], bool]:
    """(seconds per precision, whether it came from the cache). An unwritable cache only costs a re-probe; a probe
    taken while other processes kept the cores busy ($SHARPSHIFT_CPU_BUSY, set by the CLI) is used, not cached."""
    key = f"{cpu_name()} | {','.join(bf16_units())} | torch {torch.__version__} | {torch.get_num_threads()} threads " \
          f"| {backbone}-{width}"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], True
    cache[key] = probe_step_seconds(backbone, width)
    if os.environ.get(BUSY_ENV) == "1":
        return cache[key], False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)
    except OSError:
        pass
    return cache[key], False


def choose_precision(precision: str, accelerator: str = "auto", backbone: str = "convnet",
                     width: int = 32) -> PrecisionChoice:
    if precision != "auto":
        return PrecisionChoice(normalise(precision), "set by trainer.precision")
    if os.environ.get(FORCE_ENV):
        return PrecisionChoice(normalise(os.environ[FORCE_ENV]), f"forced by ${FORCE_ENV}")
    model, chosen, reason = (os.environ.get(CHOICE_ENV, "") + "||").split("|", 2)
    if model == f"{backbone}-{width}":  # a process DDP launched: the first process's choice
        return PrecisionChoice(chosen, reason.rstrip("|"))
    if accelerator != "cpu" and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", "CUDA device with bf16 support")
        return PrecisionChoice("16-mixed", "CUDA device without bf16 support")
    units = bf16_units()
    if not units:
        return PrecisionChoice("32-true", "the CPU has no bf16 matrix units (no amx_bf16 or avx512_bf16 flag)")
    seconds, cached = cached_probe(backbone, width)
    speedup = seconds["32-true"] / seconds["bf16-mixed"]
    measured = (f"{'cached ' if cached else ''}probe of {backbone}-{width}: bf16 step {seconds['bf16-mixed']:.3f} s, "
                f"fp32 {seconds['32-true']:.3f} s ({speedup:.2f}x)")
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16-mixed", f"the CPU has {'+'.join(units)} and bf16 is faster; {measured}")
    return PrecisionChoice("32-true", f"the CPU has {'+'.join(units)} but bf16 is not >= {MIN_SPEEDUP}x faster; "
                           f"{measured}")


def choose_for(cfg) -> PrecisionChoice:
    """The choice for a run's config; the first process exports it for the processes DDP launches."""
    choice = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator, cfg.model.backbone, cfg.model.width)
    if cfg.trainer.precision == "auto":
        os.environ[CHOICE_ENV] = f"{cfg.model.backbone}-{cfg.model.width}|{choice.precision}|{choice.reason}"
    return choice
