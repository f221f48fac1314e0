"""DSA as a regulariser for any base method: adds lambda1 * L_w + lambda2 * L_reg to the method's loss.

Inputs per step: the un-augmented originals (ctx.images) for the outlier scores, the first two views
(ctx.views) for the prior relations, and the method's projector output per view (out.proj) as the
embedding h. The paper's h is BN(g(f(x))) with 64 dimensions; ours is the projector output as the method
builds it (SimCLR/MoCo 128-d, BYOL 128-d, Barlow 1024-d), without the extra BatchNorm. The adjuster does
not see the difference (a per-feature affine map cancels in its L1-normalised pair differences); the
distances in L_w do.

Two forms (dsa.form, docs/dsa.md): `official` is the released construction (PairAdjuster, rows summing to one,
gradient of L_w through M); `working` (ours) has relations in [0, 1] (WorkingAdjuster) that L_reg trains toward
the prior relations and that L_w uses as fixed weights, so a relation above 1/2 attracts and one below repels;
the encoder still receives L_reg's gradient through M. `dsa.cross_view=false` builds M^01 and M^10 from same-view
differences, as the official code (M^01 = M^00, M^10 = M^11). Either way the adjuster has its own Adam
(dsa.adjuster_lr, dsa.adjuster_weight_decay: the official optimiser).

Global batch: the outlier scores are computed over the gathered batch of all processes (no gradient);
the N x N relations and both losses use this process's batch, as the official single-GPU code does.
"""
from __future__ import annotations

import torch
from torch import nn

from sharpshift.dsa.adjuster import PairAdjuster, WorkingAdjuster
from sharpshift.dsa.loss import PAIRS, prior_relations, relation_regulariser, weighted_relation_loss
from sharpshift.dsa.outliers import good_neighbour_scores
from sharpshift.dsa.prior import build_prior
from sharpshift.errors import UserError
from sharpshift.losses.dist import gather_no_grad, rank
from sharpshift.mechanisms import Mechanism, mean, values
from sharpshift.plugins import MECHANISMS, REGULARISERS

SAME_VIEW_PAIRS = ((0, 0), (1, 1), (0, 0), (1, 1))  # dsa.cross_view=false: the official code's M^01, M^10


class DSARegulariser(nn.Module):
    def __init__(self, cfg, method):
        super().__init__()
        self.cfg = cfg.dsa
        emb = method.mcfg.proj_output_dim
        if self.cfg.form == "working":
            self.adjuster = WorkingAdjuster(emb, self.cfg.hidden_dim, self.cfg.chunk_mb)
        else:  # the official construction with PyTorch's default initialisation
            self.adjuster = PairAdjuster(emb, self.cfg.hidden_dim, self.cfg.pair_norm, self.cfg.chunk_mb,
                                         alive_output=False)
        self.prior = build_prior(self.cfg.prior, method, self.cfg.prior_path, self.cfg.prior_seed)
        self.cache_originals = self.cfg.cache_originals and self.prior.frozen
        self.register_buffer("cache", torch.empty(0), persistent=False)  # prior features of originals by index
        self.register_buffer("cached", torch.empty(0, dtype=torch.bool), persistent=False)
        self.stats: dict[str, float] = {}
        self.pending: tuple[int, dict] | None = None  # (step, mechanism figures) of a due step's first pass

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.adjuster.parameters(), lr=self.cfg.adjuster_lr,
                                weight_decay=self.cfg.adjuster_weight_decay)

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

    def relations(self, h: list[torch.Tensor]) -> list[torch.Tensor]:
        """M^ab for the four PAIRS; with cross_view=false the cross pairs are the same-view matrices themselves."""
        pairs = PAIRS if self.cfg.cross_view else SAME_VIEW_PAIRS
        built: dict[tuple[int, int], torch.Tensor] = {}
        for a, b in pairs:
            if (a, b) not in built:
                built[(a, b)] = self.adjuster(h[a], h[b])  # h[a] is h[b] when a == b
        return [built[p] for p in pairs]

    def forward(self, method, ctx, out) -> dict[str, torch.Tensor]:
        c = self.cfg
        h = out.proj[:2]
        if c.form == "uniform":  # the control: every relation 1/N, every sample trusted, nothing learned
            n = len(h[0])
            s = torch.ones(n, device=h[0].device)
            relations = [torch.full((n, n), 1.0 / n, device=h[0].device)] * len(PAIRS)
            l_w = weighted_relation_loss(h[0], h[1], relations, s, c.temperature)
            l_reg = torch.zeros((), device=h[0].device)
        else:
            u_orig, u0, u1 = self.prior_features(method, ctx)
            everyone = gather_no_grad(u_orig)
            n = len(u_orig)
            s = good_neighbour_scores(everyone, c.neighbours, c.good_threshold)[rank() * n:(rank() + 1) * n]
            priors = prior_relations(u0, u1, c.prior_tau)
            relations = self.relations(h)
            weights = relations if c.form == "official" else [m.detach() for m in relations]
            l_w = weighted_relation_loss(h[0], h[1], weights, s, c.temperature)
            l_reg = relation_regulariser(relations, priors)
        terms = {"dsa_w": c.weight * l_w, "dsa_reg": c.reg_weight * l_reg}
        self.stats = {"dsa/s_mean": s.mean(), "dsa/m_max": max(m.detach().max() for m in relations)}
        log = getattr(method, "mechanisms", None)
        if log is not None and log.due(ctx.step) and (self.pending is None or self.pending[0] != ctx.step):
            self.pending = (ctx.step, self.figures(h, relations, s, terms, ctx.labels))
        return terms

    def figures(self, h, relations, s, terms, labels) -> dict[str, float]:
        """The relation statistics of docs/dsa.md on M^00, and how much of DSA's gradient on h goes through M."""
        m = relations[0].detach()
        n = len(m)
        off = ~torch.eye(n, dtype=torch.bool, device=m.device)
        figures = {"n_max_m": float(n * m.max()), "share_above_half": float((m[off] > 0.5).float().mean())}
        known = labels >= 0
        if bool(known.all()):  # labels for the diagnostic only
            same = (labels[:, None] == labels[None]) & off
            figures["same_class_mass"] = float(m[same].sum() / m[off].sum().clamp_min(1e-30))
            figures["same_class_base_rate"] = float(same.sum() / off.sum())
        if torch.is_grad_enabled() and h[0].requires_grad and relations[0].requires_grad:
            total = terms["dsa_w"] + terms["dsa_reg"]
            through = torch.autograd.grad(total, relations, retain_graph=True, allow_unused=True)
            pairs = [(r, g) for r, g in zip(relations, through) if g is not None]
            via_m = torch.autograd.grad([r for r, _ in pairs], h, [g for _, g in pairs], retain_graph=True,
                                        allow_unused=True)
            direct_loss = self.cfg.weight * weighted_relation_loss(h[0], h[1], [r.detach() for r in relations], s,
                                                                   self.cfg.temperature)
            direct = torch.autograd.grad(direct_loss, h, retain_graph=True, allow_unused=True)
            norm = lambda gs: float(sum((g.float() ** 2).sum() for g in gs if g is not None)) ** 0.5  # noqa: E731
            figures["grad_through_m_ratio"] = norm(via_m) / max(norm(direct), 1e-30)
        return figures

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


def probe(method, ctx, out) -> dict | None:
    reg = next(r for r in method.regularisers if isinstance(r, DSARegulariser))
    return reg.pending[1] if reg.pending is not None and reg.pending[0] == ctx.step else None


def check(series: dict) -> tuple[dict, list[str]]:
    """Off: relations uniform (N x max M within 5% of 1, no entry above 1/2), or none of DSA's gradient on h
    passing through M (ratio < 1e-3)."""
    summary = {name: mean(values(series, name)) for name in series}
    warnings = []
    if summary.get("n_max_m", 2.0) < 1.05 and summary.get("share_above_half", 1.0) == 0:
        warnings.append(f"DSA relations are uniform (N x max M = {summary['n_max_m']:.3f}, no entry above 1/2): "
                        "the relation mechanism is off; dsa.form=working makes relations that attract")
    ratio = summary.get("grad_through_m_ratio")
    if ratio is not None and ratio < 1e-3:
        warnings.append(f"DSA's gradient through M is {ratio:.1e} of L_w's: the encoder does not learn from the "
                        "relations")
    return summary, warnings


REGULARISERS.append(build_dsa)
MECHANISMS["dsa"] = Mechanism(probe, check)
