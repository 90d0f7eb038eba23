"""torchrun environment, DDP wrapping with all-reduce accounting, and reductions over ranks."""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "setup", "teardown", "from_main", "TIMEOUT_ENV", "wrap_ddp", "AllReduceStats",
           "sum_over_ranks", "average_buffers", "unaligned_batch_sizes", "warn_if_ghosts_split"]

T = TypeVar("T")


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


TIMEOUT_ENV = "GROWBATCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


def _timeout_from_env() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} should be a positive number of seconds, but got {TIMEOUT_ENV}={text!r}")
    return value


def setup(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA.

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (each rank takes GPU ``LOCAL_RANK``).
        timeout_s: how long a collective waits for a missing rank before failing; default
            ``$GROWBATCH_DIST_TIMEOUT``, else 60 s.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout_s = _timeout_from_env() if timeout_s is None else timeout_s
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # NOTE [timeout]: a rank that hangs (rather than dies: a dead peer's closed connection fails
        # the collective at once) turns into an error after timeout_s instead of a hang.
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, resolved)


def teardown(wait: bool = True) -> None:
    """Leave the process group; with ``wait`` (a clean finish) every rank first waits for the others."""
    if not dist.is_initialized():
        return
    # NOTE [teardown]: DDP models of finished runs sit in reference cycles that keep the group's gloo
    # threads alive; left to interpreter exit they abort the process ("terminate called without an
    # active exception") and torchrun reports the job failed. Collect them first, then leave in step.
    # After an error the other ranks may never arrive, so nobody waits.
    gc.collect()
    try:
        if wait:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def from_main(compute: Callable[[], T]) -> T:
    """Call ``compute`` on rank 0 only and return its result on every rank (as is, without DDP).

    Decisions that read the output directory (resume or not, a checkpoint's contents) are made
    once, so the ranks cannot disagree, and ranks on other machines need not see rank 0's files.
    An exception raised by ``compute`` is raised on every rank; on the others it is marked
    ``relayed = True`` so that only rank 0 reports it.
    """
    if not dist.is_initialized():
        return compute()
    payload: list = [None]
    if dist.get_rank() == 0:
        try:
            payload[0] = (True, compute())
        except Exception as err:  # every rank must reach the broadcast, whatever happened
            payload[0] = (False, err)
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if ok:
        return value
    if dist.get_rank() != 0:
        value.relayed = True
    raise value


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


def _timed_allreduce_hook(stats, bucket):  # no annotations: see NOTE [hook annotations]
    """DDP's default arithmetic (divide by the world size, then sum), counted and timed to completion."""
    start = time.perf_counter()
    tensor = bucket.buffer().div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        stats.count += 1
        stats.seconds += time.perf_counter() - start
        return fut.value()[0]

    return future.then(done)


# NOTE [hook annotations]: DDP checks a comm hook's annotations against dist.GradBucket and
# torch.futures.Future; under `from __future__ import annotations` they are strings and the check
# fails ("bucket annotation should be dist.GradBucket"), so the hook above carries none.


def wrap_ddp(model: nn.Module, info: DistInfo, stats: AllReduceStats) -> nn.Module:
    """Wrap ``model`` in DDP when running on several processes; otherwise return it unchanged.

    Buffers are not broadcast from rank 0 at each forward: each rank's batch-norm running
    statistics follow its own share, and :func:`average_buffers` averages them before evaluation
    and checkpoints. The running average is linear, so this equals one process's statistics when
    every rank's share is the same size and runs as many forward passes per update as one process
    would on the whole batch (one micro-batch each); otherwise it is a close approximation.
    """
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    # forward_sync_buffers=False: no broadcast of rank 0's buffers at every forward (each rank's ghost-BN
    # statistics are its own until average_buffers); at construction they are synced, and are equal anyway
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
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


# NOTE [ghost alignment]: ghost batch norm groups consecutive samples of each forward pass, and a
# rank only sees its share, so a ghost never spans two ranks. The ghosts are those of one process
# with the same global batch when every non-empty share starts at a multiple of ghost_batch_size
# (e.g. B divisible by world_size * ghost_batch_size; the short last batch of an epoch too) and the
# micro-batch size is a multiple of it.
def unaligned_batch_sizes(batch_sizes: Iterable[int], ghost_batch_size: int, world_size: int) -> list[int]:
    """The global batch sizes whose split over ``world_size`` ranks cuts a ghost batch, sorted.

    Example:
        >>> unaligned_batch_sizes([14, 70, 140, 42], ghost_batch_size=7, world_size=2)
        []
        >>> unaligned_batch_sizes([128, 640, 1, 2, 100], ghost_batch_size=64, world_size=2)  # 1+1, 50+50
        [2, 100]
    """
    from ..batching.sampler import rank_share

    def cuts_a_ghost(size: int) -> bool:  # a share boundary inside the batch, not on a ghost's edge
        starts = (rank_share(size, rank, world_size)[0] for rank in range(1, world_size))
        return any(0 < start < size and start % ghost_batch_size for start in starts)

    return sorted({size for size in batch_sizes if cuts_a_ghost(size)})


def warn_if_ghosts_split(schedule, ghost_batch_size: int | None, world_size: int) -> list[int]:
    """Warn (once, call it on rank 0) when some global batch of ``schedule`` splits ghosts over ranks.

    Returns:
        the unaligned global batch sizes (empty: ghost batches are those of one process).
    """
    if not ghost_batch_size or world_size == 1:
        return []
    sizes = {size for epoch in range(schedule.epochs) for size in schedule.batch_sizes(epoch)}
    bad = unaligned_batch_sizes(sizes, ghost_batch_size, world_size)
    if bad:
        shown = ", ".join(map(str, bad[:6])) + (", ..." if len(bad) > 6 else "")
        warnings.warn(
            f"ghost batch norm differs from one process's: global batches of {shown} samples do not split over "
            f"{world_size} ranks into multiples of ghost_batch_size={ghost_batch_size}, so some ghost batches "
            f"are cut at a rank's edge; choose batch sizes divisible by {world_size * ghost_batch_size} "
            f"(and a data set size that keeps the last batch so) for identical results", stacklevel=2)
    return bad
