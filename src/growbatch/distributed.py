"""torchrun environment, DDP wrapping with all-reduce accounting, and reductions over ranks."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "setup", "teardown", "wrap_ddp", "AllReduceStats", "sum_over_ranks", "average_buffers", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device should be one of auto, cpu, cuda, but got device={preference!r}")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device=cuda was asked for, but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto", timeout_s: float = 60.0) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # NOTE [timeout]: a dead peer turns into an error after timeout_s instead of a hang.
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, resolved)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@dataclass
class AllReduceStats:
    """Count and wall time of the gradient all-reduces DDP launches (one per bucket per update)."""

    count: int = 0
    seconds: float = 0.0
    _lock: object = field(default=None, repr=False)

    def state_dict(self) -> dict:
        return {"count": self.count, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.seconds = int(state["count"]), float(state["seconds"])


def _timed_allreduce_hook(stats: AllReduceStats, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    # Same arithmetic as DDP's default hook (sum, then divide by world size), timed to completion.
    start = time.perf_counter()
    tensor = bucket.buffer().div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        stats.count += 1
        stats.seconds += time.perf_counter() - start
        return fut.value()[0]

    return future.then(done)


def wrap_ddp(model: nn.Module, info: DistInfo, stats: AllReduceStats) -> nn.Module:
    """Wrap ``model`` in DDP when running on several processes; otherwise return it unchanged.

    Buffers are not broadcast from rank 0 at each forward: ghost batch-norm running
    statistics are averaged over ranks before evaluation and checkpoints instead, which
    equals a single process's statistics (the running-average update is linear).
    """
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    ddp.register_comm_hook(stats, _timed_allreduce_hook)
    return ddp


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (float64, so counts stay exact)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, in place."""
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world)
