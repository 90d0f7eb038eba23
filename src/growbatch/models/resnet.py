"""ResNet-18 (He et al., CVPR 2016) adapted to 32 x 32 images: a 3 x 3 stem with stride 1 and no max-pool.

Four stages of two basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average
pooling and a linear classifier: 11.17M parameters for 10 classes, as commonly used on CIFAR-10.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_positive_int

__all__ = ["ResNet18"]

_MIN_IMAGE_SIZE = 8  # three stride-2 stages: 8 x 8 -> 1 x 1
_STAGE_CHANNELS = (64, 128, 256, 512)
_BLOCKS_PER_STAGE = 2


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (or its 1 x 1 projection with BN), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(inputs)))))
        return torch.relu(residual + self.shortcut(inputs))


class ResNet18(nn.Module):
    """ResNet-18 for small images.

    Args:
        num_classes: outputs (logits).
        in_channels: channels of the input images.
        image_size: height = width of the inputs, at least 8 (three stride-2 stages); 32 for CIFAR.

    Raises:
        TypeError: a non-integer argument.
        ValueError: a non-positive argument, or image_size < 8.

    Example:
        >>> sum(p.numel() for p in ResNet18().parameters())
        11173962
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        if image_size < _MIN_IMAGE_SIZE:
            raise ValueError(f"image_size should be at least {_MIN_IMAGE_SIZE} for resnet18 (three stride-2 stages), "
                             f"but got image_size={image_size}; use the cnn model for smaller images")
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, _STAGE_CHANNELS[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(_STAGE_CHANNELS[0]), nn.ReLU(inplace=True))
        stages, previous = [], _STAGE_CHANNELS[0]
        for channels, stride in zip(_STAGE_CHANNELS, (1, 2, 2, 2)):
            blocks = []
            for index in range(_BLOCKS_PER_STAGE):
                blocks.append(_BasicBlock(previous, channels, stride if index == 0 else 1))
                previous = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(_STAGE_CHANNELS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(inputs))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
