"""The argument checks the image models share: positive sizes, and an image size their pooling or strides allow."""

from __future__ import annotations

from ..checks import check_positive_int

__all__ = ["check_pooled_cnn", "check_downsampling_cnn"]


def check_pooled_cnn(model: str, in_channels: int, num_classes: int, image_size: int, examples: str) -> None:
    """Raise TypeError or ValueError naming the bad argument of ``model``; ``examples`` lists sizes that work."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("num_classes", num_classes)
    check_positive_int("image_size", image_size)
    if image_size % 4:
        raise ValueError(f"image_size should be a multiple of 4 for the {model} model (two 2x2 max-pools), but got "
                         f"image_size={image_size}; use {examples}, or a model with global pooling "
                         f"(wrn-16-4, resnet18)")


def check_downsampling_cnn(model: str, in_channels: int, num_classes: int, image_size: int, minimum: int,
                           why: str) -> None:
    """Raise TypeError or ValueError naming the bad argument of ``model``, a network with global pooling whose
    downsampling (``why``) needs images of at least ``minimum`` pixels a side."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    check_positive_int("image_size", image_size)
    if image_size < minimum:
        raise ValueError(f"image_size should be at least {minimum} for {model} ({why}), but got "
                         f"image_size={image_size}; use the cnn model for smaller images")
