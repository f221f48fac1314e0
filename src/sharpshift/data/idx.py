"""IDX files (MNIST, Fashion-MNIST), gzipped or not."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from sharpshift.data.base import ImageDataset
from sharpshift.errors import UserError

_IDX_DTYPES = {0x08: np.uint8}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file; raise UserError on a wrong magic number or a truncated body."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); replace it with a good copy")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short); replace it with a good copy")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count:
        raise UserError(f"{path} is truncated or padded: expected {count} data bytes for shape {shape}, "
                        f"found {len(raw) - header}; replace it with a good copy")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_dataset(name: str, folders: list[Path], split: str, classes: list[str]) -> ImageDataset:
    img_stem, lbl_stem = FILES[split]
    for folder in folders:
        img, lbl = find_idx_file(folder, img_stem), find_idx_file(folder, lbl_stem)
        if img and lbl:
            images = read_idx(img)
            labels = read_idx(lbl)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise UserError(f"{img} and {lbl} do not match (shapes {images.shape}, {labels.shape}); "
                                "replace them with a matching pair")
            return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                                torch.from_numpy(labels.astype(np.int64)), name, classes)
    looked = ", ".join(str(f) for f in folders) or "(no folder)"
    raise UserError(f"{name} {split} files not found (looked in {looked}); place {img_stem}.gz and {lbl_stem}.gz "
                    f"in one of them or pass --data-dir")
