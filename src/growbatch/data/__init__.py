"""Image classification data sets held in memory: the embedded digits, MNIST, Fashion-MNIST and CIFAR-10.

``load_dataset(name, data_dir)`` reads the files users already have (an ``.npz`` first, then
torchvision's layout; see each module's docstring for its search order) and can download the
official files with MD5 checks. Every data set comes back as an :class:`ImageDataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import cifar10, digits, fashion_mnist, mnist
from .dataset import DataError, ImageDataset
from .download import MIRROR_ENV

__all__ = ["DATASET_NAMES", "DATA_DIR_ENV", "DataError", "ImageDataset", "MIRROR_ENV", "default_data_dir",
           "download", "load_dataset"]

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10")
DATA_DIR_ENV = "GROWBATCH_DATA_DIR"
_FILE_BASED = {"mnist": mnist, "fashion-mnist": fashion_mnist, "cifar10": cifar10}


def default_data_dir() -> Path:
    """``$GROWBATCH_DATA_DIR`` if set, else ``~/.cache/growbatch/data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "growbatch" / "data")


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name should be a str, one of {', '.join(DATASET_NAMES)}, but got {type(name).__name__}")
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return name


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 base_url: str | None = None) -> ImageDataset:
    """Load a whole data set into memory as uint8 tensors.

    Args:
        name: one of :data:`DATASET_NAMES`: ``"digits"`` (embedded, 1,442 + 355 images of 8 x 8),
            ``"mnist"``, ``"fashion-mnist"`` (60,000 + 10,000 of 28 x 28), ``"cifar10"``
            (50,000 + 10,000 of 3 x 32 x 32).
        data_dir: the folder holding the files, or an ``.npz`` file; None: :func:`default_data_dir`.
            Ignored for digits. Inside it, an ``.npz`` (``mnist.npz``, ``fashion_mnist.npz``,
            ``cifar10.npz``) is used first, then torchvision's layout (``MNIST/raw``,
            ``FashionMNIST/raw``, ``cifar-10-batches-py``).
        download: fetch the official files into ``data_dir`` when they are missing (MD5-checked).
        base_url: a mirror serving the official file names (else ``$GROWBATCH_MIRROR``, else the
            official server).

    Returns:
        The :class:`ImageDataset`, with the published mean/std (computed for digits) and
        ``augment`` True for cifar10 only.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is not a known data set.
        DataError: the files are missing (the message says which and how to get them), corrupt or
            truncated (it names the file and the check that failed), or the download failed.

    Example:
        >>> dataset = load_dataset("digits")
        >>> dataset.train_size, dataset.test_size, dataset.in_channels, dataset.image_size
        (1442, 355, 1, 8)
    """
    if _check_name(name) == "digits":
        return digits.load()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _FILE_BASED[name].load(root, download=download, base_url=base_url)


def download(name: str, root: str | Path | None = None, *, base_url: str | None = None) -> Path:
    """Download a data set's official files into ``root`` (torchvision's layout) and return their folder.

    Files already there with the right MD5 are kept; each new file is written to a temporary
    name and renamed only after its MD5 matches, so a failed download leaves nothing behind.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (digits is embedded).
        root: the data folder; None: :func:`default_data_dir`.
        base_url: a mirror serving the official file names (else ``$GROWBATCH_MIRROR``, else the
            official server: ossci-datasets for MNIST, Zalando's bucket for Fashion-MNIST,
            www.cs.toronto.edu for CIFAR-10).

    Raises:
        TypeError, ValueError: an unknown ``name``, or ``"digits"``.
        DataError: the server cannot be reached, or a file fails its MD5 check.
    """
    if _check_name(name) == "digits":
        raise ValueError("digits is embedded in scikit-learn and needs no download; "
                         f"name should be one of {', '.join(_FILE_BASED)}")
    root = Path(root).expanduser() if root is not None else default_data_dir()
    return _FILE_BASED[name].download(root, base_url=base_url)
