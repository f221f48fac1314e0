"""Whole batches straight from in-memory uint8 tensors, each carrying its dataset indices.

The sampler shards a seeded permutation across processes (every process gets a disjoint slice of the
same epoch's permutation) and yields index tensors; the dataset indexes the tensors once per batch.
Nothing runs per image, and there are no worker processes to feed.

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

    def __init__(self, dataset: Dataset, sampler: ShardedBatchSampler, served: Callable[[], int]):
        super().__init__(dataset, sampler=sampler, batch_size=None, num_workers=0)
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

    def __init__(self, data: ImageDataset, batch_size: int, seed: int):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        sampler = ShardedBatchSampler(len(self.data), self.batch_size, self.seed, rank, world)
        return ResumableLoader(IndexedBatches(self.data), sampler, self.batches_done)

    def batches_done(self) -> int:
        """Batches of the current epoch whose training step has run (Lightning's own count, restored on resume)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (at most) the first max_images images."""
    x = images[:max_images].float().div_(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
