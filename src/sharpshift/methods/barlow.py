"""Barlow Twins (Zbontar et al., 2021): cross-correlation of the two views' embeddings towards identity."""
from __future__ import annotations

from sharpshift.amcl.heads import projection_heads, temperature_net
from sharpshift.amcl.steps import amcl_loss
from sharpshift.losses import barlow_twins_loss
from sharpshift.methods.base import SSLMethod, StepContext, StepOutput
from sharpshift.models.heads import mlp


class BarlowTwins(SSLMethod):
    name = "barlow"
    recipe = "asymmetric"
    defaults = dict(proj_hidden_dim=1024, proj_output_dim=1024, barlow_lambda=0.005, barlow_scale=0.1)

    def build_heads(self) -> None:
        m = self.mcfg
        self.projector = projection_heads(self.cfg, lambda: mlp(self.feat_dim, m.proj_hidden_dim, m.proj_output_dim,
                                                                layers=3))
        self.amcl_phi = temperature_net(self.cfg)  # AMCL's shared temperature network; None when amcl is off

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        if self.amcl_phi is not None:  # C heads, adaptive temperatures (sharpshift.amcl)
            return amcl_loss(self, ctx)
        feats, z = self.encode(ctx.views[:2], self.backbone, self.projector)
        loss = barlow_twins_loss(z[0], z[1], self.mcfg.barlow_lambda, self.mcfg.barlow_scale)
        return StepOutput(loss, {"barlow": loss.detach()}, feats, z)
