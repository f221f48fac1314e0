"""Make "semantic shift" a number: how often an augmentation changes what a supervised classifier sees.

A reference classifier (the config's backbone + a linear head) is trained with cross-entropy on *clean*
training images, then applied to augmented test views of every recipe. Per recipe we report:
- shift_rate: fraction of augmented views whose predicted class differs from the clean (true) label;
- flip_rate: fraction whose prediction differs from the prediction on the clean image (the classifier's own
  errors on clean images removed);
- view_distance: mean cosine distance 1 - cos(f(v1), f(v2)) between the two views of an image, in the
  classifier's feature space (its backbone output);
- clean_distance: mean cosine distance between a view and its clean image.
The classifier never saw augmented images, so these numbers mix semantic change with plain distribution
shift (an augmented-but-recognisable image can still fool it): compare recipes with each other, not with 0.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.config import Config, ViewsConfig
from sharpshift.data.base import ImageDataset
from sharpshift.data.views import ViewGenerator, view_params
from sharpshift.errors import UserError
from sharpshift.models import build_backbone
from sharpshift.shift.views import ShiftViews

# Changes to the config's own views. "standard" is the config's recipe as the method uses it (for RSA, the
# aggressive stage); "aggressive" is deliberately stronger: SimCLR's colour strength 1.0 (jitter 0.8 / 0.8 /
# 0.8 / 0.2), ImageNet's crop scale 0.08-1, blur always, solarize 0.2. Our choice of levels.
RECIPES: dict[str, dict] = {
    "weak": dict(jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0], solarize_p=[0.0]),
    "standard": {},
    "aggressive": dict(crop_scale=[0.08, 1.0], brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                       blur_p=[1.0], solarize_p=[0.2]),
}
WEIGHTS, META = "reference.safetensors", "reference.json"


class ReferenceClassifier(nn.Module):
    def __init__(self, backbone: str, in_channels: int, width: int, num_classes: int, cifar_stem: bool = True):
        super().__init__()
        self.arch = dict(backbone=backbone, in_channels=in_channels, width=width, num_classes=num_classes,
                         cifar_stem=cifar_stem)
        self.backbone = build_backbone(backbone, in_channels, width, cifar_stem)
        self.head = nn.Linear(self.backbone.feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.head(feats)


def _normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - mean) / std


def train_reference(cfg: Config, train: ImageDataset, epochs: int, lr: float = 1e-3, log=print) -> ReferenceClassifier:
    """Cross-entropy on clean (unaugmented) images with Adam, batch cfg.data.batch_size, seeded."""
    from sharpshift.data.loader import channel_stats

    torch.manual_seed(cfg.seed)
    model = ReferenceClassifier(cfg.model.backbone, train.channels, cfg.model.width, train.num_classes,
                                cfg.model.cifar_stem)
    mean, std = channel_stats(train.images)
    model.arch.update(mean=mean, std=std)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.data.batch_size, len(train))
    model.train()
    for epoch in range(epochs):
        order, t0, total = torch.randperm(len(train), generator=g), time.time(), 0.0
        for b in range(len(train) // bs):
            idx = order[b * bs:(b + 1) * bs]
            _, logits = model(_normalise(train.images[idx], m, s))
            loss = F.cross_entropy(logits, train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        log(f"reference classifier: epoch {epoch + 1}/{epochs}, loss {total / max(1, len(train) // bs):.4f}, "
            f"{time.time() - t0:.0f} s")
    return model.eval()


def save_reference(model: ReferenceClassifier, folder: Path, info: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps(dict(model.arch, **info), indent=2))


def load_reference(folder: Path) -> ReferenceClassifier:
    from safetensors.torch import load_file

    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise UserError(f"no reference classifier in {folder}: expected {WEIGHTS} and {META}")
    meta = json.loads((folder / META).read_text())
    try:
        model = ReferenceClassifier(meta["backbone"], meta["in_channels"], meta["width"], meta["num_classes"],
                                    meta.get("cifar_stem", True))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (KeyError, RuntimeError) as e:
        raise UserError(f"cannot load the reference classifier in {folder}: {str(e).splitlines()[0]}; delete it "
                        "to train a new one") from None
    model.arch.update(mean=meta["mean"], std=meta["std"])
    return model.eval()


def recipe_views(cfg: Config, recipe: str, method_recipe: str, image_size: int, mean, std,
                 fourier_p: float | None = None) -> ViewGenerator:
    """The ViewGenerator of a named recipe (changes on top of cfg.views), with Fourier on every view when
    fourier_p is given (the config's variant and alpha)."""
    views: ViewsConfig = replace(copy.deepcopy(cfg.views), **RECIPES[recipe])
    gen = ViewGenerator(view_params(views, method_recipe, image_size), mean, std, image_size, seed=cfg.seed)
    if fourier_p is None:
        return gen
    fourier = replace(cfg.fourier, enabled=True, p=fourier_p, views=list(range(views.num_views)))
    return ShiftViews(gen, fourier)


@torch.no_grad()
def semantic_shift(model: ReferenceClassifier, images: torch.Tensor, labels: torch.Tensor,
                   views: ViewGenerator | None, repeats: int = 1, batch_size: int = 1000) -> dict:
    """The four numbers of one recipe over `repeats` passes of views of every test image (views=None: clean)."""
    m, s = torch.tensor(model.arch["mean"]).view(1, -1, 1, 1), torch.tensor(model.arch["std"]).view(1, -1, 1, 1)
    shifted = flipped = n_views = 0
    view_dist = clean_dist = 0.0
    n_pairs = pairs_kept = 0
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        f_clean, logits = model(_normalise(x, m, s))
        pred_clean = logits.argmax(1)
        for _ in range(repeats if views is not None else 1):
            vs = views(x) if views is not None else [_normalise(x, m, s)]
            feats, kept = [], torch.ones_like(y, dtype=torch.bool)
            for v in vs:
                f, logits = model(v.contiguous())
                pred = logits.argmax(1)
                shifted += int((pred != y).sum())
                kept &= pred == y
                flipped += int((pred != pred_clean).sum())
                n_views += len(x)
                clean_dist += float((1 - F.cosine_similarity(f, f_clean, dim=1)).sum())
                feats.append(f)
            if len(feats) >= 2:
                view_dist += float((1 - F.cosine_similarity(feats[0], feats[1], dim=1)).sum())
                n_pairs += len(x)
                pairs_kept += int(kept.sum())
    # a pair is label-preserving when the reference classifies both of its views as the image's label
    return {"shift_rate": shifted / n_views, "flip_rate": flipped / n_views,
            "pair_kept_rate": pairs_kept / n_pairs if n_pairs else None,
            "view_distance": view_dist / n_pairs if n_pairs else 0.0, "clean_distance": clean_dist / n_views,
            "views": n_views}


def diagnose_views(cfg: Config, reference: Path | None, epochs: int, repeats: int, fourier_p: float,
                   data_dir: str | None = None, log=print) -> dict:
    """Every recipe, with and without Fourier, against one reference classifier (trained or loaded)."""
    from sharpshift.data.registry import load_dataset
    from sharpshift.methods import METHODS

    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    data_dir = data_dir or cfg.data.data_dir
    test = load_dataset(cfg.data.dataset, "test", data_dir).subset(cfg.data.test_subset, seed=cfg.seed)
    if test.labels is None:
        raise UserError(f"dataset {cfg.data.dataset!r} has no test labels; diagnose views on a labelled dataset")
    if reference is not None and (reference / META).is_file():
        model, source = load_reference(reference), f"loaded from {reference}"
    else:
        train = load_dataset(cfg.data.dataset, "train", data_dir).subset(cfg.data.subset, seed=cfg.seed)
        t0 = time.time()
        model = train_reference(cfg, train, epochs, log=log)
        source = f"trained on {len(train)} clean images, {epochs} epochs, {time.time() - t0:.0f} s"
        if reference is not None:
            save_reference(model, reference, {"dataset": cfg.data.dataset, "train_images": len(train),
                                              "epochs": epochs})
            source += f", saved to {reference}"
    log(f"reference classifier: {source}")
    mean, std = model.arch["mean"], model.arch["std"]
    method_recipe = METHODS[cfg.method.name].recipe
    rows = [dict(recipe="clean", fourier="-", **semantic_shift(model, test.images, test.labels, None))]
    label = f"{cfg.fourier.variant} a={cfg.fourier.alpha:g} p={fourier_p:g}"
    for recipe in RECIPES:
        for fp in (None, fourier_p):
            t0 = time.time()
            gen = recipe_views(cfg, recipe, method_recipe, test.size, mean, std, fp)
            rows.append(dict(recipe=recipe, fourier=label if fp is not None else "-",
                             **semantic_shift(model, test.images, test.labels, gen, repeats)))
            log(f"{recipe:<10} fourier={rows[-1]['fourier']:<18} shift_rate={rows[-1]['shift_rate']:.4f} "
                f"({time.time() - t0:.0f} s)")
    return {"dataset": cfg.data.dataset, "test_images": len(test), "repeats": repeats, "reference": source,
            "method_recipe": cfg.views.recipe if cfg.views.recipe != "auto" else method_recipe, "rows": rows}


def render_table(result: dict) -> str:
    lines = ["| recipe | fourier | shift rate | flip rate | pairs label-preserving | view distance | distance to clean |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        kept = "-" if r.get("pair_kept_rate") is None else f"{r['pair_kept_rate']:.4f}"
        lines.append(f"| {r['recipe']} | {r['fourier']} | {r['shift_rate']:.4f} | {r['flip_rate']:.4f} | {kept} | "
                     f"{r['view_distance']:.4f} | {r['clean_distance']:.4f} |")
    return "\n".join(lines)
