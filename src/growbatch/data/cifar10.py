"""CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 RGB 32 x 32 images of 10 classes; trained with crop + flip.

Search order inside the data folder ``root``:

1. ``root`` itself when it is an ``.npz`` file;
2. ``root/cifar10.npz`` or ``root/cifar-10.npz`` (x_train, y_train, x_test, y_test; images
   N x 32 x 32 x 3 channels last, or N x 3 x 32 x 32);
3. torchvision's layout ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (pickles, read
   by an unpickler that only builds NumPy arrays, see cifar_pickle.py);
4. the archive ``root/cifar-10-python.tar.gz``, MD5-checked and extracted into that layout;
   with ``download=True`` it is fetched first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cifar_pickle import read_cifar_batch
from .dataset import DataError, ImageDataset, arrays_to_dataset
from .download import extract_members, fetch, file_md5, resolve_base_url
from .npz import find_npz, read_npz

__all__ = ["ARCHIVE", "ARCHIVE_MD5", "BASE_URL", "FOLDER", "download", "load"]

FOLDER = "cifar-10-batches-py"
NPZ_NAMES = ("cifar10.npz", "cifar-10.npz")
BASE_URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # as published on the CIFAR page and used by torchvision
TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_BATCH = "test_batch"
_OPTIONAL = ("batches.meta",)  # class names; extracted so torchvision can use the folder too
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _build(arrays: dict, origin: Path) -> ImageDataset:
    return arrays_to_dataset("cifar10", arrays, source=origin, image_shape=(3, 32, 32), num_classes=10,
                             mean=MEAN, std=STD, augment=True)


def _missing_batches(folder: Path) -> list[str]:
    return [name for name in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / name).is_file()]


def _read_batches(folder: Path) -> ImageDataset:
    train = [read_cifar_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = read_cifar_batch(folder / TEST_BATCH)
    arrays = {"x_train": np.concatenate([images for images, _ in train]),
              "y_train": np.concatenate([labels for _, labels in train]), "x_test": x_test, "y_test": y_test}
    return _build(arrays, folder)


def _extract(root: Path) -> None:
    """Check the MD5 of ``root/ARCHIVE`` and extract the batches into ``root/FOLDER``."""
    archive = root / ARCHIVE
    md5 = file_md5(archive)
    if md5 != ARCHIVE_MD5:
        raise DataError(f"{archive} failed its checksum: MD5 {md5}, expected {ARCHIVE_MD5}; the file is corrupt or "
                        f"truncated: delete it and pass --download (download=True) to fetch it again")
    members = {f"{FOLDER}/{name}": root / FOLDER / name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    extract_members(archive, members)
    try:
        extract_members(archive, {f"{FOLDER}/{name}": root / FOLDER / name for name in _OPTIONAL})
    except DataError:
        pass  # the batches are what we read; an archive without the class names is still usable


def load(root: Path, *, download: bool = False, base_url: str | None = None) -> ImageDataset:
    """CIFAR-10 from ``root`` in the search order of this module's docstring.

    Raises:
        DataError: no files and ``download`` is False; a corrupt or truncated file (bad zip CRC,
            pickle that fails its checks, archive whose MD5 differs); a failed download.
    """
    if root.is_file() and root.suffix == ".npz":
        return _build(read_npz(root), root)
    npz = find_npz(root, NPZ_NAMES)
    if npz is not None:
        return _build(read_npz(npz), npz)
    folder = root / FOLDER
    missing = _missing_batches(folder)
    if missing and download:
        _fetch_and_extract(root, base_url)
    elif missing and (root / ARCHIVE).is_file():
        _extract(root)
    missing = _missing_batches(folder)
    if missing:
        where = "" if root.is_dir() else " (not a folder)" if root.exists() else " (the folder does not exist)"
        partial = f"; {folder} lacks {', '.join(missing)}" if len(missing) < len(TRAIN_BATCHES) + 1 else ""
        raise DataError(
            f"no cifar10 files in {root}{where}: looked for {' or '.join(NPZ_NAMES)} there, then for "
            f"{', '.join(TRAIN_BATCHES)} and {TEST_BATCH} in {folder}, then for {ARCHIVE} in {root}{partial}. "
            f"To get them: pass --download (download=True) to fetch {resolve_base_url(BASE_URL, base_url)}{ARCHIVE}, "
            f"or copy cifar10.npz (arrays x_train, y_train, x_test, y_test) into {root}"
        )
    return _read_batches(folder)


def _fetch_and_extract(root: Path, base_url: str | None) -> Path:
    fetch(resolve_base_url(BASE_URL, base_url) + ARCHIVE, root / ARCHIVE, ARCHIVE_MD5)
    _extract(root)
    return root / FOLDER


def download(root: Path, *, base_url: str | None = None) -> Path:
    """Fetch ``cifar-10-python.tar.gz`` into ``root`` (kept if its MD5 is right) and extract the batches.

    Returns:
        The folder holding the batches, ``root/cifar-10-batches-py``.

    Raises:
        DataError: the download fails or its MD5 differs (nothing is written), or the archive lacks a batch.
    """
    return _fetch_and_extract(root, base_url)
