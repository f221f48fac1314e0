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
import logging
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn

from sharpshift.config import Config, load_config
from sharpshift.data.loader import PretrainData
from sharpshift.errors import UserError
from sharpshift.losses import nt_xent
from sharpshift.methods import METHODS
from sharpshift.train import build_module, build_trainer, resolve_precision

WARMUP_STEPS = 2  # = one epoch of the two-batch subset each case trains on
PEAK_N = 2048  # matmul size for the peak: large enough to run at the BLAS kernel's best rate
FLOPS_HOW = ("multiply-adds of every Conv2d and Linear layer of backbone + projector, counted by forward hooks "
             "on one forward of the step's views (2 FLOPs per multiply-add; bias, BatchNorm, activations, loss, "
             "views and optimizer not counted); forward + backward = 3 x forward")


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


# --- FLOPs and the machine's limit ------------------------------------------------------------------
def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of the Conv2d and Linear layers on these inputs: 2 x multiply-adds, by forward hooks."""
    macs = 0

    def hook(layer, args, out) -> None:
        nonlocal macs
        if isinstance(layer, nn.Conv2d):  # each output element: in_channels/groups x kernel multiply-adds
            macs += out.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            macs += out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


def simclr_step_flops(cfg: Config, train) -> dict:
    module = build_module(cfg, train).eval()  # eval: counting must not move BatchNorm statistics
    views = module.views(train.images[: cfg.data.batch_size])
    forward = count_flops(nn.Sequential(module.backbone, module.projector), torch.cat(views))
    return {"forward_per_image": forward // cfg.data.batch_size, "step": 3 * forward, "how": FLOPS_HOW}


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)


def peak_matmul_flops(dtype: torch.dtype, n: int = PEAK_N, reps: int = 4) -> float:
    """FLOP/s of the fastest of a few n x n matmuls (after one warm-up): the machine's practical peak."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# --- the timed loops ---------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Wall time of each training step, from batch start to batch end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)


SPLIT_PARTS = ("views", "forward", "backward", "optimizer", "logging", "other")


class SplitTimer(StepTimer):
    """Times the parts of the real (Lightning) step by wrapping the module's pieces as training starts:
    views = the view generator; forward = the stepper's closure (method loss + regularisers); backward =
    manual_backward; optimizer = the stepper minus those two (zero_grad, clipping, step); logging = self.log /
    log_dict in the step plus Lightning's write to the loggers right after it; other = the rest of the step
    (LR schedule, Lightning's hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[dict[str, float]] = []
        self._now: dict[str, float] = {}
        self._inside: set[str] = set()

    def timed(self, part: str, fn):
        def wrapper(*args, **kwargs):
            if part in self._inside:  # log_dict calls log: count the outer call only
                return fn(*args, **kwargs)
            self._inside.add(part)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._now[part] = self._now.get(part, 0.0) + time.perf_counter() - t0
                self._inside.discard(part)
        return wrapper

    def on_train_start(self, trainer, module) -> None:
        stepper = module.stepper
        module.stepper = lambda m, opt, closure: self.timed("step", stepper)(m, opt, self.timed("forward", closure))
        module.views.forward = self.timed("views", module.views.forward)
        module.manual_backward = self.timed("backward", module.manual_backward)
        module.log = self.timed("logging", module.log)
        module.log_dict = self.timed("logging", module.log_dict)
        connector = trainer._logger_connector  # writes the step's metrics to the loggers after on_train_batch_end
        write = connector.update_train_step_metrics

        def write_logs() -> None:
            t0 = time.perf_counter()
            write()
            if self.parts:
                self.parts[-1]["logging"] += time.perf_counter() - t0

        connector.update_train_step_metrics = write_logs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._now = {}
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        t = {p: self._now.get(p, 0.0) for p in ("views", "forward", "backward", "logging")}
        t["optimizer"] = self._now.get("step", 0.0) - t["forward"] - t["backward"]
        t["other"] = self.times[-1] - sum(t.values())
        self.parts.append(t)


def run_steps(cfg: Config, train, steps: int, tmp: Path, timer: StepTimer | None = None) -> StepTimer:
    """`steps` training steps of sharpshift's own loop, timed; the split timer keeps the loggers on."""
    timer = timer or StepTimer()
    module = build_module(cfg, train)
    quiet = {} if isinstance(timer, SplitTimer) else {"logger": False}
    trainer = build_trainer(cfg, tmp, max_steps=steps, max_epochs=-1, enable_checkpointing=False,
                            callbacks=[timer], enable_progress_bar=False, **quiet)
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed))
    return timer


def sharpshift_steps(cfg: Config, train, steps: int, tmp: Path) -> list[float]:
    return run_steps(cfg, train, steps, tmp).times


def bare_simclr_steps(module, images: torch.Tensor, batch_size: int, steps: int, lr: float,
                      dtype: torch.dtype = torch.float32) -> list[float]:
    """The yardstick: a plain loop over the same backbone, projector, views and NT-Xent, SGD + momentum."""
    params = list(module.backbone.parameters()) + list(module.projector.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext()  # as Lightning's
    module.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)]
        v1, v2 = module.views(x)
        with autocast:
            feats = module.backbone(torch.cat([v1, v2]))
            z1, z2 = module.projector(feats).chunk(2)
            loss = nt_xent(z1, z2, module.mcfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


# --- the benchmark -----------------------------------------------------------------------------------
def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.platform()}"


def cpu_name() -> str:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


@contextmanager
def quiet_lightning():
    """Lightning's per-fit banners (accelerator, tips) off: the benchmark starts dozens of fits."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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
def render_markdown(r: dict) -> str:
    m, s, cases = r["machine"], r["settings"], r["cases"]
    lines = [
        "## Speed: `sharpshift bench speed`",
        "",
        f"Command: `{r['command']}`. Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, "
        f"torch {m['torch']}, {m['platform']}.",
        f"Settings: {s['dataset']} {s['image_size']}x{s['image_size']}, {s['backbone']} (width {s['width']}), "
        f"batch {s['batch_size']} images (two views each), precision {s['precision']}, online probe off. "
        f"Median of {s['steps_per_round']} steps x {s['rounds']} rounds per case after {s['warmup_steps']} warm-up "
        f"steps, cases interleaved in each round, one process ({s['wall_s']:.0f} s in all).",
        "",
        "### Throughput",
        "",
        "Ratio: the case's median step time over its reference's: an add-on's is its base method's plain step "
        "(measured in the same rounds); a base method's and the bare loop's is SimCLR's.",
        "",
        "| case | step (ms) | images/s | step-time ratio | note |",
        "|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        if name == "split":
            continue
        label = name if name in (c["base"], "bare") else f"{c['base']} + {name}"
        ratio = "1 (reference)" if name == c["ratio_to"] else f"{c['ratio']:.2f}x {c['ratio_to']}"
        lines.append(f"| {label} | {c['step_s'] * 1000:.1f} | {c['images_per_s']:.0f} | {ratio} | {c['note']} |")
    if "bare" in cases:
        lines += ["", f"Framework overhead (sharpshift's SimCLR step against the bare loop): "
                      f"**{(1 / cases['bare']['ratio'] - 1) * 100:+.1f}%**."]
    p, f = r["peak"], r["flops"]
    lines += [
        "",
        "### The machine's limit",
        "",
        f"Peak: **{p['flops_per_s'] / 1e9:.1f} GFLOP/s** ({p['dtype']}, best of a few {p['matmul_n']}x"
        f"{p['matmul_n']} matmuls in the same process). Model: {f['forward_per_image'] / 1e6:.1f} MFLOP per image "
        f"forward (both views), {f['step'] / 1e9:.2f} GFLOP per step. How counted: {f['how']}.",
        "",
        "| loop | achieved GFLOP/s | fraction of peak |",
        "|---|---|---|",
    ]
    loops = {"simclr": "sharpshift SimCLR step", "bare": "bare PyTorch SimCLR step"}
    lines += [f"| {loops[n]} | {a['flops_per_s'] / 1e9:.1f} | {a['of_peak'] * 100:.0f}% |"
              for n, a in r["achieved"].items()]
    if "split" in r:
        total = sum(r["split"].values())
        lines += [
            "",
            "### Where a plain SimCLR step goes",
            "",
            "Mean per step of the instrumented Lightning step (the `split` case, logging every step: the worst "
            "case, the default logs every 20). views: the view generator; forward: method loss; backward: "
            "manual_backward; optimizer: zero_grad, clipping, step; logging: self.log / log_dict and the write to "
            "the CSV and TensorBoard loggers; other: the rest (LR schedule, Lightning's hooks).",
            "",
            "| part | ms | share |",
            "|---|---|---|",
        ]
        lines += [f"| {part} | {t * 1000:.1f} | {t / total * 100:.1f}% |" for part, t in r["split"].items()]
        lines.append(f"| total | {total * 1000:.1f} | 100% |")
    return "\n".join(lines) + "\n"
