"""SimSiam (Chen and He, 2021): a predictor and a stop-gradient, no negatives and no momentum encoder."""
from __future__ import annotations

import torch

from sharpshift.amcl.heads import projection_heads, temperature_net
from sharpshift.amcl.steps import amcl_loss
from sharpshift.losses import simsiam_loss
from sharpshift.methods.base import SSLMethod, StepContext, StepOutput
from sharpshift.models.heads import mlp


class SimSiam(SSLMethod):
    name = "simsiam"
    recipe = "symmetric"
    defaults = dict(proj_hidden_dim=512, proj_output_dim=512, pred_hidden_dim=128)

    def build_heads(self) -> None:
        m = self.mcfg
        self.projector = projection_heads(self.cfg, lambda: mlp(self.feat_dim, m.proj_hidden_dim, m.proj_output_dim,
                                                                layers=3, last_bn=True))
        self.predictor = projection_heads(self.cfg, lambda: mlp(m.proj_output_dim, m.pred_hidden_dim,
                                                                m.proj_output_dim, layers=2))  # AMCL: one per head
        self.amcl_phi = temperature_net(self.cfg)  # AMCL's shared temperature network; None when amcl is off

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        if self.amcl_phi is not None:  # C heads, adaptive temperatures (sharpshift.amcl)
            return amcl_loss(self, ctx)
        feats, z = self.encode(ctx.views[:2], self.backbone, self.projector)
        p = list(self.predictor(torch.cat(z)).chunk(2))
        loss = 0.5 * (simsiam_loss(p[0], z[1]) + simsiam_loss(p[1], z[0]))
        return StepOutput(loss, {"simsiam": loss.detach()}, feats, z, extra={"pred": p})
