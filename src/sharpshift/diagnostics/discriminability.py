"""How crowded the classes are in a frozen backbone's feature space (the DSA paper's question).

On L2-normalised test-set features (so that runs with different feature scales compare; our choice):
- intra_class_variance: mean over classes of mean_i ||x_i - mu_c||^2 (mu_c the class centroid);
- inter_class_distance: mean over class pairs c != c' of ||mu_c - mu_c'|| (also the smallest pair);
- variance_ratio: intra_class_variance / mean_{c != c'} ||mu_c - mu_c'||^2 (dimensionless; lower = better separated);
- crowding: share of samples nearer to another class's centroid than to their own;
- alignment (Wang & Isola 2020): E ||f(x) - f(x+)||^2 over two augmented views x, x+ of each test image;
- uniformity (Wang & Isola 2020): log E exp(-2 ||f(x) - f(y)||^2) over pairs of distinct test images.
Alignment uses the same augmentation for every run (the symmetric SimCLR recipe at ViewsConfig defaults,
seed 0), so that SSL and supervised runs compare. `diagnose_run` writes RUN_DIR/discriminability.json
and a t-SNE plot coloured by class (RUN_DIR/tsne.png).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sharpshift.errors import UserError


def class_geometry(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> dict:
    """Intra-class variance, centroid distances, their ratio and crowding for features x (N, D), labels y (N,)."""
    x = F.normalize(x.float(), dim=1) if normalize else x.float()
    classes = torch.unique(y)
    if len(classes) < 2:
        raise UserError("discriminability needs at least two classes in the labels")
    centroids = torch.stack([x[y == c].mean(0) for c in classes])
    per_class_var = torch.stack([(x[y == c] - centroids[k]).pow(2).sum(1).mean() for k, c in enumerate(classes)])
    dist = torch.cdist(centroids, centroids)
    off = ~torch.eye(len(classes), dtype=torch.bool)
    own = torch.searchsorted(classes, y)  # index of each sample's class among `classes`
    to_centroids = torch.cdist(x, centroids)
    own_dist = to_centroids.gather(1, own.view(-1, 1)).squeeze(1)
    other = to_centroids.masked_fill(F.one_hot(own, len(classes)).bool(), float("inf")).min(1).values
    intra = per_class_var.mean()
    return {
        "intra_class_variance": float(intra),
        "inter_class_distance": float(dist[off].mean()),
        "min_inter_class_distance": float(dist[off].min()),
        "variance_ratio": float(intra / dist[off].pow(2).mean()),
        "crowding": float((other < own_dist).float().mean()),
        "per_class_variance": [round(float(v), 6) for v in per_class_var],
    }


def alignment(f1: torch.Tensor, f2: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x+)||^alpha over positive pairs, on L2-normalised features."""
    f1, f2 = F.normalize(f1.float(), dim=1), F.normalize(f2.float(), dim=1)
    return float((f1 - f2).norm(dim=1).pow(alpha).mean())


def uniformity(f: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> float:
    """log E_{i != j} exp(-t ||f_i - f_j||^2) on L2-normalised features, in row chunks."""
    f = F.normalize(f.float(), dim=1)
    n = len(f)
    if n < 2:
        raise UserError("uniformity needs at least two samples")
    parts = []
    for s in range(0, n, chunk):
        sq = torch.cdist(f[s:s + chunk], f).pow(2)
        sq[torch.arange(len(sq)), torch.arange(s, s + len(sq))] = float("inf")  # drop i == j
        parts.append(torch.logsumexp(-t * sq.flatten(), 0))
    return float(torch.logsumexp(torch.stack(parts), 0) - torch.log(torch.tensor(float(n * (n - 1)))))


@torch.no_grad()
def view_features(backbone, images: torch.Tensor, mean, std, seed: int = 0, batch_size: int = 1024):
    """Backbone features (eval mode) of two augmented views of every image, fixed recipe and seed."""
    from sharpshift.config import ViewsConfig
    from sharpshift.data.views import ViewGenerator, view_params

    gen = ViewGenerator(view_params(ViewsConfig(), "symmetric", images.shape[-1]), mean, std, images.shape[-1], seed)
    was = backbone.training
    backbone.eval()
    out1, out2 = [], []
    try:
        for s in range(0, len(images), batch_size):
            v1, v2 = gen(images[s:s + batch_size])
            out1.append(backbone(v1).float())
            out2.append(backbone(v2).float())
    finally:
        backbone.train(was)
    return torch.cat(out1), torch.cat(out2)


def tsne_plot(x: torch.Tensor, y: torch.Tensor, path: Path, title: str, class_names: list[str] | None = None,
              points: int = 2000, seed: int = 0) -> Path:
    """t-SNE (sklearn, PCA init) of a seeded subset of normalised features, one colour per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:points]
    xs, ys = F.normalize(x[idx].float(), dim=1).numpy(), y[idx].numpy()
    from threadpoolctl import threadpool_limits

    # one thread: sklearn's OpenMP loop spins at every iteration's barrier, 30x slower on a busy machine
    with threadpool_limits(1):
        emb = TSNE(n_components=2, init="pca", perplexity=min(30, len(xs) - 1), random_state=seed).fit_transform(xs)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    for c in sorted(set(ys.tolist())):
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(emb[ys == c, 0], emb[ys == c, 1], s=3, color=plt.cm.tab10(c % 10), label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=6, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def diagnose_run(run_dir: str | Path, data_dir: str | None = None, tsne_points: int = 2000, seed: int = 0) -> dict:
    """All figures above on the run's test split; writes RUN_DIR/discriminability.json (+ tsne.png)."""
    from sharpshift.data.storage import open_split
    from sharpshift.evaluation.features import extract_features
    from sharpshift.evaluation.run import run_config
    from sharpshift.export import atomic_write_text, load_backbone

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    backbone = load_backbone(run_dir)
    if data_dir:
        cfg.data.data_dir = data_dir
    test = open_split(cfg, "test").subset(cfg.data.test_subset, seed=cfg.seed)
    if test.labels is None:
        raise UserError(f"dataset {cfg.data.dataset!r} has no test labels; discriminability needs labels")
    t0 = time.time()
    arch = backbone.arch
    feats = extract_features(backbone, test.images, mean=arch.get("mean"), std=arch.get("std"))
    f1, f2 = view_features(backbone, test.images, arch.get("mean", [0.5]), arch.get("std", [0.5]), seed=seed)
    result = {"run": str(run_dir), "method": arch.get("method", cfg.method.name), "test_size": len(test),
              "features": "L2-normalised backbone features of the test split",
              **class_geometry(feats, test.labels), "alignment": alignment(f1, f2), "uniformity": uniformity(feats)}
    if tsne_points > 0:
        title = f"{run_dir.name}: crowding {result['crowding']:.3f}, ratio {result['variance_ratio']:.3f}"
        tsne_plot(feats, test.labels, run_dir / "tsne.png", title, test.classes, tsne_points, seed)
        result["tsne"] = "tsne.png"
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(run_dir / "discriminability.json", json.dumps(result, indent=2))
    return result
