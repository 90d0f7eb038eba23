"""Atomic checkpoints (temporary file, fsync, rename) and the RNG states that make resume exact."""

from __future__ import annotations

import io
import os
import random
import stat
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..atomic import write_atomically
from .settings import compatible_keys

__all__ = ["CHECKPOINT_VERSION", "TEST_PAUSE_ENV", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng",
           "check_compatible"]

CHECKPOINT_VERSION = 2  # 2: the Trainer's state_dict (tally summed over ranks, metric sums by name)

# NOTE [test-pause]: tests kill a run *during* a checkpoint write. With this variable set to a
# number of seconds, save_checkpoint writes half of the temporary file, then sleeps that long
# before writing the rest, so a test can find the half-written .tmp and SIGKILL the process.
TEST_PAUSE_ENV = "GROWBATCH_TEST_PAUSE_IN_CHECKPOINT"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the previous file stays intact until the new one is complete.

    Raises:
        OSError: the file could not be written (read-only or full directory, file size limit);
            the temporary file is removed and ``path`` is left as it was.
    """
    # serialised in memory first: a failed disk write is then a plain OSError (torch's zip writer
    # would turn it into a RuntimeError about stream positions)
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    data = buffer.getbuffer()

    def write(file: BinaryIO) -> None:
        pause = float(os.environ.get(TEST_PAUSE_ENV) or 0)
        if pause > 0:  # NOTE [test-pause]
            file.write(data[: len(data) // 2])
            file.flush()
            time.sleep(pause)
            file.write(data[len(data) // 2:])
        else:
            file.write(data)

    write_atomically(path, write)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: the file is truncated, corrupt (a stored CRC-32 does not match), not a
            checkpoint, or from another checkpoint version.
    """
    # opening a FIFO (or a device) would block, holding the lock, until something writes to it
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"checkpoint {path} is not a regular file; delete it to start over, or use --force")
    # torch.load does not check the CRC-32s its zip format stores, so a flipped bit in the weights
    # would load silently; zipfile checks them (one extra read of the file)
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as err:  # NotImplementedError: a
        # compression method flipped to one zipfile does not know
        what = "a member names an unknown compression method" if isinstance(err, NotImplementedError) else \
            "not a whole zip archive"
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {what}); "
                         "delete it to start over, or use --force") from None
    if bad_member is not None:
        raise ValueError(f"checkpoint {path} is corrupt: {bad_member} fails its CRC-32 check; "
                         "delete it to start over, or use --force")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many types for a torn or foreign file
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
                         "delete it to start over, or use --force") from None
    if not isinstance(state, dict) or "version" not in state:
        held = f"a {type(state).__name__}"
        if isinstance(state, dict):
            held = f"a dict with keys {sorted(map(str, state))[:5]}"
        raise ValueError(f"{path} is not a growbatch checkpoint (it holds {held}); delete it to start over, "
                         "or use --force")
    if state["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has version {state['version']!r}, expected {CHECKPOINT_VERSION} "
                         "(written by another growbatch version); resume with that version, or use --force")
    return state


def _first_difference(key: str, saved: Any, current: Any) -> tuple[str, Any, Any] | None:
    """The first nested setting where two values differ, as ``(path, saved, current)``: for a
    schedule, ``schedule.phases[0].lr`` rather than two long dicts."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for sub in [*saved, *(k for k in current if k not in saved)]:
            found = _first_difference(f"{key}.{sub}", saved.get(sub), current.get(sub))
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for index, (a, b) in enumerate(zip(saved, current)):
            found = _first_difference(f"{key}[{index}]", a, b)
            if found:
                return found
        return None
    return None if saved == current else (key, saved, current)


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose configuration differs in a setting that changes the run.

    Raises:
        ValueError: naming the first differing setting (nested, e.g. ``schedule.phases[0].lr``)
            and both values.
    """
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    for key in compatible_keys():
        found = _first_difference(key, saved.get(key), current.get(key))
        if found:
            name, was, now = found
            raise ValueError(
                f"checkpoint {path} was written with {name}={short(was)}, but this run has "
                f"{name}={short(now)}; use the original settings, or --force to start over"
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
