"""Build schedules: the paper's step modes (decay, hybrid, increase) and LR-schedule conversion.

Every builder keeps the noise scale g = eps/(1-m) * (N/B - 1) of the learning-rate
schedule it stands for; where the batch would pass ``max_batch_size`` the learning
rate takes the rest of the change (§5.1, "hybrid" fallback).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..checks import (
    check_batch_size,
    check_count,
    check_dataset_size,
    check_factor,
    check_lr,
    check_optional_momentum,
)
from .noise import batch_size_for_noise_ratio
from .schedule import Phase, Schedule

__all__ = [
    "MODES",
    "RULES",
    "step_schedule",
    "Conversion",
    "from_lr_function",
    "from_lr_scheduler",
    "cosine_lr",
    "multistep_lr",
    "warmup_stable_decay_lr",
    "default_max_batch_size",
]

Mode = Literal["decay", "hybrid", "increase"]
MODES: tuple[str, ...] = ("decay", "hybrid", "increase")
# NOTE [rules]: how a batch step stands in for an lr step. linear (SGD, the paper): lr / f ~ B x f at
# equal noise scale. sqrt (Adam-type optimizers, Malladi et al. 2022): lr / f ~ B x f^2. seesaw
# (Meterez et al. 2025): each lr / f becomes lr / sqrt(f) with B x f, the same as lr / f by the sqrt rule.
RULES: tuple[str, ...] = ("linear", "sqrt", "seesaw")


def default_max_batch_size(dataset_size: int) -> int:
    """The paper's advice for the largest useful batch: about N/10."""
    return max(1, check_dataset_size(dataset_size) // 10)





def _check_cap(max_batch_size: int | None, batch_size: int, dataset_size: int) -> int:
    cap = default_max_batch_size(dataset_size) if max_batch_size is None else max_batch_size
    check_batch_size(cap, dataset_size, name="max_batch_size")
    if batch_size > cap:
        raise ValueError(
            f"batch_size should be at most max_batch_size={cap}, but got batch_size={batch_size}; "
            "raise --max-batch-size or lower the batch size"
        )
    return cap


def _check_milestones(milestones: Sequence[float], epochs: float | None = None) -> tuple[float, ...]:
    if isinstance(milestones, str) or not hasattr(milestones, "__iter__"):
        raise TypeError(f"milestones should be a sequence of numbers, but got milestones={milestones!r}")
    values = tuple(milestones)
    for m in values:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
            raise TypeError(f"milestones should be numbers, but got {m!r} in milestones={list(values)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"milestones should be strictly increasing, but got milestones={list(values)}")
    if values and values[0] <= 0:
        raise ValueError(f"milestones should be positive epochs, but got milestones={list(values)}")
    if values and epochs is not None and values[-1] >= epochs:
        raise ValueError(f"milestones should lie strictly between 0 and epochs={epochs}, but got milestones={list(values)}")
    return values





def _scale_g(lr: float, batch: int, cap: int, n: int, ratio: float, exact: bool) -> tuple[float, int]:
    """New (lr, batch) after multiplying g by ``ratio`` (< 1) with the batch first, capped, then the lr."""
    if exact and ratio * (n / batch - 1.0) <= 0:
        return lr * ratio, batch
    ideal = batch / ratio if not exact else n / (1.0 + ratio * (n / batch - 1.0))
    new_batch = min(int(round(ideal)), cap)
    if new_batch == int(round(ideal)):
        return lr, new_batch
    # the batch stops at the cap: the lr supplies what is left of the ratio
    if exact:
        target = ratio * (n / batch - 1.0)
        return lr * target / (n / new_batch - 1.0), new_batch
    return lr * ratio * new_batch / batch, new_batch


def _scale_by_rule(lr: float, batch: int, cap: int, factor: float, rule: str) -> tuple[float, int]:
    """New (lr, batch) for one growing step of a sqrt-type rule: the batch x f^2 (sqrt) or x f with lr / sqrt(f)
    (seesaw), capped; at the cap the lr supplies the rest (lr / f over all, counted by the sqrt rule)."""
    ideal = batch * (factor**2 if rule == "sqrt" else factor)
    new_batch = min(int(round(ideal)), cap)
    return lr * math.sqrt(new_batch / batch) / factor, new_batch


def step_schedule(
    mode: Mode,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    milestones: Sequence[float],
    factor: float,
    dataset_size: int,
    momentum: float | None = None,
    max_batch_size: int | None = None,
    drop_last: bool = False,
    batch_increases: int = 1,
    exact: bool = False,
    name: str | None = None,
    rule: str = "linear",
) -> Schedule:
    """One LR step schedule (divide by ``factor`` at each milestone) in one of the paper's modes.

    * ``decay``: the batch stays at ``batch_size``; the lr is divided by ``factor``.
    * ``hybrid``: the first ``batch_increases`` milestones multiply the batch, the rest decay the lr.
    * ``increase``: the lr stays; the batch is multiplied by ``factor`` at every milestone.

    Where the batch would pass ``max_batch_size`` (default N/10) it stops at the cap and the
    lr takes the rest, so the noise scale still falls by ``factor`` at every milestone. With
    ``exact=False`` (the paper's rule, B x factor) g is the approximation eps*N/(B(1-m)); with
    ``exact=True`` batches come from N/B - 1 and the exact g falls by ``factor`` (up to rounding
    the batch to an integer).

    ``rule`` says what a growing step is (NOTE [rules]): ``linear``, B x factor (SGD); ``sqrt``,
    B x factor² (Adam); ``seesaw``, B x factor with lr / sqrt(factor). Past the cap the lr falls so that
    each milestone still amounts to lr / factor by the rule.

    Example (``step_schedule("increase", lr=0.1, batch_size=128, epochs=200, milestones=[60, 120, 160],
    factor=5, dataset_size=50_000, max_batch_size=5120)``):

        ======  =====  ==========
        epoch   lr     batch_size
        ======  =====  ==========
        0       0.1    128
        60      0.1    640
        120     0.1    3200
        160     0.032  5120
        ======  =====  ==========

    Raises:
        ValueError: an unknown mode, factor <= 1, milestones not increasing or outside
            (0, epochs), a non-positive lr or batch, a batch or cap larger than the data set,
            momentum outside [0, 1).
    """
    if mode not in MODES:
        raise ValueError(f"mode should be one of {', '.join(MODES)}, but got mode={mode!r}")
    if rule not in RULES:
        raise ValueError(f"rule should be one of {', '.join(RULES)}, but got rule={rule!r}")
    if exact and rule != "linear":
        raise ValueError(f"exact=True keeps the exact g = lr/(1-m)*(N/B-1), which is the linear rule's; "
                         f"rule={rule!r} cannot be combined with it")
    lr = check_lr(lr)
    momentum = check_optional_momentum(momentum)
    n = check_dataset_size(dataset_size)
    epochs = check_count("epochs", epochs)
    check_batch_size(batch_size, n)
    cap = _check_cap(max_batch_size, batch_size, n)
    values = _check_milestones(milestones, epochs)
    factor = check_factor(factor)
    if isinstance(batch_increases, bool) or not isinstance(batch_increases, int) or batch_increases < 0:
        raise ValueError(f"batch_increases should be a non-negative integer, but got batch_increases={batch_increases!r}")

    bounds = (0.0, *values, float(epochs))
    phases = []
    cur_lr, cur_batch = lr, batch_size
    for i, (start, end) in enumerate(zip(bounds, bounds[1:])):
        if i > 0:
            grow = mode == "increase" or (mode == "hybrid" and i <= batch_increases)
            if grow and rule != "linear":
                cur_lr, cur_batch = _scale_by_rule(cur_lr, cur_batch, cap, factor, rule)
            elif grow:
                cur_lr, cur_batch = _scale_g(cur_lr, cur_batch, cap, n, 1.0 / factor, exact)
            else:
                cur_lr = cur_lr / factor
        phases.append(Phase(start, end, cur_lr, cur_batch, momentum))
    return Schedule(tuple(phases), n, drop_last, name or mode)


@dataclass(frozen=True)
class Conversion:
    """A converted schedule and the largest relative noise-scale error its rounding caused."""

    schedule: Schedule
    max_noise_error: float  # max over evaluation points of |g_new / g_original - 1|


def from_lr_function(
    lr_fn: Callable[[float], float],
    *,
    batch_size: int,
    epochs: int,
    dataset_size: int,
    momentum: float | None = None,
    max_batch_size: int | None = None,
    batch_size_multiple: int = 1,
    points_per_epoch: int = 1,
    drop_last: bool = False,
    exact: bool = False,
    name: str = "converted",
) -> Conversion:
    """Turn any LR schedule (epoch -> lr at ``batch_size``) into a batch-size schedule at equal noise.

    The lr is held at its running maximum M(t) (so a warm-up stays a warm-up) and every
    decay below M(t) becomes a larger batch: B(t) = B0 * M(t)/lr(t) (exact: from N/B - 1).
    Past ``max_batch_size`` the batch stops and the lr falls instead. Batches are rounded to
    a multiple of ``batch_size_multiple``; the noise error that causes is returned.
    The lr function is sampled at ``points_per_epoch`` points per epoch, held between them.
    ``momentum`` None (the default) leaves the optimizer's momentum or beta1 as it was built
    (NOTE [optimizer values] in schedule.py); a number is written into the optimizer every update.
    """
    n = check_dataset_size(dataset_size)
    epochs = check_count("epochs", epochs)
    check_batch_size(batch_size, n)
    momentum = check_optional_momentum(momentum)
    cap = _check_cap(max_batch_size, batch_size, n)
    for arg, value in (("batch_size_multiple", batch_size_multiple), ("points_per_epoch", points_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{arg} should be a positive integer value, but got {arg}={value!r}")
    if batch_size_multiple > cap:
        raise ValueError(f"batch_size_multiple={batch_size_multiple} should be at most max_batch_size={cap}")

    def g(lr: float, batch: float) -> float:
        return lr * ((n / batch - 1.0) if exact else n / batch)

    rows: list[tuple[float, float, int]] = []
    peak, worst = 0.0, 0.0
    total = epochs * points_per_epoch
    for k in range(total):
        t = k / points_per_epoch
        lr_t = float(lr_fn(t))
        if not math.isfinite(lr_t) or lr_t < 0:
            raise ValueError(f"the lr schedule should give finite non-negative values, but gave lr={lr_t} at epoch {t:g}")
        peak = max(peak, lr_t)
        if peak == 0:
            raise ValueError(f"the lr schedule should start positive, but gave lr=0 at epoch {t:g}")
        if lr_t == 0:
            ideal = math.inf
        elif exact:
            ideal = batch_size_for_noise_ratio(batch_size, n, lr_t / peak, exact=True)
        else:
            ideal = batch_size * peak / lr_t
        top = cap - cap % batch_size_multiple  # the largest allowed multiple
        new_batch = min(top, max(batch_size_multiple, round(ideal / batch_size_multiple) * batch_size_multiple)) \
            if ideal < top else top
        new_lr = peak
        if ideal >= top:
            # at the cap: the lr supplies the rest, so g matches exactly
            unit = g(1.0, new_batch)  # 0 only in exact mode with a cap of N
            new_lr = g(lr_t, batch_size) / unit if unit > 0 else 0.0
        target = g(lr_t, batch_size)
        got = g(new_lr, new_batch)
        if target > 0:
            worst = max(worst, abs(got / target - 1.0))
        rows.append((t, new_lr, new_batch))

    return Conversion(Schedule(_phases_of(rows, epochs, momentum), n, drop_last, name), worst)


def _phases_of(rows: list[tuple[float, float, int]], epochs: int, momentum: float | None) -> tuple[Phase, ...]:
    """Phases from ``(start epoch, lr, batch)`` rows: each row lasts until the next; equal neighbours merge."""
    phases: list[Phase] = []
    for i, (t, new_lr, new_batch) in enumerate(rows):
        end = rows[i + 1][0] if i + 1 < len(rows) else float(epochs)
        if phases and phases[-1].lr == new_lr and phases[-1].batch_size == new_batch:
            phases[-1] = Phase(phases[-1].start_epoch, end, new_lr, new_batch, momentum)
        else:
            phases.append(Phase(t, end, new_lr, new_batch, momentum))
    return tuple(phases)


def from_lr_scheduler(
    scheduler_factory: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
    *,
    lr: float,
    steps_per_epoch: int = 1,
    **kwargs,
) -> Conversion:
    """Convert a torch ``LRScheduler`` by simulating it on a dummy optimizer.

    ``scheduler_factory(optimizer)`` builds the scheduler (e.g.
    ``lambda opt: CosineAnnealingLR(opt, T_max=200)``); it is stepped ``steps_per_epoch``
    times per epoch, and the lr before each step is the value for that part of the epoch.
    Other keyword arguments are those of :func:`from_lr_function`.
    """
    lr = check_lr(lr)
    epochs = check_count("epochs", kwargs.get("epochs"))
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch should be a positive integer value, but got steps_per_epoch={steps_per_epoch!r}")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" is moot here
        for _ in range(epochs * steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()

    def lr_fn(t: float) -> float:
        return lrs[min(len(lrs) - 1, int(round(t * steps_per_epoch)))]

    kwargs.setdefault("points_per_epoch", steps_per_epoch)
    return from_lr_function(lr_fn, **kwargs)


def cosine_lr(lr: float, epochs: float, min_lr: float = 0.0) -> Callable[[float], float]:
    """Cosine annealing from ``lr`` at epoch 0 to ``min_lr`` at ``epochs``."""
    check_lr(lr)
    check_lr(epochs, "epochs")
    if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not 0 <= min_lr < lr:
        raise ValueError(f"min_lr should be in [0, lr={lr:g}), but got min_lr={min_lr!r}")
    return lambda t: min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))


def multistep_lr(lr: float, milestones: Sequence[float], factor: float) -> Callable[[float], float]:
    """The lr divided by ``factor`` at each milestone (torch's ``MultiStepLR`` with gamma = 1/factor)."""
    check_lr(lr)
    values = _check_milestones(milestones)
    factor = check_factor(factor)
    return lambda t: lr / factor ** sum(1 for m in values if t >= m)


def warmup_stable_decay_lr(
    lr: float, epochs: float, warmup_epochs: float, decay_epochs: float, min_lr: float = 0.0
) -> Callable[[float], float]:
    """Warm-up (linear from lr/warmup steps), a stable plateau, then a linear decay to ``min_lr``."""
    check_lr(lr)
    if warmup_epochs < 0 or decay_epochs < 0 or warmup_epochs + decay_epochs > epochs:
        raise ValueError(
            f"warmup_epochs + decay_epochs should fit in epochs={epochs}, "
            f"but got warmup_epochs={warmup_epochs}, decay_epochs={decay_epochs}"
        )

    def lr_at(t: float) -> float:
        if t < warmup_epochs:
            return lr * (t + 1.0) / (warmup_epochs + 1.0)
        decay_start = epochs - decay_epochs
        if t < decay_start or decay_epochs == 0:
            return lr
        return lr + (min_lr - lr) * (t - decay_start) / decay_epochs

    return lr_at
