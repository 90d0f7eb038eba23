"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it.

A reader (or a resume after a crash) sees either the previous file or the complete new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["write_atomically", "write_bytes_atomically", "write_json_atomically"]


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write`` on ``PATH.tmp``, make it durable and rename it to ``path``.

    Raises:
        OSError: the file could not be written (read-only or full directory, file size limit); the
            temporary file is removed, ``path`` is left as it was, and the error names the file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # a Ctrl-C half-way too: never leave the partial file
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the original error says more
        if isinstance(err, OSError) and err.filename is None:  # write() errors name no file
            raise OSError(err.errno, err.strerror or str(err), str(tmp)) from err
        raise
    _fsync_dir(path.parent)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`write_atomically`)."""
    write_atomically(path, lambda file: file.write(data))


def write_json_atomically(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically."""
    write_bytes_atomically(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
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
