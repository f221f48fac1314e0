"""The learned relation matrix M of DSA: a small MLP scores every pair difference, rows sum to one.

Official code (ZeenSong/DSA, methods/dsa.py, concat=False), for views a, b of N samples:
    delta_ij = h_i^a - h_j^b                       (N^2 vectors of size emb)
    delta    = delta / sum_ij |delta_ij|            per feature, over all N^2 pairs (F.normalize p=1, dim=0)
    M_ij     = ReLU(w2 . ReLU(W1 delta_ij + b1) + b2), then each row divided by its sum.
It materialises the N^2 x emb input and every activation: at N = 1024 and emb 128 that is 0.5 GB per
tensor, several per matrix, four matrices per step.

Here the same numbers come cheaper:
- the first layer is linear and the L1 step is a per-feature scale c, so W1 (delta_ij / c) = g_i^a - g_j^b
  with g = (h / c) W1^T: an N x emb product instead of an N^2 x emb one;
- c (the L1 norm of each feature over all pairs) comes from sorted values in O(N log N), not N^2;
- the remaining N x N x hidden part runs in row chunks and its backward recomputes each chunk, so at most
  one chunk of activations is alive at once: about 2 x chunk_mb MB in the forward, 3 x in the backward.
  At N = 1024, hidden 64 and chunk_mb 64 that is 4 chunks of 256 rows per matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.losses.precision import fp32

L1_EPS = 1e-12  # F.normalize's eps, as in the official code


def self_pair_l1(x: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |x_i - x_j| per column of x (N, D), over ordered pairs, via sorting:
    with x_(1) <= ... <= x_(N), sum_{i<j} (x_(j) - x_(i)) = sum_k x_(k) (2k - N - 1)."""
    n = x.shape[0]
    xs = x.sort(dim=0).values
    k = torch.arange(1, n + 1, device=x.device, dtype=x.dtype).unsqueeze(1)
    return 2 * (xs * (2 * k - n - 1)).sum(0)


def cross_pair_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |a_i - b_j| per column: ordered pairs of [a; b] count each a-b pair twice."""
    return (self_pair_l1(torch.cat([a, b])) - self_pair_l1(a) - self_pair_l1(b)) / 2


class PairAdjuster(nn.Module):
    """forward(h_a (N, D), h_b (M, D)) -> relation (N, M), non-negative, each row summing to one
    (a row whose scores are all zero stays zero, as with the official F.normalize)."""

    def __init__(self, emb_dim: int, hidden_dim: int = 64, pair_norm: str = "l1", chunk_mb: float = 64.0,
                 alive_output: bool = True):
        super().__init__()
        self.first = nn.Linear(emb_dim, hidden_dim)
        self.second = nn.Linear(hidden_dim, 1)
        # alive_output (ours; dsa.form=official uses PyTorch's default init instead, as the official code): the
        # output ReLU starts alive. With the default init, about half of the seeds give an all-negative output on
        # the (nearly constant) L1-normalised inputs: M = 0 and no gradient, forever.
        if alive_output:
            nn.init.constant_(self.second.bias, 1.0)
        self.pair_norm = pair_norm
        self.chunk_mb = chunk_mb

    def rows_per_chunk(self, n_cols: int) -> int:
        per_row = n_cols * self.first.out_features * 4  # bytes of one row's fp32 hidden activations
        return max(1, int(self.chunk_mb * 2**20 // per_row))

    def scores(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        """Unnormalised pair scores D(delta_ij) (N, M)."""
        same = h_a is h_b
        h_a = h_a.float()
        h_b = h_a if same else h_b.float()
        if self.pair_norm == "l1":
            scale = 1.0 / (self_pair_l1(h_a) if same else cross_pair_l1(h_a, h_b)).clamp_min(L1_EPS)
            h_a, h_b = h_a * scale, h_b * scale
        g_rows = F.linear(h_a, self.first.weight, self.first.bias)  # W1 h_i + b1
        g_cols = F.linear(h_b, self.first.weight)  # W1 h_j
        pre = ChunkedPairScores.apply(g_rows, g_cols, self.second.weight.squeeze(0), self.second.bias.squeeze(0),
                                      self.rows_per_chunk(len(g_cols)))
        return F.relu(pre)

    @fp32  # sums over N^2 pairs and a row normalisation: not in bf16
    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.scores(h_a, h_b), p=1, dim=1, eps=L1_EPS)


class ChunkedPairScores(torch.autograd.Function):
    """pre_ij = w2 . relu(r_i - c_j) + b2 for every row i and column j, `step` rows at a time.
    Nothing of size N x M x hidden is saved: the backward recomputes each chunk's activations."""

    @staticmethod
    def forward(ctx, rows, cols, w2, b2, step):  # type: ignore[override]
        out = rows.new_empty(len(rows), len(cols))
        for s in range(0, len(rows), step):
            hidden = (rows[s:s + step, None] - cols[None]).relu_()  # (C, M, hidden)
            out[s:s + step] = hidden @ w2 + b2
        ctx.save_for_backward(rows, cols, w2)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, cols, w2 = ctx.saved_tensors
        step, hidden_dim = ctx.step, w2.shape[0]
        g_rows, g_cols, g_w2 = torch.empty_like(rows), torch.zeros_like(cols), torch.zeros_like(w2)
        for s in range(0, len(rows), step):
            hidden = (rows[s:s + step, None] - cols[None]).relu_()  # recomputed: (C, M, hidden)
            g = grad[s:s + step]  # (C, M)
            g_w2 += g.reshape(-1) @ hidden.view(-1, hidden_dim)
            # d pre_ij / d r_i = w2 * [hidden_ij > 0] = -d pre_ij / d c_j
            g_masked = (hidden > 0).to(g.dtype).mul_(g.unsqueeze(-1))
            g_rows[s:s + step] = g_masked.sum(1) * w2
            g_cols -= g_masked.sum(0) * w2
        return g_rows, g_cols, g_w2, grad.sum(), None


class WorkingAdjuster(nn.Module):
    """The working form's relation (dsa.form=working): M_ij = sigmoid(w2 . relu(W1 (h^_i - h^_j) + b1) + b2) with
    h^ = h / ||h||. Each relation is in [0, 1] on its own (no row normalisation: many entries can exceed 1/2),
    its input's scale does not depend on N (no L1 over the N^2 pairs), and PyTorch's default initialisation
    starts every relation near 1/2 (neutral in L_w). The pair scores share the chunked kernel above."""

    def __init__(self, emb_dim: int, hidden_dim: int = 64, chunk_mb: float = 64.0):
        super().__init__()
        self.first = nn.Linear(emb_dim, hidden_dim)
        self.second = nn.Linear(hidden_dim, 1)
        self.chunk_mb = chunk_mb

    rows_per_chunk = PairAdjuster.rows_per_chunk

    @fp32
    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        a = F.normalize(h_a, dim=1)
        b = a if h_a is h_b else F.normalize(h_b, dim=1)
        g_rows = F.linear(a, self.first.weight, self.first.bias)
        g_cols = F.linear(b, self.first.weight)
        pre = ChunkedPairScores.apply(g_rows, g_cols, self.second.weight.squeeze(0), self.second.bias.squeeze(0),
                                      self.rows_per_chunk(len(g_cols)))
        return torch.sigmoid(pre)
