"""MNIST (LeCun, Cortes & Burges): 60,000 + 10,000 grey 28 x 28 digits; and the loader of every MNIST-format set.

Search order inside the data folder ``root``:

1. ``root`` itself when it is an ``.npz`` file;
2. ``root/mnist.npz`` (arrays x_train, y_train, x_test, y_test; Keras' ``mnist.npz`` qualifies);
3. torchvision's layout ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each file
   raw or ``.gz`` (raw first);
4. with ``download=True``: the four ``.gz`` files fetched into ``root/MNIST/raw`` (MD5-checked).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .dataset import DataError, ImageDataset, arrays_to_dataset
from .download import fetch, resolve_base_url
from .idx import read_idx
from .npz import find_npz, read_npz

__all__ = ["SOURCE", "MnistStyle", "download", "download_mnist_style", "load", "load_mnist_style"]

_IMAGE_SHAPE = (1, 28, 28)
_NUM_CLASSES = 10
_ROLES = ("x_train", "y_train", "x_test", "y_test")  # the order of MnistStyle.files
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # the names both MNIST and Fashion-MNIST use


@dataclasses.dataclass(frozen=True)
class MnistStyle:
    """Where a data set in MNIST's IDX format lives, on disk and on its server.

    Args:
        name: the data set's name (``"mnist"``).
        folder: torchvision's folder for it; the files are in ``root/folder/raw``.
        npz_names: file names of the ``.npz`` form, tried in order.
        base_url: the official server folder holding ``files``.
        files: (``.gz`` file name, MD5) of train images, train labels, test images, test labels.
        mean, std: the published statistics of ``x_train / 255``.
    """

    name: str
    folder: str
    npz_names: tuple[str, ...]
    base_url: str
    files: tuple[tuple[str, str], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


SOURCE = MnistStyle(
    name="mnist",
    folder="MNIST",
    npz_names=("mnist.npz",),
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    # MD5s as published by torchvision
    files=tuple(zip(IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    mean=(0.1307,),
    std=(0.3081,),
)


def _build(source: MnistStyle, arrays: dict, origin: Path) -> ImageDataset:
    return arrays_to_dataset(source.name, arrays, source=origin, image_shape=_IMAGE_SHAPE, num_classes=_NUM_CLASSES,
                             mean=source.mean, std=source.std)


def _find_idx_files(source: MnistStyle, raw: Path) -> tuple[list[Path], list[str]]:
    """The IDX files found in ``raw`` (raw before ``.gz``) and the names of those missing."""
    found, missing = [], []
    for gz_name, _ in source.files:
        stem = gz_name.removesuffix(".gz")
        path = next((raw / name for name in (stem, gz_name) if (raw / name).is_file()), None)
        if path is None:
            missing.append(f"{stem}[.gz]")
        else:
            found.append(path)
    return found, missing


def _missing_error(source: MnistStyle, root: Path, missing: list[str], base_url: str) -> DataError:
    raw = root / source.folder / "raw"
    where = "" if root.is_dir() else " (not a folder)" if root.exists() else " (the folder does not exist)"
    stems = ", ".join(gz_name.removesuffix(".gz") for gz_name, _ in source.files)
    partial = f"; {raw} lacks {', '.join(missing)}" if len(missing) < len(source.files) else ""
    return DataError(
        f"no {source.name} files in {root}{where}: looked for {' or '.join(source.npz_names)} there, then for "
        f"{stems} (raw or .gz) in {raw}{partial}. To get them: pass --download (download=True) to fetch them "
        f"from {base_url}, or copy {source.npz_names[0]} (arrays x_train, y_train, x_test, y_test) into {root}"
    )


def load_mnist_style(source: MnistStyle, root: Path, *, download: bool = False,
                     base_url: str | None = None) -> ImageDataset:
    """Load an MNIST-format data set from ``root`` in the search order of this module's docstring.

    Raises:
        DataError: no files and ``download`` is False; a corrupt or truncated file; a failed download.
    """
    if root.is_file() and root.suffix == ".npz":
        return _build(source, read_npz(root), root)
    npz = find_npz(root, source.npz_names)
    if npz is not None:
        return _build(source, read_npz(npz), npz)
    raw = root / source.folder / "raw"
    paths, missing = _find_idx_files(source, raw)
    if missing and download:
        download_mnist_style(source, root, base_url=base_url)
        paths, missing = _find_idx_files(source, raw)
    if missing:
        raise _missing_error(source, root, missing, resolve_base_url(source.base_url, base_url))
    arrays = {role: read_idx(path, ndim=3 if role.startswith("x") else 1) for role, path in zip(_ROLES, paths)}
    return _build(source, arrays, raw)


def download_mnist_style(source: MnistStyle, root: Path, *, base_url: str | None = None) -> Path:
    """Fetch the four ``.gz`` files into ``root/folder/raw`` (kept if already there with the right MD5).

    Returns:
        The folder the files are in.

    Raises:
        DataError: a file cannot be downloaded or fails its MD5 check (no file is left behind).
    """
    base = resolve_base_url(source.base_url, base_url)
    raw = root / source.folder / "raw"
    for name, md5 in source.files:
        fetch(base + name, raw / name, md5)
    return raw


def load(root: Path, *, download: bool = False, base_url: str | None = None) -> ImageDataset:
    """MNIST from ``root`` (see the search order above)."""
    return load_mnist_style(SOURCE, root, download=download, base_url=base_url)


def download(root: Path, *, base_url: str | None = None) -> Path:
    """Download MNIST into ``root/MNIST/raw`` and return that folder."""
    return download_mnist_style(SOURCE, root, base_url=base_url)
