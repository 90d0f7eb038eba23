"""Schedules as values: phases of (learning rate, batch size, momentum) over epochs.

A schedule answers the three hyperparameters at any (fractional) epoch, cuts
batches on the *sample clock*, and counts updates and samples exactly.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field

from ..checks import check_batch_size, check_dataset_size, check_momentum

__all__ = ["Phase", "Schedule", "PhasePlan", "Plan", "SCHEDULE_VERSION"]

SCHEDULE_VERSION = 1

# NOTE [sample clock]: training position is measured as (epoch, position), with
# position the number of samples of that epoch already cut into batches. A
# phase starting at fractional epoch s begins at the first position p of epoch
# floor(s) with p/N >= s - floor(s). Flattened, the clock is epoch*N + position,
# so the sampler, the scheduler and the update counter agree on every cut.
_EPS = 1e-9


@dataclass(frozen=True)
class Phase:
    """Constant hyperparameters over [start_epoch, end_epoch) (epochs may be fractional)."""

    start_epoch: float
    end_epoch: float
    lr: float  # learning rate, per update (the optimizer's lr)
    batch_size: int  # global logical batch
    # SGD momentum, or Adam's beta1; None leaves the optimizer's own (NOTE [optimizer values])
    momentum: float | None = None

    def __post_init__(self) -> None:
        for name in ("start_epoch", "end_epoch", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"Phase.{name} should be a finite number, but got {name}={value!r}")
        if self.start_epoch < 0 or self.end_epoch <= self.start_epoch:
            raise ValueError(
                "Phase needs 0 <= start_epoch < end_epoch, but got "
                f"start_epoch={self.start_epoch}, end_epoch={self.end_epoch}"
            )
        if self.lr < 0:
            raise ValueError(f"Phase.lr should be non-negative, but got lr={self.lr:g}")
        check_batch_size(self.batch_size)
        if self.momentum is not None:
            check_momentum(self.momentum)

    def noise_scale(self, dataset_size: int) -> float:
        """Exact noise scale g = lr/(1-m) * (N/B - 1) of this phase (momentum None counts as m = 0)."""
        return self.lr / (1.0 - (self.momentum or 0.0)) * (dataset_size / self.batch_size - 1.0)

    def noise_scale_approx(self, dataset_size: int) -> float:
        """Approximate noise scale lr*N / (B*(1-m)), exact only for B << N (momentum None counts as m = 0)."""
        return self.lr / (1.0 - (self.momentum or 0.0)) * dataset_size / self.batch_size


# NOTE [optimizer values]: a schedule sets what it states. The lr is always stated (it is half of the
# noise scale); the momentum may be None in every phase, and then BatchSizeScheduler leaves the
# optimizer's momentum or Adam's beta1 as the optimizer was built. A stated value that differs from
# the optimizer's own at construction is applied with a warning, never in silence.


@dataclass(frozen=True)
class PhasePlan:
    """One phase with its exact counts of parameter updates and samples."""

    start_epoch: float
    end_epoch: float
    lr: float
    momentum: float | None  # None: the optimizer's own
    batch_size: int
    noise_scale: float
    updates: int
    samples: int


@dataclass(frozen=True)
class Plan:
    """What a schedule adds up to: per-phase and total updates and samples."""

    name: str
    dataset_size: int
    epochs: int
    drop_last: bool
    phases: tuple[PhasePlan, ...]

    @property
    def total_updates(self) -> int:
        return sum(p.updates for p in self.phases)

    @property
    def total_samples(self) -> int:
        return sum(p.samples for p in self.phases)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dataset_size": self.dataset_size,
            "epochs": self.epochs,
            "drop_last": self.drop_last,
            "phases": [asdict(p) for p in self.phases],
            "total_updates": self.total_updates,
            "total_samples": self.total_samples,
        }


@dataclass(frozen=True)
class Schedule:
    """Piecewise-constant (lr, batch size, momentum) over ``epochs`` epochs of ``dataset_size`` samples.

    Phases must be contiguous, start at epoch 0 and end on a whole epoch.

    Example:
        >>> s = Schedule((Phase(0, 2, 0.1, 128, 0.9), Phase(2, 3, 0.1, 640, 0.9)), dataset_size=1000)
        >>> [s.batch_size_at(e) for e in (0, 1.5, 2, 2.99)]
        [128, 128, 640, 640]
        >>> s.plan().total_updates  # 2*ceil(1000/128) + ceil(1000/640)
        18
    """

    phases: tuple[Phase, ...]
    dataset_size: int
    drop_last: bool = False
    name: str = "custom"
    _start_clocks: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _start_epochs: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_dataset_size(self.dataset_size)
        if not isinstance(self.phases, tuple):
            object.__setattr__(self, "phases", tuple(self.phases))
        if not self.phases:
            raise ValueError("a Schedule needs at least one Phase, but got phases=()")
        if not all(isinstance(p, Phase) for p in self.phases):
            raise TypeError("Schedule.phases should hold Phase values")
        if self.phases[0].start_epoch != 0:
            raise ValueError(f"the first phase should start at epoch 0, but starts at {self.phases[0].start_epoch}")
        for a, b in zip(self.phases, self.phases[1:]):
            if not math.isclose(a.end_epoch, b.start_epoch, abs_tol=_EPS):
                raise ValueError(
                    f"phases should be contiguous, but one ends at epoch {a.end_epoch} "
                    f"and the next starts at {b.start_epoch}"
                )
        end = self.phases[-1].end_epoch
        if abs(end - round(end)) > _EPS:
            raise ValueError(f"a schedule should end on a whole epoch, but ends at epoch {end}")
        for p in self.phases:
            check_batch_size(p.batch_size, self.dataset_size)
        stated = {p.momentum is None for p in self.phases}
        if len(stated) > 1:
            raise ValueError("momentum should be given in every phase or in none (None: the optimizer's own), "
                             f"but got momenta {[p.momentum for p in self.phases]}")
        object.__setattr__(self, "_start_clocks", tuple(self._clock_of(p.start_epoch) for p in self.phases))
        object.__setattr__(self, "_start_epochs", tuple(p.start_epoch for p in self.phases))

    def prefix(self, epoch: int) -> tuple[Phase, ...]:
        """The phases before whole epoch ``epoch``, the last one cut there (what a run has trained by then)."""
        return tuple(Phase(p.start_epoch, min(p.end_epoch, epoch), p.lr, p.batch_size, p.momentum)
                     for p in self.phases if p.start_epoch < epoch)

    def check_continues(self, other: Schedule, epoch: int) -> None:
        """Raise ValueError unless ``other`` trains the same data and the same phases before epoch ``epoch``."""
        same_data = (other.dataset_size, other.drop_last) == (self.dataset_size, self.drop_last)
        if not same_data or other.prefix(epoch) != self.prefix(epoch):
            raise ValueError(f"the new schedule should keep the data set, drop_last and every phase before epoch "
                             f"{epoch} (already trained), but {other.name!r} differs from {self.name!r} there")

    # -- the clock -----------------------------------------------------------------
    @property
    def epochs(self) -> int:
        """Number of whole epochs the schedule spans."""
        return int(round(self.phases[-1].end_epoch))

    def _clock_of(self, epoch: float) -> int:
        """Flattened sample clock (epoch*N + position) at which a fractional epoch begins."""
        whole = math.floor(epoch + _EPS)
        position = math.ceil((epoch - whole) * self.dataset_size - _EPS * self.dataset_size)
        return whole * self.dataset_size + max(0, position)

    def phase_index_at(self, epoch: float, position: int | None = None) -> int:
        """Index of the phase in force at ``epoch`` (fractional), or at (whole epoch, position).

        A fractional epoch is a point in time: the phase with start_epoch <= epoch < end_epoch.
        (whole epoch, position) is a point on the sample clock: the phase that cuts a batch there.
        """
        if position is None:
            # NOTE: not through the sample clock, whose rounding up to a whole sample would give
            # the next phase for an epoch just before its start (1.4999 with N = 1000)
            return max(0, bisect.bisect_right(self._start_epochs, epoch + _EPS) - 1)
        clock = int(epoch) * self.dataset_size + position
        return max(0, bisect.bisect_right(self._start_clocks, clock) - 1)

    def phase_at(self, epoch: float, position: int | None = None) -> Phase:
        """The phase in force at ``epoch``; past the end, the last phase."""
        return self.phases[self.phase_index_at(epoch, position)]

    def lr_at(self, epoch: float, position: int | None = None) -> float:
        return self.phase_at(epoch, position).lr

    def batch_size_at(self, epoch: float, position: int | None = None) -> int:
        return self.phase_at(epoch, position).batch_size

    def momentum_at(self, epoch: float, position: int | None = None) -> float:
        return self.phase_at(epoch, position).momentum

    def noise_scale_at(self, epoch: float, position: int | None = None) -> float:
        return self.phase_at(epoch, position).noise_scale(self.dataset_size)

    def next_batch_size(self, epoch: int, position: int) -> int:
        """Size of the global batch cut at ``position`` of ``epoch``; 0 when the epoch is over.

        The batch follows the phase in force where it is cut; the last one of an
        epoch is short (or, with ``drop_last``, not cut at all).
        """
        remaining = self.dataset_size - position
        if remaining <= 0:
            return 0
        size = self.batch_size_at(epoch, position)
        if size > remaining:
            return 0 if self.drop_last else remaining
        return size

    def batch_sizes(self, epoch: int, position: int = 0) -> list[int]:
        """Every global batch size of ``epoch`` from ``position`` on, in order."""
        sizes = []
        while (size := self.next_batch_size(epoch, position)) > 0:
            sizes.append(size)
            position += size
        return sizes

    # -- counting ------------------------------------------------------------------
    def plan(self) -> Plan:
        """Exact updates and samples per phase, in closed form: O(phases), whatever the number of epochs.

        NOTE [closed-form plan]: an epoch that lies wholly inside one phase cuts the same batches as every
        other such epoch of that phase, so it is counted once and multiplied; only the (at most one per
        phase) epochs that a phase boundary cuts are counted on their own.
        """
        n = self.dataset_size
        updates = [0] * len(self.phases)
        samples = [0] * len(self.phases)
        end_clocks = self._start_clocks[1:] + (self.epochs * n,)
        for epoch, times in self._epoch_groups():
            self._count_epoch(epoch, end_clocks, updates, samples, times)
        rows = tuple(
            PhasePlan(
                p.start_epoch, p.end_epoch, p.lr, p.momentum, p.batch_size,
                p.noise_scale(n), updates[i], samples[i],
            )
            for i, p in enumerate(self.phases)
        )
        return Plan(self.name, n, self.epochs, self.drop_last, rows)

    def smallest_batch_size(self) -> int:
        """The smallest global batch cut in any epoch, each epoch's last (partial) batch included."""
        return min(min(self.batch_sizes(epoch)) for epoch, _ in self._epoch_groups())

    def _epoch_groups(self) -> list[tuple[int, int]]:
        """(epoch, how many epochs cut the same batches as it): each epoch a phase boundary cuts, alone, and
        the first whole epoch of each phase for all of that phase's whole epochs (NOTE [closed-form plan])."""
        n = self.dataset_size
        end_clocks = self._start_clocks[1:] + (self.epochs * n,)
        groups = [(epoch, 1) for epoch in sorted({clock // n for clock in self._start_clocks if clock % n})]
        for start, end in zip(self._start_clocks, end_clocks):
            first, stop = -(-start // n), end // n  # the whole epochs of this phase: [first, stop)
            if stop > first:
                groups.append((first, stop - first))
        return groups

    def _count_epoch(self, epoch: int, end_clocks: tuple[int, ...], updates: list[int], samples: list[int],
                     times: int) -> None:
        """Add ``times`` x the updates and samples that ``epoch`` cuts in each phase, by arithmetic per phase."""
        n, position = self.dataset_size, 0
        for i, phase in enumerate(self.phases):
            seg_end = min(end_clocks[i] - epoch * n, n)
            if seg_end <= position or self._start_clocks[i] >= (epoch + 1) * n:
                continue
            size = phase.batch_size
            # batches cut while position < seg_end, but only full ones fit before n
            k = min(-(-(seg_end - position) // size), (n - position) // size)
            updates[i] += k * times
            samples[i] += k * size * times
            position += k * size
            if position < seg_end:  # fewer than `size` samples left in the epoch
                if not self.drop_last:
                    updates[i] += times
                    samples[i] += (n - position) * times
                position = n
            if position >= n:
                break

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": SCHEDULE_VERSION,
            "name": self.name,
            "dataset_size": self.dataset_size,
            "drop_last": self.drop_last,
            "phases": [asdict(p) for p in self.phases],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        if not isinstance(data, dict):
            raise TypeError(f"a schedule should be a JSON object, but got {type(data).__name__}")
        version = data.get("version")
        if version != SCHEDULE_VERSION:
            raise ValueError(f"schedule version should be {SCHEDULE_VERSION}, but got version={version!r}")
        try:
            phases = tuple(Phase(**p) for p in data["phases"])
            return cls(phases, data["dataset_size"], bool(data.get("drop_last", False)), data.get("name", "custom"))
        except KeyError as missing:
            raise ValueError(f"a schedule needs the key {missing}") from None

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"a schedule should be valid JSON: {err}") from None
