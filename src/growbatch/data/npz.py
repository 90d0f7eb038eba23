"""The ``.npz`` format: one file with the arrays x_train, y_train, x_test, y_test (as Keras' mnist.npz).

Images are N x H x W (grey) or N x H x W x C (channels last), uint8; labels are integers. Members
may use DEFLATE (``np.savez_compressed``), LZMA or no compression; every member's CRC-32 is checked.
"""

from __future__ import annotations

import lzma
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import ARRAY_KEYS, DataError

__all__ = ["find_npz", "read_npz"]


def find_npz(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``root/name`` for ``name`` in ``names`` that is a file, or None."""
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of ``path``, fully read (so every member's CRC-32 is checked); pickles are refused.

    Raises:
        DataError: the file is not a zip archive, is truncated, fails a CRC check, holds a pickled
            (object) array, or lacks one of x_train, y_train, x_test, y_test.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ARRAY_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path} lacks the arrays {', '.join(missing)} (it has {', '.join(archive.files) or 'none'}); "
                    f"a data set .npz needs x_train, y_train, x_test and y_test"
                )
            return {key: archive[key] for key in ARRAY_KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError) as error:
        # ValueError covers a corrupt .npy header and the refusal of pickled object arrays
        raise DataError(
            f"{path} is corrupt or truncated: the zip/npy format or checksum check failed ({error}); "
            f"copy the file again or delete it and download the data set"
        ) from error
