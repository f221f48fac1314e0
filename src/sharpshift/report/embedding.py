"""2-D map of a run's test embeddings (frozen backbone features), coloured by class."""
from __future__ import annotations

import numpy as np
import torch


def project_2d(features: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2): PCA of the standardised features, or t-SNE (scikit-learn, PCA init)."""
    x = features.double()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x.numpy())
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).numpy()


def explained_variance(features: torch.Tensor) -> list[float]:
    """Share of the standardised features' variance along the first two principal axes."""
    x = features.double()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    s = torch.linalg.svdvals(x) ** 2
    return (s[:2] / s.sum()).tolist()
