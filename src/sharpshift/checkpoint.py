"""Checkpoints that survive a kill, reveal their own corruption, and never run code when loaded.

A checkpoint is Lightning's full training state (model, every optimizer and scheduler, loop counters,
the sampler position, the callbacks' state) plus, from `CheckpointEvery`, every RNG state of every
process. EMA targets, MoCo's queue and the add-ons' networks and buffers are in the model's state_dict.

Writing: serialise in memory, write `.NAME.tmp-PID`, flush + fsync, then the same for a record
`NAME.json` (size, sha256, step, what wrote it), then rename the checkpoint, then the record, then fsync
the folder. A kill at any moment leaves either the previous complete pair or a `.tmp-` file that nothing
reads. A full disk or a read-only folder removes the temporary files and raises UserError.

Reading: the size and sha256 are checked before anything is unpickled, and `torch.load(weights_only=True)`
refuses any object that is not a tensor or plain data, so a crafted checkpoint never runs code.
`find_resume_checkpoint` walks from the newest checkpoint back and warns about each one it skips.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import Callback

from sharpshift.errors import UserError

CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
FORMAT = 1
_STEP_NAME = re.compile(r"^step-(\d+)\.ckpt$")


class CorruptCheckpoint(Exception):
    """A checkpoint whose bytes do not match its record (truncated, altered) or that has no record."""


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def step_name(step: int) -> str:
    return f"step-{step:07d}.ckpt"


def describe(cfg) -> dict:
    """What a checkpoint must agree with to be resumed by a config: the method and the backbone."""
    return {"method": cfg.method.name, "backbone": cfg.model.backbone, "width": cfg.model.width,
            "cifar_stem": cfg.model.cifar_stem}


# ---------------------------------------------------------------------------------------------- writing
def _write_synced(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the renames are still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> dict:
    """Write `checkpoint` to `path` atomically, with its record next to it. Returns the record."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    data = buf.getbuffer()
    record = {"format": FORMAT, "file": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "step": int(checkpoint.get("global_step", -1)), "epoch": int(checkpoint.get("epoch", -1)),
              "sharpshift": checkpoint.get("sharpshift", {})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp_record = path.with_name(f".{path.name}.json.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_synced(tmp, data)
        _write_synced(tmp_record, json.dumps(record, indent=1).encode())
        os.replace(tmp, path)
        os.replace(tmp_record, record_path(path))
        _fsync_dir(path.parent)
    except OSError as e:
        for leftover in (tmp, tmp_record):
            leftover.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; free disk space or make "
                        f"{path.parent} writable (earlier checkpoints are kept)") from None
    return record


def remove_checkpoint(path: Path) -> None:
    """The checkpoint first, its record second: a record without a checkpoint is ignored."""
    path.unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` step checkpoints (last.ckpt is never pruned)."""
    steps = sorted((int(m.group(1)), p) for p in folder.glob("step-*.ckpt") if (m := _STEP_NAME.match(p.name)))
    for _, p in steps[:max(len(steps) - keep, 0)]:
        remove_checkpoint(p)


# ---------------------------------------------------------------------------------------------- reading
def read_record(path: Path) -> dict:
    rec = record_path(path)
    if not rec.is_file():
        raise CorruptCheckpoint("it has no record (its save did not finish)")
    try:
        record = json.loads(rec.read_text())
        size, digest = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"its record {rec.name} is unreadable ({e})") from None
    return record | {"size": size, "sha256": digest}


def verify(path: Path) -> dict:
    """Check the file against its record without unpickling anything; return the record."""
    record = read_record(path)
    if not path.is_file():
        raise CorruptCheckpoint("the file is missing")
    actual = path.stat().st_size
    if actual != record["size"]:
        raise CorruptCheckpoint(f"it is truncated or padded: {actual} bytes, its record says {record['size']}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != record["sha256"]:
        raise CorruptCheckpoint("its sha256 does not match its record (the bytes were altered)")
    return record


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", check: bool = True) -> dict:
    """Verify, then load with weights_only=True: tensors and plain data only, never code."""
    path = Path(path)
    if check:
        verify(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "an object that is not a tensor or plain data"
        raise UserError(f"refusing to load {path}: it holds {what}, which would run code when unpickled; "
                        "sharpshift only loads tensors and plain data (use a checkpoint written by sharpshift)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CorruptCheckpoint(f"it cannot be read ({str(e).splitlines()[0]})") from None


def check_describes(found: dict, expected: dict, path: Path) -> None:
    diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if diff:
        what = ", ".join(f"{k}={a!r} (this run: {b!r})" for k, (a, b) in diff.items())
        raise UserError(f"checkpoint {path} was written by another model: {what}; resume it with the config of "
                        "the run that wrote it")


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


class AtomicCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O, replaced: atomic writes with a record, verified weights-only reads."""

    def __init__(self, expected: Optional[dict] = None):
        self.expected = expected

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: Optional[bool] = None) -> dict:
        try:
            ckpt = load_checkpoint(path, map_location="cpu" if map_location is None or callable(map_location)
                                   else map_location)
        except CorruptCheckpoint as e:
            raise UserError(f"checkpoint {path} is corrupt or incomplete: {e}; resume with --resume RUN_DIR, "
                            "which falls back to the previous checkpoint") from None
        if self.expected is not None:
            check_describes(ckpt.get("sharpshift", {}), self.expected, Path(path))
        return ckpt

    def remove_checkpoint(self, path) -> None:
        remove_checkpoint(Path(path))


# ---------------------------------------------------------------------------------------------- RNG states
def _generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Every submodule's own `generator` (the views' one, and any add-on's that follows the convention)."""
    found = {}
    for name, m in module.named_modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator):
            found[name or "."] = g
    return found


def capture_rng(module: Optional[torch.nn.Module]) -> dict:
    """This process's RNG states, as tensors and plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
             "generators": {}}
    if module is not None:
        state["generators"] = {name: {"device": str(g.device), "state": g.get_state()}
                               for name, g in _generators(module).items()}
    return state


def restore_rng(state: dict, module: Optional[torch.nn.Module]) -> list[str]:
    """Set every RNG from `state`; return what could not be restored (a generator on another device)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    problems = []
    gens = _generators(module) if module is not None else {}
    for name, saved in state.get("generators", {}).items():
        g = gens.get(name)
        if g is None or str(g.device) != saved["device"]:
            problems.append(name)
            continue
        g.set_state(saved["state"])
    return problems


def _gather_objects(obj: Any) -> list:
    """One object from every process (a list of one without multiple processes)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------- callback
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
