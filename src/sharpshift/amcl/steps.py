"""One AMCL training step per base method, registered with sharpshift.plugins as the (amcl, method) objective.

The methods build `projector` (and SimSiam's `predictor`) through SSLMethod.head, which amcl.heads turns into
C heads, so their outputs
are (n, C, d); `amcl_phi` is the shared temperature network. The step output keeps head 0's projections in
`proj` (what add-ons that read projections expect: (n, d) per view) and every head's in extra["heads"].
Evaluation never sees the heads: it reads the backbone.
"""
from __future__ import annotations

import itertools
import torch

from sharpshift import plugins
from sharpshift.amcl.adaptive import (adaptive_barlow_twins, adaptive_infonce_queue, adaptive_nt_xent,
                                      adaptive_simsiam)
from sharpshift.amcl.losses import amcl_barlow_twins, amcl_infonce_queue, amcl_nt_xent, amcl_simsiam
from sharpshift.steps import StepContext, StepOutput


# per method: (official loss, adaptive loss); amcl.form picks one
LOSSES = {"simclr": (amcl_nt_xent, adaptive_nt_xent), "moco": (amcl_infonce_queue, adaptive_infonce_queue),
          "simsiam": (amcl_simsiam, adaptive_simsiam), "barlow": (amcl_barlow_twins, adaptive_barlow_twins)}


def _loss(m):
    official, adaptive = LOSSES[m.name]
    return official if m.cfg.amcl.form == "official" else adaptive


def _temperature_kwargs(m, topk: bool = False) -> dict:
    a = m.cfg.amcl
    kw = dict(beta=a.resolved_beta(m.name), tau_min=a.tau_min, tau_max=a.tau_max)
    if a.form == "official":
        return dict(kw, topk=a.topk) if topk else kw
    return dict(kw, kappa=a.kappa, delta=a.resolved_delta(m.name))


def _output(loss, stats: dict, feats, z, **extra) -> StepOutput:
    """Scalar stats become logged terms; every pair's temperature per head goes to extra["amcl_taus"] for the
    mechanism check."""
    scalars = {k: v for k, v in stats.items() if not k.endswith("_all")}
    taus = {k[: -len("_all")]: v for k, v in stats.items() if k.endswith("_all")}
    terms = {"amcl": loss.detach(), **{f"amcl_{k}": v for k, v in scalars.items()}}
    return StepOutput(loss, terms, feats, [v[:, 0] for v in z], extra=dict(extra, heads=z, amcl_taus=taus))


def _mean_results(results: list) -> tuple[torch.Tensor, dict]:
    loss = sum(r[0] for r in results) / len(results)
    stats = {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1] if not k.endswith("_all")}
    stats.update({k: torch.cat([r[1][k] for r in results], dim=1) for k in results[0][1] if k.endswith("_all")})
    return loss, stats


def simclr_step(m, ctx: StepContext) -> StepOutput:
    feats, z = m.encode(ctx.views, m.backbone, m.projector)
    pairs = list(itertools.combinations(range(len(z)), 2))  # more than two views: mean over pairs, as the base
    loss_fn, kw = _loss(m), _temperature_kwargs(m, topk=True)
    loss, stats = _mean_results([loss_fn(z[a], z[b], m.amcl_phi, **kw) for a, b in pairs])
    return _output(loss, stats, feats, z)


def moco_step(m, ctx: StepContext) -> StepOutput:
    v1, v2 = ctx.views[0], ctx.views[1]
    feats, q = m.encode([v1, v2], m.backbone, m.projector)
    with torch.no_grad():
        _, k = m.encode([v1, v2], m.target_backbone, m.target_projector)
    kw = _temperature_kwargs(m, topk=True)
    # symmetric over the two views, as the base MoCo v2+ (the official AMCL code swaps query and key instead);
    # both directions in one batch: the mean over its 2n queries is the mean of the two directions
    loss, stats = _loss(m)(torch.cat([q[0], q[1]]), torch.cat([k[1], k[0]]), m.queue, m.amcl_phi, **kw)
    return _output(loss, stats, feats, q, keys=k[1])  # keys (n, C, d): one per head for its queue


def simsiam_step(m, ctx: StepContext) -> StepOutput:
    feats, z = m.encode(ctx.views[:2], m.backbone, m.projector)
    p = list(m.predictor(torch.cat(z)).chunk(2))  # head c's predictor reads head c's projection
    loss, stats = _loss(m)(p[0], p[1], z[0], z[1], m.amcl_phi, **_temperature_kwargs(m))
    return _output(loss, stats, feats, z, pred=p)


def barlow_step(m, ctx: StepContext) -> StepOutput:
    feats, z = m.encode(ctx.views[:2], m.backbone, m.projector)
    loss, stats = _loss(m)(z[0], z[1], m.amcl_phi, lambd=m.mcfg.barlow_lambda, scale=m.mcfg.barlow_scale,
                           **_temperature_kwargs(m))
    return _output(loss, stats, feats, z)


STEPS = {"simclr": simclr_step, "moco": moco_step, "simsiam": simsiam_step, "barlow": barlow_step}

plugins.OBJECTIVES.update({("amcl", name): step for name, step in STEPS.items()})
plugins.REFUSALS["amcl"] = "set amcl.enabled=false or method.name to one of those"
