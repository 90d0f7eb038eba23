"""Frozen configurations: one training run, and an experiment of several runs. The CLI builds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..schedule.schedule import Schedule

__all__ = ["OPTIMIZERS", "RunConfig"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on."""

    name: str
    schedule: Schedule
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "cnn"
    optimizer: str = "momentum"  # sgd | momentum | nesterov | adam (momentum is Adam's beta1)
    weight_decay: float = 5e-4
    seed: int = 0
    micro_batch_size: int | str = "auto"  # samples per forward pass, or "auto" (measured)
    ghost_batch_size: int | None = None  # samples per ghost batch-norm batch; None: plain BN
    device: str = "auto"
    channels_last: bool = False
    checkpoint_every: int | None = None  # updates between mid-epoch checkpoints; None: per epoch only
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer should be one of {', '.join(OPTIMIZERS)}, but got optimizer={self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay should be >= 0, but got weight_decay={self.weight_decay}")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int) or self.checkpoint_every <= 0):
            raise ValueError(f"checkpoint_every should be a positive number of updates, but got {self.checkpoint_every!r}")
        if self.optimizer == "sgd" and any(p.momentum for p in self.schedule.phases):
            raise ValueError("optimizer=sgd has no momentum, but the schedule sets momentum > 0; use momentum or nesterov")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings (the schedule as its own dict)."""
        return {
            "name": self.name, "dataset": self.dataset, "data_dir": self.data_dir, "model": self.model,
            "optimizer": self.optimizer, "schedule": self.schedule.to_dict(),
            "weight_decay": self.weight_decay, "seed": self.seed,
            "micro_batch_size": self.micro_batch_size, "ghost_batch_size": self.ghost_batch_size,
            "device": self.device, "channels_last": self.channels_last,
            "checkpoint_every": self.checkpoint_every, "eval_batch_size": self.eval_batch_size,
        }
