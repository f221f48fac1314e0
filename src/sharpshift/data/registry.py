"""One entry point: load_dataset(name, split, data_dir) -> ImageDataset."""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sharpshift.data.base import ImageDataset
from sharpshift.data.idx import FASHION_CLASSES, MNIST_CLASSES, load_idx_dataset
from sharpshift.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
Loader = Callable[[str, "str | None"], ImageDataset]
LOADERS: dict[str, Loader] = {}
SPLITS = ("train", "test")


def register(name: str):
    def wrap(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn
    return wrap


def search_folders(data_dir: str | None, name: str, extra: tuple[Path, ...] = ()) -> list[Path]:
    """--data-dir, then $SHARPSHIFT_DATA, each as given and with a sub-folder named after the dataset."""
    roots = [Path(p).expanduser() for p in (data_dir, os.environ.get("SHARPSHIFT_DATA")) if p]
    folders: list[Path] = []
    for root in roots:
        folders += [root, root / name, root / name.replace("-", "_")]
    return folders + list(extra)


@register("fashion-mnist")
def _fashion(split: str, data_dir: str | None) -> ImageDataset:
    return load_idx_dataset("fashion-mnist", search_folders(data_dir, "fashion-mnist", (DEBIAN_FASHION,)), split,
                            FASHION_CLASSES)


@register("mnist")
def _mnist(split: str, data_dir: str | None) -> ImageDataset:
    return load_idx_dataset("mnist", search_folders(data_dir, "mnist"), split, MNIST_CLASSES)


@register("digits")
def _digits(split: str, data_dir: str | None) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (0-16 scaled to 0-255), a fixed 80/20 split; tiny and always there."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    return ImageDataset(torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(d.target[idx].astype(np.int64)),
                        "digits", [str(i) for i in range(10)])


def load_dataset(name: str, split: str = "train", data_dir: str | None = None, on_bad_image: str = "skip",
                 image_size: int = 0) -> ImageDataset:
    """`on_bad_image` (skip or fail) and `image_size` (resize to this square size; 0: as stored) reach the
    loaders that read files one by one (image folders); the others refuse a size they do not have."""
    _load_optional_loaders()
    if name not in LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {SPLITS}")
    loader = LOADERS[name]
    params = inspect.signature(loader).parameters
    kwargs = {"on_bad": on_bad_image} if "on_bad" in params else {}
    if image_size and "size" in params:
        kwargs["size"] = image_size
    data = loader(split, data_dir, **kwargs)
    if image_size and "size" not in params and data.size != image_size:
        raise UserError(f"data.image_size={image_size} applies to image folders; {name} images are {data.size} px, "
                        "leave data.image_size at 0")
    return data


def _load_optional_loaders() -> None:
    """Loaders in other modules register themselves on import."""
    import importlib

    for mod in ("cifar", "stl10", "folder"):
        try:
            importlib.import_module(f"sharpshift.data.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"sharpshift.data.{mod}":
                raise


def known_datasets() -> list[str]:
    _load_optional_loaders()
    return sorted(LOADERS)
