"""The ``.npz`` format: one file with the arrays x_train, y_train, x_test, y_test (as Keras' mnist.npz).

Images are N x H x W (grey) or N x H x W x C (channels last), uint8; labels are integers. Members
may use DEFLATE (``np.savez_compressed``), LZMA or no compression; every member's CRC-32 is checked.
"""

from __future__ import annotations

import lzma
import math
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
    _check_members(path)
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
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError, NotImplementedError) as error:
        # ValueError covers a corrupt .npy header and the refusal of pickled object arrays
        raise DataError(
            f"{path} is corrupt or truncated: the zip/npy format or checksum check failed ({error}); "
            f"copy the file again or delete it and download the data set"
        ) from error


def _check_members(path: Path) -> None:
    """Refuse, before anything is read or allocated, a member whose compression method is unknown or whose
    ``.npy`` header claims more bytes than the member holds (a corrupt header would allocate that much)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA,
                                                zipfile.ZIP_BZIP2):
                    raise DataError(f"{path} is corrupt: its member {member.filename} names compression method "
                                    f"{member.compress_type}, which no zip writer uses; copy the file again or "
                                    "delete it and download the data set")
                if member.filename.endswith(".npy"):
                    _check_npy_header(path, archive, member)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError, NotImplementedError,
            OSError) as error:
        raise DataError(f"{path} is corrupt or truncated: the zip/npy format or checksum check failed ({error}); "
                        "copy the file again or delete it and download the data set") from error


def _check_npy_header(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    with archive.open(member) as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(file, max_header_size=10_000)
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > member.file_size:
            raise DataError(f"{path} is corrupt: the header of {member.filename} claims shape {shape} "
                            f"({claimed:,} bytes), but the member holds {member.file_size:,} bytes; copy the file "
                            "again or delete it and download the data set")
