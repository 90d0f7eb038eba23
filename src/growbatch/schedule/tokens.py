"""Schedules as LLM trainers write them, on a token clock: warm-up + cosine or WSD learning rates, their conversion
to batch ramps at equal noise (the optimizer's rule), Seesaw, Megatron's ``--rampup-batch-size`` and a token step list.

A language-model sample is a sequence of ``seq_len`` tokens and an epoch is ``sequences_per_epoch`` of them (an
interval of the stream, NOTE [token epochs] in batching/token_loader.py), so token t is at epoch t / (seq_len*N).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..checks import check_batch_size, check_count, check_lr, check_optional_momentum
from .builders import warmup_stable_decay_lr
from .schedule import Phase, Schedule

__all__ = ["TokenClock", "parse_tokens", "parse_batch_schedule", "parse_rampup", "warmup_cosine_lr", "lr_function",
           "LR_SCHEDULES", "fixed_batch", "convert_at_equal_noise", "seesaw", "rampup_batches", "with_batches",
           "format_tokens"]

LR_SCHEDULES = ("cosine", "wsd")
WSD_DECAY_FRACTION = 0.2  # the last fifth of the tokens decays (Hägele et al. 2024 use 20%)
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


@dataclass(frozen=True)
class TokenClock:
    """Tokens <-> epochs: ``epochs`` intervals of ``sequences_per_epoch`` sequences of ``seq_len`` tokens."""

    seq_len: int
    sequences_per_epoch: int
    epochs: int

    def __post_init__(self) -> None:
        for name in ("seq_len", "sequences_per_epoch", "epochs"):
            check_count(name, getattr(self, name))

    @property
    def total_tokens(self) -> int:
        return self.seq_len * self.sequences_per_epoch * self.epochs

    def epoch_of_tokens(self, tokens: float) -> float:
        return tokens / (self.seq_len * self.sequences_per_epoch)

    def epoch_of_samples(self, samples: float) -> float:
        return samples / self.sequences_per_epoch


def format_tokens(tokens: int) -> str:
    """2097152 -> '2.10M', 4096 -> '4.10k'."""
    for suffix, unit in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if tokens >= unit:
            return f"{tokens / unit:.3g}{suffix}"
    return str(tokens)


def parse_tokens(text: str) -> int:
    """``"2M"`` -> 2000000, ``"512k"`` -> 512000, ``"1.5M"`` -> 1500000, ``"4096"`` -> 4096 (whole tokens)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGbB]?)\s*", text)
    if match is None:
        raise ValueError(f"expected a token count such as 4096, 512k or 2M, got {text!r}")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if value != int(value):
        raise ValueError(f"expected a whole number of tokens, got {text!r} = {value:g}")
    return int(value)


def parse_batch_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """A token step list ``"0:16,2M:32,6M:64"`` -> ((0, 16), (2000000, 32), (6000000, 64)) (tokens, sequences).

    It must start at 0, and both the token points and the batch sizes must increase.
    """
    points = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        tokens, sep, batch = part.partition(":")
        if not sep:
            raise ValueError(f"expected TOKENS:BATCH pairs such as 0:16,2M:32, but got {part!r} in {text!r}")
        try:
            points.append((parse_tokens(tokens), int(batch)))
        except ValueError:
            raise ValueError(f"expected TOKENS:BATCH pairs such as 0:16,2M:32 (a token count, a whole batch of "
                             f"sequences), but got {part!r} in {text!r}") from None
    if not points or points[0][0] != 0:
        raise ValueError(f"a batch schedule should start at token 0, such as 0:16,2M:32, but got {text!r}")
    for (t0, b0), (t1, b1) in zip(points, points[1:]):
        if t1 <= t0 or b1 <= b0:
            raise ValueError(f"a batch schedule should increase in tokens and in batch size, but {t0}:{b0} is "
                             f"followed by {t1}:{b1} in {text!r}")
    if points[0][1] <= 0:
        raise ValueError(f"batch sizes should be positive, but got {points[0][1]} in {text!r}")
    return tuple(points)


def parse_rampup(text: str) -> tuple[int, int, int]:
    """Megatron's ``--rampup-batch-size START INCREMENT SAMPLES``: ``"16 16 2000"`` or ``"16,16,2000"``."""
    parts = text.replace(",", " ").split()
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"expected START INCREMENT SAMPLES (three positive integers, e.g. '16 16 2000'), got {text!r}")
    return values  # type: ignore[return-value]


def warmup_cosine_lr(lr: float, epochs: float, warmup_epochs: float, min_lr: float = 0.0) -> Callable[[float], float]:
    """Linear warm-up from 0 to ``lr`` over ``warmup_epochs``, then cosine to ``min_lr`` at ``epochs`` (nanoGPT)."""
    check_lr(lr)
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup should be in [0, epochs={epochs}), but got warmup_epochs={warmup_epochs}")

    def lr_at(t: float) -> float:
        if t < warmup_epochs:
            return lr * (t + warmup_epochs / 64) / (warmup_epochs * (1 + 1 / 64))  # never 0: the first update trains
        progress = min(1.0, (t - warmup_epochs) / (epochs - warmup_epochs))
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))

    return lr_at


def lr_function(name: str, lr: float, epochs: int, warmup_fraction: float, min_lr_fraction: float = 0.1
                ) -> Callable[[float], float]:
    """``cosine`` (warm-up + cosine to lr/10) or ``wsd`` (warm-up, stable, the last 20% linear to lr/10)."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid: {', '.join(LR_SCHEDULES)}")
    if not 0 <= warmup_fraction < 1 - WSD_DECAY_FRACTION:
        raise ValueError(f"warmup should be a fraction of the tokens in [0, {1 - WSD_DECAY_FRACTION:g}), but got "
                         f"{warmup_fraction}")
    if name == "cosine":
        return warmup_cosine_lr(lr, epochs, warmup_fraction * epochs, lr * min_lr_fraction)
    return warmup_stable_decay_lr(lr, epochs, warmup_fraction * epochs, WSD_DECAY_FRACTION * epochs,
                                  lr * min_lr_fraction)


def _points(epochs: int, points_per_epoch: int) -> list[float]:
    check_count("points_per_epoch", points_per_epoch)
    return [k / points_per_epoch for k in range(epochs * points_per_epoch)]


def _lr_points(lr_fn: Callable[[float], float], epochs: int,
               points_per_epoch: int) -> Iterator[tuple[float, float, float]]:
    """(epoch t, lr(t), the peak lr so far) at each point of the grid; an lr that is not positive is refused."""
    peak = 0.0
    for t in _points(epochs, points_per_epoch):
        lr_t = float(lr_fn(t))
        peak = max(peak, lr_t)
        if lr_t <= 0:
            raise ValueError(f"the lr schedule should stay positive, but gave lr={lr_t} at epoch {t:g}")
        yield t, lr_t, peak


def _schedule(rows: list[tuple[float, float, int]], epochs: int, n: int, momentum: float | None,
              name: str) -> Schedule:
    """A Schedule from (start epoch, lr, batch) rows, each lasting until the next; equal neighbours merge."""
    phases: list[Phase] = []
    for i, (start, lr, batch) in enumerate(rows):
        end = rows[i + 1][0] if i + 1 < len(rows) else float(epochs)
        if phases and phases[-1].lr == lr and phases[-1].batch_size == batch:
            phases[-1] = Phase(phases[-1].start_epoch, end, lr, batch, momentum)
        else:
            phases.append(Phase(start, end, lr, batch, momentum))
    return Schedule(tuple(phases), n, name=name)


def fixed_batch(lr_fn: Callable[[float], float], *, batch_size: int, clock: TokenClock,
                momentum: float | None = None, points_per_epoch: int = 16, name: str = "decay") -> Schedule:
    """The lr schedule as LLM trainers run it: ``lr_fn`` sampled ``points_per_epoch`` times an epoch, one batch."""
    n, momentum = clock.sequences_per_epoch, check_optional_momentum(momentum)
    check_batch_size(batch_size, n)
    rows = [(t, float(lr_fn(t)), batch_size) for t in _points(clock.epochs, points_per_epoch)]
    return _schedule(rows, clock.epochs, n, momentum, name)


def _check_cap(batch_size: int, cap: int, n: int) -> None:
    check_batch_size(batch_size, n)
    check_batch_size(cap, n, name="max_batch_size")
    if cap < batch_size:
        raise ValueError(f"max_batch_size={cap} should be at least the batch size {batch_size}")


def convert_at_equal_noise(lr_fn: Callable[[float], float], *, batch_size: int, max_batch_size: int,
                           clock: TokenClock, rule: str, momentum: float | None = None, batch_size_multiple: int = 1,
                           points_per_epoch: int = 16, name: str = "converted") -> Schedule:
    """An lr schedule as a batch ramp at equal noise scale, by ``rule`` (NOTE [rules] in builders.py).

    With r(t) = lr(t) / M(t), M the running maximum (a warm-up stays a warm-up): the lr stays M and the batch is
    B0 / r (linear, SGD) or B0 / r² (sqrt, Adam), rounded to ``batch_size_multiple``. Past ``max_batch_size``
    the batch stops and the lr falls: lr(t)·cap/B0 (linear) or lr(t)·sqrt(cap/B0) (sqrt). ``linear`` gives
    :func:`~growbatch.schedule.builders.from_lr_function`'s schedule (tested).
    """
    if rule not in ("linear", "sqrt"):
        raise ValueError(f"rule should be linear or sqrt (seesaw has its own builder), but got rule={rule!r}")
    n, momentum = clock.sequences_per_epoch, check_optional_momentum(momentum)
    _check_cap(batch_size, max_batch_size, n)
    power = 1 if rule == "linear" else 2
    top = max_batch_size - max_batch_size % batch_size_multiple
    rows = []
    for t, lr_t, peak in _lr_points(lr_fn, clock.epochs, points_per_epoch):
        ideal = batch_size * (peak / lr_t) ** power
        if ideal < top:
            batch = min(top, max(batch_size_multiple, round(ideal / batch_size_multiple) * batch_size_multiple))
            rows.append((t, peak, batch))
        else:  # at the cap the lr supplies the rest, so lr / B^(1/power) matches exactly
            rows.append((t, lr_t * (top / batch_size) ** (1 / power), top))
    return _schedule(rows, clock.epochs, n, momentum, name)


def seesaw(lr_fn: Callable[[float], float], *, batch_size: int, max_batch_size: int, clock: TokenClock,
           momentum: float | None = None, points_per_epoch: int = 16, name: str = "seesaw") -> Schedule:
    """Seesaw (Meterez et al. 2025): wherever the lr schedule has halved k times, the batch is B0·2^k and the
    lr M/sqrt(2)^k; past ``max_batch_size`` the lr follows lr(t)·sqrt(cap/B0) (the sqrt rule)."""
    n, momentum = clock.sequences_per_epoch, check_optional_momentum(momentum)
    _check_cap(batch_size, max_batch_size, n)
    rows = []
    for t, lr_t, peak in _lr_points(lr_fn, clock.epochs, points_per_epoch):
        halvings = math.floor(math.log2(peak / lr_t) + 1e-9)
        batch = batch_size * 2**halvings
        if batch <= max_batch_size:
            rows.append((t, peak / math.sqrt(2) ** halvings, batch))
        else:
            rows.append((t, lr_t * math.sqrt(max_batch_size / batch_size), max_batch_size))
    return _schedule(rows, clock.epochs, n, momentum, name)


def rampup_batches(start: int, increment: int, ramp_samples: int, final: int) -> list[tuple[int, int]]:
    """Megatron-LM's ``--rampup-batch-size START INCREMENT SAMPLES`` towards ``final`` (its global batch):
    (first sample, batch) steps; the batch is START + INCREMENT·floor(consumed / (SAMPLES / increments)).

    Example:
        >>> rampup_batches(16, 16, 3000, 64)  # three increments, one every 1000 samples
        [(0, 16), (1000, 32), (2000, 48), (3000, 64)]
    """
    for arg, value in (("start", start), ("increment", increment), ("ramp_samples", ramp_samples), ("final", final)):
        check_count(arg, value)
    if (final - start) % increment or final < start:
        raise ValueError(f"--rampup-batch-size: the final batch {final} minus START={start} should be a non-negative "
                         f"multiple of INCREMENT={increment} (Megatron's rule); change START, INCREMENT or "
                         "--max-batch-size")
    increments = (final - start) // increment
    if increments == 0:
        return [(0, final)]
    per_increment = ramp_samples / increments
    return [(math.ceil(k * per_increment), start + k * increment) for k in range(increments + 1)]


def with_batches(lr_fn: Callable[[float], float], steps: list[tuple[float, int]], *, clock: TokenClock,
                 momentum: float | None = None, points_per_epoch: int = 16, name: str = "rampup") -> Schedule:
    """The lr schedule as sampled by :func:`fixed_batch`, with the batch stepping at ``steps`` ((epoch, batch))."""
    n, momentum = clock.sequences_per_epoch, check_optional_momentum(momentum)
    for _, batch in steps:
        check_batch_size(batch, n)
    starts = sorted(set(_points(clock.epochs, points_per_epoch)) | {e for e, _ in steps if e < clock.epochs})
    rows = []
    for t in starts:
        batch = [b for e, b in steps if e <= t + 1e-12][-1]
        rows.append((t, float(lr_fn(t)), batch))
    return _schedule(rows, clock.epochs, n, momentum, name)
