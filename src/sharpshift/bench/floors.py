"""The grid's floors, as rows like any cell's: raw pixels and a randomly initialised encoder, one row per
seed, evaluated by the same code (evaluation.run.evaluate_backbone) on the same splits as that seed's cells.

A cell that does not beat the random encoder of its own seed has learned nothing the architecture did not
already give; the floors are the reference every cell is paired against.
"""
from __future__ import annotations

import torch
from torch import nn

from sharpshift.config import Config
from sharpshift.data.loader import channel_stats
from sharpshift.data.splits import pretraining_split
from sharpshift.evaluation.run import evaluate_backbone, labelled_splits
from sharpshift.models import build_backbone

FLOORS = ("raw-pixels", "random-encoder")


def floor_backbone(name: str, cfg: Config, train) -> nn.Module:
    """raw-pixels: the normalised image, flattened; random-encoder: the config's backbone at PyTorch's default
    initialisation under cfg.seed (BatchNorm at its initial running statistics, as at step 0 of a run)."""
    if name == "raw-pixels":
        backbone = nn.Flatten()
    else:
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.model.backbone, train.channels, cfg.model.width, cfg.model.cifar_stem)
    # the normalisation a run of this seed would use: its pretraining images' channel statistics
    pretrain = pretraining_split(cfg)[0]
    mean, std = channel_stats(pretrain.images)
    backbone.arch = {"mean": mean, "std": std}
    backbone.pretrain_digest = pretrain.digest()
    return backbone


def evaluate_floor(name: str, cfg: Config) -> dict:
    """eval.json-like figures of one floor under cfg (its seed and splits), with the splits' digests."""
    train, test, val = labelled_splits(cfg, cfg.data.data_dir, with_val=True)
    backbone = floor_backbone(name, cfg, train)
    result = evaluate_backbone(backbone, cfg, train, test, val=val)
    result["splits"]["pretrain"] = backbone.pretrain_digest  # the images the floor's normalisation came from
    return result
