"""CIFAR-10 / CIFAR-100 from the official python pickle batches, unpickled with an allow-list."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from sharpshift.data.base import ImageDataset
from sharpshift.data.download import SOURCES, extract_archive
from sharpshift.data.registry import register, search_folders
from sharpshift.errors import UserError

try:  # numpy >= 2 moved it; importing numpy.core there only warns
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# Everything an official batch needs, and nothing that can run code: arrays, dtypes, and
# _codecs.encode (how Python 3 writes bytes in protocol-2 pickles, e.g. re-saved batches).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(f"refusing to unpickle {module}.{name} in {self.path}: not a CIFAR batch; "
                            "replace it with the official file") from None


def read_batch(path: Path) -> dict:
    """Unpickle one CIFAR file into a dict with str keys; only numpy arrays may be built."""
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # any malformed pickle: EOFError, UnpicklingError, ValueError, ...
        raise UserError(f"cannot read CIFAR file {path} ({type(e).__name__}: {e}); "
                        "replace it with the official file") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} holds a {type(d).__name__}, not a CIFAR batch dict; replace it with the official file")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


# name -> (folder, split -> batch files, labels key, meta file, class names key)
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]},
                 "fine_labels", "meta", "fine_label_names"),
}


def find_folder(name: str, data_dir: str | None) -> Path:
    """The batches folder: given directly, inside a search folder, or extracted once from the tar.gz there."""
    folder, files, *_ = _LAYOUT[name]
    first = files["test"][0]
    candidates = search_folders(data_dir, name)
    for c in candidates:
        for d in (c, c / folder):
            if (d / first).is_file():
                return d
    archive = SOURCES[name].files[0][0].rsplit("/", 1)[-1]
    for c in candidates:
        if (c / archive).is_file():
            extract_archive(c / archive, c)
            if (c / folder / first).is_file():
                return c / folder
    looked = ", ".join(str(c) for c in candidates) or "(no folder: pass --data-dir)"
    raise UserError(f"{name} not found (looked in {looked}); place {folder}/ or {archive} in one of them "
                    "or pass --data-dir")


def load_cifar(name: str, split: str, data_dir: str | None) -> ImageDataset:
    folder, files, label_key, meta_file, names_key = _LAYOUT[name]
    root = find_folder(name, data_dir)
    n_classes = 10 if name == "cifar10" else 100
    images, labels = [], []
    for fname in files[split]:
        path = root / fname
        if not path.is_file():
            raise UserError(f"{path} is missing; restore the full {folder}/ folder")
        d = read_batch(path)
        data, lab = d.get("data"), d.get(label_key)
        if not isinstance(data, np.ndarray) or lab is None or data.ndim != 2 or data.shape[1] != 3072 \
                or data.dtype != np.uint8 or len(lab) != len(data):
            raise UserError(f"{path} is not a {name} batch (expected uint8 'data' of shape (N, 3072) and N "
                            f"'{label_key}'); replace it with the official file")
        lab = np.asarray(lab, dtype=np.int64)
        if len(lab) and (lab.min() < 0 or lab.max() >= n_classes):
            raise UserError(f"{path} has labels outside 0..{n_classes - 1}; replace it with the official file")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each 32x32 row-major
        labels.append(lab)
    meta = root / meta_file
    classes = _names(read_batch(meta).get(names_key, [])) if meta.is_file() else []
    classes = classes if len(classes) == n_classes else [str(i) for i in range(n_classes)]
    return ImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), name,
                        classes)


@register("cifar10")
def _cifar10(split: str, data_dir: str | None) -> ImageDataset:
    return load_cifar("cifar10", split, data_dir)


@register("cifar100")
def _cifar100(split: str, data_dir: str | None) -> ImageDataset:
    return load_cifar("cifar100", split, data_dir)
