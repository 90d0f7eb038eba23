"""Argument checks shared by every layer: each returns the value or raises naming the argument, the bad value
and what would be valid (TypeError for a wrong type, ValueError for a bad value)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_number", "check_lr", "check_momentum", "check_count", "check_dataset_size", "check_batch_size",
           "check_int", "check_positive_int", "check_factor", "MAX_COUNT", "MAX_SEED", "MAX_FACTOR"]

# NOTE [bounds]: every count (sizes, epochs, updates) is at most MAX_COUNT and every seed at most MAX_SEED (what
# NumPy and torch accept), so no flag or argument ends in an OverflowError or a loop of hours; a noise-scale factor
# above MAX_FACTOR would overflow the batch sizes built from it (factor**2 under the sqrt rule).
MAX_COUNT = 10**12
MAX_SEED = 2**32 - 1
MAX_FACTOR = 1e6


def check_number(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a number, but got {name}={value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name} should be a finite number, but got {name}={value}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} should be a finite number, but got {name}={value}")
    return value


def check_lr(lr: float, name: str = "lr") -> float:
    """Return ``lr`` as a float, or raise if it is not a positive finite number."""
    lr = check_number(name, lr)
    if lr <= 0:
        raise ValueError(f"{name} should be a positive number, but got {name}={lr:g}")
    return lr


def check_momentum(momentum: float, name: str = "momentum") -> float:
    """Return ``momentum`` as a float, or raise if it is outside [0, 1)."""
    momentum = check_number(name, momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{name} should be in [0, 1), but got {name}={momentum:g}")
    return momentum


def check_optional_momentum(momentum: float | None) -> float | None:
    """A schedule's momentum (SGD's, or Adam's beta1), checked; None keeps the optimizer's own
    (NOTE [optimizer values] in schedule/schedule.py)."""
    return None if momentum is None else check_momentum(momentum)


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (a size, a number of epochs); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be a positive integer value, but got {name}={value!r}")
    if value <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value}")
    if value > MAX_COUNT:
        raise ValueError(f"{name} should be a positive integer value of at most 10**12, but got {name}={_short(value)}")
    return value


def check_dataset_size(dataset_size: int, name: str = "dataset_size") -> int:
    """Return ``dataset_size``, or raise if it is not a positive integer."""
    return check_count(name, dataset_size)


def check_batch_size(batch_size: int, dataset_size: int | None = None, name: str = "batch_size") -> int:
    """Return ``batch_size``, or raise if it is not a positive integer no larger than the data set."""
    check_count(name, batch_size)
    if dataset_size is not None and batch_size > dataset_size:
        raise ValueError(f"{name} should be at most the data set size {dataset_size}, but got {name}={batch_size}")
    return batch_size


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum`` (a counter, a position, a rank)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be an integer value, but got {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} should be an integer >= {minimum}, but got {name}={value}")
    return value


def check_positive_int(name: str, value: object, hint: str = "", alternative: str = "") -> int:
    """Return ``value`` if it is a positive int (not a bool).

    ``alternative`` names the other valid values in the messages (``" or 'auto'"``), which the caller
    handles itself; ``hint`` is appended to the ValueError's message.
    """
    valid = f"{name} should be a positive integer{alternative}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{valid}, but got {name}={value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{valid}, but got {name}={value}{hint}")
    if value > MAX_COUNT:
        raise ValueError(f"{valid} of at most 10**12, but got {name}={_short(value)}")
    return value


def check_factor(factor: float) -> float:
    """Return the noise-scale step ``factor`` as a float, or raise if it is not a finite number above 1."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise TypeError(f"factor should be a number greater than 1, but got factor={factor!r}")
    if not factor > 1 or not math.isfinite(factor):
        raise ValueError(f"factor should be a number greater than 1 (the noise scale is divided by it), "
                         f"but got factor={factor!r}")
    if factor > MAX_FACTOR:
        raise ValueError(f"factor should be a number greater than 1 and at most 1e6 (the noise scale is divided by "
                         f"it), but got factor={_short(factor)}")
    return float(factor)


def _short(value: object) -> str:
    """``value`` for a one-line message: a number of hundreds of digits is cut to its first and last digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def check_state_dict(state: Any, *, owner: str, label: str, version: int, dataset_size: int, holder: str,
                     keys: set[str]) -> None:
    """Check a ``state_dict()`` of a clocked object before loading it (its type, version, data set size, keys).

    Args:
        owner: the class that wrote it (``"DynamicBatchSampler"``), for the type error.
        label: its name in messages (``"sampler"``).
        version: the state version this code reads.
        dataset_size: the loading object's data set size, which the state must have been saved for.
        holder: how messages name the loading object (``"this sampler"``, ``"the schedule"``).
        keys: the keys it must hold besides ``version`` and ``dataset_size``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state should be a dict from {owner}.state_dict(), but got {type(state).__name__}")
    if state.get("version") != version:
        raise ValueError(f"{label} state version should be {version}, but got version={state.get('version')!r}")
    if state.get("dataset_size") != dataset_size:
        raise ValueError(f"the state is for dataset_size={state.get('dataset_size')!r}, but {holder} has "
                         f"dataset_size={dataset_size}; load a state saved for the same data set")
    missing = keys - state.keys()
    if missing:
        raise ValueError(f"the {label} state lacks the keys {sorted(missing)}")
