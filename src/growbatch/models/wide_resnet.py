"""WideResNet (Zagoruyko & Komodakis, BMVC 2016): pre-activation residual blocks, widened by a factor k.

WRN-d-k has three stages of (d-4)/6 blocks with 16k, 32k and 64k channels (strides 1, 2, 2) after a
16-channel 3 x 3 stem; each block is BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with a 1 x 1
convolution on the shortcut where the shape changes. WRN-16-4 (2.75M parameters for 10 classes)
is the network of Smith et al. (2018), Section 5.1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_positive_int

__all__ = ["WideResNet"]

_STEM_CHANNELS = 16
_MIN_IMAGE_SIZE = 4  # two stride-2 stages: 4 x 4 -> 1 x 1


class _PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-dropout-conv, added to the input (or to a 1 x 1 projection of it)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        projected = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if projected else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(inputs))
        # as in the authors' code: a projected shortcut starts from the activated input, an identity one from the input
        shortcut = inputs if self.shortcut is None else self.shortcut(activated)
        residual = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(activated)))))
        return shortcut + residual


class WideResNet(nn.Module):
    """WRN-depth-width for small images, with global average pooling before the classifier.

    Args:
        depth: total depth d, with (d - 4) divisible by 6 (10, 16, 22, 28, 40, ...).
        width: widening factor k (1 gives the thin pre-activation ResNet).
        num_classes: outputs (logits).
        in_channels: channels of the input images.
        dropout: probability between the two convolutions of each block (0.0: none, as in Smith et al.).
        image_size: height = width of the inputs, at least 4 (two stride-2 stages); 32 for CIFAR.

    Raises:
        TypeError: a non-integer argument.
        ValueError: a depth with (depth - 4) % 6 != 0, a non-positive size, dropout outside [0, 1),
            or image_size < 4.

    Example:
        >>> model = WideResNet(16, 4)
        >>> sum(p.numel() for p in model.parameters())
        2748890
    """

    def __init__(self, depth: int = 16, width: int = 4, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0, image_size: int = 32) -> None:
        check_positive_int("depth", depth)
        check_positive_int("width", width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("image_size", image_size)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth should be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), but got depth={depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout should be in [0, 1), but got dropout={dropout}")
        if image_size < _MIN_IMAGE_SIZE:
            raise ValueError(f"image_size should be at least {_MIN_IMAGE_SIZE} for a Wide ResNet (two stride-2 "
                             f"stages), but got image_size={image_size}")
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        channels = [_STEM_CHANNELS, 16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.stem = nn.Conv2d(in_channels, _STEM_CHANNELS, 3, padding=1, bias=False)
        stages = []
        for stage, stride in enumerate((1, 2, 2)):
            blocks = [_PreActBlock(channels[stage] if index == 0 else channels[stage + 1], channels[stage + 1],
                                   stride if index == 0 else 1, dropout) for index in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels[3])  # the last block ends in a convolution: activate before pooling
        self.classifier = nn.Linear(channels[3], num_classes)
        self._initialise()

    def _initialise(self) -> None:
        # He initialisation for convolutions and a zero bias for the classifier, as in the authors' code
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.stages(self.stem(inputs))))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
