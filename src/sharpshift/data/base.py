"""The in-memory dataset every loader returns: uint8 images, optional labels."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from sharpshift.errors import UserError


@dataclass
class ImageDataset:
    """Images as a uint8 tensor (N, C, H, W), labels as int64 (N,) or None when unlabeled."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise UserError(f"dataset {self.name!r} is empty; check the data folder")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def subset(self, n: int, seed: int = 0) -> "ImageDataset":
        """A seeded random subset of n samples (all of them when n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        return self.select(subset_indices(len(self), n, seed))

    def digest(self) -> str:
        """A short hash of the images and labels, in order: two runs that report the same digest trained or
        evaluated on the same samples (the grid compares these across cells and floors)."""
        h = hashlib.sha1(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def select(self, idx: torch.Tensor) -> "ImageDataset":
        """The samples at these indices, in this order."""
        labels = self.labels[idx] if self.labels is not None else None
        return ImageDataset(self.images[idx], labels, self.name, self.classes)


def subset_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """The positions ImageDataset.subset(n, seed) takes from `total` samples."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
