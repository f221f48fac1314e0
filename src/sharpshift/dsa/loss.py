"""DSA's two loss terms as pure functions (reconstructed from the official code, methods/dsa.py).

The four view pairs (a, b) are always in the order PAIRS = (0,0), (1,1), (0,1), (1,0).

L_w   = log(1 + 1/4 sum_(a,b) mean_ij exp( s_i ||h^_i^a - h^_j^b|| (2 M^ab_ij - 1) / T  - inf [a = b, i = j] ))
        h^ = L2-normalised embedding; the mean runs over all N^2 entries, the masked diagonal counting as 0.
        M_ij > 1/2 pulls i and j together, M_ij < 1/2 pushes them apart; an outlier (s_i = 0) adds nothing.
L_reg = sum_(a,b) || M^ab - M_pro^ab ||_F   (sum over the four pairs, as ContrastivePlus; no 1/4)
M_pro^ab_ij = exp(-||u^_i^a - u^_j^b|| / tau_c) on L2-normalised prior features u^.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.losses.precision import fp32

PAIRS = ((0, 0), (1, 1), (0, 1), (1, 0))


@fp32
def prior_relations(u0: torch.Tensor, u1: torch.Tensor, tau: float = 0.5) -> list[torch.Tensor]:
    u = [F.normalize(u0, dim=1), F.normalize(u1, dim=1)]
    return [torch.exp(-torch.cdist(u[a], u[b]) / tau) for a, b in PAIRS]


@fp32
def weighted_relation_loss(h0: torch.Tensor, h1: torch.Tensor, relations: list[torch.Tensor], s: torch.Tensor,
                           temperature: float = 0.5) -> torch.Tensor:
    h = [F.normalize(h0, dim=1), F.normalize(h1, dim=1)]
    s = s.view(-1, 1).detach()
    total = h0.new_zeros(())
    for (a, b), m in zip(PAIRS, relations):
        m = m.float()
        terms = torch.exp(s * torch.cdist(h[a], h[b]) * (2 * m - 1) / temperature)
        if a == b:  # a sample is not its own pair (official: - 1e9 on the diagonal, i.e. exp -> 0)
            terms = terms.masked_fill(torch.eye(len(terms), dtype=torch.bool, device=terms.device), 0.0)
        total = total + terms.mean()
    return torch.log1p(total / len(PAIRS))


@fp32
def relation_regulariser(relations: list[torch.Tensor], priors: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.linalg.matrix_norm(m.float() - p.detach().float(), ord="fro") for m, p in zip(relations, priors))
