"""ResNets of He et al. (CVPR 2016) for 32 x 32 images: ResNet-18 and the paper's own CIFAR ResNet-20.

ResNet-18 adapted to CIFAR: a 3 x 3 stem with stride 1 and no max-pool, four stages of two basic blocks
(64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average pooling and a linear classifier:
11.17M parameters for 10 classes. ResNet-20 is the network of the paper's section 4.2: three stages of
three basic blocks (16, 32, 64 channels), identity shortcuts that zero-pad the new channels (option A):
0.27M parameters, about 41M multiply-adds per image, small enough to train on all of CIFAR-10 on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .shapes import check_downsampling_cnn

__all__ = ["ResNet18", "ResNet20"]

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


class _PaddedShortcut(nn.Module):
    """Option A of He et al.: the input subsampled by ``stride`` and its new channels zero (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        subsampled = inputs[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return nn.functional.pad(subsampled, (0, 0, 0, 0, half, self.extra - half))


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
        check_downsampling_cnn("resnet18", in_channels, num_classes, image_size, _MIN_IMAGE_SIZE, "three stride-2 stages")
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


_RESNET20_CHANNELS = (16, 32, 64)
_RESNET20_BLOCKS = 3  # depth 6 * 3 + 2 = 20


class ResNet20(nn.Module):
    """ResNet-20 of He et al. 2016, section 4.2, for 32 x 32 images (three stride-1/2/2 stages of 16/32/64).

    Args:
        num_classes: outputs (logits).
        in_channels: channels of the input images.
        image_size: height = width of the inputs, at least 4 (two stride-2 stages); 32 for CIFAR.

    Raises:
        TypeError: a non-integer argument.
        ValueError: a non-positive argument, or image_size < 4.

    Example:
        >>> sum(p.numel() for p in ResNet20().parameters())
        269722
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        check_downsampling_cnn("resnet20", in_channels, num_classes, image_size, 4, "two stride-2 stages")
        super().__init__()
        first = _RESNET20_CHANNELS[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, first, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(first), nn.ReLU(inplace=True))
        stages, previous = [], first
        for channels, stride in zip(_RESNET20_CHANNELS, (1, 2, 2)):
            blocks = []
            for index in range(_RESNET20_BLOCKS):
                block = _BasicBlock(previous, channels, stride if index == 0 else 1)
                if previous != channels or (index == 0 and stride != 1):
                    block.shortcut = _PaddedShortcut(previous, channels, stride)
                blocks.append(block)
                previous = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(inputs))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
