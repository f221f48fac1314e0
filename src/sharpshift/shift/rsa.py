"""RSA (Bai et al., NeurIPS 2022): reduce the semantic shift of aggressive augmentations.

Views come in two stages from the same crop: weak v_w = crop + flip, aggressive v_a = colour jitter,
grayscale, blur (and solarize, when the recipe has it) applied on top of that weak view. Aggressive views go
to the online network only, weak views to the target only, and the loss mixes the two kinds of pairs:

    (1 - beta_k) L(online(a1), target(w2)) + beta_k L(online(a1), sg online(a2))  + the symmetric terms
    beta_k = beta_base * (1 + cos(pi k / K)) / 2      (per step k of K; Eq. 6)

so early training also learns from the aggressive-aggressive pairs and late training only from the
aggressive-weak ones, whose semantics agree more. BYOL follows the paper (L = 2 - 2 cos, predictor outputs
on both sides of the aggressive-aggressive pair). SimCLR and MoCo get the same weighting as our
generalisation (docs/shift.md): the weak views are their stop-gradient keys.

Views are ordered [a1, a2, w1, w2]; `feats` and `proj` of the step output hold the online (aggressive) ones.
"""
from __future__ import annotations

import math

import torch

from sharpshift import plugins
from sharpshift.data.views import ViewParams, color_jitter, gaussian_blur, random_grayscale, resized_crop_flip, solarize
from sharpshift.losses import byol_loss, infonce_queue, nt_xent
from sharpshift.mechanisms import Mechanism, mean, values
from sharpshift.steps import StepContext, StepOutput


# --- views ------------------------------------------------------------------------------------------
def weak_view(x: torch.Tensor, p: ViewParams, g: torch.Generator, out_size: int) -> torch.Tensor:
    """Stage 1: random resized crop + flip only."""
    return resized_crop_flip(x, p, g, out_size).clamp(0, 1)


def one_channel_stage(x: torch.Tensor, p: ViewParams, g: torch.Generator, gamma: float, solarize_p: float):
    """What stands in, on one-channel images, for the colour ops they cannot have (saturation, hue, grayscale):
    a gamma curve x^k, log k ~ U(-log(1 + gamma), log(1 + gamma)) with the jitter's probability, then
    solarisation with probability solarize_p. Without it the aggressive stage changed Fashion-MNIST pixels by
    0.076 on average against 0.225 between two crops, and 10.5% of aggressive views equalled their weak view."""
    n, dev = x.shape[0], x.device
    if gamma > 0:
        apply = (torch.rand(n, generator=g, device=dev) < p.jitter_p).view(n, 1, 1, 1)
        span = math.log1p(gamma)
        k = torch.exp((torch.rand(n, generator=g, device=dev) * 2 - 1) * span).view(n, 1, 1, 1)
        x = torch.where(apply, x.clamp_min(1e-6) ** k, x)
    if solarize_p > 0:
        apply = (torch.rand(n, generator=g, device=dev) < solarize_p).view(n, 1, 1, 1)
        x = torch.where(apply & (x >= 0.5), 1 - x, x)
    return x


def aggressive_view(weak: torch.Tensor, p: ViewParams, g: torch.Generator, gray_gamma: float = 0.0,
                    gray_solarize_p: float = 0.0) -> torch.Tensor:
    """Stage 2, on top of the weak view: the recipe's photometric ops (grayscale-aware: one-channel images
    skip saturation, hue and grayscale, as in sharpshift.data.views, and get one_channel_stage instead)."""
    x = color_jitter(weak, p, g) if p.jitter_p > 0 else weak
    if x.shape[1] == 1:
        x = one_channel_stage(x, p, g, gray_gamma, gray_solarize_p)
    x = random_grayscale(x, p, g)
    x = gaussian_blur(x, p, g)
    return solarize(x, p, g).clamp(0, 1)


def multi_stage_views(x: torch.Tensor, params: list[ViewParams], g: torch.Generator, out_size: int,
                      gray_gamma: float = 0.0, gray_solarize_p: float = 0.0) -> list[torch.Tensor]:
    """[a1, ..., aV, w1, ..., wV] in [0, 1]: the aggressive views first, then the weak ones they were made from."""
    weak = [weak_view(x, p, g, out_size) for p in params]
    return [aggressive_view(w, p, g, gray_gamma, gray_solarize_p) for w, p in zip(weak, params)] + weak


# --- schedule and weighting -------------------------------------------------------------------------
def beta_k(step: int, total_steps: int, beta_base: float, schedule: str = "cosine") -> float:
    """Weight of the aggressive-aggressive pairs at step k: beta_base -> 0 along a half cosine (Eq. 6)."""
    if schedule == "constant":
        return beta_base
    k = min(max(step, 0), total_steps)
    return beta_base * (1 + math.cos(math.pi * k / max(total_steps, 1))) / 2


def mix(aggr_weak: torch.Tensor, aggr_aggr: torch.Tensor, beta: float) -> torch.Tensor:
    return (1 - beta) * aggr_weak + beta * aggr_aggr


def byol_rsa_terms(p: list[torch.Tensor], z_target_weak: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(aggressive-weak, aggressive-aggressive) BYOL losses, each summed over both directions as BYOL does.
    p: online predictions of a1, a2; z_target_weak: target projections of w1, w2."""
    aggr_weak = byol_loss(p[0], z_target_weak[1]) + byol_loss(p[1], z_target_weak[0])
    aggr_aggr = byol_loss(p[0], p[1].detach()) + byol_loss(p[1], p[0].detach())
    return aggr_weak, aggr_aggr


def simclr_rsa_terms(z: list[torch.Tensor], z_weak: list[torch.Tensor], temperature: float):
    """NT-Xent between an aggressive view and the other crop's stop-gradient weak view (averaged over the two
    directions), and plain NT-Xent between the two aggressive views."""
    aggr_weak = (nt_xent(z[0], z_weak[1].detach(), temperature) + nt_xent(z[1], z_weak[0].detach(), temperature)) / 2
    return aggr_weak, nt_xent(z[0], z[1], temperature)


def moco_rsa_terms(q: list[torch.Tensor], k_weak: list[torch.Tensor], queue: torch.Tensor, temperature: float):
    """InfoNCE against the queue with the key from the target's weak view, or from the other aggressive
    view's stop-gradient query; each averaged over the two directions as MoCo v2+ does."""
    t = temperature
    aggr_weak = (infonce_queue(q[0], k_weak[1], queue, t) + infonce_queue(q[1], k_weak[0], queue, t)) / 2
    aggr_aggr = (infonce_queue(q[0], q[1].detach(), queue, t) + infonce_queue(q[1], q[0].detach(), queue, t)) / 2
    return aggr_weak, aggr_aggr


# --- one step per method (registered with sharpshift.plugins as the (rsa, method) objectives) -------------
def current_beta(m, ctx: StepContext) -> float:
    return beta_k(ctx.step, m.total_steps, m.cfg.rsa.beta_base, m.cfg.rsa.schedule)


def _output(m, ctx, aggr_weak, aggr_aggr, feats, proj, **extra) -> StepOutput:
    beta = current_beta(m, ctx)
    loss = mix(aggr_weak, aggr_aggr, beta)
    terms = {"rsa_aggr_weak": aggr_weak.detach(), "rsa_aggr_aggr": aggr_aggr.detach()}
    return StepOutput(loss, terms, feats, proj, extra=dict(extra, rsa_beta=beta))


def byol_step(m, ctx: StepContext) -> StepOutput:
    a1, a2, w1, w2 = ctx.views
    feats, z = m.encode([a1, a2], m.backbone, m.projector)
    p = list(m.predictor(torch.cat(z)).chunk(2))
    with torch.no_grad():
        _, zt = m.encode([w1, w2], m.target_backbone, m.target_projector)
    return _output(m, ctx, *byol_rsa_terms(p, zt), feats, z, pred=p, target=zt)


def simclr_step(m, ctx: StepContext) -> StepOutput:
    a1, a2, w1, w2 = ctx.views
    feats, z = m.encode([a1, a2], m.backbone, m.projector)
    with torch.no_grad():  # no target network: the weak views are stop-gradient keys of the same network
        _, zw = m.encode([w1, w2], m.backbone, m.projector)
    return _output(m, ctx, *simclr_rsa_terms(z, zw, m.mcfg.temperature), feats, z)


def moco_step(m, ctx: StepContext) -> StepOutput:
    a1, a2, w1, w2 = ctx.views
    feats, q = m.encode([a1, a2], m.backbone, m.projector)
    with torch.no_grad():
        _, k = m.encode([w1, w2], m.target_backbone, m.target_projector)
    return _output(m, ctx, *moco_rsa_terms(q, k, m.queue, m.mcfg.temperature), feats, q, keys=k[1])


# --- the mechanism check --------------------------------------------------------------------------------
WEAK_CHANGE_FLOOR = 0.05  # mean |aggressive - weak| in [0, 1] pixels below which the two stages barely differ


def probe(m, ctx: StepContext, out: StepOutput) -> dict | None:
    if "rsa_beta" not in out.extra:
        return None
    a, w = torch.stack(ctx.views[:2]).float(), torch.stack(ctx.views[2:4]).float()
    change = float(((a - w).abs() * m.views.std).mean())  # back to [0, 1] pixel units
    return {"beta": out.extra["rsa_beta"], "aggr_weak": float(out.terms["rsa_aggr_weak"]),
            "aggr_aggr": float(out.terms["rsa_aggr_aggr"]), "aggressive_minus_weak": change}


def check(series: dict) -> tuple[dict, list[str]]:
    summary = {k: mean(values(series, k)) for k in series}
    betas = values(series, "beta")
    summary.update(beta_first=betas[0] if betas else None, beta_last=betas[-1] if betas else None)
    warnings = []
    if summary.get("aggressive_minus_weak", 1.0) < WEAK_CHANGE_FLOOR:
        warnings.append(f"RSA's aggressive views differ from the weak ones by {summary['aggressive_minus_weak']:.3f} "
                        "on average (pixels in [0, 1]): there is little semantic shift to weight")
    if betas and max(betas) == 0:
        warnings.append("RSA's beta_k is 0 on every recorded step: the aggressive-aggressive pairs never count")
    return summary, warnings


STEPS = {"byol": byol_step, "simclr": simclr_step, "moco": moco_step}
plugins.MECHANISMS["rsa"] = Mechanism(probe, check)
plugins.OBJECTIVES.update({("rsa", name): step for name, step in STEPS.items()})
plugins.REFUSALS["rsa"] = "set rsa.enabled=false or change method.name"
plugins.EXCLUSIVE.append(("rsa", "amcl", "rsa and amcl cannot be combined yet (RSA's losses use a single head); "
                                        "set rsa.enabled=false or amcl.enabled=false"))
