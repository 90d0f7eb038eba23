"""PyTorch Lightning: a callback that makes a LightningModule train on a growbatch Schedule, automatic optimisation.

The callback owns the sampler and the BatchSizeScheduler; the module hands its optimizer to
``configure_optimizers`` and its data set to ``train_dataloader`` (see docs/lightning.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader

try:
    import pytorch_lightning as pl
except ImportError as missing:  # pragma: no cover - the extra is not installed
    raise ImportError("growbatch.integrations.lightning needs pytorch-lightning: pip install 'growbatch[lightning]'") \
        from missing

from ..batching.sampler import DynamicBatchSampler, dataset_length, rank_share
from ..batching.scheduler import BatchSizeScheduler
from ..batching.structure import batch_length
from ..checks import check_int
from ..schedule.schedule import Schedule

__all__ = ["GrowBatch", "EpochLoader"]

STATE_VERSION = 1
# DataLoader arguments the sampler decides: the batch, its order and what is dropped
_OWNED = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


class EpochLoader(DataLoader):
    """A DataLoader whose ``len`` is the whole epoch in progress (NOTE [lightning clock]), resumed or not.

    Lightning counts the batches of an epoch from its restored batch index up to ``len(loader)``;
    the sampler's own ``len`` is what a pass started now yields (the rest of the epoch).
    """

    def __len__(self) -> int:
        sampler = self.batch_sampler
        return len(sampler.schedule.batch_sizes(sampler._consumed_clock()[0]))


class GrowBatch(pl.Callback):
    """Train a LightningModule on ``schedule``: batch, lr and momentum per update, resumable from any checkpoint.

    Use one instance for the sampler, the scheduler and the Trainer::

        growbatch = GrowBatch(schedule, seed=0)
        # in the LightningModule or DataModule
        def train_dataloader(self):
            return growbatch.train_dataloader(self.train_set, num_workers=2)
        def configure_optimizers(self):
            return growbatch.configure_optimizers(torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9))
        trainer = pl.Trainer(max_epochs=schedule.epochs, callbacks=[growbatch])

    NOTE [lightning clock]: the BatchSizeScheduler is stepped by Lightning after every optimizer
    step (interval "step") and drives the sampler's consumed clock, so any pass Lightning starts,
    or drops, begins where training stands. Lightning saves a checkpoint in ``on_train_batch_end``,
    before it steps the scheduler: the callback then writes the scheduler's state of the next update
    into the checkpoint. Lightning counts an epoch's batches once (``len`` of the first pass); the
    callback sets the count of each epoch, which shrinks as the batch grows.

    Not supported (refused with the fix): ``accumulate_grad_batches`` other than 1 (the schedule's
    batch is the update), ``limit_train_batches``, ``max_steps``, ``max_epochs`` other than the
    schedule's, and Lightning's sampler injection under DDP (pass ``use_distributed_sampler=False``;
    the sampler splits each global batch over ranks itself). Micro-batching a batch that passes
    memory needs manual optimisation with :class:`growbatch.MicroBatcher` (docs/lightning.md).

    Args:
        schedule: the batch size, lr and momentum per update (its momentum None keeps the optimizer's).
        seed, shuffle: of the sampler's permutations (identical on every rank).
    """

    def __init__(self, schedule: Schedule, *, seed: int = 0, shuffle: bool = True) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule should be a growbatch.Schedule, but got {type(schedule).__name__}")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle should be True or False, but got shuffle={shuffle!r}")
        self.schedule, self.seed, self.shuffle = schedule, check_int("seed", seed, 0), shuffle
        self._sampler: DynamicBatchSampler | None = None
        self._scheduler: BatchSizeScheduler | None = None
        self._warned_uneven = False

    # -- the pieces a LightningModule uses -------------------------------------------------
    @property
    def sampler(self) -> DynamicBatchSampler:
        """The batch sampler, built at first use (under DDP, after Lightning has started the process group)."""
        if self._sampler is None:
            self._sampler = DynamicBatchSampler(self.schedule.dataset_size, self.schedule, seed=self.seed,
                                                shuffle=self.shuffle)
        return self._sampler

    def train_dataloader(self, dataset: Any, **loader_kwargs: Any) -> DataLoader:
        """A DataLoader of ``dataset`` cut by the schedule; ``loader_kwargs`` are DataLoader's (num_workers, collate_fn...).

        Raises:
            TypeError: a DataLoader argument that the schedule decides (batch_size, shuffle, sampler, ...).
            ValueError: a data set whose length is not the schedule's dataset_size.
        """
        given = [name for name in _OWNED if name in loader_kwargs]
        if given:
            raise TypeError(f"train_dataloader() sets {', '.join(given)} from the schedule; drop "
                            f"{', '.join(f'{name}=' for name in given)} (the schedule cuts the batches)")
        size = dataset_length(dataset)
        if size != self.schedule.dataset_size:
            raise ValueError(f"the data set has {size} samples, but the schedule is for dataset_size="
                             f"{self.schedule.dataset_size}; build the schedule for this data set")
        return EpochLoader(dataset, batch_sampler=self.sampler, **loader_kwargs)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> BatchSizeScheduler:
        """The BatchSizeScheduler of ``optimizer`` (built once; a second optimizer is refused)."""
        if self._scheduler is not None and self._scheduler.optimizer is not optimizer:
            raise RuntimeError("GrowBatch drives one optimizer, but lr_scheduler() got a second one; "
                               "one GrowBatch per Trainer and optimizer")
        if self._scheduler is None:
            self._scheduler = BatchSizeScheduler(self.sampler, optimizer, self.schedule)
        return self._scheduler

    def configure_optimizers(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What ``LightningModule.configure_optimizers`` returns: the optimizer and its scheduler, stepped per update."""
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step", "frequency": 1,
                                 "name": "growbatch"}}

    # -- checks ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(f"GrowBatch trains one update per batch of the schedule, but got Trainer("
                             f"accumulate_grad_batches={trainer.accumulate_grad_batches}); drop it (the schedule "
                             "sets the batch) and micro-batch with MicroBatcher under manual optimisation")
        if trainer.max_epochs != self.schedule.epochs or trainer.max_steps != -1:
            raise ValueError(f"the schedule spans {self.schedule.epochs} epochs, but got Trainer(max_epochs="
                             f"{trainer.max_epochs}, max_steps={trainer.max_steps}); pass max_epochs="
                             f"{self.schedule.epochs} and no max_steps")
        if trainer.limit_train_batches not in (1.0, None):
            raise ValueError(f"GrowBatch trains every batch of the schedule, but got Trainer(limit_train_batches="
                             f"{trainer.limit_train_batches}); drop it, or build a shorter schedule")
        connector = trainer._accelerator_connector
        if trainer.world_size > 1 and connector.use_distributed_sampler:
            raise ValueError("under DDP the growbatch sampler splits every global batch over the ranks itself, but "
                             "Lightning would replace its sampler; pass Trainer(use_distributed_sampler=False)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        configs = [c for c in trainer.lr_scheduler_configs if c.scheduler is self._scheduler]
        if self._scheduler is None or not configs:
            raise RuntimeError("GrowBatch's scheduler is not among the Trainer's: return "
                               "growbatch.configure_optimizers(optimizer) from configure_optimizers()")
        if configs[0].interval != "step" or configs[0].frequency != 1:
            raise ValueError(f"the BatchSizeScheduler must step once per update, but is configured with "
                             f"interval={configs[0].interval!r}, frequency={configs[0].frequency}; use "
                             "growbatch.configure_optimizers(optimizer)")
        self._set_epoch_length(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_epoch_length(trainer)

    def _set_epoch_length(self, trainer: pl.Trainer) -> None:
        # NOTE [lightning clock]: Lightning took len() of the first pass; each epoch has its own count
        trainer.fit_loop.max_batches = len(self.schedule.batch_sizes(trainer.current_epoch))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """No batch of another size than the scheduler's: a mismatch means the loader is not this callback's."""
        scheduler = self._scheduler
        start, stop = rank_share(scheduler.get_last_batch_size(), self.sampler.rank, self.sampler.world_size)
        length = batch_length(batch)
        global_batch_size, world_size = scheduler.get_last_batch_size(), self.sampler.world_size
        if global_batch_size % world_size and not self._warned_uneven:
            self._warned_uneven = True
            warnings.warn(f"the global batch of {global_batch_size} splits unevenly over {world_size} ranks, and DDP "
                          "averages the ranks' mean losses, so its samples are weighted unequally; scale each "
                          f"rank's mean loss by len(share) * {world_size} / global batch (MicroBatcher does) or use "
                          "batch sizes divisible by the world size (and drop_last)", UserWarning, stacklevel=2)
        if length != stop - start or scheduler.epoch != trainer.current_epoch:
            raise RuntimeError(
                f"the batch has {length} samples in epoch {trainer.current_epoch}, but the schedule's update "
                f"{scheduler.last_epoch} is {stop - start} samples (this rank's share) in epoch {scheduler.epoch}; "
                "train on growbatch.train_dataloader(dataset) and step no other scheduler on the optimizer")

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # NOTE [lightning clock]: saved between optimizer.step() and scheduler.step(): hold the next update's clock
        scheduler = self._scheduler
        if scheduler is None or "lr_schedulers" not in checkpoint or scheduler.last_epoch >= trainer.global_step:
            return
        index = next(i for i, c in enumerate(trainer.lr_scheduler_configs) if c.scheduler is scheduler)
        checkpoint["lr_schedulers"][index] = scheduler.state_dict_at(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "schedule": self.schedule.to_dict(), "seed": self.seed,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another schedule or order: the resumed run would not continue the saved one."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"GrowBatch state version should be {STATE_VERSION}, but got {state.get('version')!r}")
        saved = Schedule.from_dict(state["schedule"])
        if saved != self.schedule or (state["seed"], state["shuffle"]) != (self.seed, self.shuffle):
            raise ValueError(f"the checkpoint was trained on schedule {saved.name!r} with seed={state['seed']}, "
                             f"shuffle={state['shuffle']}, but this GrowBatch has {self.schedule.name!r} with "
                             f"seed={self.seed}, shuffle={self.shuffle}; resume with the checkpoint's")
