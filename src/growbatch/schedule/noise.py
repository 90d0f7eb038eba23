"""SGD noise scale and the paper's scaling rules (Smith et al. 2018, §2-§3).

The noise scale of SGD with momentum is g = eps/(1-m) * (N/B - 1); for B << N it
is approximately eps*N / (B*(1-m)). Every function here is pure.
"""

from __future__ import annotations

from ..checks import (
    check_dataset_size,
    check_lr,
    check_momentum,
    check_number,
)

__all__ = [
    "effective_lr",
    "noise_scale",
    "noise_scale_approx",
    "batch_size_for_noise_ratio",
    "lr_for_batch_size",
    "batch_size_for_momentum",
]

















def effective_lr(lr: float, momentum: float = 0.0) -> float:
    """Effective learning rate eps/(1-m) of SGD with momentum m (§3)."""
    return check_lr(lr) / (1.0 - check_momentum(momentum))


def noise_scale(lr: float, batch_size: float, dataset_size: int, momentum: float = 0.0) -> float:
    """Exact noise scale g = eps/(1-m) * (N/B - 1) (§2, eq. 3; §3 for momentum).

    Example:
        >>> round(noise_scale(0.1, 128, 50_000, momentum=0.9), 3)
        389.625
    """
    check_dataset_size(dataset_size)
    if not 0 < batch_size <= dataset_size:
        raise ValueError(f"batch_size should be in (0, {dataset_size}], but got batch_size={batch_size}")
    return effective_lr(lr, momentum) * (dataset_size / batch_size - 1.0)


def noise_scale_approx(lr: float, batch_size: float, dataset_size: int, momentum: float = 0.0) -> float:
    """The B << N approximation g ~ eps*N / (B*(1-m)) that the paper's rules are derived from."""
    check_dataset_size(dataset_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size should be positive, but got batch_size={batch_size}")
    return effective_lr(lr, momentum) * dataset_size / batch_size


def batch_size_for_noise_ratio(
    batch_size: float, dataset_size: int, ratio: float, *, exact: bool = True
) -> float:
    """Batch size B' that multiplies the noise scale by ``ratio`` at fixed eps and m.

    Exact: N/B' - 1 = ratio * (N/B - 1), so B' = N / (1 + ratio*(N/B - 1)).
    Approximate (B << N): B' = B / ratio. Near B ~ N the two differ a lot, and a
    ratio below 1 can ask for B' > N only in the approximation.

    Example:
        >>> batch_size_for_noise_ratio(128, 50_000, 1 / 5, exact=False)
        640.0
        >>> round(batch_size_for_noise_ratio(128, 50_000, 1 / 5), 2)
        633.51
    """
    check_dataset_size(dataset_size)
    ratio = check_number("ratio", ratio)
    if ratio <= 0:
        raise ValueError(f"ratio should be positive, but got ratio={ratio:g}")
    if not 0 < batch_size <= dataset_size:
        raise ValueError(f"batch_size should be in (0, {dataset_size}], but got batch_size={batch_size}")
    if not exact:
        return batch_size / ratio
    return dataset_size / (1.0 + ratio * (dataset_size / batch_size - 1.0))


def lr_for_batch_size(
    lr: float, batch_size: float, new_batch_size: float, dataset_size: int | None = None
) -> float:
    """Learning rate for ``new_batch_size`` at equal noise scale (B ∝ eps, §5.2).

    With ``dataset_size`` the exact rule eps' = eps * (N/B - 1) / (N/B' - 1) is used,
    without it the approximation eps' = eps * B'/B.
    """
    lr = check_lr(lr)
    if batch_size <= 0 or new_batch_size <= 0:
        raise ValueError(
            f"batch sizes should be positive, but got batch_size={batch_size}, new_batch_size={new_batch_size}"
        )
    if dataset_size is None:
        return lr * new_batch_size / batch_size
    check_dataset_size(dataset_size)
    if max(batch_size, new_batch_size) >= dataset_size:
        raise ValueError(
            f"the exact rule needs batch sizes below the data set size {dataset_size}, "
            f"but got batch_size={batch_size}, new_batch_size={new_batch_size}"
        )
    return lr * (dataset_size / batch_size - 1.0) / (dataset_size / new_batch_size - 1.0)


def batch_size_for_momentum(batch_size: float, momentum: float, new_momentum: float) -> float:
    """Batch size for ``new_momentum`` at equal noise scale (B ∝ 1/(1-m), §5.2).

    Example:
        >>> round(batch_size_for_momentum(640, 0.9, 0.98), 6)
        3200.0
    """
    momentum = check_momentum(momentum)
    new_momentum = check_momentum(new_momentum, "new_momentum")
    if batch_size <= 0:
        raise ValueError(f"batch_size should be positive, but got batch_size={batch_size}")
    return batch_size * (1.0 - momentum) / (1.0 - new_momentum)
