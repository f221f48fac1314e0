"""BYOL (Grill et al., 2020): online projector + predictor regress an EMA target's projection."""
from __future__ import annotations

import torch

from sharpshift.losses import byol_loss
from sharpshift.methods.base import SSLMethod
from sharpshift.steps import StepContext, StepOutput, ema_update, frozen_copy
from sharpshift.models.heads import mlp


class BYOL(SSLMethod):
    name = "byol"
    recipe = "asymmetric"

    def build_heads(self) -> None:
        m = self.mcfg
        self.projector = self.projector_head(layers=2)
        self.predictor = self.head(lambda: mlp(m.proj_output_dim, m.pred_hidden_dim, m.proj_output_dim, layers=2))
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def target_modules(self):
        return [self.target_backbone, self.target_projector]

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        v1, v2 = ctx.views[0], ctx.views[1]
        feats, z = self.encode([v1, v2], self.backbone, self.projector)
        p = list(self.predictor(torch.cat(z)).chunk(2))
        with torch.no_grad():
            _, zt = self.encode([v1, v2], self.target_backbone, self.target_projector)
        loss = byol_loss(p[0], zt[1]) + byol_loss(p[1], zt[0])
        return StepOutput(loss, {"byol": loss.detach()}, feats, z, extra={"pred": p, "target": zt})

    def after_optimizer_step(self, ctx: StepContext, out: StepOutput) -> None:
        decay = self.momentum()
        ema_update(self.target_backbone, self.backbone, decay)
        ema_update(self.target_projector, self.projector, decay)
