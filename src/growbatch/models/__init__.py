"""The model families: a small CNN for the digits, the MNIST CNN, Wide ResNet, ResNet-18, ResNet-20 and an
airbench-style network for 32 x 32 images.

``build_model(name, in_channels=..., num_classes=..., image_size=...)`` builds one by name and,
with ``ghost_batch_size``, swaps its batch norms for ghost batch norms. Every model accepts
inputs in ``torch.channels_last`` memory format.
"""

from __future__ import annotations

from torch import nn

from ..checks import check_positive_int
from .airbench import AirbenchSmall
from .cnn import DigitsCNN
from .mnist_cnn import MnistCNN
from .resnet import ResNet18, ResNet20
from .wide_resnet import WideResNet

__all__ = ["MODEL_NAMES", "LM_MODEL_NAMES", "AirbenchSmall", "DigitsCNN", "MnistCNN", "ResNet18", "ResNet20", "WideResNet", "build_model"]

MODEL_NAMES = ("cnn", "mnist-cnn", "wrn-16-4", "resnet18", "resnet20", "airbench-small")
LM_MODEL_NAMES = ("gpt-tiny", "gpt-small")  # language models: growbatch.models.gpt, built by the lm task


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                ghost_batch_size: int | None = None) -> nn.Module:
    """A freshly initialised model (draws from torch's global RNG: seed it first for reproducibility).

    Args:
        name: one of :data:`MODEL_NAMES`:

            =========== ============================================= ============= ==========
            name        network                                       image_size    parameters
            =========== ============================================= ============= ==========
            cnn         :class:`DigitsCNN`, 4 conv 3x3 + BN           multiple of 4 67,754 (1 x 8 x 8)
            mnist-cnn   :class:`MnistCNN`, 2 conv 5x5 + BN + FC 512   multiple of 4 1,663,978 (1 x 28 x 28)
            wrn-16-4    :class:`WideResNet` (16, 4), pre-activation   >= 4          2,748,890 (3 x 32 x 32)
            resnet18    :class:`ResNet18`, 3x3 stem, no max-pool      >= 8          11,173,962 (3 x 32 x 32)
            resnet20    :class:`ResNet20`, He et al.'s CIFAR network  >= 4          269,722 (3 x 32 x 32)
            airbench-   :class:`AirbenchSmall`, 7 conv 3x3, after     >= 8          295,480 (3 x 32 x 32)
            small       airbench94, widths 32/64/128
            =========== ============================================= ============= ==========

            (parameters for 10 classes.)
        in_channels: channels of the input images (1 grey, 3 RGB).
        num_classes: outputs (logits).
        image_size: height = width of the input images.
        ghost_batch_size: if given, every BatchNorm becomes a ghost batch norm that normalises
            groups of this many samples (``growbatch.batching.ghost_bn.convert_to_ghost_batch_norm``).

    Raises:
        TypeError: a non-str name or a non-integer size.
        ValueError: an unknown name (the valid ones are listed), a non-positive size, or an
            image_size the model does not support (the message says which it does).

    Example:
        >>> model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
        >>> type(model).__name__, sum(p.numel() for p in model.parameters())
        ('DigitsCNN', 67754)
    """
    if not isinstance(name, str):
        raise TypeError(f"name should be a str, one of {', '.join(MODEL_NAMES)}, but got {type(name).__name__}")
    if name in LM_MODEL_NAMES:
        raise ValueError(f"{name} is a language model (growbatch.models.gpt, growbatch run lm); image models: "
                         f"{', '.join(MODEL_NAMES)}")
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if ghost_batch_size is not None:
        check_positive_int("ghost_batch_size", ghost_batch_size)
    if name == "cnn":
        model: nn.Module = DigitsCNN(in_channels, num_classes, image_size)
    elif name == "mnist-cnn":
        model = MnistCNN(in_channels, num_classes, image_size)
    elif name == "wrn-16-4":
        model = WideResNet(16, 4, num_classes, in_channels, image_size=image_size)
    elif name == "resnet18":
        model = ResNet18(num_classes, in_channels, image_size)
    elif name == "resnet20":
        model = ResNet20(num_classes, in_channels, image_size)
    else:
        model = AirbenchSmall(num_classes, in_channels, image_size)
    if ghost_batch_size is not None:
        # imported here: ghost batch norm is optional for building models and lives in its own module
        from ..batching.ghost_bn import convert_to_ghost_batch_norm

        model = convert_to_ghost_batch_norm(model, ghost_batch_size)
    return model
