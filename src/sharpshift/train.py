"""`sharpshift pretrain`: config -> data -> method -> Lightning fit -> exported backbone -> evaluation."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from sharpshift.checkpoint import (CKPT_DIR, AtomicCheckpointIO, CheckpointEvery, check_state_matches, describe,
                                   find_resume_checkpoint)
from sharpshift.config import Config, to_yaml
from sharpshift.data.loader import PretrainData, channel_stats
from sharpshift.data.splits import pretraining_split
from sharpshift.errors import UserError
from sharpshift.export import atomic_write_text, export_backbone
from sharpshift.methods import METHODS
from sharpshift.models import backbone_arch
from sharpshift.nonfinite import NonFiniteLoss
from sharpshift.precision_choice import bf16_units, choose_for, cpu_name
from sharpshift.process_env import THREAD_NOTE_ENV
from sharpshift.steps import clip_summary
from sharpshift.throughput import Throughput
from sharpshift.tracking import build_loggers, finish_mlflow_run, start_mlflow_run

RUN_DIR_ENV = "SHARPSHIFT_RUN_DIR"  # shared with the processes DDP launches, so all agree on one folder


def resolve_precision(cfg: Config) -> str:
    """Lightning's precision for this config (auto: see sharpshift.precision_choice)."""
    return choose_for(cfg).precision


def first_process() -> bool:
    """Rank 0 as the launcher's environment says (torchrun, SLURM, Lightning's own), before the trainer exists."""
    return rank_zero_only.rank == 0


def make_run_dir(cfg: Config) -> Path:
    """A new run folder, created by the first process only (the others never write to it).
    $SHARPSHIFT_RUN_DIR names it instead: how processes launched separately (torchrun, SLURM) agree on one."""
    if os.environ.get(RUN_DIR_ENV):
        run_dir, exist_ok = Path(os.environ[RUN_DIR_ENV]), True
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(cfg.out_dir) / f"{cfg.name}-{cfg.method.name}-{stamp}"
        run_dir, i, exist_ok = base, 1, False
        while run_dir.exists():
            run_dir, i = Path(f"{base}-{i}"), i + 1
    if first_process():
        try:
            run_dir.mkdir(parents=True, exist_ok=exist_ok)
        except OSError as e:
            raise UserError(f"cannot create run folder {run_dir}: {e.strerror}; set out_dir to a writable folder") from None
        os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def prepare(cfg: Config, data_dir: str | None = None):
    """Load and check the data before anything is created on disk: (pretraining images, the labelled
    validation hold-out the kNN monitor reads, world size). Training never reads the test split: without a
    hold-out (data.val_fraction=0) there is no monitor."""
    if data_dir:
        cfg.data.data_dir = data_dir
    train, val = pretraining_split(cfg)
    world = int(cfg.trainer.devices) * cfg.trainer.num_nodes if str(cfg.trainer.devices).isdigit() else 1
    if cfg.data.batch_size * world > len(train):
        raise UserError(f"data.batch_size={cfg.data.batch_size} x {world} process(es) is larger than the dataset "
                        f"({len(train)} images); lower data.batch_size")
    if train.labels is None:
        val = None
    if val is None and cfg.eval.knn_every_n_epochs and train.labels is not None and first_process():
        print("note: no validation hold-out (data.val_fraction=0), so no kNN monitor: it never reads the test split",
              flush=True)
    return train, val, world


def build_module(cfg: Config, train, monitored=None, world: int = 1):
    """The method's LightningModule, with the kNN monitor's data (queries: `monitored`) attached when labels exist."""
    mean, std = channel_stats(train.images)
    steps_per_epoch = (len(train) // world) // cfg.data.batch_size
    total = cfg.trainer.max_epochs * steps_per_epoch
    if cfg.trainer.max_steps > 0:
        total = min(total, cfg.trainer.max_steps)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    num_classes = train.num_classes if train.labels is not None else 0
    module = METHODS[cfg.method.name](cfg, train.channels, train.size, num_classes, mean, std, total, steps_per_epoch,
                                      seed_offset=rank)
    for reg in module.regularisers:  # per-sample state (SAF's buffer) is sized before a checkpoint loads into it
        if hasattr(reg, "setup_dataset"):
            reg.setup_dataset(len(train))
    if monitored is not None and cfg.eval.knn_every_n_epochs:
        bank = train.subset(cfg.eval.knn_monitor_train, seed=cfg.seed)
        module.monitor = (bank.images, bank.labels, monitored.images, monitored.labels)
    return module


def build_trainer(cfg: Config, run_dir: Path, extra_callbacks: tuple = (), **overrides) -> L.Trainer:
    kwargs = dict(
        default_root_dir=run_dir, max_epochs=cfg.trainer.max_epochs, max_steps=cfg.trainer.max_steps,
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=resolve_precision(cfg), sync_batchnorm=cfg.trainer.sync_batchnorm,
        logger=build_loggers(cfg, run_dir),
        callbacks=[CheckpointEvery(run_dir / CKPT_DIR, cfg.trainer.checkpoint_every_n_steps,
                                   cfg.trainer.keep_checkpoints, describe(cfg))]
        + ([TQDMProgressBar(refresh_rate=10)] if cfg.trainer.progress_bar else []) + list(extra_callbacks),
        plugins=[AtomicCheckpointIO(describe(cfg))],  # atomic writes with a checksum; weights-only reads
        enable_checkpointing=False,  # no Lightning ModelCheckpoint: CheckpointEvery saves
        enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps, use_distributed_sampler=False, num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def set_up_cpu(cfg: Config) -> dict:
    """Threads, denormals and the precision choice, printed first and returned for train.json."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.trainer.flush_denormal:
        torch.set_flush_denormal(True)  # bf16 steps ~10% faster here (docs/benchmarks.md); a no-op where unsupported
    choice = choose_for(cfg)
    # the bf16 units name the machine type too: fp32 runs repeat bit for bit on one type, not across two
    # "AMD EPYC" types that differ in them (docs/results.md, "The papers' claims, tested")
    machine = {"precision_reason": choice.reason, "cpu": cpu_name(), "bf16_units": bf16_units(),
               "threads": torch.get_num_threads(),
               "thread_setting": os.environ.get(THREAD_NOTE_ENV, "not set up by the sharpshift command")}
    if first_process():
        print(f"precision: {choice.precision} ({choice.reason})", flush=True)
        print(f"cpu: {machine['cpu']}, {machine['threads']} threads; {machine['thread_setting']}", flush=True)
    return machine


def pretrain(cfg: Config, data_dir: str | None = None, resume: str | os.PathLike | None = None) -> Path:
    """Train and export; with `resume` (a run folder), continue it from its newest complete checkpoint."""
    previous = os.environ.get(RUN_DIR_ENV)
    try:
        return _pretrain(cfg, data_dir, resume)
    finally:  # the folder is this run's: a later pretrain() in the same process makes its own
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def _pretrain(cfg: Config, data_dir: str | None, resume: str | os.PathLike | None) -> Path:
    ckpt_path, ckpt = find_resume_checkpoint(resume, describe(cfg)) if resume else (None, None)
    machine = set_up_cpu(cfg)
    train, val, world = prepare(cfg, data_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, train, val, world)
    if ckpt is not None:
        check_state_matches(ckpt["state_dict"], module, ckpt_path)
        start_step = int(ckpt.get("global_step", 0))
        del ckpt  # Lightning loads it again, verified, once the trainer is set up
        run_dir = Path(resume)
        os.environ[RUN_DIR_ENV] = str(run_dir)
    else:
        start_step = 0
        run_dir = make_run_dir(cfg)
        if first_process():
            atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    speed = Throughput()
    trainer = build_trainer(cfg, run_dir, extra_callbacks=(speed,))
    if first_process():
        start_mlflow_run(trainer, cfg, run_dir)
    t0 = time.time()
    try:
        trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed, cfg.data.num_workers), ckpt_path=ckpt_path)
    except NonFiniteLoss as e:
        kept = next((c.latest() for c in trainer.callbacks if isinstance(c, CheckpointEvery)), None)
        where = f"the last checkpoint before it is {kept}" if kept else "no checkpoint was written before it"
        raise UserError(f"{e}; {where}") from None
    train_seconds = time.time() - t0
    if trainer.global_rank != 0:
        return run_dir
    arch = backbone_arch(cfg.model.backbone, train.channels, cfg.model.width, cfg.model.cifar_stem)
    arch.update(mean=module.views.mean.flatten().tolist(), std=module.views.std.flatten().tolist(),
                image_size=train.size, method=cfg.method.name, dataset=cfg.data.dataset)
    export_backbone(module.backbone, arch, run_dir)
    steps = trainer.global_step - start_step  # this session's steps (all of them unless resumed)
    summary = {"train_seconds": round(train_seconds, 1), "steps": trainer.global_step, "precision": trainer.precision,
               "images_per_second": round(steps * cfg.data.batch_size * world / max(train_seconds, 1e-9), 1),
               **machine, "speed": speed.summary(cfg.data.batch_size * world, module.views_per_image, train_seconds),
               "splits": {"pretrain": train.digest(), **({"val": val.digest()} if val is not None else {})}}
    if ckpt_path is not None:
        summary.update(resumed_from=str(ckpt_path), resumed_at_step=start_step)
    if module.skipped_steps:
        summary["skipped_nonfinite_steps"] = module.skipped_steps
    if module.grad_norms:  # this session's steps
        summary["grad_clip"] = clip_summary(module.grad_norms, cfg.optim.grad_clip)
    atomic_write_text(run_dir / "train.json", json.dumps(summary, indent=2))
    if module.mechanisms.series:
        from sharpshift import mechanisms, plugins

        for line in mechanisms.write(run_dir, module.mechanisms.results(plugins.MECHANISMS), atomic_write_text):
            print(line, flush=True)
    if cfg.eval.after_training and train.labels is not None:
        from sharpshift.evaluation.run import evaluate_run

        try:
            evaluate_run(run_dir, cfg.data.data_dir)
        except UserError as e:  # e.g. no labelled test split: the trained backbone is saved, say why not evaluated
            print(f"note: no offline evaluation: {e}", flush=True)
    finish_mlflow_run(trainer, run_dir)
    if cfg.report.after_training:
        from sharpshift.report import write_report_or_warn

        write_report_or_warn(run_dir, cfg.data.data_dir)
    return run_dir
