"""Finding the checkpoint to resume from: newest first, skipping (and reporting) corrupt ones, refusing those
of another model."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from sharpshift.checkpoint.files import (_STEP_NAME, CKPT_DIR, LAST, CorruptCheckpoint, check_describes,
                                         load_checkpoint, read_record)
from sharpshift.errors import UserError


def candidates(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest first (by recorded step; last.ckpt before a step file of equal step)."""
    found = []
    for p in folder.glob("*.ckpt"):
        try:
            step = int(read_record(p).get("step", -1))
        except CorruptCheckpoint:
            m = _STEP_NAME.match(p.name)
            step = int(m.group(1)) if m else -1  # still listed, so that it is reported when skipped
        found.append((step, p.name == LAST, p))
    return [p for *_, p in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def find_resume_checkpoint(run_dir: str | os.PathLike, expected: Optional[dict] = None) -> tuple[Path, dict]:
    """The newest checkpoint of a run folder that is complete, readable and made by this model.
    Each newer one that fails is reported with a warning. Returns (path, loaded checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder made by `sharpshift pretrain`")
    folder = run_dir / CKPT_DIR
    paths = candidates(folder) if folder.is_dir() else []
    if not paths:
        raise UserError(f"no checkpoint in {folder} to resume from; start a new run instead of --resume")
    skipped = []
    for p in paths:
        try:
            ckpt = load_checkpoint(p)
        except CorruptCheckpoint as e:
            skipped.append(p.name)
            warnings.warn(f"checkpoint {p} is corrupt or incomplete: {e}; trying the previous one", stacklevel=2)
            continue
        if expected is not None:
            check_describes(ckpt.get("sharpshift", {}), expected, p)
        if skipped:
            warnings.warn(f"resuming from {p.name} (step {ckpt.get('global_step')}) instead of the newer "
                          f"{', '.join(skipped)}", stacklevel=2)
        return p, ckpt
    raise UserError(f"no complete checkpoint in {folder} (all {len(paths)} are corrupt or incomplete: "
                    f"{', '.join(skipped)}); start a new run")


def check_state_matches(state: dict, module: torch.nn.Module, path: Path) -> None:
    """Same keys, and parameters of the same shapes, as the module that will load it, else a one-line UserError.
    (Buffers may legitimately differ in size: SAF's grows with the data and takes the checkpoint's.)"""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    params = dict(module.named_parameters())
    shapes = [k for k in params if k in state and tuple(params[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        first = (f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra
                 else f"{shapes[0]!r} has shape {tuple(state[shapes[0]].shape)}, this run {tuple(params[shapes[0]].shape)}")
        n = len(missing) + len(extra) + len(shapes)
        raise UserError(f"checkpoint {path} does not fit this run's model ({n} mismatches, first: {first}); "
                        "resume it with the config of the run that wrote it")
