"""STL-10 from the official binary files (stl10_binary/): 96x96 RGB, 10 classes, 100k unlabeled images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sharpshift.data.base import ImageDataset
from sharpshift.data.download import SOURCES, extract_archive
from sharpshift.data.registry import register, search_folders
from sharpshift.errors import UserError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27648
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
ARCHIVE = SOURCES["stl10"].files[0][0].rsplit("/", 1)[-1]


def find_folder(data_dir: str | None) -> Path:
    """stl10_binary/ given directly, inside a search folder, or extracted once from the tar.gz there."""
    candidates = search_folders(data_dir, "stl10")
    for c in candidates:
        for d in (c, c / "stl10_binary"):
            if (d / "test_X.bin").is_file():
                return d
    for c in candidates:
        if (c / ARCHIVE).is_file():
            extract_archive(c / ARCHIVE, c)
            if (c / "stl10_binary" / "test_X.bin").is_file():
                return c / "stl10_binary"
    looked = ", ".join(str(c) for c in candidates) or "(no folder: pass --data-dir)"
    raise UserError(f"stl10 not found (looked in {looked}); place stl10_binary/ or {ARCHIVE} in one of them "
                    "or pass --data-dir")


def read_images(path: Path) -> np.ndarray:
    """(N, 3, 96, 96) uint8 view of an X file, memory-mapped so the 2.7 GB unlabeled split is paged in lazily."""
    if not path.is_file():
        raise UserError(f"{path} is missing; restore the full stl10_binary/ folder")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"{path} is truncated ({size} bytes, not a multiple of {IMAGE_BYTES}); "
                        "replace it with the official file")
    # copy-on-write mapping: writable for torch.from_numpy, never written back to the file
    raw = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // IMAGE_BYTES, 3, SIDE, SIDE))
    return raw.transpose(0, 1, 3, 2)  # each channel is stored column-major


def read_labels(path: Path, n: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path} is missing; restore the full stl10_binary/ folder")
    y = np.fromfile(path, dtype=np.uint8)
    if len(y) != n or y.min() < 1 or y.max() > len(CLASSES):
        raise UserError(f"{path} does not match its images ({len(y)} labels for {n} images, 1..10 expected); "
                        "replace it with the official file")
    return y.astype(np.int64) - 1  # labels are 1-based on disk


def _class_names(root: Path) -> list[str]:
    f = root / "class_names.txt"
    names = [s.strip() for s in f.read_text().splitlines() if s.strip()] if f.is_file() else []
    return names if len(names) == len(CLASSES) else CLASSES


def load_labeled(split: str, data_dir: str | None, name: str = "stl10") -> ImageDataset:
    root = find_folder(data_dir)
    x = np.ascontiguousarray(read_images(root / f"{split}_X.bin"))  # small splits: one contiguous copy
    y = read_labels(root / f"{split}_y.bin", len(x))
    return ImageDataset(torch.from_numpy(x), torch.from_numpy(y), name, _class_names(root))


@register("stl10")
def _stl10(split: str, data_dir: str | None) -> ImageDataset:
    return load_labeled(split, data_dir)


@register("stl10-unlabeled")
def _stl10_unlabeled(split: str, data_dir: str | None) -> ImageDataset:
    """The 100k unlabeled images for pretraining; the test split is the labeled test set for evaluation."""
    if split == "test":
        return load_labeled("test", data_dir, "stl10-unlabeled")
    root = find_folder(data_dir)
    return ImageDataset(torch.from_numpy(read_images(root / "unlabeled_X.bin")), None, "stl10-unlabeled",
                        _class_names(root))


@register("stl10-train+unlabeled")
def _stl10_train_unlabeled(split: str, data_dir: str | None) -> ImageDataset:
    """Labeled train + unlabeled images, labels dropped, for pretraining; test is the labeled test set."""
    if split == "test":
        return load_labeled("test", data_dir, "stl10-train+unlabeled")
    root = find_folder(data_dir)
    x = np.concatenate([read_images(root / "train_X.bin"), read_images(root / "unlabeled_X.bin")])
    return ImageDataset(torch.from_numpy(x), None, "stl10-train+unlabeled", _class_names(root))
