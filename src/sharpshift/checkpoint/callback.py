"""The callback that saves every N steps and at the end, keeps the newest few, and restores RNG states."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from sharpshift.checkpoint.files import FORMAT, LAST, prune, step_name
from sharpshift.checkpoint.rng import _gather_objects, capture_rng, restore_rng
from sharpshift.checkpoint.search import candidates

class CheckpointEvery(Callback):
    """Save every `every_n_steps` optimizer steps and when training ends; keep the newest `keep`.

    Its own state holds every process's RNG states, restored when training (re)starts, so that a resumed
    run draws exactly the views and random numbers the uninterrupted run would have drawn."""

    def __init__(self, folder: Path, every_n_steps: int, keep: int, describe: dict):
        self.folder = Path(folder)
        self.every_n_steps, self.keep, self.describe = every_n_steps, keep, describe
        self.last_saved = -1
        self._module: Optional[torch.nn.Module] = None
        self._to_restore: Optional[dict] = None

    def latest(self) -> Optional[Path]:
        found = candidates(self.folder) if self.folder.is_dir() else []
        return found[0] if found else None

    def save(self, trainer, name: str) -> None:
        trainer.save_checkpoint(self.folder / name, weights_only=False)  # all processes take part; rank 0 writes
        self.last_saved = trainer.global_step
        for logger in trainer.loggers:  # the logs on disk reach as far as the checkpoint
            logger.save()
        if trainer.is_global_zero and self.keep > 0:
            prune(self.folder, self.keep)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._module = pl_module

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > self.last_saved and step % self.every_n_steps == 0:
            self.save(trainer, step_name(step))

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer, LAST)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["sharpshift"] = dict(self.describe, format=FORMAT, world_size=trainer.world_size)

    def state_dict(self) -> dict:
        return {"rng": _gather_objects(capture_rng(self._module))}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        self.last_saved = trainer.global_step  # a resumed run does not rewrite the checkpoint it started from
        if self._to_restore is None:
            return
        states, self._to_restore = self._to_restore["rng"], None
        if len(states) != trainer.world_size:
            warnings.warn(f"the checkpoint was written by {len(states)} process(es), this run has "
                          f"{trainer.world_size}: random streams are re-seeded, so the run is not bit-identical "
                          "to an uninterrupted one", stacklevel=2)
            return
        problems = restore_rng(states[trainer.global_rank], pl_module)
        if problems:
            warnings.warn(f"random generator(s) {problems} were saved on another device and are re-seeded",
                          stacklevel=2)
