"""Streaming batches of an image folder: files decoded in DataLoader worker processes, batched as uint8 and
normalised on the training device.

Worker processes start with `forkserver`: a fork of the training process itself dies inside a Prefect run
(Prefect's inherited shutdown hook) and may hang after CUDA has started; the fork server is a clean process
that imports this module once, and each worker forks from it. A process that may not have children (a
daemonic Dask worker) decodes in the process itself, with a warning.

Order and augmentation are the in-memory batches' contract: epoch e visits a permutation seeded from (seed,
epoch), global batch by global batch; with several training processes each takes its slice of every global
batch; each sample's crop and flip come from (seed, epoch, manifest row). A sample's pixels therefore do not
depend on the number of workers or processes, nor on a resume.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from compression import CompressionError
from compression.images import BadImage, ImageTransform, decode, sample_seed
from compression.manifest import Manifest, split_digest

log = logging.getLogger("shrinkflow")

WORKER_START_METHOD = "forkserver"


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: `rank` of `world` training processes."""

    rank: int = 0
    world: int = 1

    def batch_size(self, global_batch: int) -> int:
        if global_batch % self.world:
            raise CompressionError(f"batch_size {global_batch} cannot be split evenly over {self.world} training "
                                   "processes; use a multiple of the process count")
        return global_batch // self.world


SINGLE = Shard()


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The epoch's visiting order and the generator that drew it (the in-memory batches augment with it)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return (torch.randperm(n, generator=g) if shuffle else torch.arange(n)), g


def global_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def shard_positions(order: torch.Tensor, start: int, stop: int, shard: Shard) -> torch.Tensor:
    """This process's slice of the global batch order[start:stop] (contiguous, rank by rank)."""
    per_rank = -(-(stop - start) // shard.world)
    lo = start + shard.rank * per_rank
    return order[lo:min(lo + per_rank, stop)]


def check_trainable(n: int, batch_size: int, shard: Shard) -> None:
    """Training processes must take the same number of steps: every global batch full."""
    if shard.world > 1 and n < batch_size:
        raise CompressionError(f"{n} training images are fewer than one global batch of {batch_size} over "
                               f"{shard.world} processes; lower train.batch_size")


@dataclass
class FolderSplit:
    """Rows of a manifest with their labels (-1: label hidden, the unlabeled transfer set)."""

    manifest: Manifest
    rows: np.ndarray  # int64 rows of the manifest
    labels: torch.Tensor  # int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: torch.Tensor) -> FolderSplit:
        index = torch.as_tensor(index)
        return FolderSplit(self.manifest, self.rows[index.numpy()], self.labels[index], self.classes)

    def relabel(self, labels: torch.Tensor, classes: list[str]) -> FolderSplit:
        return FolderSplit(self.manifest, self.rows, labels, classes)

    def digest(self) -> str:
        return split_digest(self.manifest, self.rows, self.labels.numpy())

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels[self.labels >= 0], minlength=len(self.classes)).tolist()

    def without_labels(self) -> FolderSplit:
        return FolderSplit(self.manifest, self.rows, torch.full_like(self.labels, -1), self.classes)

    def concat(self, other: FolderSplit) -> FolderSplit:
        return FolderSplit(self.manifest, np.concatenate([self.rows, other.rows]),
                           torch.cat([self.labels, other.labels]), self.classes)


class FolderDecoder:
    """What a loader worker holds: the manifest's arrays, the split's rows and the transform. Given
    (epoch, positions) it returns the positions, their uint8 pixels and the failures (index, message):
    a bad file never ends the worker."""

    def __init__(self, manifest: Manifest, rows: np.ndarray, transform: ImageTransform, augment: bool, seed: int):
        self.manifest, self.rows, self.transform = manifest, rows, transform
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, request):
        epoch, positions = request
        size, channels = self.transform.size, 1 if self.transform.mode == "L" else 3
        out = np.zeros((len(positions), channels, size, size), dtype=np.uint8)
        failures = []
        for k, position in enumerate(positions.tolist()):
            row = int(self.rows[position])
            rng = random.Random(sample_seed(self.seed, epoch, row)) if self.augment else None
            try:
                out[k] = decode(self.manifest.path(row), self.transform, rng)
            except BadImage as exc:
                failures.append((k, str(exc)))
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's, never the worker's
                failures.append((k, f"{self.manifest.path(row)}: {type(exc).__name__}: {exc}"[:300]))
        return positions, torch.from_numpy(out), failures


def _as_is(batch):
    return batch


class _EpochSampler:
    """Batch sampler yielding (epoch, positions) requests for this process's slice of every global batch."""

    def __init__(self, n: int, global_batch: int, shuffle: bool, seed: int, drop_last: bool, shard: Shard):
        self.n, self.global_batch, self.shuffle, self.seed, self.shard = n, global_batch, shuffle, seed, shard
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        return global_batches(self.n, self.global_batch, self.drop_last)

    def __iter__(self):
        order, _ = epoch_order(self.n, self.shuffle, self.seed, self.epoch)
        for i in range(len(self)):
            positions = shard_positions(order, i * self.global_batch, min((i + 1) * self.global_batch, self.n),
                                        self.shard)
            if len(positions):
                yield self.epoch, positions


def may_start_workers() -> bool:
    """A daemonic process (a Dask worker process) cannot start child processes."""
    return not multiprocessing.current_process().daemon


def worker_context():
    context = multiprocessing.get_context(WORKER_START_METHOD)
    context.set_forkserver_preload(["compression.loader"])
    return context


def start_worker_server() -> None:
    """Start the fork server now, so that its imports (torch: seconds) overlap with listing the folder
    instead of delaying the first batch."""
    if may_start_workers():
        from multiprocessing import forkserver

        worker_context()
        forkserver.ensure_running()


_warned_daemonic = False


def usable_workers(requested: int) -> int:
    global _warned_daemonic
    if requested and not may_start_workers():
        if not _warned_daemonic:
            log.warning("[data] this process is daemonic (a Dask worker?) and cannot start loader workers: "
                        "decoding in the process itself "
                        "(start Dask workers with DASK_DISTRIBUTED__WORKER__DAEMON=False)")
            _warned_daemonic = True
        return 0
    return requested


class FolderBatches:
    """(x, y) batches of a FolderSplit: x normalised float on `device` (set by the trainer), y int64 labels.

    Same contract as data.Batches (set_epoch, len, seed, device, shard).
    """

    def __init__(self, split: FolderSplit, batch_size: int, mean, std, transform: ImageTransform,
                 shuffle: bool = False, augment: bool = False, seed: int = 0, drop_last: bool = False,
                 channels: int | None = None, workers: int = 0, shard: Shard = SINGLE, bad_images: str = "skip",
                 normalize: bool = True):
        if batch_size < 1:
            raise CompressionError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.global_batch, self.transform = split, batch_size, transform
        self.batch_size = shard.batch_size(batch_size)
        self.shuffle, self.augment, self.seed, self.shard = shuffle, augment, seed, shard
        self.drop_last = drop_last and len(split) > batch_size
        self.channels = channels or (1 if transform.mode == "L" else 3)
        self.mean, self.std = tuple(mean), tuple(std)
        self.workers, self.bad_images, self.normalized = workers, bad_images, normalize
        self.device = torch.device("cpu")
        self.epoch, self.skipped = 0, set()
        self._loader, self._loader_seed = None, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return global_batches(len(self.split), self.global_batch, self.drop_last)

    def _make_loader(self):
        from torch.utils.data import DataLoader

        decoder = FolderDecoder(self.split.manifest, self.split.rows, self.transform, self.augment, self.seed)
        self._sampler = _EpochSampler(len(self.split), self.global_batch, self.shuffle, self.seed, self.drop_last,
                                      self.shard)
        workers = usable_workers(self.workers)
        options = dict(num_workers=workers, collate_fn=_as_is, pin_memory=self.device.type == "cuda")
        if workers:
            options.update(multiprocessing_context=worker_context(), persistent_workers=True, prefetch_factor=2)
        self._loader, self._loader_seed = DataLoader(decoder, batch_sampler=self._sampler, **options), self.seed
        weakref.finalize(self, _shutdown, self._loader)

    def _usable(self, failures: list, positions: torch.Tensor) -> torch.Tensor:
        """Mask of the batch's good samples; under the fail policy a bad file ends the run (bad input)."""
        keep = torch.ones(len(positions), dtype=torch.bool)
        for k, message in failures:
            if self.bad_images == "fail":
                raise BadImage(f"{message} (data.bad_images: fail)")
            keep[k] = False
            row = int(self.split.rows[int(positions[k])])
            if row not in self.skipped:
                self.skipped.add(row)
                log.warning("[data] skipping %s", message)
        return keep

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        from compression.data import to_model_input

        return to_model_input(images, self.mean, self.std, self.channels)

    def __iter__(self):
        if self._loader is None or self._loader_seed != self.seed:
            self._make_loader()
        self._sampler.epoch = self.epoch
        batches = iter(self._loader)
        for positions, images, failures in batches:
            labels = self.split.labels[positions]
            if failures:
                keep = self._usable(failures, positions)
                images, labels = images[keep], labels[keep]
                if not len(labels):
                    continue
            if not self.normalized:
                yield images, labels
                continue
            non_blocking = self.device.type == "cuda"
            x = self.normalize(images.to(self.device, non_blocking=non_blocking))
            yield x, labels.to(self.device, non_blocking=non_blocking)

    def close(self) -> None:
        if self._loader is not None:
            _shutdown(self._loader)
            self._loader = None


def _shutdown(loader) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def default_workers() -> int:
    """Loader workers when the config does not say: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
