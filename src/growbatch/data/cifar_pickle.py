"""The CIFAR-10 "python version" batches (``cifar-10-batches-py/data_batch_1`` ...), read without running code.

Each batch is a pickled dict with ``data`` (uint8, N x 3072: the red, green and blue 32 x 32 planes
of each image) and ``labels`` (N ints). Pickles can call any importable function, so the
unpickler below resolves only the few globals a NumPy array needs and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .dataset import DataError

__all__ = ["read_cifar_batch"]

_PROBE = np.zeros(1, dtype=np.uint8)
# NOTE [pickle globals]: the functions NumPy itself names when it pickles an array, taken from
# NumPy's own reductions rather than imported by path, so the allow-list works for NumPy 1 and 2
# and for batches written by Python 2 (numpy.core) or Python 3 (numpy._core, protocol 5 buffers).
_RECONSTRUCT = _PROBE.__reduce__()[0]
_FROMBUFFER = _PROBE.__reduce_ex__(5)[0]
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # bytes in Python 3, protocol 2
}
_IMAGE_SHAPE = (3, 32, 32)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and NumPy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"the global {module}.{name} is not allowed in a CIFAR batch") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 3 x 32 x 32) and labels (int64, N) of one CIFAR-10 python batch.

    Raises:
        DataError: not a pickle, truncated, a global other than NumPy's array builders (the file is
            then not loaded at all), no ``data``/``labels`` entries, or data that is not uint8 N x 3072
            with one label per row.
    """
    try:
        # latin1: Python 2 ``str`` (keys and the array bytes) decodes to str that NumPy accepts as bytes
        batch = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, LookupError, UnicodeError, OverflowError, MemoryError) as error:
        raise DataError(f"{path} is not a readable CIFAR-10 batch: the pickle format check failed "
                        f"({type(error).__name__}: {error}); copy the file again or download the data set") from error
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, but a CIFAR-10 batch is a dict with "
                        f"'data' and 'labels'; the file is corrupt or of another data set")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(f"{path} lacks the keys {', '.join(missing)} (it has {', '.join(map(str, batch)) or 'none'}); "
                        f"a CIFAR-10 batch needs 'data' and 'labels' (CIFAR-100 uses 'fine_labels')")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} has data of {described}, but a CIFAR-10 batch holds uint8 N x 3072 "
                        f"(3 x 32 x 32 per row); the file is corrupt")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise DataError(f"{path} has labels that are not integers ({error}); the file is corrupt") from error
    if labels.shape != (len(data),):
        raise DataError(f"{path} has {len(data)} images but labels of shape {labels.shape}; "
                        f"a CIFAR-10 batch has one label per image (the file is corrupt)")
    return data.reshape(len(data), *_IMAGE_SHAPE), labels
