"""SimCLR (Chen et al., 2020): NT-Xent between two views through a 2-layer projector."""
from __future__ import annotations

import itertools

from sharpshift.losses import nt_xent
from sharpshift.methods.base import SSLMethod
from sharpshift.steps import StepContext, StepOutput


class SimCLR(SSLMethod):
    name = "simclr"

    def build_heads(self) -> None:
        self.projector = self.projector_head(layers=2)

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        feats, z = self.encode(ctx.views, self.backbone, self.projector)
        pairs = list(itertools.combinations(range(len(z)), 2))  # more than two views: mean over pairs
        loss = sum(nt_xent(z[a], z[b], self.mcfg.temperature) for a, b in pairs) / len(pairs)
        return StepOutput(loss, {"nt_xent": loss.detach()}, feats, z)
