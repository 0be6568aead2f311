"""Training order and augmentation randomness as functions of (seed, epoch): a resumed run replays nothing.

:class:`EpochSampler` shuffles with a generator seeded from ``(seed, epoch)`` and
hands the dataset a key ``(index, seed, epoch)``, from which the dataset draws the
sample's augmentation stream ``default_rng([seed, epoch, index])``. Nothing depends
on which worker loads a sample, on the number of workers, or on how often the
process was restarted. A resumed mid-epoch run skips the batches it already took
(:meth:`EpochSampler.skip_next`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int, int]
"""(record index, seed, epoch): what a training dataset receives instead of a bare index."""


def sample_rng(key: int | SampleKey) -> np.random.Generator:
    """The augmentation stream of one sample: from its key, or (evaluation) from its index alone."""
    if isinstance(key, (tuple, list)):
        index, seed, epoch = key
        return np.random.default_rng([seed, epoch, index])
    return np.random.default_rng([int(key)])


class EpochSampler(Sampler[SampleKey]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``; Lightning calls :meth:`set_epoch` at each
    epoch start (under DDP through its DistributedSamplerWrapper, which shards the order)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0):
        self.n, self.seed, self.epoch, self._skip = int(n), int(seed), int(epoch), int(skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_next(self, count: int) -> None:
        """The next iteration leaves out its first ``count`` samples (already trained on before a restart)."""
        self._skip = int(count)

    def order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[SampleKey]:
        skip, self._skip = self._skip, 0
        for i in self.order()[skip:].tolist():
            yield (i, self.seed, self.epoch)

    def __len__(self) -> int:
        return self.n


def die_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """In a loader worker: exit as soon as the training process is gone (kill -9 leaves no orphans).

    PyTorch's own watchdog only looks while a worker is idle; a worker blocked on a full pipe to a dead
    parent would otherwise linger.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="flmk-parent-watch", daemon=True).start()


class WorkerInit:
    """``worker_init_fn``: Lightning's per-worker seeding (numpy/random/torch), one OpenCV thread per worker
    (the loader already runs one process per core: OpenCV's own pool in every worker oversubscribes the CPU),
    plus :func:`die_with_parent`."""

    def __init__(self) -> None:
        self.parent_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
        cv2.setNumThreads(1)
        die_with_parent(self.parent_pid)
