"""The gradient noise scale measured during training, from the gradients each update already computes.

McCandlish et al. 2018 (arXiv 1812.06162, Appendix A), the "simple" noise scale B_simple = tr(Σ)/|G|²,
from the unbiased estimators of two batch sizes, b (a micro-batch) and B (the logical batch):

    |G|²  ≈ (B·|G_B|² − b·|G_b|²) / (B − b)          tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

each smoothed by its own exponential moving average before dividing.

NOTE [noise-scale source]: the small-batch gradients are the micro-batches'. A hook on every parameter
sees the gradient each backward computes before it is added to ``.grad``: for micro-batch j that is
n_j·W/B times its mean-loss gradient g_j (MicroBatcher's weight), so |g_j|² costs one dot product per
parameter, no copy of the gradients and no extra pass. The hooks run before DDP's all-reduce, so
under DDP too each rank sees its own micro-batches; the sums are then added over ranks. Micro-batches
of unequal size n_j are exact in expectation with b = J / Σ 1/n_j. The big batch is the whole logical
batch: the averaged ``.grad`` after the update's backward. Micro-batches are the same on 1 and on W
processes when the micro-batch size divides every share, so the estimate is then the same up to
float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..checks import check_number

__all__ = ["GradientNoiseScale"]

STATE_VERSION = 1


class GradientNoiseScale:
    """Estimate B_simple = tr(Σ)/|G|² from a MicroBatcher's micro-batches (pass it as ``noise_scale=``).

    Args:
        model: the network whose ``.grad`` the micro-batches accumulate (not the DDP wrapper).
        decay: of the exponential moving averages of |G|² and tr(Σ) (bias-corrected, as Adam's moments).

    Example:
        >>> gns = GradientNoiseScale(model)  # hooks on the parameters       # doctest: +SKIP
        >>> micro = MicroBatcher(model, loss_fn, micro_batch_size=32, noise_scale=gns)  # doctest: +SKIP
        >>> micro.backward(inputs, targets, global_batch_size=256); gns.value     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.95) -> None:
        decay = check_number("decay", decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay should be in [0, 1), but got decay={decay}")
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.decay = decay
        self.updates = 0  # updates that gave an estimate
        self.gradient_sq = 0.0  # EMA of |G|², not bias-corrected
        self.trace = 0.0  # EMA of tr(Σ), not bias-corrected
        self._weight = 0.0  # of the micro-batch whose backward runs; 0 outside MicroBatcher's backward
        self._handles = [p.register_hook(self._on_gradient) for p in self.parameters]
        self.start_update()

    def remove(self) -> None:
        """Take the gradient hooks off the model (the estimate stays readable)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- fed by MicroBatcher -----------------------------------------------------------------
    def start_update(self) -> None:
        """Forget the micro-batches of an update in progress (a new update, or one redone after OOM)."""
        self._small_sq = torch.zeros((), dtype=torch.float64, device=self._device())  # Σ_j |g_j|², this rank
        self._micro_sq = torch.zeros((), dtype=torch.float64, device=self._device())
        self._count, self._inverse_sizes, self._weight = 0, 0.0, 0.0  # J and Σ_j 1/n_j on this rank

    def begin_micro_batch(self, weight: float, size: int) -> None:
        """Before a micro-batch's backward: its loss is scaled by ``weight``; an empty one is not counted."""
        self._weight = weight if size > 0 else 0.0
        self._size = size
        self._micro_sq.zero_()

    def end_micro_batch(self) -> None:
        """After the micro-batch's backward: |g_j|² = |the gradients it added|² / weight²."""
        if self._weight > 0:
            self._small_sq += self._micro_sq / self._weight**2
            self._count += 1
            self._inverse_sizes += 1.0 / self._size
        self._weight = 0.0

    def finish_update(self, global_batch_size: int) -> None:
        """After the update's last backward: sum the micro-batches over ranks and update the estimate."""
        device = self._small_sq.device
        big_sq = sum((_squared_norm(p.grad) for p in self.parameters if p.grad is not None),
                     torch.zeros((), dtype=torch.float64, device=device))
        counts = torch.tensor([float(self._count), self._inverse_sizes], dtype=torch.float64, device=device)
        totals = torch.cat([self._small_sq.view(1), counts])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        small_sq_sum, count, inverse_sizes = totals.tolist()
        if count < 1:
            return
        small_batch = count / inverse_sizes
        if not global_batch_size > small_batch:  # one micro-batch for the whole batch: no second size
            return
        self._record(big_sq.item(), small_sq_sum / count, small_batch, float(global_batch_size))

    def _on_gradient(self, gradient: torch.Tensor) -> None:
        if self._weight > 0:  # only inside MicroBatcher's backward (not its timing passes, not other code)
            self._micro_sq += _squared_norm(gradient)

    # -- the estimate ------------------------------------------------------------------------
    @property
    def value(self) -> float | None:
        """The smoothed B_simple (samples), or None before the first estimate or while either average is ≤ 0
        (the noise of the estimates still dominates: no meaningful ratio yet)."""
        if self.updates == 0 or self.gradient_sq <= 0 or self.trace <= 0:
            return None
        return self.trace / self.gradient_sq

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "decay": self.decay, "updates": self.updates,
                "gradient_sq": self.gradient_sq, "trace": self.trace}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state should be a GradientNoiseScale state_dict of version {STATE_VERSION}, but got "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.gradient_sq, self.trace = float(state["gradient_sq"]), float(state["trace"])

    def _record(self, big_sq: float, small_sq: float, small_batch: float, big_batch: float) -> None:
        gradient_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
        trace = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
        if not (math.isfinite(gradient_sq) and math.isfinite(trace)):
            return
        # the bias correction of an EMA started at 0 cancels in the ratio, so the raw averages are kept
        self.gradient_sq = self.decay * self.gradient_sq + (1.0 - self.decay) * gradient_sq
        self.trace = self.decay * self.trace + (1.0 - self.decay) * trace
        self.updates += 1

    def _device(self) -> torch.device:
        return self.parameters[0].device if self.parameters else torch.device("cpu")


def _squared_norm(tensor: torch.Tensor) -> torch.Tensor:
    """|tensor|² in float64, as one dot product (no temporary copy of the tensor)."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return torch.dot(flat, flat).double()
