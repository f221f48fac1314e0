"""View generation speed per recipe (views/s) and the views' share of a training step, in one process.

    .venv/bin/python benchmarks/views_speed.py [--threads 1] [--batch 256] [--json out.json]

Views: median time of one call of the view generator on a batch of uint8 Fashion-MNIST images (28x28, one
channel), plus one synthetic colour row (3x32x32). Step share: for a method config, each step is timed in two
parts, views and the rest (forward, loss, backward, optimizer step: the plain stepper without Lightning),
and the share is median(views) / median(views + rest). Absolute times are for this machine only.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from sharpshift.config import ViewsConfig, load_config
from sharpshift.data.registry import load_dataset
from sharpshift.data.views import ViewGenerator, view_params
from sharpshift.steps import StepContext
from sharpshift.config.shift import FourierConfig
from sharpshift.diagnostics.semantic_shift import RECIPES
from sharpshift.shift.views import ShiftViews
from sharpshift.train import build_module

MEAN, STD = [0.29], [0.35]


def generator(recipe: str, size: int, fourier: str | None = None, rsa: bool = False, channels: int = 1):
    views = ViewsConfig(**RECIPES[recipe]) if recipe in RECIPES else ViewsConfig()  # asymmetric: BYOL's own
    base_recipe = "asymmetric" if recipe == "asymmetric" else "symmetric"
    gen = ViewGenerator(view_params(views, base_recipe, size), MEAN * channels, STD * channels, size, seed=0)
    if fourier or rsa:
        f = FourierConfig(enabled=True, variant=fourier) if fourier else None
        gen = ShiftViews(gen, f, rsa=rsa)
    return gen


def time_views(gen, images: torch.Tensor, repeats: int, warmup: int = 3) -> tuple[float, int]:
    for _ in range(warmup):
        views = gen(images)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        views = gen(images)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(views)


ROWS = [  # (label, recipe, fourier variant, rsa, channels)
    ("symmetric (SimCLR/MoCo default)", "standard", None, False, 1),
    ("asymmetric (BYOL default)", "asymmetric", None, False, 1),
    ("weak (crop + flip)", "weak", None, False, 1),
    ("aggressive (diagnostic recipe)", "aggressive", None, False, 1),
    ("RSA multi-stage (2 weak + 2 aggressive)", "standard", None, True, 1),
    ("symmetric + Fourier mix (p 0.5)", "standard", "mix", False, 1),
    ("symmetric + Fourier swap (p 0.5)", "standard", "swap", False, 1),
    ("symmetric + Fourier scale (p 0.5)", "standard", "scale", False, 1),
    ("symmetric, colour 3x32x32 (synthetic)", "standard", None, False, 3),
    ("symmetric + Fourier mix, colour 3x32x32", "standard", "mix", False, 3),
]

STEP_CONFIGS = [  # (label, config, overrides)
    ("SimCLR (default recipe)", "simclr", []),
    ("SimCLR + Fourier mix", "simclr", ["fourier.enabled=true"]),
    ("BYOL", "byol", []),
    ("RSA-BYOL", "rsa-byol", []),
    ("RSA-SimCLR", "rsa-simclr", []),
]


def step_share(config: str, overrides: list[str], train, batch: int, steps: int, warmup: int = 3) -> dict:
    cfg = load_config(config, [f"data.batch_size={batch}", "eval.knn_every_n_epochs=0", "eval.online_probe=false",
                               "trainer.progress_bar=false", *overrides])
    module = build_module(cfg, train)
    module.train()
    opt = module.configure_optimizers()[0][0]
    g = torch.Generator().manual_seed(0)
    t_views, t_rest = [], []
    for step in range(steps + warmup):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        images = train.images[idx]
        t0 = time.perf_counter()
        views = module.views(images)
        t1 = time.perf_counter()
        ctx = StepContext(images, train.labels[idx], idx, views, step=step, epoch=0)
        opt.zero_grad(set_to_none=True)
        out = module.objective(ctx)
        out.loss.backward()
        opt.step()
        module.after_optimizer_step(ctx, out)
        t2 = time.perf_counter()
        if step >= warmup:
            t_views.append(t1 - t0)
            t_rest.append(t2 - t1)
    v, r = statistics.median(t_views), statistics.median(t_rest)
    return {"views_s": round(v, 4), "step_s": round(v + r, 4), "share": round(v / (v + r), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train = load_dataset("fashion-mnist", "train").subset(10000, seed=0)
    images = train.images[: a.batch]
    colour = (torch.rand(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    result = {"machine": f"{platform.machine()}, {a.threads} thread(s), torch {torch.__version__}",
              "batch": a.batch, "views": {}, "steps": {}}
    for label, recipe, fourier, rsa, channels in ROWS:
        gen = generator(recipe, 32 if channels == 3 else 28, fourier, rsa, channels)
        t, n = time_views(gen, colour if channels == 3 else images, a.repeats)
        result["views"][label] = {"ms_per_call": round(t * 1000, 2), "views": n, "views_per_s": round(a.batch * n / t)}
        print(f"{label:<42} {t * 1000:7.2f} ms/call  {a.batch * n / t:9.0f} views/s", flush=True)
    for label, config, overrides in STEP_CONFIGS:
        r = step_share(config, overrides, train, a.batch, a.steps)
        result["steps"][label] = r
        print(f"{label:<42} views {r['views_s'] * 1000:.1f} ms of a {r['step_s'] * 1000:.0f} ms step: "
              f"{r['share'] * 100:.1f}%", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
