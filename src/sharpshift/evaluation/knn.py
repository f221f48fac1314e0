"""Weighted kNN classifier on frozen features (InstDisc / solo-learn / lightly protocol).

For each test sample: cosine similarity s to every train sample (L2-normalised features),
keep the k most similar, give each neighbour weight exp(s / T), sum the weights per class,
predict the class with the largest sum.

Ties are broken deterministically: among train samples with equal similarity at the k-th
place, the lower train index is kept; among classes with equal scores, the lower class wins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.errors import UserError


def _topk_stable(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k (sorted, descending) where ties at the k-th place keep the lowest index.

    torch.topk leaves that tie order unspecified; a full stable sort is slow, so it is only
    used for the rows that actually have a tie at the boundary.
    """
    vals, idx = sim.topk(k, dim=1)
    kth = vals[:, -1:]
    tied = (sim >= kth).sum(1) > k
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        v, i = sim[rows].sort(dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return vals, idx


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels (N_test,) int64, computed on train_x's device in chunks of `chunk` test rows."""
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.dim() != 1 or len(train_y) != len(train_x):
        raise ValueError(f"train labels must be (N,) matching {len(train_x)} features, got {tuple(train_y.shape)}")
    if len(train_x) == 0:
        raise UserError("kNN got an empty training set; check the labelled data split")
    if k < 1 or temperature <= 0 or chunk < 1:
        raise UserError(f"kNN needs k >= 1, temperature > 0, chunk >= 1; got k={k}, temperature={temperature}, chunk={chunk}")
    device = train_x.device
    train_y = train_y.to(device, torch.long)
    if num_classes is None:
        num_classes = int(train_y.max()) + 1
    if int(train_y.min()) < 0 or int(train_y.max()) >= num_classes:
        raise UserError(f"kNN train labels must lie in [0, {num_classes}); drop unlabelled (-1) samples or raise num_classes")
    k = min(k, len(train_x))

    train_n = F.normalize(train_x.float(), dim=1)
    preds = []
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start : start + chunk].to(device, torch.float32), dim=1)
        sims, idx = _topk_stable(q @ train_n.T, k)
        weights = (sims / temperature).exp()
        scores = torch.zeros(len(q), num_classes, device=device)
        scores.scatter_add_(1, train_y[idx], weights)
        preds.append(scores.argmax(1))  # argmax returns the first maximum: lower class wins ties
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)


def knn_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `knn_classify` on (test_x, test_y)."""
    if len(test_y) != len(test_x):
        raise ValueError(f"{len(test_x)} test features but {len(test_y)} test labels")
    if len(test_x) == 0:
        raise UserError("kNN got an empty test set; check the evaluation data split")
    preds = knn_classify(train_x, train_y, test_x, k, temperature, num_classes, chunk)
    return (preds == test_y.to(preds.device)).float().mean().item()
