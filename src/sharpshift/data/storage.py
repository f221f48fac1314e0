"""Where a config's images come from: decoded into memory (data.storage=memory, the default), streamed from
prepared shards (stream: data.stream_dir, made by `sharpshift prepare`), or either by size (auto: stream when
the decoded train split would exceed data.memory_budget_gb)."""
from __future__ import annotations

from pathlib import Path

from sharpshift.data.base import ImageDataset
from sharpshift.errors import UserError

STORAGES = ("memory", "stream", "auto")


def decoded_bytes(cfg) -> int | None:
    """The decoded train split's size, from file headers (image folders) or a prepared manifest; None if unknown
    without decoding (the built-in datasets, all of which fit in memory)."""
    import json

    from sharpshift.data.stream import MANIFEST, is_prepared

    d = cfg.data
    if d.stream_dir and is_prepared(Path(d.stream_dir).expanduser()):
        m = json.loads((Path(d.stream_dir).expanduser() / MANIFEST).read_text())
        size = (d.image_size, d.image_size) if d.image_size else (m["height"], m["width"])
        return m["splits"]["train"]["images"] * (1 if m["mode"] == "L" else 3) * size[0] * size[1]
    if d.dataset == "folder" and d.data_dir:
        from sharpshift.data.folder import list_images, probe_folder

        root = Path(d.data_dir).expanduser()
        train = root / "train" if (root / "train").is_dir() else root
        mode, (h, w) = probe_folder(train)
        h, w = (d.image_size, d.image_size) if d.image_size else (h, w)
        return len(list_images(train)[0]) * (1 if mode == "L" else 3) * h * w
    return None


def streams(cfg) -> bool:
    d = cfg.data
    if d.storage == "memory":
        return False
    if d.storage == "stream":
        return True
    need = decoded_bytes(cfg)
    if need is None or need <= d.memory_budget_gb * 2 ** 30:
        return False
    if not d.stream_dir:
        raise UserError(f"the decoded train split would take {need / 2 ** 30:.1f} GB, over data.memory_budget_gb="
                        f"{d.memory_budget_gb:g}; run `sharpshift prepare {d.dataset} --out DIR` and set "
                        "data.stream_dir=DIR (or raise data.memory_budget_gb)")
    return True


def open_split(cfg, split: str) -> ImageDataset:
    """The config's `split` ("train" or "test"), in memory or streamed as data.storage says."""
    from sharpshift.data.registry import load_dataset
    from sharpshift.data.stream import load_stream

    d = cfg.data
    if streams(cfg):
        if not d.stream_dir:
            raise UserError("data.storage=stream needs data.stream_dir=DIR, a folder made by "
                            f"`sharpshift prepare {d.dataset} --out DIR`")
        return load_stream(d.stream_dir, split, d.dataset, image_size=d.image_size)
    return load_dataset(d.dataset, split, d.data_dir, d.on_bad_image, image_size=d.image_size)
