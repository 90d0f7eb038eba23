"""The embedded default data set: scikit-learn's handwritten digits (1,797 grey 8 x 8 images, 10 classes).

No download: the data ships inside scikit-learn. It has no train/test split, so we fix one:
a stratified 80/20 split drawn once from a seeded ``RandomState`` (whose stream NumPy keeps
stable across versions): 1,442 training and 355 test images.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset, arrays_to_dataset, channel_stats

__all__ = ["SPLIT_SEED", "TEST_SIZE", "TRAIN_SIZE", "load", "split_indices", "to_uint8"]

SPLIT_SEED = 0
TRAIN_SIZE = 1442  # sum over classes of count - count // 5
TEST_SIZE = 355  # sum over classes of count // 5 (per-class counts 174..183)
_MAX_VALUE = 16  # load_digits pixels are counts 0..16 of set bits in 4 x 4 blocks


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Pixel values 0..16 as uint8 0..255: ``round(v * 255 / 16)``, one-to-one, so no information is lost.

    Example:
        >>> to_uint8(np.array([0, 1, 8, 15, 16])).tolist()
        [0, 16, 128, 239, 255]
    """
    return np.round(np.asarray(values, dtype=np.float64) * 255 / _MAX_VALUE).astype(np.uint8)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices: in each class, ``count // 5`` images drawn at random go to the test set."""
    random = np.random.RandomState(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(members[random.permutation(len(members))[: len(members) // 5]])
    test_indices = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_indices), test_indices


def load() -> ImageDataset:
    """The digits as an :class:`ImageDataset` (1 x 8 x 8, uint8), mean/std computed on the training split."""
    from sklearn.datasets import (
        load_digits,  # imported here: scikit-learn takes a second to import
    )

    digits = load_digits()
    images = to_uint8(digits.images)
    train, test = split_indices(digits.target)
    arrays = {"x_train": images[train], "y_train": digits.target[train],
              "x_test": images[test], "y_test": digits.target[test]}
    mean, std = channel_stats(torch.from_numpy(images[train][:, None]))
    return arrays_to_dataset("digits", arrays, source="sklearn.datasets.load_digits", image_shape=(1, 8, 8),
                             num_classes=10, mean=mean, std=std)
