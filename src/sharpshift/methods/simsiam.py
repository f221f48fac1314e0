"""SimSiam (Chen and He, 2021): a predictor and a stop-gradient, no negatives and no momentum encoder."""
from __future__ import annotations

import torch

from sharpshift.losses import simsiam_loss
from sharpshift.methods.base import SSLMethod
from sharpshift.steps import StepContext, StepOutput
from sharpshift.models.heads import mlp


class SimSiam(SSLMethod):
    name = "simsiam"

    def build_heads(self) -> None:
        m = self.mcfg
        self.projector = self.projector_head(layers=3, last_bn=True)
        self.predictor = self.head(lambda: mlp(m.proj_output_dim, m.pred_hidden_dim, m.proj_output_dim, layers=2))

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        feats, z = self.encode(ctx.views[:2], self.backbone, self.projector)
        p = list(self.predictor(torch.cat(z)).chunk(2))
        loss = 0.5 * (simsiam_loss(p[0], z[1]) + simsiam_loss(p[1], z[0]))
        return StepOutput(loss, {"simsiam": loss.detach()}, feats, z, extra={"pred": p})
