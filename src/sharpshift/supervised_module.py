"""The supervised reference ("SL"): the same backbone and views, trained with cross-entropy on labels.

Every view of an image gets the image's label (mean cross-entropy over views); optimizer, warm-up and
cosine schedule come from the config's `optim` group, as in pretraining.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.config import Config
from sharpshift.data.views import ViewGenerator, view_params
from sharpshift.methods import METHODS
from sharpshift.models import build_backbone
from sharpshift.optim import build_optimizer, warmup_cosine


class Supervised(L.LightningModule):
    def __init__(self, cfg: Config, in_channels: int, image_size: int, num_classes: int, mean: list[float],
                 std: list[float], total_steps: int, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.total_steps, self.steps_per_epoch = cfg, total_steps, steps_per_epoch
        self.backbone = build_backbone(cfg.model.backbone, in_channels, cfg.model.width, cfg.model.cifar_stem)
        self.classifier = nn.Linear(self.backbone.feat_dim, num_classes)
        recipe = METHODS[cfg.method.name].recipe  # the views the SSL run of this config would see
        self.views = ViewGenerator(view_params(cfg.views, recipe, image_size), mean, std, image_size, seed=cfg.seed * 1000)
        if cfg.model.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        views = self.views(images)
        logits = self.classifier(self.backbone(torch.cat(views)))
        loss = F.cross_entropy(logits.float(), labels.repeat(len(views)))
        if self.global_step % self.cfg.trainer.log_every_n_steps == 0:
            acc = (logits.argmax(1) == labels.repeat(len(views))).float().mean()
            self.log_dict({"train/loss": loss.detach(), "train/top1": acc}, on_step=True, on_epoch=False,
                          batch_size=len(images))
        return loss

    def configure_optimizers(self):
        opt = build_optimizer([self.backbone, self.classifier], self.cfg.optim)
        warmup = int(round(self.cfg.optim.warmup_epochs * self.steps_per_epoch))
        total, ratio = self.total_steps, self.cfg.optim.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, ratio))
        return [opt], [{"scheduler": sched, "interval": "step"}]
