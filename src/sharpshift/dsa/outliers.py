"""Outlier-robust "good-neighbour" scores s_i in the frozen prior space (DSA, from the official code).

N(i) = the eta samples most similar to i (cosine, i itself excluded).
For j in N(i): c_ij = |{l in N(j) : i in N(l)}|; j is a good neighbour of i when c_ij > mu.
s_i = (#good neighbours of i) / eta, in [0, 1]: a sample inside a cluster scores near 1, an isolated one 0.

With A[i, j] = [j in N(i)], c_ij = sum_l A[j, l] A[l, i] = (A @ A)[j, i], so the whole score is two
matrix products instead of the official triple Python loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def neighbour_matrix(u: torch.Tensor, eta: int) -> torch.Tensor:
    """A (N, N) float 0/1 with A[i, j] = 1 when j is among the eta nearest (cosine) samples of i, j != i."""
    n = u.shape[0]
    if not 1 <= eta < n:
        raise ValueError(f"need 1 <= eta < batch size, got eta={eta} for {n} samples")
    z = F.normalize(u.float(), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))  # the official code drops the top-1 hit, assuming it is i itself
    idx = sim.topk(eta, dim=1).indices
    return torch.zeros(n, n, device=u.device).scatter_(1, idx, 1.0)


@torch.no_grad()
def good_neighbour_scores(u: torch.Tensor, eta: int = 20, mu: int = 1) -> torch.Tensor:
    """s (N,) in [0, 1] for prior features u (N, D)."""
    a = neighbour_matrix(u, eta)
    c = (a @ a).T  # c[i, j] = number of l in N(j) that have i in N(l)
    good = (a > 0) & (c > mu)
    return good.sum(1).float() / eta
