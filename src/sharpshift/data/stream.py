"""Datasets larger than memory: WebDataset tar shards, read by index.

`sharpshift prepare DATASET --out DIR` (`prepare`) writes, per split, WebDataset shards (`DIR/<split>/shard-
NNNNNN.tar`, written by webdataset's ShardWriter: members `KEY.<ext>` with the encoded image, its original
bytes for an image folder and PNG for a dataset we decode ourselves, and `KEY.cls` with the label) and an index
(`DIR/<split>/index.i64`: per image its shard, the byte offset and length of its image member in that tar, and
its label), plus `DIR/manifest.json` (format, image mode and size, classes, counts, skipped files, and the
SHA-256 of every shard). Any WebDataset reader reads the shards as they are.

Training reads them through `StreamImages`: a lazy uint8 (N, C, H, W) array whose slices decode just those
images (in the DataLoader's worker processes when `data.num_workers` > 0), resized as the in-memory path
resizes them, so memory does not grow with the number of images and everything that slices `dataset.images`
(training, the kNN monitor, feature extraction) works unchanged. Reading by index keeps our sampler: one
seeded permutation per epoch, disjoint slices per DDP process, exact mid-epoch resume. webdataset's own
pipeline reads shards in sequence with a shuffle buffer and cannot resume exactly: docs/streaming.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sharpshift.data.base import ImageDataset
from sharpshift.errors import UserError

FORMAT = "sharpshift-stream"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.i64"  # (N, 4) little-endian int64, raw (no pickle): shard, byte offset, byte length, label (-1: none)
SHARD_IMAGES = 5000  # images per shard (a few MB for small images; ~100 MB at ImageNet's JPEG sizes)
CHECK_CHUNK = 512  # files validated (decoded once) at a time while preparing: bounded memory


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_prepared(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------- decoding


def decode(data: bytes, mode: str, hw: tuple[int, int]) -> np.ndarray:
    """Encoded image -> (C, H, W) uint8 in `mode` at (h, w), resized bicubic as data/folder.py does."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert(mode)
        if im.size != (hw[1], hw[0]):
            im = im.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
        px = np.asarray(im, dtype=np.uint8)
    return px[None] if px.ndim == 2 else px.transpose(2, 0, 1)


class StreamImages:
    """The images of one prepared split (or a selection of them, `rows`), decoded on indexing.

    Quacks like a uint8 (N, C, H, W) tensor for what the library does with `dataset.images`: len, shape,
    dtype, dim() and indexing by int, slice or index tensor (which returns a real tensor). File handles are
    opened per process, so forked DataLoader workers each read with their own."""

    dtype = torch.uint8

    def __init__(self, folder: Path, split: str, index: np.ndarray, rows: np.ndarray, mode: str, hw: tuple[int, int],
                 shards: list[str]):
        self.folder, self.split, self.index, self.rows = folder, split, index, rows
        self.mode, self.hw, self.shards = mode, tuple(hw), shards
        self._files: dict[int, int] = {}
        self._pid = -1

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), 1 if self.mode == "L" else 3, *self.hw))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):  # handles do not cross processes
        return {**self.__dict__, "_files": {}, "_pid": -1}

    def take(self, positions) -> "StreamImages":
        """A lazy selection (positions into this one), nothing decoded."""
        rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        return StreamImages(self.folder, self.split, self.index, rows, self.mode, self.hw, self.shards)

    def _read(self, row: int) -> bytes:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        shard, offset, length, _ = self.index[row]
        fd = self._files.get(int(shard))
        if fd is None:
            fd = self._files[int(shard)] = os.open(self.folder / self.shards[int(shard)], os.O_RDONLY)
        return os.pread(fd, int(length), int(offset))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.dim() == 0):
            return self[torch.tensor([int(key)])][0]
        if isinstance(key, slice):
            rows = self.rows[key]
        else:
            positions = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
            if positions.dtype == bool:
                positions = positions.nonzero()[0]
            rows = self.rows[positions.astype(np.int64)]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = decode(self._read(int(row)), self.mode, self.hw)
        return torch.from_numpy(out)


class StreamDataset(ImageDataset):
    """An ImageDataset whose images are a StreamImages: subsets and selections stay lazy."""

    def select(self, idx: torch.Tensor) -> "StreamDataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        return StreamDataset(self.images.take(idx.numpy()), labels, self.name, self.classes)

    def digest(self) -> str:
        """A hash of the shards' checksums and the selected rows: the same for the same images of one prepared
        folder (not equal to the in-memory digest of the same images, which would need every image decoded)."""
        manifest = json.loads((self.images.folder / MANIFEST).read_text())
        h = hashlib.sha1(json.dumps([s["sha256"] for s in manifest["splits"][self.images.split]["shards"]]).encode())
        h.update(self.images.rows.tobytes())
        return h.hexdigest()[:16]


def load_stream(folder: str | Path, split: str, dataset: str | None = None, image_size: int = 0) -> StreamDataset:
    """A prepared split; `dataset` (the config's data.dataset) must be the one the folder was prepared from.
    image_size: decode to this square size instead of the prepared one."""
    folder = Path(folder).expanduser()
    if not is_prepared(folder):
        raise UserError(f"{folder} is not a folder made by `sharpshift prepare`; run `sharpshift prepare DATASET "
                        f"--out {folder}` first, or point data.stream_dir at one")
    manifest = json.loads((folder / MANIFEST).read_text())
    if dataset is not None and manifest["dataset"] != dataset:
        raise UserError(f"{folder} holds {manifest['dataset']!r}, not data.dataset={dataset!r}; prepare {dataset} "
                        "into another folder or set data.dataset to match")
    if split == "test" and "test" not in manifest["splits"] and manifest["dataset"] == "folder":
        warnings.warn(f"{folder} has no test split (its folder had no train/ and test/); using the same images for "
                      "both splits", stacklevel=2)
        split = "train"
    if split not in manifest["splits"]:
        raise UserError(f"{folder} has no {split!r} split (it has {', '.join(manifest['splits'])}); prepare it again "
                        "from a dataset with that split")
    info = manifest["splits"][split]
    shards = [s["file"] for s in info["shards"]]
    for s in info["shards"]:  # cheap integrity check on every load; `sharpshift prepare --verify` hashes them
        path = folder / s["file"]
        if not path.is_file() or path.stat().st_size != s["bytes"]:
            raise UserError(f"shard {path} is missing or has changed size since it was prepared; prepare {folder} "
                            "again")
    index = np.fromfile(folder / split / INDEX, dtype="<i8").reshape(-1, 4)
    if len(index) != info["images"]:
        raise UserError(f"{folder / split / INDEX} lists {len(index)} images, the manifest {info['images']}; prepare "
                        f"{folder} again")
    if info.get("skipped"):
        warnings.warn(f"skipped {info['skipped']} unreadable file(s) when {folder} was prepared, first: "
                      f"{info['first_skipped']}", stacklevel=2)
    labels = torch.from_numpy(index[:, 3].copy()) if info["labelled"] else None
    hw = (image_size, image_size) if image_size else (manifest["height"], manifest["width"])
    images = StreamImages(folder, split, index, np.arange(len(index), dtype=np.int64), manifest["mode"], hw, shards)
    return StreamDataset(images, labels, manifest["dataset"], manifest["classes"])


def verify(folder: str | Path) -> list[str]:
    """The shards whose SHA-256 differs from the manifest's (empty: all intact)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    return [s["file"] for info in manifest["splits"].values() for s in info["shards"]
            if not (folder / s["file"]).is_file() or _sha256(folder / s["file"]) != s["sha256"]]


# ---------------------------------------------------------------- preparing


def _folder_samples(root: Path, classes: list[str] | None, mode: str, hw: tuple[int, int], on_bad: str, counts: dict):
    """(extension, bytes, label) of every readable image under root, decoded once to check it; bad files are
    skipped and counted (on_bad=skip) or refused (fail) as data/folder.py does."""
    from sharpshift.data.folder import _BAD, _bad, list_images

    files, labels, _ = list_images(root, classes)

    def check(path: Path):
        try:
            data = path.read_bytes()
            decode(data, mode, hw)
            return data
        except _BAD as e:
            return e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        for start in range(0, len(files), CHECK_CHUNK):
            chunk = files[start:start + CHECK_CHUNK]
            for j, result in enumerate(pool.map(check, chunk)):
                if isinstance(result, Exception):
                    if on_bad == "fail":
                        raise UserError(_bad(chunk[j], result))
                    counts["skipped"] += 1
                    counts["first_skipped"] = counts["first_skipped"] or str(chunk[j])
                    continue
                ext = chunk[j].suffix.lower().lstrip(".") or "img"
                yield ("jpg" if ext == "jpeg" else ext), result, (labels[start + j] if labels is not None else -1)


def _tensor_samples(data: ImageDataset):
    for i in range(len(data)):
        px = data.images[i].numpy()
        im = Image.fromarray(px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0))
        buf = io.BytesIO()
        im.save(buf, format="PNG")  # lossless: the stream decodes to the same pixels
        yield "png", buf.getvalue(), int(data.labels[i]) if data.labels is not None else -1


def _write_split(samples, out: Path, split: str) -> dict:
    """Shards through webdataset's ShardWriter, then the index of each image member's bytes in its tar."""
    import webdataset as wds

    (out / split).mkdir(parents=True)
    n = labelled = 0
    with wds.ShardWriter(str(out / split / "shard-%06d.tar"), maxcount=SHARD_IMAGES, verbose=0) as sink:
        for ext, data, label in samples:
            sample = {"__key__": f"{n:09d}", ext: data}
            if label >= 0:
                sample["cls"] = int(label)
                labelled += 1
            sink.write(sample)
            n += 1
    if n == 0:
        raise UserError(f"no readable images for the {split} split; put valid image files there")
    shard_files = sorted((out / split).glob("shard-*.tar"))
    index = np.full((n, 4), -1, dtype=np.int64)
    shards = []
    for s, path in enumerate(shard_files):
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                i = int(key)
                if ext == "cls":
                    index[i, 3] = int(tar.extractfile(member).read())
                else:
                    index[i, :3] = (s, member.offset_data, member.size)
        shards.append({"file": f"{split}/{path.name}", "images": int((index[:, 0] == s).sum()),
                       "bytes": path.stat().st_size, "sha256": _sha256(path)})
    index.astype("<i8").tofile(out / split / INDEX)
    return {"images": n, "labelled": labelled == n, "shards": shards}


def prepare(dataset: str, out: str | Path, data_dir: str | None = None, on_bad: str = "skip",
            image_size: int = 0, log=print) -> Path:
    """Write `dataset`'s splits as shards into `out` (see the module docstring). An existing `out` is replaced
    only when it is a prepared folder itself; the new one is written beside it and moved in when complete, so
    a failure loses nothing."""
    from sharpshift.data.folder import list_images, probe_folder
    from sharpshift.data.registry import load_dataset

    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and (is_prepared(out) or not any(out.iterdir()))):
        raise UserError(f"{out} exists and was not made by `sharpshift prepare`; choose a new --out folder or remove "
                        "it yourself")
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        manifest = {"format": FORMAT, "version": VERSION, "engine": "webdataset tar shards", "dataset": dataset,
                    "source": str(data_dir) if data_dir else None, "splits": {}}
        if dataset == "folder":
            if not data_dir:
                raise UserError("dataset 'folder' needs --data-dir pointing at a folder of images")
            root = Path(data_dir).expanduser()
            if not root.is_dir():
                raise UserError(f"image folder {root} does not exist; pass --data-dir pointing at a folder of images")
            both = (root / "train").is_dir() and (root / "test").is_dir()
            roots = {"train": root / "train", "test": root / "test"} if both else {"train": root}
            classes = sorted({c for r in roots.values() for c in list_images(r)[2]}) or None
            mode, hw = probe_folder(roots["train"])
            hw = (image_size, image_size) if image_size else hw
            manifest.update(mode=mode, height=hw[0], width=hw[1], classes=classes or [])
            for split, r in roots.items():
                counts = {"skipped": 0, "first_skipped": None}
                info = _write_split(_folder_samples(r, classes, mode, hw, on_bad, counts), partial, split)
                manifest["splits"][split] = {**info, **counts}
                log(f"{split}: {info['images']} images in {len(info['shards'])} shard(s), {counts['skipped']} skipped")
        else:
            for split in ("train", "test"):
                data = load_dataset(dataset, split, data_dir, on_bad)
                if image_size and data.size != image_size:
                    raise UserError(f"{dataset} images are {data.size} px; --image-size applies to image folders "
                                    "only, leave it out")
                manifest.update(mode="L" if data.channels == 1 else "RGB", height=int(data.images.shape[2]),
                                width=int(data.images.shape[3]), classes=list(data.classes))
                info = _write_split(_tensor_samples(data), partial, split)
                manifest["splits"][split] = {**info, "skipped": 0, "first_skipped": None}
                log(f"{split}: {info['images']} images in {len(info['shards'])} shard(s)")
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(out.name + f".old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)
    return out
