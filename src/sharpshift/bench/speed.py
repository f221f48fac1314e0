"""`sharpshift bench speed`: steady-state step time of sharpshift against a bare PyTorch loop doing the
same work (same model, views, loss, optimizer), measured in one process, alternating blocks of steps so
that machine noise hits both alike. Figures are ratios; absolute times are for this machine only."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from sharpshift.config import Config, load_config
from sharpshift.data.loader import PretrainData
from sharpshift.data.registry import load_dataset
from sharpshift.losses import nt_xent
from sharpshift.methods import resolve_method_defaults
from sharpshift.methods.base import StepContext
from sharpshift.train import build_module, build_trainer


class StepTimer(L.Callback):
    """Wall time of each training step, from batch start to batch end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)


def bare_simclr_steps(module, images: torch.Tensor, batch_size: int, steps: int, lr: float) -> list[float]:
    """The yardstick: a plain loop over the same backbone, projector, views and NT-Xent, SGD + momentum."""
    params = list(module.backbone.parameters()) + list(module.projector.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    module.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)]
        v1, v2 = module.views(x)
        feats = module.backbone(torch.cat([v1, v2]))
        z1, z2 = module.projector(feats).chunk(2)
        loss = nt_xent(z1, z2, module.mcfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def sharpshift_steps(cfg: Config, train, steps: int, tmp: Path) -> list[float]:
    timer = StepTimer()
    module = build_module(cfg, train)
    trainer = build_trainer(cfg, tmp, max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                            callbacks=[timer], enable_progress_bar=False)
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed))
    return timer.times


def measure_overhead(cfg: Config, rounds: int = 3, steps: int = 20, warmup: int = 5) -> dict:
    """Alternate rounds of the bare loop and of sharpshift; compare the medians of the post-warm-up steps."""
    import tempfile

    resolve_method_defaults(cfg)
    cfg.eval.knn_every_n_epochs = 0
    cfg.eval.online_probe = False  # the bare loop has no probe; the probe's cost is reported separately
    train = load_dataset(cfg.data.dataset, "train", cfg.data.data_dir)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            module = build_module(cfg, train)
            bare += bare_simclr_steps(module, train.images, cfg.data.batch_size, steps + warmup, cfg.optim.lr)[warmup:]
            ours += sharpshift_steps(cfg, train, steps + warmup, Path(tmp))[warmup:]
    b, o = statistics.median(bare), statistics.median(ours)
    return {"bare_step_s": round(b, 4), "sharpshift_step_s": round(o, 4), "overhead": round(o / b - 1, 4),
            "images_per_s_bare": round(cfg.data.batch_size / b, 1),
            "images_per_s_sharpshift": round(cfg.data.batch_size / o, 1), "steps_each": len(bare)}


def method_throughput(methods: list[str], base: Config, steps: int = 15, warmup: int = 3) -> dict:
    import tempfile

    out = {}
    train = load_dataset(base.data.dataset, "train", base.data.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods:
            cfg = load_config(name, [f"data.batch_size={base.data.batch_size}", "eval.knn_every_n_epochs=0",
                                     "trainer.progress_bar=false"])
            resolve_method_defaults(cfg)
            t = statistics.median(sharpshift_steps(cfg, train, steps + warmup, Path(tmp))[warmup:])
            out[name] = {"step_s": round(t, 4), "images_per_s": round(cfg.data.batch_size / t, 1)}
    return out


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.platform()}"


def run_speed(out_json: Path, methods: list[str], batch_size: int = 256) -> dict:
    cfg = load_config("default", [f"data.batch_size={batch_size}", "trainer.progress_bar=false"])
    result = {"machine": machine(), "batch_size": batch_size, "backbone": cfg.model.backbone,
              "overhead": measure_overhead(cfg), "methods": method_throughput(methods, cfg)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    return result


def render_markdown(r: dict) -> str:
    o = r["overhead"]
    lines = [
        "## Framework overhead against a bare PyTorch loop",
        "",
        f"Machine: {r['machine']}. Default backbone ({r['backbone']}), batch {r['batch_size']}, Fashion-MNIST 28x28, fp32.",
        "Median step time over the post-warm-up steps of alternating rounds, in one process.",
        "",
        "| loop | step (s) | images/s |",
        "|---|---|---|",
        f"| bare PyTorch (same model, views, NT-Xent, SGD) | {o['bare_step_s']} | {o['images_per_s_bare']} |",
        f"| sharpshift (Lightning, manual optimisation) | {o['sharpshift_step_s']} | {o['images_per_s_sharpshift']} |",
        "",
        f"Framework overhead: **{o['overhead'] * 100:.1f}%** ({o['steps_each']} steps each).",
        "",
        "## Base methods (sharpshift step, online probe on)",
        "",
        "| method | step (s) | images/s |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {v['step_s']} | {v['images_per_s']} |" for m, v in r["methods"].items()]
    return "\n".join(lines) + "\n"
