"""The IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), raw or gzipped.

Layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError

__all__ = ["read_idx"]

_UNSIGNED_BYTE = 0x08


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gunzipped first if the name ends in ``.gz``).

    Args:
        path: an IDX file, e.g. ``train-images-idx3-ubyte`` or ``train-labels-idx1-ubyte.gz``.
        ndim: the number of dimensions the file must have (3 for images, 1 for labels).

    Raises:
        DataError: a bad gzip stream or CRC, a wrong magic number, another value type or number of
            dimensions, or a payload whose size differs from the product of the dimensions.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, zlib.error, EOFError) as error:
        raise DataError(f"{path} is corrupt or truncated: the gzip checksum/format check failed ({error}); "
                        f"copy the file again or delete it and download the data set") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file: its magic number {data[:4].hex() or '(empty)'} should start "
                        f"with 0000; the file is corrupt or of another format")
    if data[2] != _UNSIGNED_BYTE or data[3] != ndim:
        raise DataError(f"{path} holds type 0x{data[2]:02x} with {data[3]} dimensions (magic {data[:4].hex()}), "
                        f"but this reader needs unsigned bytes (0x08) with {ndim} dimensions "
                        f"(magic 000008{ndim:02x}); the file is corrupt or not the expected one")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path} has the wrong size for its IDX header: dimensions {shape} need {expected} bytes, "
                        f"but the file has {len(data)} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)

