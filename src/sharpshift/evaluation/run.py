"""Offline evaluation of a run folder: frozen backbone features -> linear probe and weighted kNN."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sharpshift.config import Config, from_yaml_file
from sharpshift.data.base import subset_indices
from sharpshift.data.storage import open_split
from sharpshift.data.splits import split_validation
from sharpshift.errors import UserError
from sharpshift.evaluation.features import extract_features
from sharpshift.evaluation.knn import knn_top1
from sharpshift.evaluation.linear import linear_probe
from sharpshift.export import atomic_write_text, load_backbone


def run_config(run_dir: Path) -> Config:
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder made by `sharpshift pretrain`")
    return from_yaml_file(run_dir / "config.yaml")


def labelled_splits(cfg: Config, data_dir: str | None, with_val: bool = False):
    """Train and test splits with labels, as the evaluation protocol needs: the probe and the kNN memory
    are the train split without the validation hold-out. with_val: also return the hold-out (or None)."""
    if data_dir:
        cfg.data.data_dir = data_dir
    full, test = open_split(cfg, "train"), open_split(cfg, "test")
    if full.labels is None or test.labels is None:
        raise UserError(f"dataset {cfg.data.dataset!r} has no labels to evaluate with; evaluate on a labelled dataset")
    train, val = split_validation(full, cfg.data.val_fraction)
    test = test.subset(cfg.data.test_subset, seed=cfg.seed)
    return (train, test, val) if with_val else (train, test)


def evaluate_backbone(backbone: torch.nn.Module, cfg: Config, train, test, bf16: bool = False, val=None) -> dict:
    """Linear probe and kNN fitted on `train`, scored on `test` (and on `val`, as val_*, when given)."""
    arch = getattr(backbone, "arch", {})
    kw = dict(mean=arch.get("mean"), std=arch.get("std"), bf16=bf16)
    t0 = time.time()
    f_train = extract_features(backbone, train.images, **kw)
    f_test = extract_features(backbone, test.images, **kw)
    probe = linear_probe(f_train, train.labels, f_test, test.labels, iterations=cfg.eval.linear_max_iter,
                         weight_decay=cfg.eval.linear_weight_decay, seed=cfg.seed)
    knn = knn_top1(f_train, train.labels, f_test, test.labels, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    result = {"linear_top1": float(probe.top1), "linear_train_top1": float(probe.train_top1), "knn_top1": float(knn),
              "knn_k": cfg.eval.knn_k, "knn_temperature": cfg.eval.knn_temperature,
              "train_size": len(train), "test_size": len(test), "feature_dim": int(f_train.shape[1]),
              "splits": {"probe_train": train.digest(), "test": test.digest()}}
    if val is not None:  # the same fitted probe and kNN memory, scored on the hold-out
        f_val = extract_features(backbone, val.images, **kw)
        result.update(val_linear_top1=float((probe.predict(f_val) == val.labels.to(f_val.device)).float().mean()),
                      val_knn_top1=float(knn_top1(f_train, train.labels, f_val, val.labels, k=cfg.eval.knn_k,
                                                  temperature=cfg.eval.knn_temperature)),
                      val_size=len(val))
        result["splits"]["val"] = val.digest()
        result.update(pretraining_gap(cfg, f_train, train.labels, f_val, val.labels))
    result["eval_seconds"] = round(time.time() - t0, 1)
    return result


def pretraining_gap(cfg: Config, f_train, y_train, f_val, y_val) -> dict:
    """For a run that pretrained on a subset of the probe's images: kNN top-1 of those pretraining images and of
    the validation images, both against the probe images the encoder never saw (the same memory), so their
    difference is the encoder's own generalisation gap. Empty when every probe image was pretrained on."""
    n = cfg.data.subset
    if n <= 0 or n >= len(f_train):
        return {}
    seen = torch.zeros(len(f_train), dtype=torch.bool)
    seen[subset_indices(len(f_train), n, cfg.seed)] = True  # the run's own pretraining images
    kw = dict(k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    memory, memory_y = f_train[~seen], y_train[~seen]
    return {"pretrain_knn_top1": float(knn_top1(memory, memory_y, f_train[seen], y_train[seen], **kw)),
            "heldout_knn_top1": float(knn_top1(memory, memory_y, f_val, y_val, **kw))}


def evaluate_run(run_dir: str | Path, data_dir: str | None = None) -> dict:
    """Evaluate a finished run; writes RUN_DIR/eval.json (merged with what is already there)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    backbone = load_backbone(run_dir)
    train, test, val = labelled_splits(cfg, data_dir, with_val=True)
    result = evaluate_backbone(backbone, cfg, train, test, val=val)
    path = run_dir / "eval.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(result)
    atomic_write_text(path, json.dumps(merged, indent=2))
    return merged
