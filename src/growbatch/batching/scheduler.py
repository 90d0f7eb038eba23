"""BatchSizeScheduler: the torch-style stepper that applies a Schedule's lr and momentum per update.

It keeps its own sample clock, advanced by the schedule's cutting rule, so the values it sets
are those of the phase where each update's batch is cut, whatever a DataLoader prefetches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..checks import check_int, check_state_dict
from ..schedule.schedule import Schedule
from .sampler import DynamicBatchSampler, check_cut_position, read_only

__all__ = ["BatchSizeScheduler", "SCHEDULER_VERSION"]

SCHEDULER_VERSION = 1


def _sampler_of(sampler_or_loader: Any) -> DynamicBatchSampler:
    if isinstance(sampler_or_loader, DynamicBatchSampler):
        return sampler_or_loader
    # a torch DataLoader and growbatch's TensorLoader both expose the sampler that cuts their batches
    if isinstance(getattr(sampler_or_loader, "batch_sampler", None), DynamicBatchSampler):
        return sampler_or_loader.batch_sampler
    raise TypeError(
        "sampler_or_loader should be a DynamicBatchSampler, a TensorLoader or a DataLoader built with "
        f"batch_sampler=DynamicBatchSampler(...), but got {type(sampler_or_loader).__name__}"
    )


def _check_same_batch_sizes(schedule: Schedule, sampler_schedule: Schedule) -> None:
    """Both are piecewise constant, so agreeing at every phase start of either means agreeing everywhere."""
    starts = sorted({p.start_epoch for p in schedule.phases} | {p.start_epoch for p in sampler_schedule.phases})
    for start in starts:
        ours, theirs = schedule.batch_size_at(start), sampler_schedule.batch_size_at(start)
        if ours != theirs:
            raise ValueError(
                f"the schedule has batch_size={ours} at epoch {start:g}, but the sampler cuts {theirs}; "
                "build the sampler (or loader) from the same schedule"
            )


class BatchSizeScheduler:
    """Sets the optimizer's lr and momentum from a Schedule, update by update, on the sample clock.

    Call order: ``step()`` once per update, after ``optimizer.step()`` (as ``OneCycleLR``). The
    constructor does not step: it applies the values of the first update to come (the one cut at
    the sampler's clock when the scheduler is built, normally epoch 0, position 0). Each
    ``step()`` advances the clock past the batch just used, with ``Schedule.next_batch_size``
    (so it never reads the sampler, whose clock a prefetching DataLoader runs ahead), moves to the
    next epoch when this one is over, and applies the phase in force where the next batch is cut,
    so a phase change in the middle of an epoch takes effect at exactly that batch.

    The lr goes to every parameter group; the momentum to SGD/RMSprop's ``momentum`` or
    Adam/AdamW's ``betas[0]``. With ``set_lr=False`` the lr is left to the user (e.g. a torch
    ``MultiStepLR`` or ``LambdaLR`` stepped alongside); ``set_momentum=False`` likewise.

    Args:
        sampler_or_loader: the DynamicBatchSampler that cuts the batches, a TensorLoader, or a
            DataLoader with one as ``batch_sampler``; its batch sizes must match ``schedule``'s,
            and its ``drop_last`` is used.
        optimizer: a torch optimizer.
        schedule: gives the lr and momentum (and the batch sizes) at every point of the clock.
        set_lr, set_momentum: whether to write them into the optimizer.

    Example:
        N = 1000, phases (0, 1.5, lr 0.1, batch 400) and (1.5, 3, lr 0.05, batch 800); epoch 1.5
        is position 500 of epoch 1, so the batch cut at position 800 of epoch 1 is in phase 2:

        ======  =====  ========  ==========  =====
        update  epoch  position  batch size  lr
        ======  =====  ========  ==========  =====
        0       0      0         400         0.1
        1       0      400       400         0.1
        2       0      800       200         0.1
        3       1      0         400         0.1
        4       1      400       400         0.1
        5       1      800       200         0.05
        6       2      0         800         0.05
        7       2      800       200         0.05
        ======  =====  ========  ==========  =====

        >>> from growbatch import Phase
        >>> s = Schedule((Phase(0, 1.5, 0.1, 400), Phase(1.5, 3, 0.05, 800)), dataset_size=1000)
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> scheduler = BatchSizeScheduler(DynamicBatchSampler(1000, s), optimizer, s)
        >>> rows = []
        >>> for update in range(8):
        ...     rows.append((scheduler.epoch, scheduler.position, scheduler.get_last_batch_size(),
        ...                  optimizer.param_groups[0]["lr"]))
        ...     optimizer.step()  # forward and backward of that batch come first
        ...     scheduler.step()
        >>> rows[4:]
        [(1, 400, 400, 0.1), (1, 800, 200, 0.05), (2, 0, 800, 0.05), (2, 800, 200, 0.05)]
    """

    def __init__(
        self,
        sampler_or_loader: DynamicBatchSampler | DataLoader | Any,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        set_lr: bool = True,
        set_momentum: bool = True,
    ) -> None:
        sampler = _sampler_of(sampler_or_loader)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer should be a torch.optim.Optimizer, but got {type(optimizer).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule should be a growbatch.Schedule, but got {type(schedule).__name__}")
        if schedule.dataset_size != sampler.dataset_size:
            raise ValueError(
                f"the schedule is for dataset_size={schedule.dataset_size}, but the sampler has "
                f"dataset_size={sampler.dataset_size}; build both for the same data set"
            )
        if not isinstance(set_lr, bool) or not isinstance(set_momentum, bool):
            raise TypeError(f"set_lr and set_momentum should be True or False, but got set_lr={set_lr!r}, "
                            f"set_momentum={set_momentum!r}")
        _check_same_batch_sizes(schedule, sampler.schedule)
        if set_momentum:
            for group in optimizer.param_groups:
                if "momentum" not in group and "betas" not in group:
                    raise TypeError(
                        f"{type(optimizer).__name__} has no momentum or betas to set; pass set_momentum=False"
                    )
        self.optimizer = optimizer
        self.schedule = dataclasses.replace(schedule, drop_last=sampler.drop_last) \
            if schedule.drop_last != sampler.drop_last else schedule
        self.set_lr, self.set_momentum = set_lr, set_momentum
        self.last_epoch = 0  # number of step() calls (updates), as for a per-batch torch scheduler
        self._epoch, self._position = sampler.epoch, sampler.position
        self._normalise_clock()
        self._apply()

    epoch = read_only("_epoch", "Epoch of the next update's batch.")
    position = read_only("_position", "Samples of ``epoch`` cut before the next update's batch.")

    def _normalise_clock(self) -> None:
        if self.schedule.next_batch_size(self._epoch, self._position) == 0:
            self._epoch, self._position = self._epoch + 1, 0

    def _apply(self) -> None:
        phase = self.schedule.phase_at(self._epoch, self._position)
        self._last_batch_size = self.schedule.next_batch_size(self._epoch, self._position)
        self._last_lr = phase.lr
        for group in self.optimizer.param_groups:
            if self.set_lr:
                group["lr"] = phase.lr
            if self.set_momentum:
                if "momentum" in group:
                    group["momentum"] = phase.momentum
                else:
                    group["betas"] = (phase.momentum, *tuple(group["betas"])[1:])

    def set_schedule(self, schedule: Schedule) -> None:
        """Follow ``schedule`` from the next update on; it must agree with the old one on the updates made so far."""
        started = self._epoch + (1 if self._position > 0 else 0)
        self.schedule.check_continues(schedule, started)
        self.schedule = schedule
        self._apply()

    def step(self) -> None:
        """Advance past the batch just used and apply the values of the next update."""
        self._position += self.schedule.next_batch_size(self._epoch, self._position)
        self._normalise_clock()
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of each parameter group for the next update (the optimizer's own when ``set_lr=False``)."""
        if not self.set_lr:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [self._last_lr for _ in self.optimizer.param_groups]

    def get_last_batch_size(self) -> int:
        """Global batch size of the next update."""
        return self._last_batch_size

    def state_dict(self) -> dict[str, Any]:
        """The clock and the update count, as plain values; the optimizer is not included."""
        return {
            "version": SCHEDULER_VERSION,
            "dataset_size": self.schedule.dataset_size,
            "last_epoch": self.last_epoch,
            "epoch": self._epoch,
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` and apply its values to the optimizer at once.

        Raises:
            ValueError: the state is from another version or data set size, or its position is not
                where this schedule cuts a batch.
        """
        check_state_dict(state, owner="BatchSizeScheduler", label="scheduler", version=SCHEDULER_VERSION, dataset_size=self.schedule.dataset_size,
                         holder="the schedule", keys={"last_epoch", "epoch", "position"})
        last_epoch = check_int("last_epoch", state["last_epoch"], 0)
        epoch = check_int("epoch", state["epoch"], 0)
        position = check_int("position", state["position"], 0)
        check_cut_position(self.schedule, epoch, position)
        self.last_epoch, self._epoch, self._position = last_epoch, epoch, position
        self._normalise_clock()
        self._apply()
