"""Barlow Twins (Zbontar et al., 2021): cross-correlation of the two views' embeddings towards identity."""
from __future__ import annotations

from sharpshift.losses import barlow_twins_loss
from sharpshift.methods.base import SSLMethod
from sharpshift.steps import StepContext, StepOutput


class BarlowTwins(SSLMethod):
    name = "barlow"
    recipe = "asymmetric"

    def build_heads(self) -> None:
        self.projector = self.projector_head(layers=3)

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        feats, z = self.encode(ctx.views[:2], self.backbone, self.projector)
        loss = barlow_twins_loss(z[0], z[1], self.mcfg.barlow_lambda, self.mcfg.barlow_scale)
        return StepOutput(loss, {"barlow": loss.detach()}, feats, z)
