"""The adaptive schedule: after each epoch, the batch grows to track k times the measured noise scale.

A pure rule on values: given the schedule realised so far and the noise scale B_simple measured in the
epoch just finished, :meth:`AdaptiveBatch.extend` returns the schedule for the rest of training. The
batch never shrinks, is rounded to a multiple (whole micro-batches and ghost batches) and stops at the
cap; past the cap the lr falls instead, as in the hybrid fallback (lr0 · cap / target, never rising).
Changes land at epoch ends, where a checkpoint records the realised schedule, so a resume replays it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..checks import check_count, check_number
from .schedule import Phase, Schedule

__all__ = ["AdaptiveBatch"]


@dataclass(frozen=True)
class AdaptiveBatch:
    """How an adaptive run grows its batch.

    Args:
        noise_multiple: k; the batch tracks k · B_simple.
        max_batch_size: the cap (past it the lr falls).
        multiple: every batch is a multiple of it (the ghost batch, or lcm of ghost and micro-batch).

    Example (a schedule at batch 8, lr 0.1; the epoch measured B_simple = 50):
        >>> s = Schedule((Phase(0, 4, 0.1, 8, 0.9),), dataset_size=1000)
        >>> rule = AdaptiveBatch(noise_multiple=1.0, max_batch_size=100, multiple=8)
        >>> [(p.start_epoch, p.end_epoch, p.batch_size) for p in rule.extend(s, 0, 50.0).phases]
        [(0, 1, 8), (1, 4, 48)]
    """

    noise_multiple: float = 1.0
    max_batch_size: int = 1
    multiple: int = 1

    def __post_init__(self) -> None:
        k = check_number("noise_multiple", self.noise_multiple)
        if k <= 0:
            raise ValueError(f"noise_multiple should be a positive number, but got noise_multiple={k}")
        check_count("max_batch_size", self.max_batch_size)
        check_count("multiple", self.multiple)

    def extend(self, schedule: Schedule, epoch: int, noise_scale: float | None) -> Schedule:
        """The schedule after epoch ``epoch`` (0-based, just finished): unchanged up to its end, then one phase
        at the batch (and lr) the measured ``noise_scale`` asks for. None (not measured) keeps the schedule."""
        end = epoch + 1
        if end >= schedule.epochs or noise_scale is None or not math.isfinite(noise_scale) or noise_scale <= 0:
            return schedule
        current, first = schedule.phase_at(epoch), schedule.phases[0]
        target = self.noise_multiple * noise_scale
        cap = max(self.multiple, self.max_batch_size - self.max_batch_size % self.multiple)
        cap = min(cap, schedule.dataset_size)
        batch = min(cap, max(current.batch_size, self.multiple * round(target / self.multiple)))
        lr = current.lr if target <= cap else min(current.lr, first.lr * cap / target)
        if (batch, lr) == (current.batch_size, current.lr):
            return schedule
        kept = [Phase(p.start_epoch, min(p.end_epoch, end), p.lr, p.batch_size, p.momentum)
                for p in schedule.phases if p.start_epoch < end]
        later = Phase(end, schedule.epochs, lr, batch, current.momentum)
        return Schedule((*kept, later), schedule.dataset_size, schedule.drop_last, schedule.name)
