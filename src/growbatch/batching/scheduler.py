"""BatchSizeScheduler: the torch-style stepper that applies a Schedule's lr and momentum per update.

It keeps its own sample clock, advanced by the schedule's cutting rule, so the values it sets
are those of the phase where each update's batch is cut, whatever a DataLoader prefetches.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
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
        sampler = sampler_or_loader.batch_sampler
        dataset = getattr(sampler_or_loader, "dataset", None)
        if isinstance(sampler_or_loader, DataLoader) and hasattr(dataset, "__len__") \
                and len(dataset) != sampler.dataset_size:
            raise ValueError(
                f"the DataLoader's data set has {len(dataset)} samples, but its DynamicBatchSampler was built for "
                f"dataset_size={sampler.dataset_size}; build it with DynamicBatchSampler(dataset, ...)")
        return sampler
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


def _momentum_of(group: dict) -> float | None:
    if "momentum" in group:
        return group["momentum"]
    return tuple(group["betas"])[0] if "betas" in group else None


class BatchSizeScheduler(LRScheduler):
    """Sets the optimizer's lr and momentum from a Schedule, update by update, on the sample clock.

    A ``torch.optim.lr_scheduler.LRScheduler``: frameworks that take an LR scheduler (Lightning's
    ``configure_optimizers``, a Hugging Face ``Trainer``'s ``lr_scheduler``) take this one, and, as
    torch's own, it warns when ``step()`` comes before the first ``optimizer.step()``. It also drives
    the sampler's consumed clock (NOTE [prefetch] in sampler.py): every ``step()`` marks one batch as
    used, so a pass started after a dropped iterator resumes where training stands.

    Call order: ``step()`` once per update, after ``optimizer.step()`` (as ``OneCycleLR``). The
    constructor does not step: it applies the values of the first update to come (the one cut at
    the sampler's clock when the scheduler is built, normally epoch 0, position 0). Each
    ``step()`` advances the clock past the batch just used, with ``Schedule.next_batch_size``
    (so it never reads the sampler, whose clock a prefetching DataLoader runs ahead), moves to the
    next epoch when this one is over, and applies the phase in force where the next batch is cut,
    so a phase change in the middle of an epoch takes effect at exactly that batch.

    The lr goes to every parameter group; the momentum to SGD/RMSprop's ``momentum`` or
    Adam/AdamW's ``betas[0]``, only where the schedule states one (a schedule whose momentum is None
    leaves the optimizer's, NOTE [optimizer values] in schedule.py). Where the schedule's first lr or
    momentum differs from the optimizer's own, it is applied with a warning. With ``set_lr=False`` the
    lr is left to the user (e.g. a torch ``MultiStepLR`` or ``LambdaLR`` stepped alongside);
    ``set_momentum=False`` likewise. With ``set_lr=True`` another writer of the lr (a second LR
    scheduler on the same optimizer) draws a warning, at construction or at the first ``step()`` that
    finds an lr it did not set.

    Args:
        sampler_or_loader: the DynamicBatchSampler that cuts the batches, a TensorLoader, or a
            DataLoader with one as ``batch_sampler``; its batch sizes must match ``schedule``'s,
            and its ``drop_last`` is used. A DataLoader's data set must have the sampler's N samples.
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
        set_momentum = set_momentum and schedule.phases[0].momentum is not None
        if set_momentum:
            for group in optimizer.param_groups:
                if "momentum" not in group and "betas" not in group:
                    raise TypeError(
                        f"{type(optimizer).__name__} has no momentum or betas to set; pass set_momentum=False, "
                        f"or build the schedule with momentum=None (it states momentum={schedule.phases[0].momentum:g})")
        self.sampler = sampler
        self.schedule = dataclasses.replace(schedule, drop_last=sampler.drop_last) \
            if schedule.drop_last != sampler.drop_last else schedule
        self.set_lr, self.set_momentum = set_lr, set_momentum
        if set_lr and any("initial_lr" in group for group in optimizer.param_groups):
            warnings.warn(
                f"another LR scheduler was built on this {type(optimizer).__name__} (its param groups have "
                "'initial_lr'); BatchSizeScheduler also sets the lr and would overwrite it: pass set_lr=False to "
                "let the other one drive the lr", UserWarning, stacklevel=2)
        self._epoch, self._position = sampler._consumed_clock()
        self._warn_where_the_optimizer_differs(optimizer)
        self._applied_lrs: list[float] | None = None
        # LRScheduler.__init__ records base_lrs (the optimizer's lr as built), wraps optimizer.step to
        # detect the call order, and calls step() once: _initial applies without moving the clock
        self._initial = True
        super().__init__(optimizer)
        self._initial = False
        sampler.follow(self._epoch, self._position)

    def _warn_where_the_optimizer_differs(self, optimizer: torch.optim.Optimizer) -> None:
        """NOTE [optimizer values]: a stated value that replaces a different one of the optimizer's is announced."""
        first = self.schedule.phase_at(self._epoch, self._position)
        group = optimizer.param_groups[0]
        name = type(optimizer).__name__
        if self.set_lr and not math.isclose(float(group["lr"]), first.lr, rel_tol=1e-9):
            warnings.warn(f"the schedule sets lr={first.lr:g}, replacing the lr={float(group['lr']):g} {name} was "
                          "built with; build the optimizer with the schedule's lr, or pass set_lr=False to keep "
                          "the optimizer's", UserWarning, stacklevel=3)
        own = _momentum_of(group)
        if self.set_momentum and own is not None and not math.isclose(own, first.momentum, abs_tol=1e-12):
            what = "momentum" if "momentum" in group else "betas[0]"
            warnings.warn(f"the schedule sets momentum={first.momentum:g}, replacing {name}'s {what}={own:g}; "
                          "build the schedule with momentum=None to keep the optimizer's, or the optimizer with "
                          "the schedule's", UserWarning, stacklevel=3)

    epoch = read_only("_epoch", "Epoch of the next update's batch.")
    position = read_only("_position", "Samples of ``epoch`` cut before the next update's batch.")

    def _normalise_clock(self) -> None:
        if self.schedule.next_batch_size(self._epoch, self._position) == 0:
            self._epoch, self._position = self._epoch + 1, 0

    def _apply(self) -> None:
        phase = self.schedule.phase_at(self._epoch, self._position)
        self._last_batch_size = self.schedule.next_batch_size(self._epoch, self._position)
        self._last_lr = [phase.lr if self.set_lr else group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            if self.set_lr:
                group["lr"] = phase.lr
            if self.set_momentum and phase.momentum is not None:
                if "momentum" in group:
                    group["momentum"] = phase.momentum
                else:
                    group["betas"] = (phase.momentum, *tuple(group["betas"])[1:])
        self._applied_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def set_schedule(self, schedule: Schedule) -> None:
        """Follow ``schedule`` from the next update on; it must agree with the old one on the updates made so far."""
        started = self._epoch + (1 if self._position > 0 else 0)
        self.schedule.check_continues(schedule, started)
        self.schedule = schedule
        self._apply()

    def step(self, epoch: None = None) -> None:
        """Advance past the batch just used and apply the values of the next update.

        Raises:
            TypeError: an ``epoch`` argument (the clock moves by updates; torch deprecated ``step(epoch)``).
        """
        if epoch is not None:
            raise TypeError(f"BatchSizeScheduler.step() takes no epoch (it counts updates), but got epoch={epoch!r}; "
                            "call step() once per optimizer.step()")
        if self._initial:  # LRScheduler.__init__'s step: the values of the first update, the clock unmoved
            self._step_count, self.last_epoch = 1, 0
            self._apply()
            return
        self._warn_call_order()
        self._step_count += 1
        self._position += self.schedule.next_batch_size(self._epoch, self._position)
        self.sampler.consume()
        self._normalise_clock()
        self.last_epoch += 1
        self._apply()

    def _warn_call_order(self) -> None:
        """torch's checks (its LRScheduler.step): the first step() after optimizer.step(), no one else writing the lr."""
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):
            warnings.warn("Detected call of `lr_scheduler.step()` before `optimizer.step()`: call "
                          "optimizer.step() first, then BatchSizeScheduler.step(), once per update; otherwise the "
                          "first update's lr and batch are skipped", UserWarning, stacklevel=3)
        if self.set_lr and self._applied_lrs is not None and not getattr(self, "_warned_other_writer", False):
            now = [group["lr"] for group in self.optimizer.param_groups]
            if now != self._applied_lrs:
                self._warned_other_writer = True
                warnings.warn(
                    f"the optimizer's lr changed from {self._applied_lrs} to {now} since BatchSizeScheduler set it "
                    "(a second LR scheduler on the same optimizer?); BatchSizeScheduler overwrites it: pass "
                    "set_lr=False to let the other one drive the lr", UserWarning, stacklevel=3)

    def get_lr(self) -> list[float]:
        """The lr of each parameter group for the next update (torch's LRScheduler API)."""
        return list(self._last_lr)

    def get_last_lr(self) -> list[float]:
        """The lr of each parameter group for the next update (the optimizer's own when ``set_lr=False``)."""
        if not self.set_lr:
            return [group["lr"] for group in self.optimizer.param_groups]
        return list(self._last_lr)

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

    def state_dict_at(self, updates: int) -> dict[str, Any]:
        """The state after ``updates`` updates in all (at least ``last_epoch``), as if step() had been called up to it.

        For a framework that checkpoints between ``optimizer.step()`` and ``scheduler.step()`` (Lightning's
        ``on_train_batch_end``): the checkpoint then holds the clock of the update that comes next.
        """
        check_int("updates", updates, self.last_epoch)
        epoch, position = self._epoch, self._position
        for _ in range(updates - self.last_epoch):
            position += self.schedule.next_batch_size(epoch, position)
            if self.schedule.next_batch_size(epoch, position) == 0:
                epoch, position = epoch + 1, 0
        return {**self.state_dict(), "last_epoch": updates, "epoch": epoch, "position": position}

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
        self._step_count = max(self._step_count, 2) if last_epoch > 0 else self._step_count
        self._normalise_clock()
        self.sampler.follow(self._epoch, self._position)
        self._apply()
