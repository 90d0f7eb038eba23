"""Atomic checkpoints (temporary file, fsync, rename) and the RNG states that make resume exact."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "check_compatible"]

CHECKPOINT_VERSION = 1

# Settings that must match for a checkpoint to be continued; others (device, threads,
# progress, checkpoint frequency, output paths) may change between a run and its resume.
COMPATIBLE_KEYS = (
    "dataset", "model", "optimizer", "schedule", "weight_decay", "seed",
    "ghost_batch_size", "micro_batch_size", "channels_last",
)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the previous file stays intact until the new one is complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"version": CHECKPOINT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: the file is truncated, corrupt or from another checkpoint version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
                         "delete it to start over, or use --force") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} has version {found!r}, expected {CHECKPOINT_VERSION}")
    return state


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose configuration differs in a setting that changes the run."""
    for key in COMPATIBLE_KEYS:
        if saved.get(key) != current.get(key):
            def short(value: Any) -> str:
                text = repr(value)
                return text if len(text) <= 60 else text[:57] + "..."
            raise ValueError(
                f"checkpoint {path} was written with {key}={short(saved.get(key))}, but this run has "
                f"{key}={short(current.get(key))}; use the original settings, or --force to start over"
            )


def capture_rng() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (and CUDA where present), as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
