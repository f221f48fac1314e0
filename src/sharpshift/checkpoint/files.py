"""Checkpoint files: atomic writes with a record (size, sha256, step), verified weights-only reads, and
Lightning's checkpoint I/O replaced by them (the overview: sharpshift.checkpoint)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

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
