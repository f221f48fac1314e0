"""AMCL losses (Wang et al., ECCV 2024), as the official v2.0 code writes them: pure functions, in fp32.

Every function takes per-head embeddings of shape (n, C, d), the shared temperature network `phi` (any
callable (..., d) -> (..., d)) and returns (loss summed over the C heads, detached stats). A pair's temperature:

    tau(a, b) = tau_min + (tau_max - tau_min) * sigmoid(-phi(a) . phi(b))          (code's "Eq. 3")

and the temperature regulariser Omega(tau) = (d'/2) log tau + 1/tau (d' = embedding width) on positives; the
selected negatives get log tau + 1/tau, summed over the selection, and enter with a minus sign (code's
"Eq. 5"). 1/tau reaches 1/tau_min = 1e5: that is why everything here runs in fp32 even under autocast.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sharpshift.losses.dist import gather, rank
from sharpshift.losses.precision import fp32

Phi = Callable[[torch.Tensor], torch.Tensor]


def pair_temperature(score: torch.Tensor, tau_min: float, tau_max: float) -> torch.Tensor:
    """A low score (an uncertain pair) gives a high tau, i.e. a weak constraint."""
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-score)


def omega(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """The positives' regulariser (d'/2) log tau + 1/tau; its minimum is at tau = 2/d'."""
    return 0.5 * dim * torch.log(tau) + 1.0 / tau


def omega_selected(tau: torch.Tensor) -> torch.Tensor:
    """The regulariser of the selected negatives in the code: log tau + 1/tau (no d'/2 factor)."""
    return torch.log(tau) + 1.0 / tau


def _anchor_loss(pos, tau_pos, neg, tau_neg, beta: float, dim: int) -> torch.Tensor:
    """Eq. (2.1) per anchor, with the hardest negative replaced by the mean over the selected ones:
    -sim+/tau+ + mean_k sim_k/tau_k + beta Omega(tau+) - beta sum_k (log tau_k + 1/tau_k)."""
    return (-pos / tau_pos + (neg / tau_neg).mean(-1)
            + beta * omega(tau_pos, dim) - beta * omega_selected(tau_neg).sum(-1))


def _stats(tau_pos: torch.Tensor, tau_neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Means (logged) and every pair's temperature per head, (C, m), for the mechanism check."""
    heads = tau_pos.shape[0]
    return {"tau_pos": tau_pos.mean().detach(), "tau_neg": tau_neg.mean().detach(),
            "tau_pos_all": tau_pos.detach().reshape(heads, -1), "tau_neg_all": tau_neg.detach().reshape(heads, -1)}


def _per_head(z: torch.Tensor) -> torch.Tensor:
    """(n, C, d) -> (C, n, d): every head's batch as one matrix of a batched product."""
    return z.transpose(0, 1)


@fp32
def amcl_nt_xent(z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *, beta: float, topk: int,
                 tau_min: float, tau_max: float):
    """SimCLR: each of the 2n views is an anchor, the other view of its image the positive, the other 2N-2 views
    of the global batch its negatives, of which the top-k most similar are kept. Per head: mean over anchors
    (= the two directions averaged); summed over heads. Local rows, gathered columns, as nt_xent."""
    n, heads, dim = z1.shape
    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    pa, pb = phi(a), phi(b)
    rows, cols = _per_head(torch.cat([a, b])), _per_head(torch.cat([gather(a), gather(b)]))  # (C, 2n | 2N, d)
    p_rows, p_cols = _per_head(torch.cat([pa, pb])), _per_head(torch.cat([gather(pa), gather(pb)]))
    big_n = cols.shape[1] // 2
    local = torch.arange(n, device=z1.device) + rank() * n
    self_cols, pos_cols = torch.cat([local, local + big_n]), torch.cat([local + big_n, local])
    sim = rows @ cols.transpose(1, 2)  # (C, 2n, 2N)
    tau = pair_temperature(p_rows @ p_cols.transpose(1, 2), tau_min, tau_max)
    pos_idx = pos_cols.view(1, -1, 1).expand(heads, -1, 1)
    pos, tau_pos = sim.gather(2, pos_idx).squeeze(2), tau.gather(2, pos_idx).squeeze(2)
    hidden = torch.zeros_like(sim[0], dtype=torch.bool)
    rows_idx = torch.arange(2 * n, device=z1.device)
    hidden[rows_idx, self_cols] = True
    hidden[rows_idx, pos_cols] = True
    with torch.no_grad():  # select on the similarities; the chosen ones are gathered back with their gradient
        idx = sim.masked_fill(hidden, float("-inf")).topk(min(topk, 2 * big_n - 2), dim=2, sorted=False).indices
    neg, tau_neg = sim.gather(2, idx), tau.gather(2, idx)
    loss = _anchor_loss(pos, tau_pos, neg, tau_neg, beta, dim)  # (C, 2n)
    return loss.mean(1).sum(), _stats(tau_pos, tau_neg)


@fp32
def amcl_infonce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, phi: Phi, *, beta: float,
                       topk: int, tau_min: float, tau_max: float):
    """MoCo: the query's positive is its image's key, its negatives the top-k most similar keys of its head's
    queue. q: (n, C, d) with gradient; k: (n, C, d) keys; queue: (K, C, d) normalised keys, one queue per head.
    Per head: mean over queries; summed over heads. (Pass both directions' queries as one batch: phi then
    reads the queue once.)"""
    n, heads, dim = q.shape
    qn, kn, bank = F.normalize(q, dim=-1), F.normalize(k, dim=-1).detach(), queue.detach()
    pq = phi(qn)
    pos = _per_head((qn * kn).sum(-1, keepdim=True)).squeeze(2)  # (C, n)
    tau_pos = pair_temperature(_per_head((pq * phi(kn)).sum(-1, keepdim=True)).squeeze(2), tau_min, tau_max)
    sim = _per_head(qn) @ bank.permute(1, 2, 0)  # (C, n, K)
    with torch.no_grad():
        idx = sim.topk(min(topk, len(bank)), dim=2, sorted=False).indices
    neg = sim.gather(2, idx)
    tau_neg = pair_temperature((_per_head(pq) @ phi(bank).permute(1, 2, 0)).gather(2, idx), tau_min, tau_max)
    loss = _anchor_loss(pos, tau_pos, neg, tau_neg, beta, dim)
    return loss.mean(1).sum(), _stats(tau_pos, tau_neg)


@fp32
def amcl_simsiam(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *,
                 beta: float, tau_min: float, tau_max: float):
    """SimSiam, Eq. (2.2): -sim(p1, sg z2)/(2 tau1) - sim(p2, sg z1)/(2 tau2) + beta Omega(tau1) + beta Omega(tau2),
    tau from the (prediction, stop-gradient projection) pair. p_v, z_v: (n, C, d). Mean over the batch, sum
    over heads."""
    n, heads, dim = p1.shape
    p = F.normalize(torch.cat([p1, p2]), dim=-1)
    z = F.normalize(torch.cat([z2, z1]).detach(), dim=-1)
    tau = pair_temperature((phi(p) * phi(z)).sum(-1), tau_min, tau_max)  # (2n, C)
    term = -0.5 * (p * z).sum(-1) / tau + beta * omega(tau, dim)
    return (term[:n] + term[n:]).mean(0).sum(), {"tau_pos": tau.mean().detach(), "tau_pos_all": tau.detach().T}


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """As barlow_twins_loss does: per channel over the batch (dim 0), biased std."""
    return (z - z.mean(0)) / z.std(0, unbiased=False).clamp_min(1e-6)


@fp32
def amcl_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, phi: Phi, *, lambd: float, scale: float, beta: float,
                      tau_min: float, tau_max: float):
    """Barlow Twins, Eq. (2.3), per head, with C the cross-correlation over the global batch:
        sum_l (1 - C_ll/tau_ll)^2 + lambd sum_{l!=m} C_lm^2/tau_lm + beta sum_l Omega(tau_ll) - beta sum_{l!=m} Omega(tau_lm)
    where tau_lm pairs channel l of view 1 with channel m of view 2, phi reading a channel's (raw) values over
    the batch. The whole expression is multiplied by `scale`, like the base loss. z_v: (n, C, D).
    Under several processes phi reads each process's own batch, and the scores add up over processes."""
    n, heads, dim = z1.shape
    gx, gy = gather(z1), gather(z2)  # (N, C, D)
    corr = _per_head(_standardise(gx)).transpose(1, 2) @ _per_head(_standardise(gy)) / gx.shape[0]  # (C, D, D)
    # phi reads (C, D, n) channel vectors; its outputs are gathered along the batch axis, so the score is
    # sum over processes of phi(x_l:) . phi(y_m:)
    px = gather(phi(z1.permute(1, 2, 0)).permute(2, 0, 1))  # (N, C, D)
    py = gather(phi(z2.permute(1, 2, 0)).permute(2, 0, 1))
    tau = pair_temperature(px.permute(1, 2, 0) @ _per_head(py), tau_min, tau_max)  # (C, D, D)
    off = 1 - torch.eye(dim, device=z1.device)  # a float mask: cheaper than boolean indexing, forward and backward
    diag, tau_pos = torch.diagonal(corr, dim1=1, dim2=2), torch.diagonal(tau, dim1=1, dim2=2)  # (C, D)
    loss = ((1 - diag / tau_pos).pow(2).sum() + lambd * (corr.pow(2) / tau * off).sum()
            + beta * omega(tau_pos, dim).sum() - beta * (omega(tau, dim) * off).sum())
    tau_neg = ((tau * off).sum() / (heads * dim * (dim - 1))).detach()
    return scale * loss, {"tau_pos": tau_pos.mean().detach(), "tau_neg": tau_neg, "tau_pos_all": tau_pos.detach(),
                          "tau_neg_all": tau.detach()[:, off.bool()]}
