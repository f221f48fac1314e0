"""The validation split: a fixed, seeded hold-out of the training split.

Every choice (the kNN monitor during training, picking a recipe or a default) reads this split; the test
split is read only for final numbers. The hold-out does not depend on the run's seed, so every run of a
dataset, whatever its seed or method, holds out the same images, and they never enter pretraining or the
probe's training set.
"""
from __future__ import annotations

import warnings

import torch

from sharpshift.data.base import ImageDataset
from sharpshift.errors import UserError

VAL_SEED = 20261201  # fixed: the split must be the same for every run and every machine


def val_indices(n: int, fraction: float) -> torch.Tensor:
    """Sorted indices of the validation images among n training images (empty when n * fraction rounds to 0)."""
    count = int(round(n * fraction))
    if count >= n:
        raise UserError(f"data.val_fraction={fraction} holds out {count} of {n} images; use a fraction that "
                        "leaves training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[:count].sort().values


def split_validation(train: ImageDataset, fraction: float) -> tuple[ImageDataset, ImageDataset | None]:
    """(the training images without the hold-out, the hold-out); (train, None) when fraction is 0."""
    if fraction <= 0:
        return train, None
    held = val_indices(len(train), fraction)
    if len(held) == 0:  # a handful of images: no hold-out rather than an error on the default setting
        warnings.warn(f"data.val_fraction={fraction} of {len(train)} images holds out none; no validation "
                      "split (and no kNN monitor)", stacklevel=2)
        return train, None
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held] = False
    return train.select(keep.nonzero().squeeze(1)), train.select(held)


def pretraining_split(cfg) -> tuple[ImageDataset, ImageDataset | None]:
    """A config's pretraining images (its seeded subset of the training split less the hold-out) and the
    hold-out: what a run trains on, and what the grid's floors and equal-cost cells are computed from."""
    from sharpshift.data.storage import open_split

    full = open_split(cfg, "train")
    rest, val = split_validation(full, cfg.data.val_fraction)
    return rest.subset(cfg.data.subset, seed=cfg.seed), val
