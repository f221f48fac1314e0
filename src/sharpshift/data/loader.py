"""Whole batches straight from in-memory uint8 tensors, each carrying its dataset indices.

The sampler shards a seeded permutation across processes (every process gets a disjoint slice of the
same epoch's permutation) and yields index tensors; the dataset indexes the tensors once per batch.
Nothing runs per image, and there are no worker processes to feed.

Streamed datasets (sharpshift.data.stream) index the same way, decoding just the batch's images; with
`data.num_workers` > 0 that happens in worker processes while the model trains (the sampler stays in the
training process, so order, DDP shards and resume are the same whatever the worker count).

The loader is resumable: its state is the sampler's position (epoch, batches already served), saved in
every checkpoint, so a run resumed mid-epoch continues with the same order where it stopped.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from sharpshift.data.base import ImageDataset


class ShardedBatchSampler:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch = 0
        self.start = 0  # batches of this epoch served before a resume: skipped once

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def position(self, served: int) -> dict:
        """The state after `served` batches of the current epoch (a finished epoch points at the next)."""
        if served >= len(self):
            return {"epoch": self.epoch + 1, "served": 0}
        return {"epoch": self.epoch, "served": served}

    def load_position(self, state: dict) -> None:
        self.epoch, self.start = int(state["epoch"]), int(state["served"])

    def __len__(self) -> int:
        return (self.n // self.world) // self.batch_size  # incomplete batches are dropped

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world
        mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]


class ResumableLoader(DataLoader):
    """Whole batches from a ShardedBatchSampler; Lightning checkpoints its state_dict (the position).

    `served()` says how many batches of the current epoch training has finished: the sampler itself cannot
    know, because the loop fetches a batch ahead."""

    def __init__(self, dataset: Dataset, sampler: ShardedBatchSampler, served: Callable[[], int], num_workers: int = 0):
        super().__init__(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                         persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
        self.served = served

    def state_dict(self) -> dict:
        return self.sampler.position(self.served())

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_position(state)


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

    def __init__(self, data: ImageDataset, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed
        # worker processes pay off only for images decoded per batch: in-memory batches are one index op
        self.num_workers = num_workers if not isinstance(data.images, torch.Tensor) else 0

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sampler = ShardedBatchSampler(len(self.data), self.batch_size, self.seed, rank, world)
        return ResumableLoader(IndexedBatches(self.data), sampler, self.batches_done, self.num_workers)

    def batches_done(self) -> int:
        """Batches of the current epoch whose training step has run (Lightning's own count, restored on resume)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (at most) the first max_images images. Streamed images
    whose float copy would exceed 256 MB are read 500 at a time (float64 sums: equal to ~1e-7), so that memory
    does not grow with their size; smaller ones are decoded whole, for the in-memory path's very numbers."""
    n = min(len(images), max_images)
    if isinstance(images, torch.Tensor) or 4 * n * images.shape[1:].numel() <= 256 * 2 ** 20:
        x = images[:max_images].float().div_(255.0)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    total = square = 0.0
    for start in range(0, n, 500):
        x = images[start:min(start + 500, n)].double().div_(255.0)
        total = total + x.sum(dim=(0, 2, 3))
        square = square + (x * x).sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = ((square - count * mean * mean) / (count - 1)).clamp_min(0).sqrt()
    return mean.tolist(), std.clamp_min(1e-3).tolist()
