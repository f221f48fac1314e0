"""Whole batches straight from in-memory uint8 tensors, each carrying its dataset indices.

The sampler shards a seeded permutation across processes (every process gets a disjoint slice of the
same epoch's permutation) and yields index tensors; the dataset indexes the tensors once per batch.
Nothing runs per image, and there are no worker processes to feed.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from sharpshift.data.base import ImageDataset


class ShardedBatchSampler:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n // self.world) // self.batch_size  # incomplete batches are dropped

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world
        mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        for b in range(len(self)):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]


class IndexedBatches(Dataset):
    def __init__(self, data: ImageDataset):
        self.images = data.images
        self.labels = data.labels if data.labels is not None else torch.full((len(data),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor):
        return self.images[idx], self.labels[idx], idx


class PretrainData(L.LightningDataModule):
    """Builds the loader once the trainer knows this process's rank and the world size."""

    def __init__(self, data: ImageDataset, batch_size: int, seed: int):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sampler = ShardedBatchSampler(len(self.data), self.batch_size, self.seed, rank, world)
        return DataLoader(IndexedBatches(self.data), sampler=sampler, batch_size=None, num_workers=0)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (at most) the first max_images images."""
    x = images[:max_images].float().div_(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
