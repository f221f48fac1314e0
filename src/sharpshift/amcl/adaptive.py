"""AMCL's working form (`amcl.form: adaptive`): per-pair temperatures that have an interior optimum.

Why a second form: the official losses (amcl.losses) are linear in s/tau, so for a positive
d/dtau[-s/tau + beta Omega(tau)] > 0 whenever s > beta and tau_min is always the optimum; the summed negative
regulariser rewards small tau too, and for Barlow Twins (1 - C/tau)^2 is minimised at tau = C, which cancels the
invariance term (../docs/amcl.md has the derivation and the measurements). Here:

- tau is *fitted*, not chosen by the contrastive loss. phi reads detached embeddings and is trained only by the
  likelihood fit  Omega_fit(tau; s) = (1 - s + delta) / tau + kappa log tau  (s detached), whose minimum is at
  tau* = (1 - s + delta) / kappa: the Gaussian-likelihood argument behind the paper's Omega ((d'/2) log tau + 1/tau
  is the same function with kappa = d'/2, delta = 0 and ||a - b||^2 / 2 = 1 - s), with delta keeping the optimum
  away from tau_min when s -> 1. A harder pair (lower s) gets a higher tau, i.e. a weaker constraint, as the
  paper's MLE argument says. With kappa 2 and delta 0.1, tau* lies in [0.05, 1.05] for s in [1, -1].
- The encoder's loss uses tau detached, so it cannot escape through the temperature:
  SimCLR/MoCo: InfoNCE (log-sum-exp over every negative) with per-pair temperatures;
  SimSiam: -cos(p, sg z) weighted by 1/tau normalised to mean 1 over the batch;
  Barlow Twins: (1 - C_ll)^2 and lambda C_lm^2 weighted by 1/tau normalised to mean 1 over the diagonal and over
  the off-diagonal, with |C_lm| as the off-diagonal pair's similarity. A constant tau gives back each base loss.

Shapes and conventions as amcl.losses: per-head embeddings (n, C, d), loss summed over heads, fp32. The stats
hold every pair's temperature per head (tau_pos (C, m), tau_neg (C, m')) for the mechanism check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.amcl.losses import Phi, _per_head, _standardise, pair_temperature
from sharpshift.losses.dist import gather, gather_no_grad, rank
from sharpshift.losses.precision import fp32


def temperature_fit(tau: torch.Tensor, sim: torch.Tensor, kappa: float, delta: float) -> torch.Tensor:
    """Omega_fit(tau; s) elementwise; s is detached: the fit moves tau toward (1 - s + delta) / kappa, never s."""
    return (1 - sim.detach() + delta) / tau + kappa * torch.log(tau)


def optimal_temperature(sim: torch.Tensor, kappa: float, delta: float) -> torch.Tensor:
    """argmin_tau Omega_fit(tau; s), before the [tau_min, tau_max] bounds."""
    return (1 - sim + delta) / kappa


def _inverse_weights(tau: torch.Tensor, dims: tuple[int, ...], mask: torch.Tensor | None = None) -> torch.Tensor:
    """1/tau normalised to mean 1 over `dims` (over the entries where mask is 1), detached. Without a mask dims
    is the batch axis (0), and the mean is over the global batch, so several processes weight as one."""
    inv = 1.0 / tau.detach()
    if mask is None:
        return inv / gather_no_grad(inv).mean(dims, keepdim=True)
    return inv / ((inv * mask).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True))


def _stats(tau_pos: torch.Tensor, tau_neg: torch.Tensor | None) -> dict[str, torch.Tensor]:
    stats = {"tau_pos": tau_pos.mean().detach(), "tau_pos_all": tau_pos.detach()}
    if tau_neg is not None:
        stats.update(tau_neg=tau_neg.mean().detach(), tau_neg_all=tau_neg.detach())
    return stats


def _sample_negatives(tau: torch.Tensor, keep: torch.Tensor, limit: int = 4096) -> torch.Tensor:
    """(C, m') temperatures of negative pairs, at most `limit` per head, for the quantiles of the mechanism check."""
    flat = tau.detach()[:, keep]
    step = max(1, flat.shape[1] // limit)
    return flat[:, ::step]


@fp32
def adaptive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *, beta: float, kappa: float, delta: float,
                     tau_min: float, tau_max: float):
    """SimCLR: per head, NT-Xent over the 2n local anchors and the 2N gathered views with per-pair temperatures
    (fixed for the encoder), plus beta x (mean fit over positives + mean fit over negatives) for phi."""
    n, heads, _ = z1.shape
    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    pa, pb = phi(a.detach()), phi(b.detach())
    rows, cols = _per_head(torch.cat([a, b])), _per_head(torch.cat([gather(a), gather(b)]))  # (C, 2n | 2N, d)
    p_rows, p_cols = _per_head(torch.cat([pa, pb])), _per_head(torch.cat([gather(pa), gather(pb)]))
    big_n = cols.shape[1] // 2
    local = torch.arange(n, device=z1.device) + rank() * n
    self_cols, pos_cols = torch.cat([local, local + big_n]), torch.cat([local + big_n, local])
    sim = rows @ cols.transpose(1, 2)  # (C, 2n, 2N)
    tau = pair_temperature(p_rows @ p_cols.transpose(1, 2), tau_min, tau_max)
    rows_idx = torch.arange(2 * n, device=z1.device)
    is_self = torch.zeros_like(sim[0], dtype=torch.bool)
    is_self[rows_idx, self_cols] = True
    is_pos = torch.zeros_like(is_self)
    is_pos[rows_idx, pos_cols] = True
    logits = (sim / tau.detach()).masked_fill(is_self, float("-inf"))
    ce = torch.logsumexp(logits, dim=2) - logits[:, rows_idx, pos_cols]  # (C, 2n)
    fit = temperature_fit(tau, sim, kappa, delta)
    is_neg = ~(is_self | is_pos)
    fit_term = fit[:, is_pos].mean(1) + fit[:, is_neg].mean(1)  # (C,)
    loss = ce.mean(1).sum() + beta * fit_term.sum()
    return loss, _stats(tau[:, rows_idx, pos_cols], _sample_negatives(tau, is_neg))


@fp32
def adaptive_infonce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, phi: Phi, *, beta: float,
                           kappa: float, delta: float, tau_min: float, tau_max: float):
    """MoCo: InfoNCE of each query against its key and the whole queue of its head, per-pair temperatures
    (fixed for the encoder), plus the fit for phi. q, k: (n, C, d); queue: (K, C, d) normalised keys."""
    qn, kn, bank = F.normalize(q, dim=-1), F.normalize(k, dim=-1).detach(), queue.detach()
    pq = phi(qn.detach())
    pos = _per_head((qn * kn).sum(-1, keepdim=True))  # (C, n, 1)
    tau_pos = pair_temperature(_per_head((pq * phi(kn)).sum(-1, keepdim=True)), tau_min, tau_max)
    neg = _per_head(qn) @ bank.permute(1, 2, 0)  # (C, n, K)
    tau_neg = pair_temperature(_per_head(pq) @ phi(bank).permute(1, 2, 0), tau_min, tau_max)
    logits = torch.cat([pos / tau_pos.detach(), neg / tau_neg.detach()], dim=2)
    ce = torch.logsumexp(logits, dim=2) - logits[:, :, 0]  # (C, n)
    fit_term = (temperature_fit(tau_pos, pos, kappa, delta).mean((1, 2))
                + temperature_fit(tau_neg, neg, kappa, delta).mean((1, 2)))
    loss = ce.mean(1).sum() + beta * fit_term.sum()
    keep = torch.ones(tau_neg.shape[1:], dtype=torch.bool, device=q.device)
    return loss, _stats(tau_pos.squeeze(2), _sample_negatives(tau_neg, keep))


@fp32
def adaptive_simsiam(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *,
                     beta: float, kappa: float, delta: float, tau_min: float, tau_max: float):
    """SimSiam: -0.5 w cos(p1, sg z2) - 0.5 w cos(p2, sg z1), w = 1/tau normalised to mean 1 per head and
    direction, plus the fit for phi. Constant tau: SimSiam's loss per head."""
    n = p1.shape[0]
    p = F.normalize(torch.cat([p1, p2]), dim=-1)
    z = F.normalize(torch.cat([z2, z1]).detach(), dim=-1)
    sim = (p * z).sum(-1)  # (2n, C)
    tau = pair_temperature((phi(p.detach()) * phi(z)).sum(-1), tau_min, tau_max)
    w = torch.cat([_inverse_weights(tau[:n], (0,)), _inverse_weights(tau[n:], (0,))])
    term = -0.5 * w * sim
    loss = (term[:n] + term[n:]).mean(0).sum() + beta * temperature_fit(tau, sim, kappa, delta).mean(0).sum()
    return loss, _stats(tau.T, None)


@fp32
def adaptive_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *, lambd: float, scale: float,
                          beta: float, kappa: float, delta: float, tau_min: float, tau_max: float):
    """Barlow Twins: scale x [sum_l w_ll (1 - C_ll)^2 + lambd sum_{l!=m} w_lm C_lm^2], w = 1/tau normalised to
    mean 1 over the diagonal and over the off-diagonal, plus the fit for phi with s = C_ll and |C_lm|.
    phi reads standardised channel vectors / sqrt(n) (unit norm: phi = identity would score C itself);
    under several processes the scores add up over processes, as the official form."""
    n, heads, dim = z1.shape
    gx, gy = gather(z1), gather(z2)  # (N, C, D)
    big_n = gx.shape[0]
    corr = _per_head(_standardise(gx)).transpose(1, 2) @ _per_head(_standardise(gy)) / big_n  # (C, D, D)

    def channel_scores(z: torch.Tensor) -> torch.Tensor:  # this process's channel vectors, gathered over the batch
        local = _standardise(z.detach()) / big_n**0.5
        return gather(phi(local.permute(1, 2, 0)).permute(2, 0, 1))  # (N, C, D)

    px, py = channel_scores(z1), channel_scores(z2)
    tau = pair_temperature(px.permute(1, 2, 0) @ _per_head(py), tau_min, tau_max)  # (C, D, D)
    eye = torch.eye(dim, device=z1.device)
    off = 1 - eye
    w_diag = torch.diagonal(_inverse_weights(tau, (1, 2), eye.expand_as(tau)), dim1=1, dim2=2)  # (C, D)
    w_off = _inverse_weights(tau, (1, 2), off.expand_as(tau))
    diag, tau_pos = torch.diagonal(corr, dim1=1, dim2=2), torch.diagonal(tau, dim1=1, dim2=2)
    loss = scale * ((w_diag * (1 - diag).pow(2)).sum() + lambd * (w_off * corr.pow(2) * off).sum())
    fit_pos = temperature_fit(tau_pos, diag, kappa, delta).mean(1)
    fit_neg = (temperature_fit(tau, corr.abs(), kappa, delta) * off).sum((1, 2)) / (dim * (dim - 1))
    loss = loss + beta * (fit_pos + fit_neg).sum()
    return loss, _stats(tau_pos, _sample_negatives(tau, off.bool()))
