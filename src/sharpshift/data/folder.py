"""Folders of image files (any format Pillow reads): class sub-folders give labels, a flat folder gives none."""
from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sharpshift.data.base import ImageDataset
from sharpshift.data.registry import register
from sharpshift.errors import UserError

# What a bad file can raise: not an image, truncated, broken chunks, or absurdly large.
_BAD = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}
_PARALLEL_FROM = 64  # below this, threads cost more than they save


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def list_images(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int] | None, list[str]]:
    """Files under root: (paths, labels, classes) from class sub-folders, or (paths, None, []) if flat."""
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d))
    if not subdirs:
        return sorted(p for p in root.iterdir() if p.is_file() and _visible(p)), None, []
    classes = classes or subdirs
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for d in subdirs:
        if d not in index:
            raise UserError(f"class folder {root / d} is not among the classes {classes}; rename or remove it")
        found = sorted(p for p in (root / d).rglob("*")
                       if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))
        files += found
        labels += [index[d]] * len(found)
    return files, labels, classes


def _map(fn, items: list) -> list:
    if len(items) < _PARALLEL_FROM:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        return list(pool.map(fn, items))


def _header(path: Path):
    """(mode, (w, h)) without decoding pixels, or the exception for a bad file."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except _BAD as e:
        return e


def _decode(path: Path, mode: str, wh: tuple[int, int]):
    """Pixels as (H, W) or (H, W, 3) uint8 in the common mode and size, or the exception for a bad file."""
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != wh:
                im = im.resize(wh, Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except _BAD as e:
        return e


def _bad(path: Path, err: Exception) -> str:
    msg = (str(err).splitlines() or [type(err).__name__])[0]
    return f"cannot read image {path} ({msg}); remove or replace it, or skip bad files"


def _pick(headers: list) -> tuple[str, tuple[int, int]]:
    good = [h for h in headers if not isinstance(h, Exception)]
    mode = "L" if all(m in _GRAY_MODES for m, _ in good) else "RGB"
    return mode, Counter(wh for _, wh in good).most_common(1)[0][0]  # ties: first seen


def probe_folder(root: str | Path) -> tuple[str, tuple[int, int]]:
    """The (mode, (h, w)) load_image_folder would pick for root, from file headers only."""
    files, _, _ = list_images(Path(root))
    headers = [h for h in _map(_header, files) if not isinstance(h, Exception)]
    if not headers:
        raise UserError(f"no readable images in {root}; put image files (or class sub-folders of them) there")
    mode, (w, h) = _pick(headers)
    return mode, (h, w)


def load_image_folder(root: str | Path, on_bad: str = "skip", size: int | tuple[int, int] | None = None,
                      mode: str | None = None, classes: list[str] | None = None,
                      name: str | None = None) -> ImageDataset:
    """Decode every image under root into one uint8 tensor.

    mode: "L" or "RGB" (default L if every image is 1-channel, else RGB); size: int or (h, w)
    (default the most common size; others are resized bicubic). on_bad="skip" drops unreadable
    files with one warning, "fail" raises UserError naming the first one.
    """
    root = Path(root).expanduser()
    if on_bad not in ("skip", "fail"):
        raise UserError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}; pick one of them")
    if mode not in (None, "L", "RGB"):
        raise UserError(f"image mode must be 'L' or 'RGB', got {mode!r}; pick one of them")
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; pass --data-dir pointing at a folder of images")
    files, labels, classes = list_images(root, classes)
    if not files:
        raise UserError(f"no image files in {root}; put image files (or class sub-folders of them) there")
    bad: dict[int, Exception] = {}
    pixels: dict[int, np.ndarray] = {}

    def note(i: int, err: Exception) -> None:
        if on_bad == "fail":
            raise UserError(_bad(files[i], err))
        bad[i] = err

    headers = _map(_header, files)
    for i, h in enumerate(headers):
        if isinstance(h, Exception):
            note(i, h)
    if len(bad) < len(files):
        auto_mode, auto_wh = _pick(headers)
        mode = mode or auto_mode
        wh = auto_wh if size is None else (size, size) if isinstance(size, int) else (size[1], size[0])
        keep = [i for i in range(len(files)) if i not in bad]
        for i, px in zip(keep, _map(lambda i: _decode(files[i], mode, wh), keep)):
            if isinstance(px, Exception):
                note(i, px)
            else:
                pixels[i] = px
    if bad:
        first = min(bad)
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {root}, first: {files[first]} "
                      f"({(str(bad[first]).splitlines() or [''])[0]})", stacklevel=2)
    if not pixels:
        raise UserError(f"no readable images in {root} ({len(bad)} bad files, first {files[min(bad)]}); "
                        "put valid image files there")
    good = sorted(pixels)
    x = np.stack([pixels[i] for i in good])
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, H, W[, 3]) -> (N, C, H, W)
    y = torch.tensor([labels[i] for i in good], dtype=torch.int64) if labels is not None else None
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), y, name or root.name, classes)


@register("folder")
def _folder(split: str, data_dir: str | None, on_bad: str = "skip", size: int = 0) -> ImageDataset:
    """data_dir/train and data_dir/test when both exist, else data_dir itself for both splits."""
    if not data_dir:
        raise UserError("dataset 'folder' needs --data-dir pointing at a folder of images")
    root = Path(data_dir).expanduser()
    train, test = root / "train", root / "test"
    if not (train.is_dir() and test.is_dir()):
        warnings.warn(f"{root} has no train/ and test/ sub-folders; using the same images for both splits",
                      stacklevel=2)
        return load_image_folder(root, name="folder", on_bad=on_bad, size=size or None)
    # Both splits share the class list, mode and size of train, so labels and shapes line up.
    classes = sorted({c for d in (train, test) for c in list_images(d)[2]}) or None
    mode, hw = probe_folder(train)
    hw = (size, size) if size else hw
    return load_image_folder(train if split == "train" else test, size=hw, mode=mode, classes=classes,
                             name="folder", on_bad=on_bad)
