"""Argument checks shared by the model constructors: positive integers, image sizes a model supports."""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (not a bool); raise TypeError or ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be a positive integer, but got {name}={value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} should be a positive integer, but got {name}={value}")
    return value
