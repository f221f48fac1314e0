"""`sharpshift supervised CONFIG [key=value ...]`: the supervised reference, saved as a run folder
(config.yaml, backbone.safetensors + backbone.json, train.json, eval.json, logs) so that `evaluate` and
every `diagnose` command apply to it. The command itself: sharpshift.commands.supervised."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace


def train_supervised(cfg, data_dir: str | None = None) -> Path:
    import time

    import lightning as L

    from sharpshift.config import to_yaml
    from sharpshift.data.loader import PretrainData, channel_stats
    from sharpshift.errors import UserError
    from sharpshift.export import atomic_write_text, export_backbone
    from sharpshift.models import backbone_arch
    from sharpshift.supervised_module import Supervised
    from sharpshift.train import build_trainer, make_run_dir, prepare, set_up_cpu

    machine = set_up_cpu(cfg)
    train, _, world = prepare(cfg, data_dir)  # the final evaluation reads the test split, training never does
    if train.labels is None:
        raise UserError(f"dataset {cfg.data.dataset!r} has no labels; supervised training needs a labelled dataset")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # the folder is named <name>-supervised-<time>
    run_dir = make_run_dir(SimpleNamespace(name=cfg.name, out_dir=cfg.out_dir, method=SimpleNamespace(name="supervised")))
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    mean, std = channel_stats(train.images)
    steps_per_epoch = (len(train) // world) // cfg.data.batch_size
    total = cfg.trainer.max_epochs * steps_per_epoch
    if cfg.trainer.max_steps > 0:
        total = min(total, cfg.trainer.max_steps)
    module = Supervised(cfg, train.channels, train.size, train.num_classes, mean, std, total, steps_per_epoch)
    trainer = build_trainer(cfg, run_dir)
    t0 = time.time()
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed, cfg.data.num_workers))
    seconds = time.time() - t0
    if trainer.global_rank != 0:
        return run_dir
    arch = backbone_arch(cfg.model.backbone, train.channels, cfg.model.width, cfg.model.cifar_stem)
    arch.update(mean=module.views.mean.flatten().tolist(), std=module.views.std.flatten().tolist(),
                image_size=train.size, method="supervised", dataset=cfg.data.dataset)
    export_backbone(module.backbone, arch, run_dir)
    summary = {"supervised": True, "train_seconds": round(seconds, 1), "steps": trainer.global_step,
               "precision": trainer.precision, **machine,
               "images_per_second": round(trainer.global_step * cfg.data.batch_size * world / max(seconds, 1e-9), 1),
               "splits": {"pretrain": train.digest()}}
    atomic_write_text(run_dir / "train.json", json.dumps(summary, indent=2))
    if cfg.eval.after_training:
        from sharpshift.evaluation.run import evaluate_run

        try:
            evaluate_run(run_dir, cfg.data.data_dir)
        except UserError as e:  # e.g. no labelled test split: the trained backbone is saved, say why not evaluated
            print(f"note: no offline evaluation: {e}", flush=True)
    return run_dir
