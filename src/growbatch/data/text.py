"""Byte-level text corpora for language models: the CPython standard library (shared file or self-built) or a user's files.

A corpus is two uint8 token streams, a training and a validation split, with documents separated by a 0x00
byte. ``python_stdlib`` follows the recipe of ``shared/data/README.md``, so the running Python 3.11.7 rebuilds
the shared file's bytes exactly; another Python version gives its own library's bytes.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError

__all__ = ["TextCorpus", "TEXT_DATASETS", "STDLIB_FILE", "STDLIB_SHA256", "load_text_dataset", "build_stdlib_corpus",
           "load_stdlib_corpus", "read_text_files", "VOCAB_SIZE", "SEPARATOR"]

TEXT_DATASETS = ("python-stdlib", "text")  # the standard library; a user's --text-file
VOCAB_SIZE = 256  # bytes
SEPARATOR = 0  # the byte after every document (no source file contains it)
STDLIB_FILE = "python_stdlib.npz"
EXCLUDED_FOLDERS = frozenset({"test", "tests", "site-packages", "idlelib", "lib2to3"})
VALIDATION_EVERY = 20  # a file is in the validation split when crc32(relative path) % 20 == 0
# raw sha256 of the arrays of the shared file (CPython 3.11.7), from shared/data/README.md
STDLIB_SHA256 = {"train": "0aa574f6866f45d58e0b22a54c43fc77d9c8f0ccca1091e58fd4796ea2771448",
                 "val": "93933d99b68246b258ee6d81f4837baa7daf94557618819481fe52082b2ff523"}


@dataclass(frozen=True)
class TextCorpus:
    """A training and a validation token stream (uint8 bytes as int64-ready tensors) and where they came from."""

    train: torch.Tensor  # uint8, one dimension
    val: torch.Tensor
    source: str  # a path, or "python X.Y.Z standard library"
    vocab_size: int = VOCAB_SIZE

    @property
    def train_tokens(self) -> int:
        return int(self.train.numel())

    @property
    def val_tokens(self) -> int:
        return int(self.val.numel())

    def sha256(self) -> dict[str, str]:
        """The raw sha256 of each split, as in shared/data/README.md."""
        return {"train": hashlib.sha256(self.train.numpy().tobytes()).hexdigest(),
                "val": hashlib.sha256(self.val.numpy().tobytes()).hexdigest()}


def _stdlib_files(root: Path) -> list[str]:
    """The recipe's files: every .py file below ``root`` outside the excluded folders, relative paths in order."""
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if path.is_file() and not EXCLUDED_FOLDERS & set(relative.parts[:-1]):
            files.append(relative.as_posix())
    return sorted(files)


def build_stdlib_corpus(root: str | Path | None = None) -> dict[str, np.ndarray]:
    """The corpus of ``shared/data/README.md`` from a standard library folder (default: the running Python's).

    Returns the arrays of ``python_stdlib.npz``: ``train``, ``val`` (uint8) and ``train_files``, ``val_files``.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = _stdlib_files(root)
    if not files:
        raise DataError(f"no .py files under {root}: it is not a Python standard library folder")
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    names: dict[str, list[str]] = {"train": [], "val": []}
    for name in files:
        split = "val" if zlib.crc32(name.encode()) % VALIDATION_EVERY == 0 else "train"
        parts[split] += [(root / name).read_bytes(), bytes([SEPARATOR])]
        names[split].append(name)
    return {"train": np.frombuffer(b"".join(parts["train"]), dtype=np.uint8),
            "val": np.frombuffer(b"".join(parts["val"]), dtype=np.uint8),
            "train_files": np.array(names["train"]), "val_files": np.array(names["val"])}


def load_stdlib_corpus(data_dir: str | Path | None = None) -> TextCorpus:
    """``python_stdlib.npz`` from ``data_dir`` (a folder or the file; None: the default data folder, as for the
    image data sets) when it is there, else the self-built corpus."""
    from . import default_data_dir  # the package's: $GROWBATCH_DATA_DIR or ~/.cache/growbatch/data

    path = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    if path is not None and path.is_dir():
        path = path / STDLIB_FILE
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                train, val = arrays["train"], arrays["val"]
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path} is not a readable python_stdlib.npz (arrays train and val): {err}") from None
        return TextCorpus(torch.from_numpy(np.array(train, dtype=np.uint8)),
                          torch.from_numpy(np.array(val, dtype=np.uint8)), str(path))
    if data_dir is not None:  # asked for the shared file: say that it was not there (the bytes may differ)
        warnings.warn(f"{STDLIB_FILE} is not in {data_dir}; building the corpus from the running Python "
                      f"{platform.python_version()}'s standard library by the same recipe", stacklevel=2)
    arrays = build_stdlib_corpus()
    return TextCorpus(torch.from_numpy(arrays["train"].copy()), torch.from_numpy(arrays["val"].copy()),
                      f"python {platform.python_version()} standard library (self-built)")


def _read_utf8(path: Path) -> bytes:
    """A file's bytes, refused when empty, binary (a NUL byte) or not UTF-8."""
    data = path.read_bytes()
    if not data:
        raise DataError(f"--text-file {path} is empty; give a UTF-8 text file (or a folder of them) with some text")
    if bytes([SEPARATOR]) in data:
        raise DataError(f"--text-file {path} is a binary file (it holds a NUL byte); give a UTF-8 text file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"--text-file {path} is not UTF-8 text (invalid byte at offset {err.start}); "
                        "give a UTF-8 text file") from None
    return data


def read_text_files(path: str | Path, validation_fraction: float = 0.05) -> TextCorpus:
    """A user's corpus: a UTF-8 file, or every regular file of a folder (recursively, in path order).

    Documents are joined with 0x00. The last ``validation_fraction`` of the bytes is the validation split
    (one file has no split by file; a folder's split stays a cut of the stream, so the same file gives the
    same split on every machine).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"--text-file {root} does not exist; give a UTF-8 text file or a folder of them")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"--text-file {root} is an empty folder; give a UTF-8 text file or a folder holding some")
    stream = b"".join(_read_utf8(p) + bytes([SEPARATOR]) for p in files)
    cut = len(stream) - max(1, int(len(stream) * validation_fraction))
    tokens = torch.from_numpy(np.frombuffer(stream, dtype=np.uint8).copy())
    return TextCorpus(tokens[:cut].clone(), tokens[cut:].clone(), str(root))


def load_text_dataset(name: str, data_dir: str | Path | None = None, text_file: str | Path | None = None) -> TextCorpus:
    """``python-stdlib`` (the shared file in ``data_dir``, else self-built) or ``text`` (``text_file``)."""
    if name == "python-stdlib":
        return load_stdlib_corpus(data_dir)
    if name == "text":
        if text_file is None:
            raise DataError("dataset text reads --text-file PATH; give one (a UTF-8 file or a folder of them)")
        return read_text_files(text_file)
    raise ValueError(f"unknown text data set {name!r}; valid: {', '.join(TEXT_DATASETS)}")
