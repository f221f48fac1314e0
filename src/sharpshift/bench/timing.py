"""The timed loops of the speed benchmark: sharpshift's own loop with per-step (and per-part) timers, and a
bare PyTorch loop over the same model, views and loss as the yardstick for framework overhead."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch

from sharpshift.config import Config
from sharpshift.data.loader import PretrainData
from sharpshift.losses import nt_xent
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
