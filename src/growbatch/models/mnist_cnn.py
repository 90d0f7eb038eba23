"""MnistCNN: the standard MNIST CNN, two 5 x 5 convolutions (32, 64 channels) with batch norm and a hidden layer.

conv 5x5 -> BN -> ReLU -> max-pool 2, twice (28 -> 14 -> 7), then a 512-unit hidden layer with
BatchNorm1d and the output layer. About 1.7M parameters for 28 x 28 inputs, almost all in the
hidden layer; fast on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .shapes import check_pooled_cnn

__all__ = ["MnistCNN"]

HIDDEN_UNITS = 512


class MnistCNN(nn.Module):
    """Two convolution blocks and a two-layer classifier, for 28 x 28 digits or clothes.

    Args:
        in_channels: channels of the input images (1 for MNIST).
        num_classes: outputs (logits).
        image_size: height = width of the inputs; a positive multiple of 4 (two 2 x 2 max-pools,
            then a linear layer sized for the (image_size/4)^2 map); 28 for MNIST.

    Raises:
        TypeError: a non-integer argument.
        ValueError: a non-positive argument, or an image_size that is not a multiple of 4.

    Example:
        >>> MnistCNN(1, 10, 28)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        check_pooled_cnn("mnist-cnn", in_channels, num_classes, image_size, "28 or 32")
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (image_size // 4) ** 2, HIDDEN_UNITS, bias=False), nn.BatchNorm1d(HIDDEN_UNITS),
            nn.ReLU(inplace=True), nn.Linear(HIDDEN_UNITS, num_classes),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # flatten (not view): works for channels_last inputs, whose memory is not in N C H W order
        return self.classifier(torch.flatten(self.features(inputs), 1))
