"""The grid's evaluation protocol: the budgets, the settings every cell shares, and the fingerprint that
makes rows comparable.

Every row records the fingerprint of the protocol it was made under. Rows are tabulated together only when
their fingerprints equal the budget's current one; a row made under another protocol is refused by
`--collect-only` (naming the cell) and made again by a run. Bump PROTOCOL_VERSION when code changes what a
row's numbers mean (the probe, the kNN, the splits) without changing a setting below.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sharpshift.config import Config, load_config
from sharpshift.errors import UserError

PROTOCOL_VERSION = 2  # 1: the round-1 grid (no hold-out, per-seed test subsets); 2: this one

# Every cell of every budget: a fixed 10% validation hold-out for every choice and for the kNN curve (every
# epoch), the whole test split for the final numbers. The monitor's memory bank is 5,000 pretraining images
# (the curve is for shape, not for the tables; the final kNN uses the full train split).
PROTOCOL = ["data.val_fraction=0.1", "data.test_subset=0", "eval.knn_every_n_epochs=1", "eval.knn_monitor_train=5000"]
# Every grid run trains in fp32, on every CPU (the grid appends it last): `auto` picks bf16 where the CPU has
# AMX/AVX512-BF16 and fp32 elsewhere, and a paired comparison must not mix them. Each row records its
# precision; every row recorded before this pin was fp32.
PROTOCOL_PRECISION = "32-true"

BUDGETS = {
    # the README demo's budget: all 54k training images (60k less the hold-out), 5 epochs
    "default": ["trainer.max_epochs=5"],
    # the budget round 1 compared at: 10k pretraining images, 3 epochs (117 steps)
    "reduced": ["data.subset=10000", "trainer.max_epochs=3"],
    # where plain SimCLR clears the random encoder by about 6 points linear on the validation split (docs/
    # results.md, "Choosing the long budget"): all 54k images, width 8, 8 epochs (1,680 steps; 12 epochs
    # gave the same accuracy)
    "long": ["model.width=8", "trainer.max_epochs=8"],
    # SAM's setting: few images, many epochs, so that a generalisation gap (probe train vs validation) opens:
    # 3,000 pretraining images, width 8, 40 epochs (440 steps)
    "small": ["data.subset=3000", "model.width=8", "trainer.max_epochs=40"],
}

# what a row's numbers depend on besides the cell itself: the splits, the budget, the evaluation
FINGERPRINT_KEYS = {
    "data": ["dataset", "subset", "val_fraction", "test_subset", "batch_size"],
    "trainer": ["max_epochs", "max_steps"],
    "model": ["backbone", "width", "cifar_stem"],
    "eval": ["knn_k", "knn_temperature", "knn_every_n_epochs", "knn_monitor_train", "linear_max_iter",
             "linear_weight_decay"],
}


def budget_overrides(budget: str) -> list[str]:
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; use one of {', '.join(sorted(BUDGETS))}")
    return [*PROTOCOL, *BUDGETS[budget]]


def protocol_config(overrides: list[str]) -> Config:
    """The plain SimCLR config under the budget's overrides: the splits and evaluation every cell shares."""
    return load_config("simclr", list(overrides))


def protocol_settings(overrides: list[str]) -> dict:
    cfg = protocol_config(overrides)
    out = {"version": PROTOCOL_VERSION}
    for section, keys in FINGERPRINT_KEYS.items():
        out[section] = {k: getattr(getattr(cfg, section), k) for k in keys}
    return out


def fingerprint(overrides: list[str]) -> str:
    """A short hash of protocol_settings (data_dir is left out: the same data in another folder is the same)."""
    text = json.dumps(protocol_settings([o for o in overrides if not o.startswith("data.data_dir=")]),
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_row(row: dict, expected: str, row_file: Path) -> None:
    """Refuse a row made under another protocol or precision (one line naming the cell, the file and the fix)."""
    if row.get("precision") not in (None, PROTOCOL_PRECISION):  # None: a floor row (nothing trained)
        raise UserError(f"{row.get('cell')} seed {row.get('seed')}: {row_file} was trained in {row['precision']}, "
                        f"the protocol's precision is {PROTOCOL_PRECISION}; run the grid without --collect-only "
                        "to make the row again")
    found = row.get("protocol")
    if found != expected:
        raise UserError(f"{row.get('cell')} seed {row.get('seed')}: {row_file} was recorded under protocol "
                        f"{found or 'none (round 1)'}, this budget's is {expected}; run the grid without "
                        "--collect-only to make the row again, or leave the cell out")
