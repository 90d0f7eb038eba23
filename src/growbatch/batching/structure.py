"""Batches of any structure: a tensor, or tuples, lists and dicts of them (nested), all split along dim 0.

Frameworks hand over what their collate built: ``(inputs, targets)``, ``{"input_ids": ..., "labels": ...}``
and so on. Every tensor in a batch holds one row per sample; other values (None, strings, numbers)
are copied to every piece.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["batch_length", "map_tensors", "slice_batch", "split_batch", "batch_signature"]


def map_tensors(fn: Callable[[torch.Tensor], Any], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor, the structure kept (a Mapping becomes a dict)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {key: map_tensors(fn, value) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_tensors(fn, value) for value in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(fn, value) for value in batch)
    return batch


def _tensors(batch: Any, path: str = "batch") -> list[tuple[str, torch.Tensor]]:
    if isinstance(batch, torch.Tensor):
        return [(path, batch)]
    if isinstance(batch, Mapping):
        return [item for key, value in batch.items() for item in _tensors(value, f"{path}[{key!r}]")]
    if isinstance(batch, (tuple, list)):
        return [item for i, value in enumerate(batch) for item in _tensors(value, f"{path}[{i}]")]
    return []


def batch_length(batch: Any, name: str = "batch") -> int | None:
    """Samples in ``batch``: the first dimension shared by all its tensors; None when it holds none.

    Raises:
        ValueError: a 0-dimensional tensor, or tensors whose first dimensions differ.
    """
    tensors = _tensors(batch, name)
    if not tensors:
        return None
    for path, tensor in tensors:
        if tensor.ndim == 0:
            raise ValueError(f"{path} is a 0-dimensional tensor; every tensor of a batch needs one row per sample")
    lengths = {path: tensor.shape[0] for path, tensor in tensors}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{path}: {length}" for path, length in lengths.items())
        raise ValueError(f"the tensors of a batch should have the same first dimension (samples), but got {shown}")
    return next(iter(lengths.values()))


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start`` to ``stop`` of every tensor."""
    return map_tensors(lambda tensor: tensor[start:stop], batch)


def split_batch(batch: Any, sizes: list[int]) -> list[Any]:
    """``batch`` in consecutive pieces of ``sizes`` samples."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(slice_batch(batch, start, start + size))
        start += size
    return pieces


def batch_signature(batch: Any) -> tuple:
    """Per-sample shape and dtype of every tensor: batches with the same signature cost the same per sample."""
    return tuple((path, tuple(tensor.shape[1:]), tensor.dtype) for path, tensor in _tensors(batch))
