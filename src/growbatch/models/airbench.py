"""AirbenchSmall: a 7-layer CIFAR network in the style of Keller Jordan's airbench94, narrowed to train all of
CIFAR-10 in minutes on a 2-core CPU.

airbench94's shape (conv -> max-pool -> BN -> GELU, conv -> BN -> GELU, three blocks; a global max-pool and a
linear head) with widths 32 / 64 / 128 instead of 64 / 256 / 256 and a plain 3 x 3 stem: 0.30M parameters and
about 24M multiply-adds per image (ResNet-20: 41M) in 7 layers instead of 19: on 2 Xeon cores 1.9x ResNet-20's
training throughput in channels_last, 1.6x contiguous (bench/README.md section 8). None of airbench's training tricks (whitened stem, lookahead, label smoothing,
test-time augmentation): growbatch's schedules train it as they train any model.
"""

from __future__ import annotations

import torch
from torch import nn

from .shapes import check_downsampling_cnn

__all__ = ["AirbenchSmall"]

STEM_CHANNELS = 24
BLOCK_CHANNELS = (32, 64, 128)
_MIN_IMAGE_SIZE = 8  # three 2 x 2 max-pools: 8 x 8 -> 1 x 1


class _Block(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (pooling first halves the BN's work)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.activation = nn.GELU()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.bn1(self.pool(self.conv1(inputs))))
        return self.activation(self.bn2(self.conv2(hidden)))


class AirbenchSmall(nn.Module):
    """A 3 x 3 stem (24 channels), three blocks of 32 / 64 / 128 channels, a global max-pool and a linear head.

    Args:
        num_classes: outputs (logits).
        in_channels: channels of the input images.
        image_size: height = width of the inputs, at least 8 (three 2 x 2 max-pools); 32 for CIFAR.

    Raises:
        TypeError: a non-integer argument.
        ValueError: a non-positive argument, or image_size < 8.

    Example:
        >>> sum(p.numel() for p in AirbenchSmall().parameters())
        295480
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        check_downsampling_cnn("airbench-small", in_channels, num_classes, image_size, _MIN_IMAGE_SIZE,
                               "three 2 x 2 max-pools")
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, STEM_CHANNELS, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(STEM_CHANNELS), nn.GELU())
        blocks, previous = [], STEM_CHANNELS
        for channels in BLOCK_CHANNELS:
            blocks.append(_Block(previous, channels))
            previous = channels
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(previous, num_classes, bias=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(inputs))
        return self.classifier(torch.flatten(nn.functional.adaptive_max_pool2d(features, 1), 1))
