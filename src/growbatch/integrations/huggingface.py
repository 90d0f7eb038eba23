"""Hugging Face transformers: a ``Trainer`` whose batches, lr and momentum follow a growbatch Schedule.

``ScheduleTrainer`` trains on a ``DynamicBatchSampler`` with a ``BatchSizeScheduler`` as its LR scheduler
(saved and restored with every checkpoint), counts epochs on the sample clock, and can split each
(dict) batch into micro-batches whose gradients add up to the whole batch's.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

try:
    import transformers
    from transformers import Trainer, TrainerCallback
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError("growbatch.integrations.huggingface needs transformers and accelerate: "
                      "pip install 'growbatch[huggingface]'") from err

import torch
from torch.utils.data import DataLoader

from ..batching.microbatch import micro_batch_sizes
from ..batching.sampler import DynamicBatchSampler
from ..batching.scheduler import BatchSizeScheduler
from ..batching.structure import batch_length, split_batch
from ..checks import check_positive_int
from ..schedule.schedule import Schedule

__all__ = ["ScheduleTrainer"]

# NOTE [trainer loop]: transformers' Trainer sizes every epoch by len(train_dataloader) at the start, and on
# resume skips global_step // that many epochs and global_step % that many batches: right only for a fixed
# batch. ScheduleTrainer gives it the largest epoch's number of batches as the bound of each epoch (a shorter
# one ends when the sampler does), the plan's updates as max_steps, and on resume the epoch where the restored
# BatchSizeScheduler stands with no batches to skip: the sampler itself starts where training stopped.
_NEEDS = ("set_initial_training_values", "_init_training_state")


class _SampleClockEpoch(TrainerCallback):
    """Sets ``state.epoch`` (logs, checkpoints) from the scheduler's sample clock: epoch + position / N."""

    def __init__(self, trainer: ScheduleTrainer) -> None:
        self.trainer = trainer

    def _set(self, state: Any) -> None:
        scheduler = self.trainer.lr_scheduler
        if isinstance(scheduler, BatchSizeScheduler):
            state.epoch = scheduler.epoch + scheduler.position / self.trainer.schedule.dataset_size

    def on_step_end(self, args, state, control, **kwargs):
        self._set(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._set(state)


class ScheduleTrainer(Trainer):
    """A ``transformers.Trainer`` that trains on ``schedule``: exact updates, resume from any checkpoint.

    The batch is the schedule's global batch (``per_device_train_batch_size`` is not used); its lr and
    momentum (Adam's ``betas[0]``) are set per update by a BatchSizeScheduler, which is the Trainer's
    ``lr_scheduler`` and so is saved in every checkpoint. ``micro_batch_size`` splits each batch (a dict
    of tensors, such as ``input_ids``/``attention_mask``/``labels``) into micro-batches, each loss weighted
    by its share of the batch, so the gradient is the whole batch's.

    Args:
        model, args, **kwargs: as for ``Trainer``; ``args.num_train_epochs`` must be the schedule's epochs,
            ``args.gradient_accumulation_steps`` 1 (micro-batching replaces it) and ``args.max_steps`` -1.
        schedule: the Schedule for ``train_dataset`` (``dataset_size == len(train_dataset)``).
        micro_batch_size: None trains each batch whole.

    Raises:
        ValueError: arguments that would make the Trainer count or skip batches the schedule does not cut.
    """

    def __init__(self, model: Any = None, args: Any = None, *, schedule: Schedule,
                 micro_batch_size: int | None = None, **kwargs: Any) -> None:
        missing = [name for name in _NEEDS if not hasattr(Trainer, name)]
        if missing:  # pragma: no cover - another transformers
            raise ImportError(f"ScheduleTrainer needs transformers 5 (Trainer.{missing[0]}), "
                              f"but found transformers=={transformers.__version__}")
        super().__init__(model, args, **kwargs)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule should be a growbatch Schedule, but got {type(schedule).__name__}")
        self.schedule = schedule
        self.micro_batch_size = None if micro_batch_size is None else check_positive_int(
            "micro_batch_size", micro_batch_size)
        self._check_args(self.args)
        if self.train_dataset is not None and len(self.train_dataset) != schedule.dataset_size:
            raise ValueError(f"train_dataset has {len(self.train_dataset)} samples, but the schedule is for "
                             f"dataset_size={schedule.dataset_size}")
        self._sampler: DynamicBatchSampler | None = None
        self._micro_weight: float | None = None
        self.add_callback(_SampleClockEpoch(self))

    def _check_args(self, args: Any) -> None:
        if args.gradient_accumulation_steps != 1:
            raise ValueError(f"gradient_accumulation_steps={args.gradient_accumulation_steps}: the schedule sets the "
                             "whole batch; pass micro_batch_size=... to ScheduleTrainer to fit it in memory instead")
        if args.max_steps not in (-1, self.schedule.plan().total_updates):
            raise ValueError(f"max_steps={args.max_steps}, but the schedule plans {self.schedule.plan().total_updates} "
                             "updates; leave max_steps=-1")
        if not math.isclose(args.num_train_epochs, self.schedule.epochs):
            raise ValueError(f"num_train_epochs={args.num_train_epochs:g}, but the schedule spans "
                             f"{self.schedule.epochs} epochs; pass num_train_epochs={self.schedule.epochs}")

    # -- data and scheduler ----------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        """The training set cut by a DynamicBatchSampler (this process's share of every global batch)."""
        if self.train_dataset is None:
            raise ValueError("ScheduleTrainer needs a train_dataset")
        dataset, collator = self.train_dataset, self.data_collator
        if _is_hf_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._sampler = DynamicBatchSampler(dataset, self.schedule, seed=seed)
        loader = DataLoader(dataset, batch_sampler=self._sampler, collate_fn=collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
                            persistent_workers=self.args.dataloader_persistent_workers and
                            self.args.dataloader_num_workers > 0)
        prepared = self.accelerator.prepare(loader)
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not self._sampler and getattr(shard, "batch_sampler", None) is self._sampler:
            shard.num_processes, shard.process_index = 1, 0  # the sampler already takes this rank's share
        return prepared

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The BatchSizeScheduler on the training sampler (``lr_scheduler_type`` is not used)."""
        if self.lr_scheduler is None:
            if self._sampler is None:
                raise RuntimeError("create_scheduler() needs the training sampler: call get_train_dataloader() first")
            self.lr_scheduler = BatchSizeScheduler(self._sampler, optimizer or self.optimizer, self.schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- the Trainer's counting (NOTE [trainer loop]) --------------------------------------
    def set_initial_training_values(self, args: Any, dataloader: DataLoader) -> tuple:
        values = super().set_initial_training_values(args, dataloader)
        plan = self.schedule.plan()
        most = max(len(self.schedule.batch_sizes(e)) for e in range(self.schedule.epochs))
        total_train_batch_size = values[4]
        return (self.schedule.epochs, most, self.schedule.dataset_size, plan.total_samples,
                total_train_batch_size, most, plan.total_updates)

    def _init_training_state(self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int,
                             resume_from_checkpoint: str | None, trial: Any) -> tuple[int, int]:
        super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                     resume_from_checkpoint, trial)
        if resume_from_checkpoint is None:
            return 0, 0
        return self._epoch_after(self.state.global_step), 0

    def _epoch_after(self, updates: int) -> int:
        """The epoch in which update ``updates`` + 1 is cut (the schedule cuts the same batches every run)."""
        done = 0
        for epoch in range(self.schedule.epochs):
            done += len(self.schedule.batch_sizes(epoch))
            if updates < done:
                return epoch
        return self.schedule.epochs

    # -- micro-batches ---------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        world_size = self.accelerator.num_processes
        if self.micro_batch_size is None and world_size == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        length = batch_length(inputs, "inputs")
        parts = split_batch(inputs, micro_batch_sizes(length, self.micro_batch_size or length))
        items = [_items(p) for p in parts]
        # NOTE [micro weights]: each micro-batch's mean loss (num_items_in_batch=None, so no model divides by the
        # whole batch's items) weighted by its share of the global batch's labelled items, times the world size
        # (DDP averages the ranks' gradients): exact when the ranks' shares differ in size, too
        per_rank = sum(items)
        if world_size > 1:
            per_rank = float(self.accelerator.reduce(torch.tensor(float(per_rank), device=self.args.device),
                                                     reduction="sum")) / world_size
        losses = []
        try:
            for i, part in enumerate(parts):
                self._micro_weight = items[i] / per_rank
                last = i == len(parts) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    losses.append(super().training_step(model, part, None))
        finally:
            self._micro_weight = None
        return torch.stack(losses).sum()

    def compute_loss(self, model: torch.nn.Module, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self._micro_weight is None:
            return result
        if return_outputs:
            return result[0] * self._micro_weight, result[1]
        return result * self._micro_weight


def _items(batch: Any) -> int:
    """What a mean loss averages over: the labels other than -100 (ignored by cross-entropy), else the rows."""
    if isinstance(batch, dict) and isinstance(batch.get("labels"), torch.Tensor):
        return int(batch["labels"].ne(-100).sum())
    return batch_length(batch)


def _is_hf_dataset(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(dataset, datasets.Dataset)
