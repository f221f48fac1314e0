"""Per-head positive/negative similarity histograms: the paper's explanation of AMCL's gain (with more
augmentations a single head's positive pairs drop towards the negatives; several heads separate them better).

For a trained run: two augmented views of held-out images go through the backbone and every projection head;
a positive is the cosine similarity of one image's two views, a negative that of two different images' views.
`separation` is the AUC: the chance that a random positive is more similar than a random negative."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from sharpshift.errors import UserError


@torch.no_grad()
def head_similarities(module, images: torch.Tensor) -> list[dict]:
    """One dict per projection head: pos (n,), neg (n*(n-1),) cosine similarities, and summary numbers."""
    module.eval()
    v1, v2 = module.views(images)[:2]
    z = module.projector(module.backbone(torch.cat([v1, v2]))).float()
    z = z if z.ndim == 3 else z.unsqueeze(1)  # a single-head baseline is one head
    n = len(images)
    off = ~torch.eye(n, dtype=torch.bool)
    out = []
    for c in range(z.shape[1]):
        a, b = F.normalize(z[:n, c], dim=1), F.normalize(z[n:, c], dim=1)
        sim = a @ b.T
        pos, neg = sim.diagonal(), sim[off]
        out.append({"pos": pos, "neg": neg, "pos_mean": float(pos.mean()), "neg_mean": float(neg.mean()),
                    "pos_below_0.5": float((pos < 0.5).float().mean()), "separation": auc(pos, neg)})
    return out


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a random positive > a random negative), from ranks (Mann-Whitney U)."""
    ranks = torch.cat([pos, neg]).argsort().argsort().double() + 1
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


FILE = "amcl_similarity.json"  # in the run folder: the heads' figures (`diagnose amcl`; the grid's "separation")


def summary(heads: list[dict]) -> dict:
    """The figures a table pairs: each head's, and their mean, min and max over heads (a single-head base: its
    one head), so that AMCL's C heads and a base's one compare on the same scale."""
    per_head = [{k: v for k, v in h.items() if k not in ("pos", "neg")} for h in heads]
    sep = [h["separation"] for h in per_head]
    return {"heads": len(per_head), "separation_mean": sum(sep) / len(sep), "separation_min": min(sep),
            "separation_max": max(sep), "pos_mean": sum(h["pos_mean"] for h in per_head) / len(per_head),
            "neg_mean": sum(h["neg_mean"] for h in per_head) / len(per_head),
            "pos_below_0.5": sum(h["pos_below_0.5"] for h in per_head) / len(per_head), "per_head": per_head}


def load_run_module(run_dir: Path):
    """Rebuild a run's training module (heads included) from its config and last checkpoint."""
    from sharpshift.data.storage import open_split
    from sharpshift.evaluation.run import run_config
    from sharpshift.train import build_module

    cfg = run_config(run_dir)
    train = open_split(cfg, "train").subset(cfg.data.subset, seed=cfg.seed)
    module = build_module(cfg, train)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise UserError(f"{ckpt} not found; the histograms need the heads, which only the training checkpoint holds")
    from sharpshift.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)["state_dict"]  # verified, weights only: never runs code from the file
    module.load_state_dict(state)
    return cfg, module


def run_similarities(run_dir: Path, n_images: int = 512) -> list[dict]:
    from sharpshift.data.storage import open_split

    cfg, module = load_run_module(run_dir)
    test = open_split(cfg, "test").subset(n_images, seed=0)
    return head_similarities(module, test.images)


def plot_histograms(rows: dict[str, list[dict]], path: Path) -> None:
    """One row per run, one panel per head: positive and negative similarity histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(h) for h in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.4 * len(rows)), squeeze=False)
    bins = torch.linspace(-1, 1, 61).numpy()
    for r, (label, heads) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(heads):
                ax.axis("off")
                continue
            h = heads[c]
            ax.hist(h["neg"].numpy(), bins=bins, density=True, alpha=0.55, label="negative", color="tab:red")
            ax.hist(h["pos"].numpy(), bins=bins, density=True, alpha=0.55, label="positive", color="tab:blue")
            ax.set_title(f"{label} head {c + 1}\nAUC {h['separation']:.3f}, pos<0.5 {h['pos_below_0.5']:.0%}",
                         fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.supxlabel("cosine similarity of projections", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
