"""NT-Xent (SimCLR) and InfoNCE against a queue (MoCo v2). Pure functions, computed in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.losses.dist import gather, rank
from sharpshift.losses.precision import fp32


@fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the global batch: for each of the 2N views, the other view of the same image
    is the positive and the remaining 2N-2 views are negatives. Local rows, gathered columns."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    g1, g2 = gather(z1), gather(z2)
    big_n = g1.shape[0]
    logits = torch.cat([z1, z2]) @ torch.cat([g1, g2]).T / temperature  # (2n, 2N)
    local = torch.arange(n, device=z1.device) + rank() * n
    self_cols = torch.cat([local, local + big_n])
    pos_cols = torch.cat([local + big_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put((rows, self_cols), torch.tensor(float("-inf"), device=z1.device))
    return F.cross_entropy(logits, pos_cols)


@fp32
def infonce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: the key of the same image is the positive, the queue holds the negatives.
    q: (n, d) queries with gradient; k: (n, d) keys (no gradient); queue: (K, d), already normalised."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.float().T
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
