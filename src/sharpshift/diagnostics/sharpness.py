"""`sharpshift diagnose sharpness RUN_DIR`: how sharp is the SSL loss around a run's feature extractor?

The objective is the base method's own loss (no regularisers) on a fixed set of batches with fixed views
(seeded), as a function of the backbone's parameters; heads, targets and queues are those of the last
checkpoint and stay fixed. BatchNorm uses batch statistics, as in training; running statistics are not
kept. Writes RUN_DIR/sharpness.json and, unless --no-plots, sharpness_1d.png and sharpness_2d.png.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sharpshift.errors import UserError

RHOS = (0.01, 0.05, 0.1)


def load_module(run_dir: Path, data_dir: str | None = None):
    """The method module of a run, with the weights of its last checkpoint, and its training split."""
    from sharpshift.checkpoint import check_state_matches, find_resume_checkpoint
    from sharpshift.data.storage import open_split
    from sharpshift.evaluation.run import run_config
    from sharpshift.train import build_module

    cfg = run_config(run_dir)
    if data_dir:
        cfg.data.data_dir = data_dir
    ckpt_path, ckpt = find_resume_checkpoint(run_dir)  # the newest complete one; the heads are needed too
    cfg.eval.knn_every_n_epochs = 0
    train = open_split(cfg, "train").subset(cfg.data.subset, seed=cfg.seed)
    module = build_module(cfg, train)
    check_state_matches(ckpt["state_dict"], module, ckpt_path)
    module.load_state_dict(ckpt["state_dict"])
    return module, train


VIEW_CHOICES = ("own", "reference")


def reference_views(module, image_size: int, seed: int):
    """The plain SimCLR recipe (ViewsConfig defaults, symmetric), two views, the run's normalisation and `seed`:
    the same views for every run, so runs with other view generators (Fourier, RSA) are measured alike. For an
    RSA run the reference views stand for both stages ([v1, v2, v1, v2])."""
    from sharpshift.config import ViewsConfig
    from sharpshift.data.views import ViewGenerator, view_params

    base = ViewGenerator(view_params(ViewsConfig(), "symmetric", image_size), module.views.mean.flatten().tolist(),
                         module.views.std.flatten().tolist(), image_size, seed=seed)
    if module.cfg.rsa.enabled:
        return lambda images: (lambda v: v + v)(base(images))
    return base


def fixed_objective(module, train, batches: int, batch_size: int, seed: int, views: str = "own"):
    """An Objective over the backbone's parameters: mean base loss on fixed batches and fixed views (the run's
    own generator, or the reference views)."""
    from sharpshift.steps import StepContext
    from sharpshift.diagnostics.sharpness_measures import Objective

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    batch_size = min(batch_size, len(train))
    module.train()
    module.views.seed, module.views._gen = seed, None  # fixed views, whatever the run's own seed
    make_views = module.views if views == "own" else reference_views(module, train.size, seed)
    closures = []
    for b in range(max(1, min(batches, len(train) // batch_size))):
        idx = order[b * batch_size:(b + 1) * batch_size]
        labels = train.labels[idx] if train.labels is not None else torch.full((len(idx),), -1)
        images = train.images[idx]
        ctx = StepContext(images, labels, idx, make_views(images), step=0, epoch=0)
        closures.append(lambda ctx=ctx: module.objective(ctx).loss)
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    return Objective(closures, params)


def diagnose_sharpness(run_dir: str | Path, data_dir: str | None = None, batches: int = 2, batch_size: int = 256,
                       seed: int = 0, power_iters: int = 20, hutchinson: int = 20, points_1d: int = 21,
                       points_2d: int = 11, span: float = 1.0, plots: bool = True, landscapes: bool = True,
                       views: str = "own", out: str | Path | None = None) -> dict:
    """Writes `out` (default RUN_DIR/sharpness.json, or sharpness_reference.json with views="reference") and its
    PNGs next to it, named after it (<stem>_1d.png, <stem>_2d.png): no two settings overwrite each other."""
    from sharpshift.export import atomic_write_text
    from sharpshift.diagnostics.sharpness_measures import (filter_normalized_direction, hessian_top_eigenvalue,
                                               hutchinson_trace, landscape_1d, landscape_2d, sam_sharpness)
    from sharpshift.sharpness.sam import frozen_bn_stats

    run_dir = Path(run_dir)
    if views not in VIEW_CHOICES:
        raise UserError(f"unknown --views {views!r}; use own (the run's view generator) or reference")
    out = Path(out) if out else run_dir / ("sharpness.json" if views == "own" else "sharpness_reference.json")
    if out.suffix != ".json":
        raise UserError(f"--out {out} must name a .json file; the PNGs are written next to it")
    t0 = time.time()
    module, train = load_module(run_dir, data_dir)
    with frozen_bn_stats(module):
        obj = fixed_objective(module, train, batches, batch_size, seed, views)
        loss = obj.loss()
        sharp = sam_sharpness(obj, list(RHOS))
        eig = hessian_top_eigenvalue(obj, iters=power_iters, seed=seed)
        trace = hutchinson_trace(obj, samples=hutchinson, seed=seed)
        one, two = None, None
        if landscapes:
            g = torch.Generator().manual_seed(seed)
            d1, d2 = filter_normalized_direction(obj.params, g), filter_normalized_direction(obj.params, g)
            alphas = torch.linspace(-span, span, points_1d).tolist()
            grid = torch.linspace(-span, span, points_2d).tolist()
            one = {"alphas": alphas, "losses": landscape_1d(obj, d1, alphas)}
            two = {"alphas": grid, "betas": grid, "losses": landscape_2d(obj, d1, d2, grid, grid)}
    result = {
        "loss": loss,
        "sam_sharpness": {str(r): v for r, v in sharp.items()},
        "hessian_top_eigenvalue": eig["value"], "power_iterations": eig["iterations"],
        "hessian_trace": trace["value"], "hessian_trace_stderr": trace["stderr"],
        "landscape_1d": one,
        "landscape_2d": two,
        "settings": {"batches": len(obj.closures), "batch_size": batch_size, "seed": seed, "power_iters": power_iters,
                     "hutchinson_samples": hutchinson, "span": span, "parameters": "backbone", "views": views,
                     "num_parameters": sum(p.numel() for p in obj.params)},
        "seconds": round(time.time() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    if plots and landscapes:
        plot_landscapes(result, out.parent, out.stem)
    return result


def plot_landscapes(result: dict, folder: Path, stem: str = "sharpness") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = result["landscape_1d"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(one["alphas"], one["losses"], marker=".")
    ax.set_xlabel("alpha (filter-normalised direction)")
    ax.set_ylabel("SSL loss")
    ax.set_title(f"1-D landscape, loss {result['loss']:.3f}")
    fig.tight_layout()
    fig.savefig(folder / f"{stem}_1d.png", dpi=120)
    plt.close(fig)
    two = result["landscape_2d"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    cs = ax.contour(two["alphas"], two["betas"], two["losses"], levels=15)
    ax.clabel(cs, fontsize=6)
    ax.plot([0], [0], "k+")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title("2-D landscape (filter-normalised)")
    fig.tight_layout()
    fig.savefig(folder / f"{stem}_2d.png", dpi=120)
    plt.close(fig)
