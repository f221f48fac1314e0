"""DSA as a regulariser for any base method: adds lambda1 * L_w + lambda2 * L_reg to the method's loss.

Inputs per step: the un-augmented originals (ctx.images) for the outlier scores, the first two views
(ctx.views) for the prior relations, and the method's projector output per view (out.proj) as the
embedding h. The paper's h is BN(g(f(x))) with 64 dimensions; ours is the projector output as the method
builds it (SimCLR/MoCo 128-d, BYOL 128-d, Barlow 1024-d), without the extra BatchNorm. The adjuster does
not see the difference (a per-feature affine map cancels in its L1-normalised pair differences); the
distances in L_w do.

Global batch: the outlier scores are computed over the gathered batch of all processes (no gradient);
the N x N relations and both losses use this process's batch, as the official single-GPU code does.
"""
from __future__ import annotations

import torch
from torch import nn

from sharpshift.dsa.adjuster import PairAdjuster
from sharpshift.dsa.loss import PAIRS, prior_relations, relation_regulariser, weighted_relation_loss
from sharpshift.dsa.outliers import good_neighbour_scores
from sharpshift.dsa.prior import build_prior
from sharpshift.errors import UserError
from sharpshift.losses.dist import gather_no_grad, rank
from sharpshift.plugins import REGULARISERS


class DSARegulariser(nn.Module):
    def __init__(self, cfg, method):
        super().__init__()
        self.cfg = cfg.dsa
        emb = method.mcfg.proj_output_dim
        self.adjuster = PairAdjuster(emb, self.cfg.hidden_dim, self.cfg.pair_norm, self.cfg.chunk_mb)
        self.prior = build_prior(self.cfg.prior, method, self.cfg.prior_path, self.cfg.prior_seed)
        self.cache_originals = self.cfg.cache_originals and self.prior.frozen
        self.register_buffer("cache", torch.empty(0), persistent=False)  # prior features of originals by index
        self.register_buffer("cached", torch.empty(0, dtype=torch.bool), persistent=False)
        self.stats: dict[str, float] = {}

    def _unit(self, method, view: torch.Tensor) -> torch.Tensor:
        """A normalised view back to [0, 1] pixels, so the prior can apply its own normalisation."""
        return view.float() * method.views.std + method.views.mean

    @torch.no_grad()
    def prior_features(self, method, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(originals, view 0, view 1) in the prior space, one batched forward for what is not cached."""
        n = len(ctx.images)
        views = [self._unit(method, v) for v in ctx.views[:2]]
        if not self.cache_originals:
            u = self.prior(method, torch.cat([ctx.images.float() / 255.0] + views))
            return u[:n], u[n:2 * n], u[2 * n:]
        idx = ctx.indices.to(ctx.images.device)
        self._grow(int(idx.max()) + 1)
        todo = ~self.cached[idx]
        u = self.prior(method, torch.cat([ctx.images[todo].float() / 255.0] + views))
        k = int(todo.sum())
        if k:
            if self.cache.numel() == 0 or self.cache.shape[1] != u.shape[1]:
                self.cache = torch.zeros(len(self.cached), u.shape[1], device=u.device)
            self.cache[idx[todo]] = u[:k]
            self.cached[idx[todo]] = True
        return self.cache[idx], u[k:k + n], u[k + n:]

    def _grow(self, size: int) -> None:
        if size <= len(self.cached):
            return
        size = max(size, 2 * len(self.cached))
        cached = torch.zeros(size, dtype=torch.bool, device=self.cached.device)
        cached[:len(self.cached)] = self.cached
        if self.cache.dim() == 2:
            cache = torch.zeros(size, self.cache.shape[1], device=self.cache.device)
            cache[:len(self.cache)] = self.cache
            self.cache = cache
        self.cached = cached

    def forward(self, method, ctx, out) -> dict[str, torch.Tensor]:
        c = self.cfg
        u_orig, u0, u1 = self.prior_features(method, ctx)
        everyone = gather_no_grad(u_orig)
        n = len(u_orig)
        s = good_neighbour_scores(everyone, c.neighbours, c.good_threshold)[rank() * n:(rank() + 1) * n]
        priors = prior_relations(u0, u1, c.prior_tau)
        h = out.proj[:2]
        relations = [self.adjuster(h[a], h[b]) for a, b in PAIRS]  # h[a] is h[b] when a == b
        l_w = weighted_relation_loss(h[0], h[1], relations, s, c.temperature)
        l_reg = relation_regulariser(relations, priors)
        # how far the learned relations are from uniform (1/N): the L1-normalised inputs keep them close
        self.stats = {"dsa/s_mean": s.mean(), "dsa/m_max": max(m.detach().max() for m in relations)}
        return {"dsa_w": c.weight * l_w, "dsa_reg": c.reg_weight * l_reg}

    def after_step(self, method, ctx, out) -> None:
        if self.stats and method.global_step % method.cfg.trainer.log_every_n_steps == 0:
            method.log_dict({f"train/{k}": v for k, v in self.stats.items()}, on_step=True, on_epoch=False, batch_size=len(ctx.images))


def build_dsa(cfg, method) -> DSARegulariser | None:
    if not cfg.dsa.enabled:
        return None
    dsa = cfg.dsa
    if cfg.data.batch_size <= dsa.neighbours:
        raise UserError(f"dsa.neighbours={dsa.neighbours} needs data.batch_size > {dsa.neighbours}, "
                        f"got {cfg.data.batch_size}; lower dsa.neighbours or raise the batch size")
    if method.mcfg.proj_output_dim is None:
        raise UserError("DSA needs method.proj_output_dim; resolve the method defaults first")
    return DSARegulariser(cfg, method)


REGULARISERS.append(build_dsa)
