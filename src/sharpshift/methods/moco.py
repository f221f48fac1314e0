"""MoCo v2 (Chen et al., 2020): momentum encoder, a queue of negative keys, symmetric InfoNCE.

The momentum schedule (cosine from momentum_base to momentum_final) and the symmetric loss follow
solo-learn's MoCo v2+; BN is not shuffled across processes (we use one forward over both views)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.amcl.heads import projection_heads, temperature_net
from sharpshift.amcl.steps import amcl_loss
from sharpshift.losses import infonce_queue
from sharpshift.losses.dist import gather_no_grad
from sharpshift.methods.base import SSLMethod, StepContext, StepOutput, ema_update, frozen_copy
from sharpshift.models.heads import mlp


class MoCo(SSLMethod):
    name = "moco"
    recipe = "symmetric"
    defaults = dict(proj_hidden_dim=512, proj_output_dim=128, temperature=0.2, momentum_base=0.99,
                    momentum_final=1.0, queue_size=4096)

    def build_heads(self) -> None:
        m = self.mcfg
        self.projector = projection_heads(self.cfg, lambda: mlp(self.feat_dim, m.proj_hidden_dim, m.proj_output_dim,
                                                                layers=2))
        self.amcl_phi = temperature_net(self.cfg)  # AMCL's shared temperature network; None when amcl is off
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        heads = (self.cfg.amcl.heads,) if self.cfg.amcl.enabled else ()  # AMCL: (K, C, d), one queue per head
        queue = F.normalize(torch.randn(m.queue_size, *heads, m.proj_output_dim), dim=-1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def target_modules(self):
        return [self.target_backbone, self.target_projector]

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        if self.cfg.rsa.enabled:  # weak/aggressive views, decaying weight (sharpshift.shift.rsa)
            from sharpshift.shift.rsa import rsa_loss

            return rsa_loss(self, ctx)
        if self.amcl_phi is not None:  # C heads, adaptive temperatures (sharpshift.amcl)
            return amcl_loss(self, ctx)
        v1, v2 = ctx.views[0], ctx.views[1]
        feats, q = self.encode([v1, v2], self.backbone, self.projector)
        with torch.no_grad():
            _, k = self.encode([v1, v2], self.target_backbone, self.target_projector)
        t = self.mcfg.temperature
        loss = (infonce_queue(q[0], k[1], self.queue, t) + infonce_queue(q[1], k[0], self.queue, t)) / 2
        return StepOutput(loss, {"infonce": loss.detach()}, feats, q, extra={"keys": k[1]})

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext, out: StepOutput) -> None:
        self.enqueue(gather_no_grad(F.normalize(out.extra["keys"].float(), dim=-1)))
        decay = self.momentum()
        ema_update(self.target_backbone, self.backbone, decay)
        ema_update(self.target_projector, self.projector, decay)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys at the pointer, wrapping around the end of the queue."""
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys[-size:] if len(keys) > size else keys
        self.queue_ptr.fill_((ptr + len(keys)) % size)
