"""DynamicBatchSampler: a batch sampler whose global batch follows a Schedule on the sample clock.

Batches are cut where the schedule says (see NOTE [sample clock] in schedule.py), split over
ranks, and resumable mid-epoch; a ``DataLoader`` never has to be re-created at a milestone.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler

from ..checks import check_batch_size, check_dataset_size, check_int, check_state_dict
from ..schedule.schedule import Phase, Schedule

__all__ = ["DynamicBatchSampler", "SAMPLER_VERSION", "as_schedule", "check_cut_position", "derive_seed", "rank_share",
           "dataset_length"]

SAMPLER_VERSION = 1
_MASK64 = (1 << 64) - 1


def read_only(attribute: str, doc: str) -> property:
    """A public read-only view of a private clock attribute (``epoch`` for ``_epoch``)."""
    return property(lambda self: getattr(self, attribute), doc=doc)


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), so (seed, epoch) pairs never collide like seed + epoch."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def rank_share(global_batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s share of a global batch: the first ``b % world_size`` ranks get one extra.

    Example:
        >>> [rank_share(10, r, 4) for r in range(4)]
        [(0, 3), (3, 6), (6, 8), (8, 10)]
        >>> [rank_share(2, r, 3) for r in range(3)]  # rank 2's share is empty
        [(0, 1), (1, 2), (2, 2)]
    """
    base, extra = divmod(global_batch_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_cut_position(schedule: Schedule, epoch: int, position: int) -> None:
    """Raise unless ``position`` is where ``schedule`` cuts a batch of ``epoch`` (or where the epoch ends)."""
    cuts = [0]
    for size in schedule.batch_sizes(epoch):
        cuts.append(cuts[-1] + size)
    if position not in cuts:
        shown = ", ".join(map(str, cuts[:4])) + (f", ..., {cuts[-1]}" if len(cuts) > 4 else "")
        raise ValueError(
            f"position={position} is not where this schedule cuts a batch of epoch {epoch} "
            f"(valid: {shown}); the state comes from another schedule"
        )



def dataset_length(dataset_or_size: Any) -> int:
    """N from a data set (``len``) or from N itself."""
    if isinstance(dataset_or_size, int) and not isinstance(dataset_or_size, bool):
        return check_dataset_size(dataset_or_size)
    if not hasattr(dataset_or_size, "__len__"):
        raise TypeError("dataset should be a data set with a length or its number of samples (an int), but got "
                        f"{type(dataset_or_size).__name__}; an IterableDataset has no indices to sample")
    return check_dataset_size(len(dataset_or_size), "len(dataset)")


def distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """rank and world_size as given, else from the initialised default process group (as DistributedSampler)."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    return rank, world_size


def as_schedule(dataset_size: int, schedule_or_batch_size: Schedule | int, drop_last: bool | None) -> Schedule:
    """The Schedule that cuts the batches: an int becomes one phase; ``drop_last`` (if not None) overrides."""
    dataset_size = check_dataset_size(dataset_size)
    if drop_last is not None and not isinstance(drop_last, bool):
        raise TypeError(f"drop_last should be None, True or False, but got drop_last={drop_last!r}")
    if isinstance(schedule_or_batch_size, Schedule):
        schedule = schedule_or_batch_size
        if schedule.dataset_size != dataset_size:
            raise ValueError(
                f"the schedule is for dataset_size={schedule.dataset_size}, but dataset_size={dataset_size}; "
                "build the schedule for this data set"
            )
        if drop_last is None or drop_last == schedule.drop_last:
            return schedule
        return dataclasses.replace(schedule, drop_last=drop_last)
    if isinstance(schedule_or_batch_size, bool) or not isinstance(schedule_or_batch_size, int):
        raise TypeError(
            "schedule_or_batch_size should be a growbatch.Schedule or a positive int, "
            f"but got {schedule_or_batch_size!r}"
        )
    check_batch_size(schedule_or_batch_size, dataset_size)
    # one phase for one epoch: past the schedule's end the last phase holds, so it lasts forever
    phase = Phase(0, 1, 1.0, schedule_or_batch_size)
    return Schedule((phase,), dataset_size, bool(drop_last), f"constant-{schedule_or_batch_size}")


class _Cut(NamedTuple):
    """One global batch as cut: where, how big, and this rank's share of its indices."""

    epoch: int
    position: int  # samples of the epoch cut before this batch
    global_batch_size: int
    share_start: int  # offset of this rank's share within the global batch
    indices: torch.Tensor  # this rank's share (int64, CPU); may be empty


# NOTE [epoch end]: an epoch is over when the schedule cuts no further batch at the clock
# (next_batch_size == 0). The clock then stays at (epoch, end) so state_dict() says "epoch done",
# and the next pass (iter) moves it to (epoch + 1, 0) itself: `for epoch ...: for batch in loader`
# works with or without set_epoch, and set_epoch(e) still jumps to the start of any epoch.
# A pass started mid-epoch (after a break, or a load_state_dict) yields the rest of that epoch;
# starting a pass, set_epoch and load_state_dict stop any older iterator, so two never interleave.

# NOTE [prefetch]: a DataLoader pulls batches from its batch_sampler ahead of training
# (num_workers * prefetch_factor of them), so `position` counts samples *cut*, not consumed.
# The *consumed* clock is moved by the BatchSizeScheduler built on this sampler: each of its
# step() calls (one per update) marks one batch as used, and its load_state_dict() moves the
# clock too. Once a scheduler drives the sampler ("tracked"), state_dict() saves the consumed
# clock, len() counts from it, and every new pass (iter) starts there: batches a dropped
# iterator prefetched (a framework's peek, an epoch left early) are cut again, never lost.
# Without a scheduler nothing tells the sampler what was used: the consumed clock is the cut
# clock, exact without prefetch (TensorLoader, num_workers=0); state_dict(batches_consumed=k)
# then gives the state after the first k batches of the current pass.

# NOTE [misuse]: two mistakes a DataLoader makes in silence are caught when it starts a pass
# (the frame that calls iter() on the sampler): `DataLoader(sampler=DynamicBatchSampler(...),
# batch_size=b)` wraps it in torch's BatchSampler and would collate lists of index lists, and a
# data set whose length is not the sampler's N would fail in a worker (longer N) or train on a
# subset (shorter N).


class DynamicBatchSampler(BatchSampler):
    """Yields each rank's share of global batches whose size follows a Schedule on the sample clock.

    Every epoch is a permutation drawn from (seed, epoch) (identical on all ranks), cut into
    global batches by :meth:`Schedule.next_batch_size` at the number of samples already cut,
    so a change of batch size can fall mid-epoch and prefetching never yields a stale size.
    Each global batch is then split over ranks, the first ``b % world_size`` ranks getting one
    sample more. When the global batch is smaller than ``world_size`` the last ranks get an
    empty list, so that every rank yields the same number of batches (collectives stay in
    step); a ``DataLoader``'s default collate cannot batch an empty list, so keep such batches
    out of the schedule or use a ``collate_fn`` that handles them.

    ``len(sampler)`` is the number of batches a pass started now yields (the rest of the current
    epoch, see NOTE [epoch end]). With a prefetching DataLoader, checkpoint what the loop has
    consumed, not what was cut (NOTE [prefetch])::

        for i, batch in enumerate(loader):  # loader = DataLoader(dataset, batch_sampler=sampler, ...)
            ...
            state = sampler.state_dict(batches_consumed=i + 1)

    A ``torch.utils.data.BatchSampler``: pass it as ``DataLoader(dataset, batch_sampler=sampler)``.
    The consumed position is moved by the :class:`BatchSizeScheduler` built on it (NOTE [prefetch]),
    so with a scheduler every pass starts where training stands, and ``state_dict()`` is exact
    under worker prefetch without counting batches.

    Args:
        dataset: the data set (N = ``len(dataset)``) or N, its number of samples.
        schedule_or_batch_size: a :class:`Schedule` for N samples, or a fixed global batch size.
        shuffle: a new permutation each epoch; False keeps the order 0..N-1.
        seed: non-negative; with the epoch it fixes the permutation.
        drop_last: None follows the schedule (False for an int); a bool overrides it.
        rank, world_size: this process and the number of processes; None takes them from the
            initialised ``torch.distributed`` process group (0 and 1 without one).

    Example:
        >>> s = Schedule((Phase(0, 1.5, 0.1, 400), Phase(1.5, 3, 0.1, 800)), dataset_size=1000)
        >>> sampler = DynamicBatchSampler(1000, s)
        >>> [[len(b) for b in sampler] for epoch in range(3)]  # the change falls at position 500 of epoch 1
        [[400, 400, 200], [400, 400, 200], [800, 200]]
    """

    def __init__(
        self,
        dataset: Any,
        schedule_or_batch_size: Schedule | int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        rank, world_size = distributed_defaults(rank, world_size)
        self.schedule = as_schedule(dataset_length(dataset), schedule_or_batch_size, drop_last)
        self.dataset_size = self.schedule.dataset_size
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle should be True or False, but got shuffle={shuffle!r}")
        self.shuffle = shuffle
        self.seed = check_int("seed", seed, 0)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank should be in [0, world_size={world_size}), but got rank={rank}")
        self._epoch = 0
        self._position = 0
        self._last_global_batch_size = 0
        self._perm_epoch: int | None = None
        self._perm = torch.empty(0, dtype=torch.long)
        self._pass = 0  # bumped by a new pass, set_epoch and load_state_dict; older iterators stop
        self._tracked = False  # True once a BatchSizeScheduler moves the consumed clock (NOTE [prefetch])
        self._consumed = (0, 0, 0)  # (epoch, position, last global batch size) used by training
        self._start_pass_record()

    # -- the clock -----------------------------------------------------------------
    @property
    def drop_last(self) -> bool:
        return self.schedule.drop_last

    epoch = read_only("_epoch", "The epoch on the clock (0-based).")
    position = read_only("_position", "Samples of the current epoch already cut into batches (not necessarily consumed).")
    last_global_batch_size = read_only("_last_global_batch_size",
                                       "Global size of the batch cut most recently (0 before the first one).")

    def set_epoch(self, epoch: int) -> None:
        """Move the clock to the start of ``epoch``; an iteration in progress stops.

        With a BatchSizeScheduler driving the sampler, the clock is the scheduler's: ``set_epoch`` of
        the epoch in progress changes nothing (frameworks call it before every pass, a resumed
        mid-epoch one included, and after they have started the pass), and any other epoch is refused.

        Raises:
            RuntimeError: a scheduler drives the sampler and ``epoch`` is not the epoch it stands in.
        """
        check_int("epoch", epoch, 0)
        if self._tracked:
            current, position = self._consumed_clock()
            if epoch != current:
                raise RuntimeError(
                    f"set_epoch({epoch}) would move the sampler away from its BatchSizeScheduler, which stands at "
                    f"epoch {current}, position {position}; the scheduler's step() moves both clocks (load a "
                    "state_dict into the scheduler to go elsewhere)")
            if self._epoch_over() or self._epoch != current:  # the cut pass is over: the epoch starts at training's
                self._epoch, self._position = current, position
                self._pass += 1
                self._start_pass_record()
            return  # otherwise a pass of this epoch is under way (perhaps prefetching): it goes on
        self._epoch, self._position = epoch, 0
        self._pass += 1
        self._start_pass_record()

    # -- the consumed clock (NOTE [prefetch]) --------------------------------------
    def _consumed_clock(self) -> tuple[int, int]:
        """(epoch, position) of the next batch training will use, moved to the next epoch at an epoch's end."""
        epoch, position, _ = self._consumed if self._tracked else (self._epoch, self._position, 0)
        if self.schedule.next_batch_size(epoch, position) == 0:
            return epoch + 1, 0
        return epoch, position

    def consume(self) -> int:
        """Mark the next batch as used by training (BatchSizeScheduler.step() calls it); returns its global size."""
        if not self._tracked:
            self._tracked = True
            self._consumed = (self._pass_epoch, self._pass_position, self._pass_last_size)
        epoch, position = self._consumed_clock()
        size = self.schedule.next_batch_size(epoch, position)
        self._consumed = (epoch, position + size, size)
        return size

    def follow(self, epoch: int, position: int) -> None:
        """Set the consumed clock (BatchSizeScheduler's load_state_dict and construction call it); older iterators stop."""
        check_cut_position(self.schedule, epoch, position)
        last = self._consumed[2] if self._tracked else self._last_global_batch_size
        self._tracked = True
        self._consumed = (epoch, position, last)
        if (self._epoch, self._position) != (epoch, position):
            self._epoch, self._position = epoch, position
            self._pass += 1
            self._start_pass_record()

    def set_schedule(self, schedule: Schedule) -> None:
        """Cut the coming batches by ``schedule``, which must agree with the old one on what was cut so far
        (an adaptive run's batch changes at an epoch's end). With a scheduler driving the sampler, what was
        cut is what training used (NOTE [prefetch]): batches cut beyond it are dropped and cut again."""
        epoch, position = (self._consumed[0], self._consumed[1]) if self._tracked else (self._epoch, self._position)
        started = epoch + (1 if position > 0 else 0)
        self.schedule.check_continues(schedule, started)
        self.schedule = schedule
        if self._tracked:  # no batch of the old size after the change: older iterators stop
            self._pass += 1

    def _epoch_over(self) -> bool:
        return self.schedule.next_batch_size(self._epoch, self._position) == 0

    def _start_pass_record(self) -> None:
        self._pass_epoch = self._epoch
        self._pass_position = self._position
        self._pass_last_size = self._last_global_batch_size
        self._pass_batches = 0

    def __len__(self) -> int:
        """Batches a pass started now yields: the rest of the current epoch, or all of the next once it is over."""
        if self._tracked:
            return len(self.schedule.batch_sizes(*self._consumed_clock()))
        if self._epoch_over():
            return len(self.schedule.batch_sizes(self._epoch + 1))
        return len(self.schedule.batch_sizes(self._epoch, self._position))

    # -- iteration -----------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        self._check_caller(sys._getframe(1))
        return (cut.indices.tolist() for cut in self._cuts())

    def _check_caller(self, frame: Any) -> None:
        """NOTE [misuse]: refuse a DataLoader that wraps the sampler in a BatchSampler, or whose data set has another N."""
        caller = frame.f_locals.get("self") if frame is not None else None
        if isinstance(caller, BatchSampler) and caller is not self and getattr(caller, "sampler", None) is self:
            raise TypeError(
                f"a DynamicBatchSampler cuts whole batches, but it is the sampler of a {type(caller).__name__} "
                f"with batch_size={caller.batch_size}, which would batch its batches; pass it as "
                "DataLoader(dataset, batch_sampler=sampler) without batch_size, shuffle or drop_last")
        dataset = getattr(caller, "_dataset", None)
        if getattr(caller, "_index_sampler", None) is self and hasattr(dataset, "__len__") \
                and len(dataset) != self.dataset_size:
            raise ValueError(
                f"the DataLoader's data set has {len(dataset)} samples, but the DynamicBatchSampler was built for "
                f"dataset_size={self.dataset_size}; build it with DynamicBatchSampler(dataset, ...) for this data set")

    def _cuts(self) -> Iterator[_Cut]:
        """Start a pass (see NOTE [epoch end]) at the consumed clock and return the generator of its cuts."""
        if self._tracked:  # batches an older pass cut beyond what training used are cut again
            (self._epoch, self._position), self._last_global_batch_size = self._consumed_clock(), self._consumed[2]
        elif self._epoch_over():
            self._epoch += 1
            self._position = 0
        self._pass += 1
        self._start_pass_record()
        return self._cut_until_epoch_end(self._pass)

    def _cut_until_epoch_end(self, pass_id: int) -> Iterator[_Cut]:
        perm = self._permutation(self._epoch)
        while pass_id == self._pass:
            epoch, position = self._epoch, self._position
            size = self.schedule.next_batch_size(epoch, position)
            if size == 0:
                return
            start, stop = rank_share(size, self.rank, self.world_size)
            # the clock moves when the batch is cut, before anyone consumes it
            self._position = position + size
            self._last_global_batch_size = size
            self._pass_batches += 1
            yield _Cut(epoch, position, size, start, perm[position + start:position + stop])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                self._perm = torch.randperm(self.dataset_size, generator=generator)
            else:
                self._perm = torch.arange(self.dataset_size)
            self._perm_epoch = epoch
        return self._perm

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """The clock and what fixes the order, as plain values.

        Args:
            batches_consumed: None for the clock as it stands (exact without prefetch). With a
                prefetching DataLoader, the number of batches the loop has taken from the current
                pass (``for i, batch in enumerate(loader)`` gives ``i + 1``); the state is then
                the one right after those batches (see NOTE [prefetch]).

        Raises:
            ValueError: ``batches_consumed`` is negative or more than this pass has cut.
        """
        epoch, position, last = self._consumed if self._tracked else \
            (self._epoch, self._position, self._last_global_batch_size)
        if batches_consumed is not None:
            check_int("batches_consumed", batches_consumed, 0)
            if batches_consumed > self._pass_batches:
                raise ValueError(
                    f"batches_consumed should be at most the {self._pass_batches} batches this pass has cut, "
                    f"but got batches_consumed={batches_consumed}; count batches since the current `for` loop began"
                )
            epoch, position, last = self._pass_epoch, self._pass_position, self._pass_last_size
            for _ in range(batches_consumed):
                last = self.schedule.next_batch_size(epoch, position)
                position += last
        return {
            "version": SAMPLER_VERSION,
            "dataset_size": self.dataset_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": epoch,
            "position": position,
            "last_global_batch_size": last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batches are those the saved sampler would have cut next.

        Raises:
            ValueError: the state is from another version or data set size, or its position is not
                where this schedule cuts a batch.
        """
        check_state_dict(state, owner="DynamicBatchSampler", label="sampler", version=SAMPLER_VERSION, dataset_size=self.dataset_size,
                         holder="this sampler", keys={"seed", "shuffle", "epoch", "position", "last_global_batch_size"})
        seed = check_int("seed", state["seed"], 0)
        epoch = check_int("epoch", state["epoch"], 0)
        position = check_int("position", state["position"], 0)
        last = check_int("last_global_batch_size", state["last_global_batch_size"], 0)
        if not isinstance(state["shuffle"], bool):
            raise TypeError(f"shuffle should be True or False, but got shuffle={state['shuffle']!r}")
        check_cut_position(self.schedule, epoch, position)
        self.seed, self.shuffle = seed, state["shuffle"]
        self._epoch, self._position, self._last_global_batch_size = epoch, position, last
        self._consumed = (epoch, position, last)
        self._perm_epoch = None
        self._pass += 1
        self._start_pass_record()
