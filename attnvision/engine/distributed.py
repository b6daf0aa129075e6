"""torchrun / DistributedDataParallel plumbing: one process per device, rank 0 does all writing."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "world_from_env", "broadcast_object", "all_reduce_sum", "all_reduce_max",
           "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> DistInfo:
    """Rank and world size as torchrun exports them (a single process when run directly)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def init_distributed() -> DistInfo:
    """Join the torchrun process group if there is one; idempotent.

    The group serves CPU tensors over gloo and, where CUDA exists, CUDA tensors over NCCL, so it can be joined
    before the trainer has picked its device (the run-directory resolver does that).
    """
    info = world_from_env()
    if info.enabled and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    return info


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
