"""Data-parallel training across processes with torch DDP: the process group a training process joins, its
part of every batch, the model wrapper and the reductions that make metrics global.

A process started by torch's launcher (`torch.distributed.run`) reads its rank and world size from the
environment the launcher sets. One process, the leader, holds the job (the stage's model, settings and
tracking run) and shares it with the others; it alone writes checkpoints, model files and logs. On CPU the
processes talk over gloo, on CUDA over NCCL, one GPU each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from torch import nn

from compression import CompressionError
from compression.loader import Shard

BACKENDS = ("gloo", "nccl")


@dataclass
class Cluster:
    """The training processes this one belongs to (one process: `LOCAL`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    leader: int = 0  # the rank holding the job; it writes checkpoints, model files and logs
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over every process (as float64), the same list everywhere."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def share(self, obj):
        """The leader's `obj` in every process (pickled; models travel as their file's bytes)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_leader else None]
        torch.distributed.broadcast_object_list(box, src=self.leader, device=self._collective_device())
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as training calls it: DDP over the parameters that train now, else the model itself."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


LOCAL = Cluster()


def pick_backend(backend: str, device: str) -> str:
    """auto: NCCL when training on CUDA, else gloo (SyncBatchNorm and NCCL need CUDA; gloo runs anywhere)."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise CompressionError(f"unknown distributed backend {backend!r}; use auto, gloo or nccl")
        return backend
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    return "nccl" if cuda else "gloo"


def join(backend: str, timeout_seconds: float = 1800.0) -> Cluster:
    """Join the process group the launcher set up (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise CompressionError(f"process {rank} needs GPU {local_rank}; this machine has "
                                   f"{torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                         timeout=timedelta(seconds=timeout_seconds))
    return Cluster(rank, world, local_rank, local_world, 0, device, backend)


def elect_leader(cluster: Cluster, holds_job: bool) -> Cluster:
    """The lowest rank among the processes that hold the job leads (on several nodes the launcher, not the
    node that started the pipeline, decides which rank is 0)."""
    if not cluster.distributed:
        return cluster
    holders = [None] * cluster.world
    torch.distributed.all_gather_object(holders, holds_job)
    if not any(holders):
        raise CompressionError("no training process holds the job: start the stage from the pipeline's node")
    cluster.leader = holders.index(True)
    return cluster
