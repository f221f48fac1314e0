"""SimCLR (Chen et al., 2020): NT-Xent between two views through a 2-layer projector."""
from __future__ import annotations

import itertools

from sharpshift.amcl.heads import projection_heads, temperature_net
from sharpshift.amcl.steps import amcl_loss
from sharpshift.losses import nt_xent
from sharpshift.methods.base import SSLMethod, StepContext, StepOutput
from sharpshift.models.heads import mlp


class SimCLR(SSLMethod):
    name = "simclr"
    recipe = "symmetric"
    defaults = dict(proj_hidden_dim=512, proj_output_dim=128, temperature=0.5)

    def build_heads(self) -> None:
        self.projector = projection_heads(self.cfg, lambda: mlp(self.feat_dim, self.mcfg.proj_hidden_dim,
                                                                self.mcfg.proj_output_dim, layers=2))
        self.amcl_phi = temperature_net(self.cfg)  # AMCL's shared temperature network; None when amcl is off

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        if self.cfg.rsa.enabled:  # weak/aggressive views, decaying weight (sharpshift.shift.rsa)
            from sharpshift.shift.rsa import rsa_loss

            return rsa_loss(self, ctx)
        if self.amcl_phi is not None:  # C heads, adaptive temperatures (sharpshift.amcl)
            return amcl_loss(self, ctx)
        feats, z = self.encode(ctx.views, self.backbone, self.projector)
        pairs = list(itertools.combinations(range(len(z)), 2))  # more than two views: mean over pairs
        loss = sum(nt_xent(z[a], z[b], self.mcfg.temperature) for a, b in pairs) / len(pairs)
        return StepOutput(loss, {"nt_xent": loss.detach()}, feats, z)
