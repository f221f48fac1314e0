"""MoCo v2 (Chen et al., 2020): momentum encoder, a queue of negative keys, symmetric InfoNCE.

The momentum schedule (cosine from momentum_base to momentum_final) and the symmetric loss follow
solo-learn's MoCo v2+; BN is not shuffled across processes (we use one forward over both views)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.losses import infonce_queue
from sharpshift.losses.dist import gather_no_grad
from sharpshift.methods.base import SSLMethod
from sharpshift.models.heads import MultiHead
from sharpshift.steps import StepContext, StepOutput, ema_update, frozen_copy


class MoCo(SSLMethod):
    name = "moco"

    def build_heads(self) -> None:
        self.projector = self.projector_head(layers=2)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def build_state(self) -> None:
        m = self.mcfg  # C heads (MultiHead): a queue (K, C, d), one per head
        heads = (len(self.projector.heads),) if isinstance(self.projector, MultiHead) else ()
        queue = F.normalize(torch.randn(m.queue_size, *heads, m.proj_output_dim), dim=-1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def target_modules(self):
        return [self.target_backbone, self.target_projector]

    def compute_loss(self, ctx: StepContext) -> StepOutput:
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
