"""torchrun / DistributedDataParallel helpers: one place that knows whether this is a distributed run.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the process group starts with NCCL on
CUDA devices and gloo on CPU; otherwise every helper is a no-op for a single process, so the training loop
reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pars.common.errors import PARSError
from pars.model.scoring import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_arg: str | None) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun; return (who we are, our device).

    Each rank of a CUDA run takes the GPU of its LOCAL_RANK; a CPU run uses gloo."""
    device = resolve_device(device_arg)
    if not launched_by_torchrun():
        return DistInfo(), device
    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except (KeyError, ValueError):
        raise PARSError("WORLD_SIZE > 1 but RANK/LOCAL_RANK are not set: launch with torchrun") from None
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise PARSError(f"LOCAL_RANK {local} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a few floats over all ranks (one all_reduce); identity on one process."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] on one process."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's obj on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_with_grad(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's `local` along its first dimension (rank order) keeping the autograd graph: the
    backward pass sums each rank's gradient into its own shard, so a loss computed identically on every rank
    over the gathered tensor gives, after DDP's gradient averaging, exactly the single-process gradient.
    `sizes[r]` is rank r's length (shards may differ by one; they are padded for the collective)."""
    if not dist.is_initialized():
        return local
    from torch.distributed.nn.functional import all_gather

    width = max(sizes)
    short = width - len(local)  # along the first dimension (scores, or a classification head's rows)
    padded = torch.cat([local, local.new_zeros((short, *local.shape[1:]))]) if short > 0 else local
    parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
