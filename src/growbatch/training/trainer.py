"""The Trainer: one run of a RunConfig on a Task, one update per logical batch, a metrics record per epoch.

Its parts are attributes and its counters one dataclass, so :meth:`Trainer.state_dict` holds everything
a resume needs. Checkpoint files, progress and signals are composed around it (``train_run``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..batching.microbatch import MicroBatcher
from ..batching.noise_scale import GradientNoiseScale
from ..batching.scheduler import BatchSizeScheduler
from ..schedule.schedule import Schedule
from .checkpoint import capture_rng, restore_rng
from .distributed import (
    AllReduceStats,
    DistInfo,
    average_buffers,
    sum_over_ranks,
    warn_if_ghosts_split,
    wrap_ddp,
)
from .settings import RunConfig
from .task import Task, autocast_dtype
from .threads import follows_checkpoint, more_threads_if_idle, rechoose_threads

__all__ = ["Trainer", "TrainerState", "EpochTally", "Observer", "StopFlag", "DivergenceError", "Interrupted",
           "build_optimizer"]


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGINT/SIGTERM); a checkpoint was written to resume from."""


@dataclass
class StopFlag:
    """Set by a signal handler; the Trainer checks it after every update."""

    requested: bool = False
    signal_name: str = ""


class Observer(Protocol):
    """Progress for a person: told when an epoch starts, after each update and when an epoch's record is written."""

    def epoch_started(self, run: RunConfig, epoch: int, updates_in_epoch: int) -> None: ...

    def update_done(self, trainer: Trainer) -> None: ...

    def epoch_ended(self, run: RunConfig, record: dict) -> None: ...


@dataclass
class EpochTally:
    """The training loss and metric sums of the current epoch, on this rank."""

    loss_sum: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    micro_batch_size: int = 0  # the largest micro-batch of the epoch (this rank)


@dataclass
class TrainerState:
    """The counters of a run: where it is on the sample clock, the epoch's tally and the records so far."""

    epoch: int = 0
    updates: int = 0
    samples: int = 0
    wall_s: float = 0.0  # training and evaluation, without size_search_s
    size_search_s: float = 0.0  # "auto"'s memory estimates, passes that train nothing (NOTE [honest wall time])
    tally: EpochTally = field(default_factory=EpochTally)
    records: list[dict] = field(default_factory=list)
    last_epoch: int = 0  # of the latest update, for messages
    last_lr: float = 0.0
    last_batch_size: int = 0


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (plain, momentum, Nesterov), Adam or AdamW, at the schedule's first lr and momentum."""
    first, weight_decay = config.schedule.phases[0], config.settings.weight_decay
    if config.optimizer == "adamw":  # decoupled weight decay, beta2 = 0.95 as LLM trainers set it (GPT-3, nanoGPT)
        # fused: one kernel for all parameters, 25x faster than the per-tensor loop for gpt-tiny on a CPU
        return torch.optim.AdamW(model.parameters(), lr=first.lr, betas=(first.momentum, 0.95),
                                 weight_decay=weight_decay, fused=True)
    if config.optimizer == "adam":
        # NOTE [adam-momentum]: the schedule's momentum is Adam's beta1, as in the paper's §5.1 Adam runs;
        # a schedule without momentum (None) keeps torch's default beta1
        beta1 = 0.9 if first.momentum is None else first.momentum
        return torch.optim.Adam(model.parameters(), lr=first.lr, betas=(beta1, 0.999), weight_decay=weight_decay)
    momentum = first.momentum or 0.0  # None: torch's default, no momentum
    return torch.optim.SGD(model.parameters(), lr=first.lr, momentum=momentum,
                           nesterov=config.optimizer == "nesterov" and momentum > 0, weight_decay=weight_decay)


class Trainer:
    """Train ``task`` on ``config``'s schedule: model, optimizer, loader, schedulers and micro-batcher as attributes.

    Args:
        config: the run's settings and schedule.
        task: what is trained (model, loss and metric sums, evaluation).
        info: rank, world size and device; under DDP the model is wrapped and gradients all-reduced once per update.
        stop: checked after every update; when set, :meth:`epochs` checkpoints and raises :class:`Interrupted`.
        observer: told of epochs and updates (progress bars, per-epoch lines).
    """

    def __init__(self, config: RunConfig, task: Task, info: DistInfo, *, stop: StopFlag | None = None,
                 observer: Observer | None = None) -> None:
        if config.schedule.dataset_size != task.train_size:
            raise ValueError(f"the schedule is for {config.schedule.dataset_size} samples, but the task has "
                             f"{task.train_size} training samples")
        self.config, self.task, self.info = config, task, info
        self.stop, self.observer = stop or StopFlag(), observer
        torch.manual_seed(config.seed)
        self.model = task.build_model(config).to(info.device)
        self.optimizer = build_optimizer(config, self.model)
        self.loader = task.train_loader(config.schedule, config, info)
        workers = getattr(self.loader, "num_workers", 0)
        if workers:  # the sampler's position would run ahead of the updates, and a checkpoint would skip batches
            raise ValueError(f"the task's DataLoader has num_workers={workers}: its workers prefetch batches, so a "
                             "checkpoint would record a sampler position ahead of the updates; use num_workers=0 "
                             "or a TensorLoader")
        self.scheduler = BatchSizeScheduler(self.loader, self.optimizer, config.schedule)
        if info.is_main:
            warn_if_ghosts_split(config.schedule, config.ghost_batch_size, info.world_size)
        # measured from the micro-batches' gradients (NOTE [noise-scale source] in batching/noise_scale.py)
        mode = config.settings.noise_scale
        self.noise_scale = GradientNoiseScale(self.model) if mode != "off" else None
        self.allreduce = AllReduceStats()
        self.ddp_model = wrap_ddp(self.model, info, self.allreduce)
        self.micro = MicroBatcher(self.ddp_model, loss=task.loss, micro_batch_size=config.settings.micro_batch_size,
                                  device=info.device,
                                  autocast_dtype=autocast_dtype(config.settings.precision),  # NOTE [precision]
                                  noise_scale=self.noise_scale, split_for_noise_scale=mode == "split",
                                  on_speed_change=self._speed_changed)
        self.state = TrainerState(last_lr=self.scheduler.get_last_lr()[0])
        more_threads_if_idle()  # the first reading of /proc/stat (NOTE [threads under load] in threads.py)
        self._search_seen = 0.0  # of micro.search_s, already moved into state.size_search_s
        self.schedule = config.schedule  # as realised so far: an adaptive run extends it after every epoch

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; the epoch's tally summed over ranks, so it resumes on any number of them."""
        tally = self.state.tally
        keys = sorted(tally.sums)
        totals = sum_over_ranks([tally.loss_sum, float(tally.samples), *(tally.sums[k] for k in keys)], self.info.device)
        state = self.state
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loader": self.loader.batch_sampler.state_dict(),
            "micro": self.micro.state_dict(), "allreduce": self.allreduce.state_dict(),
            "noise_scale": self.noise_scale and self.noise_scale.state_dict(), "rng": capture_rng(),
            "counters": {"epoch": state.epoch, "updates": state.updates, "samples": state.samples,
                         "wall_s": state.wall_s, "size_search_s": state.size_search_s,
                         "last_epoch": state.last_epoch, "last_lr": state.last_lr,
                         "last_batch_size": state.last_batch_size},
            "tally": {"loss_sum": totals[0], "samples": int(totals[1]), "sums": dict(zip(keys, totals[2:])),
                      "micro_batch_size": tally.micro_batch_size},
            "records": list(state.records), "schedule": self.schedule.to_dict(),
            "threads": torch.get_num_threads(),  # NOTE [threads]
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; rank 0 takes the saved tally (the sum over ranks), the others start at 0."""
        self.set_schedule(Schedule.from_dict(saved["schedule"]))  # first: the clocks below are on it
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.loader.batch_sampler.load_state_dict(saved["loader"])
        self.micro.load_state_dict(saved["micro"])
        self.allreduce.load_state_dict(saved["allreduce"])
        if self.noise_scale is not None:
            self.noise_scale.load_state_dict(saved["noise_scale"])
        self._match_threads(saved.get("threads"))
        tally = EpochTally(**saved["tally"]) if self.info.is_main else EpochTally()
        self.state = TrainerState(**saved["counters"], tally=tally, records=list(saved["records"]))
        restore_rng(saved["rng"])

    def _match_threads(self, saved: int | None) -> None:
        """NOTE [threads]: on the CPU, torch splits float reductions over its threads, so another thread count
        rounds sums differently: the resumed run is then close to, not bit-identical with, an uninterrupted one.
        Where the count was growbatch's own choice (training/threads.py), the resume takes the checkpoint's."""
        now = torch.get_num_threads()
        if saved is None or saved == now or self.info.device.type != "cpu":
            return
        if follows_checkpoint():
            torch.set_num_threads(saved)
        elif self.info.is_main:
            warnings.warn(f"run {self.config.name}: the checkpoint was written with {saved} CPU threads, but this "
                          f"resume uses {now}; float sums round differently, so the result is no longer bit-identical "
                          f"to an uninterrupted run (resume with --workers {saved} to keep it)", stacklevel=2)

    # -- training -------------------------------------------------------------------------
    def train_update(self, inputs: Any, targets: Any) -> None:
        """One update on this rank's share of a logical batch: micro-batched gradients, checked, applied."""
        global_batch = self.loader.batch_sampler.last_global_batch_size
        self.optimizer.zero_grad(set_to_none=True)
        result = self.micro.backward(inputs, targets, global_batch_size=global_batch, world_size=self.info.world_size)
        loss_sum, bad = sum_over_ranks([result.loss_sum, float(not math.isfinite(result.loss_sum))], self.info.device)
        lr = self.scheduler.get_last_lr()[0]
        if bad or not math.isfinite(loss_sum):  # before optimizer.step: the weights stay as checkpointed
            raise DivergenceError(
                f"run {self.config.name}: the training loss became {loss_sum} at update {self.state.updates + 1} in "
                f"epoch {self._epoch_text(self.state.epoch)} (lr={lr:g}, batch_size={global_batch})")
        self.optimizer.step()
        self.scheduler.step()
        state, tally = self.state, self.state.tally
        state.last_epoch, state.last_lr, state.last_batch_size = state.epoch, lr, global_batch
        state.updates += 1
        state.samples += global_batch
        tally.loss_sum += result.loss_sum
        for key, value in result.sums.items():
            tally.sums[key] = tally.sums.get(key, 0.0) + value
        tally.samples += result.samples
        tally.micro_batch_size = max(tally.micro_batch_size, result.micro_batch_size)

    def epochs(self, checkpoint: Callable[[], None], write: Callable[[dict], None] | None = None) -> Iterator[dict]:
        """Train the remaining epochs, yielding each epoch's record once ``checkpoint()`` has saved the run and
        ``write(record)`` has stored the record (in this order: metrics never run ahead of the checkpoint).

        ``checkpoint`` is also called every ``checkpoint_every`` updates and when a stop is requested.

        Raises:
            DivergenceError: the loss, the weights or the optimizer state became inf or NaN.
            Interrupted: ``stop`` was set; ``checkpoint()`` ran first.
        """
        self.model.train()
        while self.state.epoch < self.config.schedule.epochs:
            since = self.train_epoch(checkpoint)
            record = self.end_epoch(since)
            if self.config.adaptive is not None:  # before the checkpoint, which records the realised schedule
                self.set_schedule(self.config.adaptive.extend(self.schedule, record["epoch"],
                                                              record["gradient_noise_scale"]))
            checkpoint()
            if write is not None:
                write(record)
            if self.observer is not None:
                self.observer.epoch_ended(self.config, record)
            yield record

    def train_epoch(self, checkpoint: Callable[[], None]) -> float:
        """The updates of the current epoch, from wherever its sample clock stands.

        Returns the ``time.perf_counter()`` since which training time is not yet counted in ``wall_s``.
        """
        sampler = self.loader.batch_sampler
        if sampler.epoch != self.state.epoch:
            sampler.set_epoch(self.state.epoch)
        # NOTE [epoch-end checkpoint]: a checkpoint after an epoch's last update holds the sampler at the
        # end of that epoch; a new pass would start the next epoch, so nothing is left to train here
        done = self.schedule.next_batch_size(sampler.epoch, sampler.position) == 0
        if self.observer is not None:
            self.observer.epoch_started(self.config, self.state.epoch, 0 if done else len(self.loader))
        started = time.perf_counter()
        every = self.config.settings.checkpoint_every
        for inputs, targets in () if done else self.loader:
            self.train_update(inputs, targets)
            if self.observer is not None:
                self.observer.update_done(self)
            requested = bool(sum_over_ranks([float(self.stop.requested)], self.info.device)[0])
            if requested or (every and self.state.updates % every == 0):
                self._count_time(started)
                started = time.perf_counter()
                checkpoint()
                if requested:
                    raise Interrupted(f"run {self.config.name} stopped by {self.stop.signal_name or 'request'} after "
                                      f"update {self.state.updates} in epoch {self._epoch_text(self.state.epoch)}")
        return started

    def _speed_changed(self) -> None:
        """NOTE [watch]: training at the chosen micro-batch size changed speed 1.5x, so other work on the machine
        started or ended: a thread count growbatch chose is chosen again (NOTE [threads under load])."""
        line = rechoose_threads()
        if line is not None:
            warnings.warn(f"run {self.config.name}: {line}")

    def _take_idle_cores(self) -> None:
        """At an epoch's end: a thread count growbatch lowered rises again where cores sat idle over the epoch;
        the micro-batch sizes, timed with the old count, are timed again."""
        line = more_threads_if_idle()
        if line is not None:
            warnings.warn(f"run {self.config.name}: {line}")
            self.micro.retime()

    def _count_time(self, since: float) -> None:
        """Add the time since ``since`` to the counters. NOTE [honest wall time]: what "auto" spends on passes that
        train nothing (its memory estimate, a forward pass per input shape) goes to ``size_search_s``, not
        ``wall_s``. Its timing of sizes is training and stays in ``wall_s`` (NOTE [online timing] in
        batching/microbatch_size.py); it used to be separate passes, charged to whichever run searched first."""
        searched, self._search_seen = self.micro.search_s - self._search_seen, self.micro.search_s
        self.state.wall_s += time.perf_counter() - since - searched
        self.state.size_search_s += searched

    def end_epoch(self, since: float) -> dict:
        """Evaluate, close the epoch's record (wall time counted from ``since``) and move to the next epoch."""
        average_buffers(self.model)
        self.ddp_model.eval()
        test = self.task.evaluate(self.ddp_model, self.config, self.info)
        self.ddp_model.train()
        state, tally = self.state, self.state.tally
        self._count_time(since)  # training and evaluation of this epoch
        keys = sorted(tally.sums)
        loss_total, count, *sums = sum_over_ranks(
            [tally.loss_sum, float(tally.samples), *(tally.sums[k] for k in keys)], self.info.device)
        phase = self.schedule.phase_at(state.epoch)
        record = {
            "epoch": state.epoch, "updates": state.updates, "samples": state.samples, "wall_s": round(state.wall_s, 4),
            **self.task.clock_metrics(state.samples),
            "lr": phase.lr, "batch_size": phase.batch_size, "momentum": phase.momentum,
            **self.task.train_metrics(loss_total, dict(zip(keys, sums)), int(count)), **test,
            "allreduces": self.allreduce.count, "allreduce_s": round(self.allreduce.seconds, 6),
            "micro_batch_size": tally.micro_batch_size, "gradient_noise_scale": self.noise_scale and self.noise_scale.value,
            "size_search_s": round(state.size_search_s, 4),
        }
        state.records.append(record)
        state.epoch += 1
        state.tally = EpochTally()
        self._take_idle_cores()  # before the epoch's checkpoint, which records the thread count (NOTE [threads])
        return record

    def set_schedule(self, schedule: Schedule) -> None:
        """Train the coming updates by ``schedule`` (the sampler's batches, the scheduler's lr and momentum)."""
        self.loader.batch_sampler.set_schedule(schedule)
        self.scheduler.set_schedule(schedule)
        self.schedule = schedule

    def check_finite(self) -> None:
        """Raise DivergenceError if a weight, buffer or optimizer state holds inf or NaN (checked before a checkpoint)."""
        bad = _non_finite_state(self.model, self.optimizer)
        if bad is not None:
            raise DivergenceError(
                f"run {self.config.name}: {bad} became inf or NaN by update {self.state.updates} in epoch "
                f"{self._epoch_text(self.state.last_epoch)} (lr={self.state.last_lr:g}, "
                f"batch_size={self.state.last_batch_size})")

    def _epoch_text(self, epoch: int) -> str:
        """A 0-based epoch as users read it in the progress lines: ``1/30`` for epoch 0."""
        return f"{epoch + 1}/{self.config.schedule.epochs}"


def _non_finite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first parameter, buffer or optimizer state (momentum, Adam moments) holding inf or NaN, or None."""
    def finite(tensor: object) -> bool:
        return not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()) or bool(tensor.isfinite().all())

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not finite(tensor):
            return f"the weights ({name})"
    for values in optimizer.state.values():
        for key, tensor in values.items():
            if not finite(tensor):
                return f"the optimizer state ({key})"
    return None

