"""The paper's experiments as named schedules (Smith et al. 2018, §5.1, §5.2 and §5.4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .builders import step_schedule
from .schedule import Schedule

__all__ = ["Preset", "PRESETS", "get_preset", "preset_names"]

CIFAR10_SIZE = 50_000
IMAGENET_SIZE = 1_281_167


@dataclass(frozen=True)
class Preset:
    """A named schedule with the paper's setting it reproduces."""

    name: str
    description: str
    build: Callable[[], Schedule]
    weight_decay: float = 0.0

    def schedule(self) -> Schedule:
        return self.build()


def _cifar(mode: str, name: str, *, lr: float = 0.1, batch_size: int = 128, momentum: float = 0.9) -> Callable[[], Schedule]:
    # Wide ResNet 16-4, 200 epochs, milestones 60/120/160, factor 5, cap 5,120 (§5.1)
    return lambda: step_schedule(
        mode, lr=lr, batch_size=batch_size, momentum=momentum, epochs=200, milestones=(60, 120, 160),
        factor=5, dataset_size=CIFAR10_SIZE, max_batch_size=5120, name=name,
    )


def _imagenet(mode: str, name: str, *, batch_size: int = 8192, momentum: float = 0.9) -> Callable[[], Schedule]:
    # Inception-ResNet-V2, 90 epochs, lr 3.0 x0.1 at 30/60/80, cap 65,536, last batch dropped (§5.4)
    return lambda: step_schedule(
        mode, lr=3.0, batch_size=batch_size, momentum=momentum, epochs=90, milestones=(30, 60, 80),
        factor=10, dataset_size=IMAGENET_SIZE, max_batch_size=65_536, drop_last=True, name=name,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("cifar10-wrn-decay", "CIFAR-10 WRN 16-4: lr 0.1 /5 at 60,120,160; B 128; m 0.9 (§5.1 original)",
               _cifar("decay", "cifar10-wrn-decay"), 5e-4),
        Preset("cifar10-wrn-hybrid", "CIFAR-10 WRN 16-4: B 128->640 at 60, then lr /5 at 120,160 (§5.1 hybrid)",
               _cifar("hybrid", "cifar10-wrn-hybrid"), 5e-4),
        Preset("cifar10-wrn-increase", "CIFAR-10 WRN 16-4: lr 0.1 fixed, B x5 at 60,120,160 up to 5,120 (§5.1)",
               _cifar("increase", "cifar10-wrn-increase"), 5e-4),
        Preset("cifar10-wrn-increase-lr", "CIFAR-10 WRN 16-4: as increase with lr 0.5, B0 640 (§5.2)",
               _cifar("increase", "cifar10-wrn-increase-lr", lr=0.5, batch_size=640), 5e-4),
        Preset("cifar10-wrn-increase-momentum", "CIFAR-10 WRN 16-4: as increase-lr with m 0.98, B0 3,200 (§5.2)",
               _cifar("increase", "cifar10-wrn-increase-momentum", lr=0.5, batch_size=3200, momentum=0.98), 5e-4),
        Preset("imagenet-irv2-decay", "ImageNet Inception-ResNet-V2: lr 3.0 x0.1 at 30,60,80; B 8,192 (§5.4)",
               _imagenet("decay", "imagenet-irv2-decay")),
        Preset("imagenet-irv2-increase", "ImageNet IRv2: B 8,192 -> 65,536 at 30, then lr takes the rest (§5.4)",
               _imagenet("increase", "imagenet-irv2-increase")),
        Preset("imagenet-irv2-momentum-0.95", "ImageNet IRv2: as increase with m 0.95, B0 16,384 (§5.4)",
               _imagenet("increase", "imagenet-irv2-momentum-0.95", batch_size=16_384, momentum=0.95)),
        Preset("imagenet-irv2-momentum-0.975", "ImageNet IRv2: as increase with m 0.975, B0 32,768 (§5.4)",
               _imagenet("increase", "imagenet-irv2-momentum-0.975", batch_size=32_768, momentum=0.975)),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises ``ValueError`` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
