"""What a run trains: a task builds the model and the training batches, computes one micro-batch's loss
with the metric sums to accumulate, and evaluates. The Trainer knows nothing else about the data.

To add a task, subclass :class:`Task` (see ``docs/architecture.md``); :class:`ClassificationTask`
(images, cross-entropy, argmax accuracy) is the first one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from ..batching.loader import TensorLoader
from ..batching.sampler import DynamicBatchSampler
from ..data import ImageDataset
from ..models import build_model
from ..schedule.schedule import Schedule
from .distributed import DistInfo, sum_over_ranks
from .settings import RunConfig

__all__ = ["Task", "TrainLoader", "ClassificationTask", "MetricSums", "autocast_dtype", "evaluation_autocast"]

MetricSums = dict[str, torch.Tensor]
# NOTE [precision]: --precision is a run setting, the same on every device, so a run's numbers depend on
# its settings and not on where it runs. fp32 runs no autocast at all (the float32 kernels, bit-identical
# resumes); bf16 runs the forward passes and the loss under torch.autocast (CPU or CUDA) to bfloat16, with
# weights, gradients and optimizer state in float32. A checkpoint continues only with its own precision.
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``--precision`` value: None for fp32, ``torch.bfloat16`` for bf16."""
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(_AUTOCAST_DTYPES)}")
    return _AUTOCAST_DTYPES[precision]


def evaluation_autocast(config: RunConfig, device: torch.device) -> torch.autocast:
    """The autocast context of a run's evaluation passes on ``device`` (disabled for fp32)."""
    dtype = autocast_dtype(config.settings.precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class TrainLoader(Protocol):
    """What the Trainer needs of a task's training batches: (inputs, targets) pairs cut by a DynamicBatchSampler.

    A ``TensorLoader``, or a torch ``DataLoader(dataset, batch_sampler=DynamicBatchSampler(...))``
    without workers; the sampler's ``state_dict()`` is the loader's position in a checkpoint.
    """

    batch_sampler: DynamicBatchSampler

    def __iter__(self) -> Iterator[tuple[Any, Any]]: ...

    def __len__(self) -> int: ...


class Task(ABC):
    """A training problem for the Trainer.

    ``loss`` returns the mean loss of one micro-batch and the sums of whatever the epoch's training
    metrics need (``{"correct": ...}`` for classification); the Trainer adds them up over the epoch
    and the ranks and hands the totals to ``train_metrics``. ``evaluate`` returns this rank's sums
    over its part of the test set; ``test_metrics`` turns their totals over ranks into metrics.
    """

    @property
    @abstractmethod
    def train_size(self) -> int:
        """Samples in the training split (the schedule's N)."""

    @abstractmethod
    def build_model(self, config: RunConfig) -> nn.Module:
        """The network for this data, on the CPU (the Trainer moves it)."""

    @abstractmethod
    def train_loader(self, schedule: Schedule, config: RunConfig, info: DistInfo) -> TrainLoader:
        """This rank's training batches, cut by ``schedule`` on its sample clock."""

    @abstractmethod
    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, MetricSums]:
        """The mean loss over one micro-batch and its metric sums (tensors, summed over its samples)."""

    @abstractmethod
    def train_metrics(self, loss_sum: float, sums: dict[str, float], samples: int) -> dict[str, float]:
        """An epoch's training metrics from its totals over ranks (samples may be 0)."""

    def clock_metrics(self, samples: int) -> dict[str, float]:
        """Extra clock fields of a metrics record from the samples trained so far (a language model's tokens)."""
        return {}

    @abstractmethod
    def evaluate(self, model: nn.Module, config: RunConfig, info: DistInfo) -> dict[str, float]:
        """The test metrics over the whole test split (each rank evaluates a share; the result is the total's)."""


class ClassificationTask(Task):
    """Image classification: cross-entropy, argmax accuracy, uint8 batches normalised per micro-batch."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self._loader: TensorLoader | None = None

    @property
    def train_size(self) -> int:
        return self.dataset.train_size

    def build_model(self, config: RunConfig) -> nn.Module:
        data = self.dataset
        model = build_model(config.model, in_channels=data.in_channels, num_classes=data.num_classes,
                            image_size=data.image_size, ghost_batch_size=config.ghost_batch_size)
        memory_format = torch.channels_last if config.settings.channels_last else torch.contiguous_format
        return model.to(memory_format=memory_format)

    def train_loader(self, schedule: Schedule, config: RunConfig, info: DistInfo) -> TensorLoader:
        data = self.dataset
        self._loader = TensorLoader(
            data.x_train, data.y_train, schedule, mean=data.mean, std=data.std,
            crop_padding=4 if data.augment else 0, flip=data.augment, seed=config.seed,
            rank=info.rank, world_size=info.world_size, device=info.device,
            channels_last=config.settings.channels_last,
            normalize_batches=False,  # uint8 logical batches; each micro-batch is normalised in loss()
        )
        return self._loader

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, MetricSums]:
        outputs = model(self._normalize(inputs))
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss, {"correct": (outputs.detach().argmax(1) == targets).sum()}

    def train_metrics(self, loss_sum: float, sums: dict[str, float], samples: int) -> dict[str, float]:
        return {"train_loss": loss_sum / max(samples, 1), "train_acc": sums.get("correct", 0.0) / max(samples, 1)}

    def evaluate(self, model: nn.Module, config: RunConfig, info: DistInfo) -> dict[str, float]:
        x_test, y_test = self.dataset.x_test, self.dataset.y_test
        n = len(y_test)
        start, stop = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
        loss_sum, correct = 0.0, 0
        step = config.settings.eval_batch_size
        with torch.no_grad(), evaluation_autocast(config, info.device):  # NOTE [precision]
            for i in range(start, stop, step):
                j = min(stop, i + step)
                out = model(self._normalize(x_test[i:j].to(info.device)))
                y = y_test[i:j].to(info.device)
                loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
                correct += int((out.argmax(1) == y).sum().item())
        total_loss, total_correct = sum_over_ranks([loss_sum, float(correct)], info.device)
        return {"test_loss": total_loss / n, "test_acc": total_correct / n}

    def _normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._loader is None:
            raise RuntimeError("ClassificationTask.train_loader() must be called before loss() or evaluate(): "
                               "the loader holds the data set's normalisation")
        return self._loader.normalize(inputs)
