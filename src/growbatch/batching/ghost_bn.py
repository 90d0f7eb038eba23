"""Ghost batch normalisation: batch-norm statistics over groups of ``ghost_batch_size`` consecutive samples.

Smith et al. (2018) use it throughout (ghost batch 128 for CIFAR-10, after Hoffer et al., 2017), so that
the noise of the statistics stays that of a small batch however large the logical batch grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_positive_int

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "check_ghost_batch_size", "convert_to_ghost_batch_norm",
           "ghost_sizes", "largest_ghost_batch_size"]


def ghost_sizes(batch_size: int, ghost_batch_size: int, values_per_sample: int = 1) -> list[int]:
    """Sizes of the consecutive ghost batches of a batch: full ghosts, then the shorter remainder.

    A remainder with a single value per channel (one sample of a ``(N, C)`` input) has no variance
    and cannot be normalised on its own, so it joins the ghost before it.

    Example:
        >>> ghost_sizes(300, 128), ghost_sizes(257, 128), ghost_sizes(257, 128, values_per_sample=49)
        ([128, 128, 44], [128, 129], [128, 128, 1])
    """
    full, rest = divmod(batch_size, ghost_batch_size)
    sizes = [ghost_batch_size] * full
    if rest and rest * values_per_sample == 1 and sizes:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return sizes


class _GhostBatchNorm:
    """The forward pass shared by GhostBatchNorm1d and 2d (a mixin placed before nn.BatchNorm*d)."""

    def __init__(self, num_features: int, ghost_batch_size: int = 128, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
                 bias: bool = True) -> None:
        check_positive_int("ghost_batch_size", ghost_batch_size, "; the paper uses 128")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        uses_batch_statistics = self.training or self.running_mean is None
        if not uses_batch_statistics or input.shape[0] <= self.ghost_batch_size:
            return super().forward(input)  # eval, or a single ghost: exactly nn.BatchNorm
        updates_running_stats = self.training and self.track_running_stats and self.running_mean is not None
        factor = self._running_average_factor() if updates_running_stats else 0.0
        sizes = ghost_sizes(input.shape[0], self.ghost_batch_size, input[0, 0].numel())
        ghosts = input.split(sizes)
        if not updates_running_stats:
            return torch.cat([F.batch_norm(ghost, None, None, self.weight, self.bias, True, 0.0, self.eps)
                              for ghost in ghosts])
        # NOTE [ghost statistics]: batch_norm with momentum 1 writes each ghost's mean and unbiased
        # variance into a row of `statistics` (running = 0 * running + 1 * batch), in the same kernel
        # that normalises; no second pass over the data.
        statistics = torch.zeros(2, len(sizes), self.num_features, dtype=self.running_mean.dtype,
                                 device=self.running_mean.device)
        outputs = torch.cat([F.batch_norm(ghost, statistics[0, index], statistics[1, index], self.weight,
                                          self.bias, True, 1.0, self.eps) for index, ghost in enumerate(ghosts)])
        with torch.no_grad():
            # weights n_k / N: the mean of ghost means is the batch mean; the variance is the average
            # within-ghost variance, which is what training normalised by (not the whole batch's)
            weights = torch.tensor(sizes, dtype=statistics.dtype, device=statistics.device) / input.shape[0]
            averaged = (statistics * weights[:, None]).sum(1)
            self.running_mean.mul_(1.0 - factor).add_(averaged[0], alpha=factor)
            self.running_var.mul_(1.0 - factor).add_(averaged[1], alpha=factor)
        return outputs

    def _running_average_factor(self) -> float:
        # as nn.BatchNorm: count this forward, then the momentum (or 1/count for momentum=None)
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that, in training, normalises each group of ``ghost_batch_size`` consecutive samples
    with the group's own statistics. Parameters, buffers and eval behaviour are those of ``nn.BatchNorm1d``.

    Ghost batches are ``input[0:g], input[g:2g], ...``; the last one may be shorter (a remainder of one
    sample of an ``(N, C)`` input joins the ghost before it). A batch of at most ``g`` samples is one
    ghost and gives exactly ``nn.BatchNorm1d``'s output and running statistics. With ``k`` ghosts of
    sizes ``n_1 .. n_k`` (sum ``N``), means ``mu_i`` and unbiased variances ``var_i``, one forward updates

        running_mean = (1 - momentum) * running_mean + momentum * sum_i (n_i / N) * mu_i
        running_var  = (1 - momentum) * running_var  + momentum * sum_i (n_i / N) * var_i

    and ``num_batches_tracked`` by one, as ``nn.BatchNorm1d`` (``momentum=None``: cumulative average).
    With ``track_running_stats=False`` eval also normalises by ghost statistics.

    Args:
        num_features: channels ``C`` of an ``(N, C)`` or ``(N, C, L)`` input.
        ghost_batch_size: samples per ghost batch (the paper: 128). Positive.
        eps, momentum, affine, track_running_stats, device, dtype, bias: as ``nn.BatchNorm1d``.

    Raises:
        TypeError, ValueError: a ghost_batch_size that is not a positive integer.

    Example:
        >>> bn = GhostBatchNorm1d(3, ghost_batch_size=2)
        >>> out = bn(torch.tensor([[0.0, 1, 2], [2, 3, 4], [10, 20, 30], [30, 40, 50]]))
        >>> out[:, 0]  # each pair normalised by its own mean and variance
        tensor([-1.0000,  1.0000, -1.0000,  1.0000], grad_fn=<SelectBackward0>)
    """


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with ghost batches in training; see :class:`GhostBatchNorm1d` for the details.

    Args:
        num_features: channels ``C`` of an ``(N, C, H, W)`` input (any memory format).
        ghost_batch_size: samples per ghost batch (the paper: 128). Positive.
        eps, momentum, affine, track_running_stats, device, dtype, bias: as ``nn.BatchNorm2d``.

    Raises:
        TypeError, ValueError: a ghost_batch_size that is not a positive integer.
    """


# NOTE [ghost layout]: ghosts are consecutive samples, so that micro-batches that are multiples of the
# ghost size cut the logical batch into the same ghosts (split invariance). cifar10-fast's single
# reshape (N, C, H, W) -> (N/k, k*C, H, W) makes strided ghosts {i : i mod k = j} instead; consecutive
# ghosts in one batch_norm call need a transposing copy of the input and of the output. Measured on the
# 2-core CPU (forward + backward, N=1024, ghost 128): plain BN 105-153 ms, one call per ghost + cat
# 114-225 ms, transposed single call 193-357 ms, var_mean arithmetic 420-630 ms. Hence one call per ghost.


def convert_to_ghost_batch_norm(module: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` in ``module`` by its ghost version.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place and the module is
    returned (a new module if ``module`` is itself a batch norm). The new modules hold the *same*
    parameter and buffer tensors (an optimizer built before keeps working; the ``state_dict`` keys and
    values do not change), on the same device and dtype, in the same train/eval mode. Ghost batch
    norms already present are resized to ``ghost_batch_size``. Hooks on the old modules are not copied.

    Args:
        module: a model, or a single batch norm.
        ghost_batch_size: samples per ghost batch. Positive.

    Returns:
        ``module`` (or the replacement of a batch-norm ``module``).

    Raises:
        TypeError, ValueError: a ghost_batch_size that is not a positive integer.

    Example:
        >>> model = convert_to_ghost_batch_norm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), 128)
        >>> model[1]
        GhostBatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True, ghost_batch_size=128)
    """
    check_positive_int("ghost_batch_size", ghost_batch_size, "; the paper uses 128")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _ghost_copy(module, ghost_batch_size)
    for name, child in module.named_children():
        module.add_module(name, convert_to_ghost_batch_norm(child, ghost_batch_size))
    return module


def _ghost_copy(norm: nn.BatchNorm1d | nn.BatchNorm2d, ghost_batch_size: int) -> nn.Module:
    kind = GhostBatchNorm2d if isinstance(norm, nn.BatchNorm2d) else GhostBatchNorm1d
    # built on the meta device (no memory), then given the old module's own tensors
    ghost = kind(norm.num_features, ghost_batch_size, norm.eps, norm.momentum, norm.affine,
                 norm.track_running_stats, device="meta", bias=norm.bias is not None)
    for name in ("weight", "bias"):
        setattr(ghost, name, getattr(norm, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        ghost.register_buffer(name, getattr(norm, name))
    return ghost.train(norm.training)


def largest_ghost_batch_size(module: nn.Module) -> int | None:
    """The largest ``ghost_batch_size`` of the ghost batch norms in ``module``; None if it has none."""
    sizes = [m.ghost_batch_size for m in module.modules() if isinstance(m, _GhostBatchNorm)]
    return max(sizes) if sizes else None


def check_ghost_batch_size(ghost_batch_size: int, micro_batch_size: int) -> None:
    """Raise ValueError if a ghost batch would not fit in one micro-batch.

    A ghost batch larger than the micro-batch would silently become the whole micro-batch, so the
    batch-norm statistics would depend on how the logical batch is split.

    Raises:
        ValueError: ``ghost_batch_size > micro_batch_size``; the message gives both values and the fix.
    """
    if ghost_batch_size > micro_batch_size:
        raise ValueError(
            f"ghost_batch_size={ghost_batch_size} is larger than micro_batch_size={micro_batch_size}: each ghost "
            f"batch must fit in one micro-batch; use micro_batch_size >= {ghost_batch_size} (a multiple of "
            f"{ghost_batch_size} keeps training invariant to the split) or ghost_batch_size <= {micro_batch_size}")
