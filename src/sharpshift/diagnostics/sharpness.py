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

RHOS = (0.01, 0.05, 0.1)


def load_module(run_dir: Path, data_dir: str | None = None):
    """The method module of a run, with the weights of its last checkpoint, and its training split."""
    from sharpshift.checkpoint import check_state_matches, find_resume_checkpoint
    from sharpshift.data.registry import load_dataset
    from sharpshift.evaluation.run import run_config
    from sharpshift.train import build_module

    cfg = run_config(run_dir)
    if data_dir:
        cfg.data.data_dir = data_dir
    ckpt_path, ckpt = find_resume_checkpoint(run_dir)  # the newest complete one; the heads are needed too
    cfg.eval.knn_every_n_epochs = 0
    train = load_dataset(cfg.data.dataset, "train", cfg.data.data_dir).subset(cfg.data.subset, seed=cfg.seed)
    module = build_module(cfg, train)
    check_state_matches(ckpt["state_dict"], module, ckpt_path)
    module.load_state_dict(ckpt["state_dict"])
    return module, train


def fixed_objective(module, train, batches: int, batch_size: int, seed: int):
    """An Objective over the backbone's parameters: mean base loss on fixed batches and fixed views."""
    from sharpshift.steps import StepContext
    from sharpshift.diagnostics.sharpness_measures import Objective

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    batch_size = min(batch_size, len(train))
    module.train()
    module.views.seed, module.views._gen = seed, None  # fixed views, whatever the run's own seed
    closures = []
    for b in range(max(1, min(batches, len(train) // batch_size))):
        idx = order[b * batch_size:(b + 1) * batch_size]
        labels = train.labels[idx] if train.labels is not None else torch.full((len(idx),), -1)
        images = train.images[idx]
        ctx = StepContext(images, labels, idx, module.views(images), step=0, epoch=0)
        closures.append(lambda ctx=ctx: module.objective(ctx).loss)
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    return Objective(closures, params)


def diagnose_sharpness(run_dir: str | Path, data_dir: str | None = None, batches: int = 2, batch_size: int = 256,
                       seed: int = 0, power_iters: int = 20, hutchinson: int = 20, points_1d: int = 21,
                       points_2d: int = 11, span: float = 1.0, plots: bool = True, landscapes: bool = True) -> dict:
    from sharpshift.export import atomic_write_text
    from sharpshift.diagnostics.sharpness_measures import (filter_normalized_direction, hessian_top_eigenvalue,
                                               hutchinson_trace, landscape_1d, landscape_2d, sam_sharpness)
    from sharpshift.sharpness.sam import frozen_bn_stats

    run_dir = Path(run_dir)
    t0 = time.time()
    module, train = load_module(run_dir, data_dir)
    with frozen_bn_stats(module):
        obj = fixed_objective(module, train, batches, batch_size, seed)
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
                     "hutchinson_samples": hutchinson, "span": span, "parameters": "backbone",
                     "num_parameters": sum(p.numel() for p in obj.params)},
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(run_dir / "sharpness.json", json.dumps(result, indent=2))
    if plots and landscapes:
        plot_landscapes(result, run_dir)
    return result


def plot_landscapes(result: dict, folder: Path) -> None:
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
    fig.savefig(folder / "sharpness_1d.png", dpi=120)
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
    fig.savefig(folder / "sharpness_2d.png", dpi=120)
    plt.close(fig)
