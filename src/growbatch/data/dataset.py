"""ImageDataset: a whole image classification data set as uint8 tensors, and the checks every reader applies.

Readers return NumPy arrays; :func:`arrays_to_dataset` checks shapes, dtypes and labels and turns
them into an :class:`ImageDataset`, naming the file when something is wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ARRAY_KEYS", "DataError", "ImageDataset", "arrays_to_dataset", "channel_stats"]

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data set's files are missing, corrupt, truncated or not in the expected format."""


def _shape_property(array: str, dimension: int, doc: str) -> property:
    """A size read from an array's shape (``x_train.shape[1]`` is the channel count)."""
    return property(lambda self: int(getattr(self, array).shape[dimension]), doc=doc)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class ImageDataset:
    """A train and a test split held in memory, with the normalisation and augmentation they call for.

    Args:
        name: the data set's name, e.g. ``"mnist"``.
        x_train, x_test: images, uint8 0..255, N x C x H x W, square (H == W).
        y_train, y_test: class indices 0..num_classes-1, int64, one per image.
        num_classes: the number of classes.
        mean, std: per channel, of ``x_train / 255`` (``std`` > 0); used as ``(x/255 - mean) / std``.
        augment: train with random crops (zero padding of 4 pixels) and horizontal flips.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: shapes, dtypes or lengths that do not fit together.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise ValueError(f"num_classes should be an integer >= 2, but got num_classes={self.num_classes!r}")
        for split in ("train", "test"):
            images, labels = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
                raise TypeError(f"x_{split} and y_{split} should be torch tensors, but got "
                                f"{type(images).__name__} and {type(labels).__name__}")
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
                raise ValueError(f"x_{split} should be uint8 N x C x H x W with H == W, but got "
                                 f"dtype={images.dtype} shape={tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(f"y_{split} should be int64 with one label per image ({images.shape[0]}), "
                                 f"but got dtype={labels.dtype} shape={tuple(labels.shape)}")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(f"x_test images are {tuple(self.x_test.shape[1:])} but x_train images are "
                             f"{tuple(self.x_train.shape[1:])}; both splits need the same C x H x W")
        channels = self.x_train.shape[1]
        for field in ("mean", "std"):
            values = getattr(self, field)
            if not isinstance(values, tuple) or len(values) != channels:
                raise ValueError(f"{field} should be a tuple of one float per channel ({channels}), "
                                 f"but got {field}={values!r}")
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std should be positive in every channel, but got std={self.std!r}")

    in_channels = _shape_property("x_train", 1, "Channels per image: 1 for grey, 3 for RGB.")
    image_size = _shape_property("x_train", 2, "Height (= width) of the images in pixels.")
    train_size = _shape_property("x_train", 0, "Number of training images.")
    test_size = _shape_property("x_test", 0, "Number of test images.")

    def subset(self, train_size: int, *, seed: int = 0) -> ImageDataset:
        """The same data set with ``train_size`` training images drawn without replacement by ``seed``.

        Every class keeps its share (rounded) of the training split, so a 10,000-image MNIST is
        still balanced; the test split, mean and std are unchanged, so accuracies stay comparable
        with runs on the whole training split.

        Raises:
            ValueError: ``train_size`` is not in ``[num_classes, train_size]``.
        """
        if isinstance(train_size, bool) or not isinstance(train_size, int):
            raise TypeError(f"train_size should be an int, but got {type(train_size).__name__}")
        if not self.num_classes <= train_size <= self.train_size:
            raise ValueError(f"train_size should be between {self.num_classes} (one image per class) and "
                             f"{self.train_size} (all of {self.name}'s training images), but got {train_size}")
        if train_size == self.train_size:
            return self
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.train_size, generator=generator)
        labels = self.y_train[order]
        counts = torch.bincount(labels, minlength=self.num_classes).double()
        # largest remainder: per-class quotas that add up to train_size exactly
        exact = counts * train_size / self.train_size
        quota = exact.floor().long()
        short = train_size - int(quota.sum())
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
        rank_in_class = torch.empty_like(labels)
        for label in range(self.num_classes):
            where = (labels == label).nonzero().flatten()
            rank_in_class[where] = torch.arange(len(where))
        chosen = order[rank_in_class < quota[labels]].sort().values
        return dataclasses.replace(self, x_train=self.x_train[chosen], y_train=self.y_train[chosen])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, train_size={self.train_size}, test_size={self.test_size}, "
                f"image=({self.in_channels}, {self.image_size}, {self.image_size}), "
                f"num_classes={self.num_classes}, augment={self.augment})")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``images / 255``, images N x C x H x W uint8."""
    values = images.to(torch.float64).div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(values.mean(1).tolist()), tuple(values.std(1, correction=0).tolist())


def _to_nchw(images: np.ndarray, key: str, image_shape: tuple[int, int, int], source: str) -> np.ndarray:
    """N x C x H x W from N x H x W (grey), N x H x W x C (channels last) or N x C x H x W."""
    channels, height, width = image_shape
    if images.ndim == 3 and channels == 1 and images.shape[1:] == (height, width):
        return images[:, None]
    if images.ndim == 4 and images.shape[1:] == (height, width, channels):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1:] == (channels, height, width):
        return images
    grey = f"N x {height} x {width} or " if channels == 1 else ""
    raise DataError(
        f"{key} in {source} has shape {images.shape}, but this data set needs {grey}N x {height} x {width} x "
        f"{channels} (channels last) or N x {channels} x {height} x {width} images; the file holds another "
        f"data set or is corrupt"
    )


def arrays_to_dataset(
    name: str,
    arrays: Mapping[str, np.ndarray],
    *,
    source: str | Path,
    image_shape: tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = False,
) -> ImageDataset:
    """Check the four arrays read from ``source`` and build the :class:`ImageDataset`.

    Args:
        name: the data set's name.
        arrays: ``x_train, y_train, x_test, y_test``; images uint8 N x H x W (grey), N x H x W x C or
            N x C x H x W; labels of any integer dtype, one per image, in ``0..num_classes-1``.
        source: the file or folder the arrays come from (named in errors).
        image_shape: the C x H x W every image must have.
        num_classes, mean, std, augment: as in :class:`ImageDataset`.

    Raises:
        DataError: a wrong dtype or shape, an empty split, a label count that differs from the image
            count, or a label out of range; the message names ``source`` and the array.
    """
    tensors = {}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.dtype != np.uint8:
            raise DataError(f"x_{split} in {source} has dtype {images.dtype}, but images must be uint8 "
                            f"(0..255); the file is corrupt or holds other data")
        images = _to_nchw(images, f"x_{split}", image_shape, str(source))
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"y_{split} in {source} has dtype {labels.dtype} and shape {labels.shape}, but "
                            f"labels must be a 1-d integer array; the file is corrupt or holds other data")
        if len(images) == 0 or len(labels) != len(images):
            raise DataError(f"{source} has {len(images)} {split} images and {len(labels)} {split} labels; "
                            f"both must be equal and non-zero (the file is truncated or corrupt)")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"y_{split} in {source} has labels in {low}..{high}, but this data set has classes "
                            f"0..{num_classes - 1}; the file is corrupt or holds another data set")
        # NOTE [copies]: np.ascontiguousarray copies only when needed; read-only buffers (IDX bytes,
        # np.load) are copied once so that torch owns writable memory.
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:
            images = images.copy()
        tensors[f"x_{split}"] = torch.from_numpy(images)
        tensors[f"y_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(name=name, num_classes=num_classes, mean=tuple(float(m) for m in mean),
                        std=tuple(float(s) for s in std), augment=augment, **tensors)
