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

Modules: files (writing, reading, Lightning's I/O plugin), search (which checkpoint to resume), rng (RNG
states), callback (CheckpointEvery).
"""
from sharpshift.checkpoint.callback import CheckpointEvery
from sharpshift.checkpoint.files import (CKPT_DIR, FORMAT, LAST, AtomicCheckpointIO, CorruptCheckpoint, describe,
                                         load_checkpoint, prune, read_record, record_path, remove_checkpoint,
                                         save_checkpoint, step_name, verify)
from sharpshift.checkpoint.rng import capture_rng, restore_rng
from sharpshift.checkpoint.search import candidates, check_state_matches, find_resume_checkpoint

__all__ = ["CKPT_DIR", "FORMAT", "LAST", "AtomicCheckpointIO", "CheckpointEvery", "CorruptCheckpoint", "candidates",
           "capture_rng", "check_state_matches", "describe", "find_resume_checkpoint", "load_checkpoint", "prune",
           "read_record", "record_path", "remove_checkpoint", "restore_rng", "save_checkpoint", "step_name", "verify"]
