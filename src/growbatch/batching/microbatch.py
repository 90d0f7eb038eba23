"""One update per logical batch, computed as micro-batches whose gradients add up to the whole batch's.

Under DDP only the last micro-batch synchronises (``no_sync()`` on the others), as in nanoGPT.
``micro_batch_size="auto"`` measures the size (growbatch.batching.microbatch_size).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checks import check_positive_int
from .ghost_bn import check_ghost_batch_size, largest_ghost_batch_size
from .microbatch_size import (
    FIRST_CANDIDATE,
    MEASURE_SAMPLES,
    MEMORY_FRACTION,
    SizeSearch,
    SpeedWatch,
    TimingWindow,
    available_memory_bytes,
    estimate_training_memory,
    largest_micro_batch_size,
)
from .noise_scale import GradientNoiseScale
from .structure import batch_length, batch_signature, map_tensors, slice_batch, split_batch

__all__ = ["MicroBatcher", "StepResult"]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# loss(model, inputs, targets) -> (mean loss over the micro-batch, metric sums over its samples)
MicroBatchLoss = Callable[[nn.Module, Any, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
STATE_VERSION = 1  # of MicroBatcher.state_dict()


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`MicroBatcher.backward` computed, on this rank."""

    loss_sum: float  # sum of the per-sample losses of this rank's share (sum over ranks, divide by the global batch)
    samples: int  # this rank's share of the logical batch
    micro_batches: int  # forward + backward passes
    micro_batch_size: int  # the largest micro-batch (the last one may be shorter); 0 for an empty share
    sums: dict[str, float] = field(default_factory=dict)  # the loss's metric sums over the share

    @property
    def correct(self) -> int:
        """Samples whose argmax output is the target class (the metric sum ``"correct"``; 0 without one)."""
        return int(self.sums.get("correct", 0))


class MicroBatcher:
    """Compute one update's gradients over a logical batch, a micro-batch at a time.

    Each micro-batch's mean loss is multiplied by ``len(micro) * world_size / global_batch_size``
    before ``backward``, so after DDP averages over ranks the gradient is that of the mean loss over
    the whole logical batch, however unevenly it is split over micro-batches and ranks:

        grad = 1/W * sum_ranks sum_micro (n_micro * W / B) * grad(mean loss of micro) = 1/B * sum_i grad(loss_i)

    The caller zeroes gradients and steps the optimizer; this only accumulates into ``.grad``.

    Inputs and targets may be tensors or any nesting of tuples, lists and dicts of tensors (a
    Hugging Face ``{"input_ids", "attention_mask", "labels"}`` dict, with ``targets=None``): every
    tensor is split along its first dimension. The loss must be a mean over the micro-batch: a
    ``loss_fn`` with ``reduction`` other than ``"mean"`` is refused, and so is a loss that is not a
    scalar; a ``global_batch_size`` that does not fit this share (each rank holds ``B // W`` or
    ``B // W + 1`` samples) draws a warning, since it scales the gradient.

    Args:
        model: the network, or a wrapper with ``no_sync()`` (``DistributedDataParallel``): then every
            micro-batch but the last runs under ``no_sync()``, so gradients synchronise once per update.
        loss_fn: ``loss_fn(outputs, targets)`` -> the mean loss over the micro-batch; the metric sum
            ``"correct"`` counts argmax hits where the outputs are class scores. Give it or ``loss``.
        loss: the general form, for any task (a ``growbatch.training.Task``'s ``loss``):
            ``loss(model, inputs, targets)`` -> (the mean loss over the micro-batch, a dict of metric
            sums over its samples as tensors); the sums are added up over the micro-batches.
        micro_batch_size: samples per forward pass, or ``"auto"``: the largest measured size within 5% of
            the fastest that fits the memory budget (see ``growbatch.batching.microbatch_size.SizeSearch``),
            measured per input shape, dtype and device by timing the training passes themselves (updates
            are split into candidate sizes while they are measured), extended when the local batch grows,
            and measured again when training at the chosen size speeds up or slows down 1.5x on a CPU
            (other work started or ended). In "auto", running out of
            memory (``torch.OutOfMemoryError``) halves the size and redoes the update from the start:
            gradients are reset to None and buffers restored first, so nothing is counted twice.
        memory_budget_bytes: with "auto", the memory a step may use; default MEMORY_FRACTION of the
            memory available (RAM, or free GPU memory) when the size is first chosen.
        device: where micro-batches are computed (each is moved there: the logical batch may stay on
            the CPU); default the model's device.
        autocast_dtype: ``torch.bfloat16`` (or ``torch.float16``, which needs loss scaling this does not
            do) to run forward passes under ``torch.autocast``; None for full precision.
        transform: applied to each micro-batch's inputs on ``device`` before the forward pass, e.g. a
            loader's normalisation (``TensorLoader(..., normalize_batches=False)``), so the logical
            batch can stay uint8 and only one micro-batch at a time is float32.
        noise_scale: a :class:`~growbatch.batching.noise_scale.GradientNoiseScale` of this model, fed
            with every update's micro-batch gradients; it estimates where an update has two micro-batches
            or more (over all ranks).
        split_for_noise_scale: cut a share that fits one micro-batch in two (whole ghost batches), so
            that every update gives an estimate; that changes the float rounding and, with batch norm,
            the statistics each pass sees.
        on_speed_change: called (with "auto", on a CPU) when training at the chosen size changed speed 1.5x,
            before the sizes are timed again: the Trainer counts the idle cores again there.

    Raises:
        TypeError, ValueError: a micro_batch_size that is neither a positive int nor "auto"; a
            non-positive memory budget, or one given with a fixed size; a ghost batch norm in
            ``model`` larger than a fixed micro_batch_size; an unsupported autocast_dtype.

    Example:
        >>> model = nn.Linear(4, 3)
        >>> micro = MicroBatcher(model, nn.functional.cross_entropy, micro_batch_size=4)
        >>> result = micro.backward(torch.randn(10, 4), torch.randint(3, (10,)), global_batch_size=10)
        >>> result.samples, result.micro_batches, result.micro_batch_size  # micro-batches of 4, 4, 2
        (10, 3, 4)
    """

    def __init__(self, model: nn.Module, loss_fn: LossFunction | None = None, *, loss: MicroBatchLoss | None = None,
                 micro_batch_size: int | str = "auto",
                 memory_budget_bytes: int | None = None, device: torch.device | str | None = None,
                 autocast_dtype: torch.dtype | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 noise_scale: GradientNoiseScale | None = None, split_for_noise_scale: bool = False,
                 on_speed_change: Callable[[], None] | None = None) -> None:
        _check_micro_batch_size(micro_batch_size)
        if memory_budget_bytes is not None:
            _check_memory_budget(memory_budget_bytes, micro_batch_size)
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype should be torch.bfloat16, torch.float16 or None, but got "
                             f"autocast_dtype={autocast_dtype}")
        if (loss_fn is None) == (loss is None):
            raise TypeError("MicroBatcher takes either loss_fn(outputs, targets) or loss(model, inputs, targets), "
                            f"exactly one of them, but got loss_fn={loss_fn!r}, loss={loss!r}")
        for name, value in (("loss_fn", loss_fn), ("loss", loss)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} should be callable, but got {type(value).__name__}")
        _check_reduction(loss_fn)
        self.model, self.loss_fn = model, loss_fn
        self.loss: MicroBatchLoss = loss if loss is not None else _outputs_loss(loss_fn)
        self.micro_batch_size, self.memory_budget_bytes = micro_batch_size, memory_budget_bytes
        self.autocast_dtype = autocast_dtype
        if transform is not None and not callable(transform):
            raise TypeError(f"transform should be callable or None, but got {type(transform).__name__}")
        self.transform = transform
        if noise_scale is not None and not isinstance(noise_scale, GradientNoiseScale):
            raise TypeError(f"noise_scale should be a GradientNoiseScale or None, but got {type(noise_scale).__name__}")
        if split_for_noise_scale and noise_scale is None:
            raise ValueError("split_for_noise_scale=True cuts batches for a noise_scale, but noise_scale is None")
        self.noise_scale, self.split_for_noise_scale = noise_scale, split_for_noise_scale
        if on_speed_change is not None and not callable(on_speed_change):
            raise TypeError(f"on_speed_change should be callable or None, but got {type(on_speed_change).__name__}")
        self.on_speed_change = on_speed_change
        # the network itself: DDP's no_sync/module, but measurements bypass DDP's hooks
        self.module: nn.Module = model.module if hasattr(model, "no_sync") else model
        self.device = torch.device(device) if device is not None else _model_device(self.module)
        self.ghost_batch_size = largest_ghost_batch_size(self.module)
        if self.ghost_batch_size is not None and micro_batch_size != "auto":
            check_ghost_batch_size(self.ghost_batch_size, micro_batch_size)
        # NOTE [one-sample micro-batch]: BatchNorm1d cannot normalise one sample (training raises), so with one
        # a trailing micro-batch of one sample joins the one before it (the gradient is the same sum)
        self._folds_single_sample = any(isinstance(m, nn.BatchNorm1d) for m in self.module.modules())
        self._searches: dict[tuple, SizeSearch] = {}
        self.search_s = 0.0  # seconds of "auto"'s memory estimate, a forward pass that trains nothing (not in wall_s)
        self.size_retimings = 0  # searches started again because training at the chosen size changed speed
        self._restored: dict[tuple, dict] = {}  # searches from load_state_dict, not used yet
        self._windows: dict[tuple, TimingWindow] = {}  # the candidate being timed, per signature
        self._fallback: dict[tuple, int] = {}  # the last size chosen per signature, for the rest of such updates
        self._watches: dict[tuple, SpeedWatch] = {}  # the chosen size's speed, per signature (CPU)
        self._timing: tuple[tuple, TimingWindow | SpeedWatch] | None = None  # what this update's passes feed
        self._synchronising = False  # True during a DDP model's last (all-reducing) micro-batch

    def backward(self, inputs: Any, targets: Any, *, global_batch_size: int,
                 world_size: int = 1) -> StepResult:
        """Accumulate the gradient of this rank's share of one logical batch into ``.grad``.

        Args:
            inputs, targets: this rank's share of the logical batch (any device; may be empty): tensors,
                or tuples, lists and dicts of tensors; ``targets`` may be None (labels inside ``inputs``).
            global_batch_size: samples in the logical batch over all ranks.
            world_size: ranks that DDP averages the gradients over.

        Returns:
            the share's summed loss, argmax hits, size, and the micro-batches used.

        Raises:
            ValueError: inputs and targets of different lengths, a global_batch_size smaller than the
                share, a world_size below 1, a memory budget that cannot fit one sample, a loss that
                is not a scalar (a mean).
            torch.OutOfMemoryError: with a fixed size; in "auto" when even the smallest size does not
                fit, or during a DDP model's synchronising micro-batch (other ranks are in its all-reduce).
        """
        length = _check_step_arguments(inputs, targets, global_batch_size, world_size)
        result = self._backward(inputs, targets, global_batch_size, world_size, length)
        if self.noise_scale is not None:
            self.noise_scale.finish_update(global_batch_size)  # every rank: it sums over ranks
        return result

    def _backward(self, inputs: Any, targets: Any, global_batch_size: int, world_size: int,
                  length: int) -> StepResult:
        if self.noise_scale is not None:
            self.noise_scale.start_update()
        if length == 0:
            return self._empty_share(inputs, targets)
        sizes = self._plan(inputs, targets, length)
        if self.micro_batch_size != "auto":
            return self._accumulate(inputs, targets, sizes, world_size / global_batch_size)
        while True:
            buffers = _copy_buffers(self.module)
            try:
                return self._accumulate(inputs, targets, sizes, world_size / global_batch_size)
            except torch.OutOfMemoryError:
                smaller = None if self._synchronising else self.size_search(inputs).halve(max(sizes))
                self._timing = None  # the size that ran out of memory is measured no further
                self._windows.pop(_signature(inputs, self), None)
                if smaller is None:
                    raise
            finally:
                self._synchronising = False
            # outside the except block: the traceback, and the tensors its frames held, are gone
            self._restart(buffers)
            sizes = micro_batch_sizes(length, smaller, fold_single_sample=self._folds_single_sample)
            if self.noise_scale is not None:
                self.noise_scale.start_update()

    def state_dict(self) -> dict[str, Any]:
        """The "auto" measurements per input signature, so a resumed run keeps the sizes chosen so far.

        NOTE [auto-resume]: with ``"auto"`` the size is timed, and a different size changes the
        float rounding of the accumulated gradient; restoring the measurements makes a resume pick
        the same sizes as the run it continues, for every batch size measured before the checkpoint.
        """
        pending = {key: search.state_dict() for key, search in self._searches.items()} | self._restored
        searches = [{"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "device": device.type,
                     "autocast_dtype": None if autocast is None else str(autocast).removeprefix("torch."),
                     "search": search} for (shape, dtype, device, autocast), search in pending.items()]
        return {"version": STATE_VERSION, "micro_batch_size": self.micro_batch_size, "searches": searches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; measurements from another device type or autocast dtype are dropped."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state should be a MicroBatcher state_dict of version {STATE_VERSION}, but got "
                             f"version={state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        self._searches, self._restored = {}, {}
        for entry in state["searches"]:
            autocast = None if entry["autocast_dtype"] is None else getattr(torch, entry["autocast_dtype"])
            if entry["device"] != self.device.type or autocast != self.autocast_dtype:
                continue  # timed on other hardware or precision: measure again here
            key = (tuple(entry["shape"]), getattr(torch, entry["dtype"]), self.device, autocast)
            self._restored[key] = entry["search"]  # merged at first use, under this machine's memory limit

    def retime(self) -> None:
        """Time the micro-batch sizes again from the next update on (the thread count changed, say); the memory
        limits stay. Only "auto" has sizes to time."""
        for search in self._searches.values():
            search.restart()
        self._restored.clear()  # measured by the run this one resumed, under the same conditions
        self._windows.clear()
        self._watches.clear()
        self.size_retimings += bool(self._searches)

    def measured_throughput(self, inputs: torch.Tensor) -> dict[int, float]:
        """Samples/s measured so far per micro-batch size, for inputs shaped like ``inputs`` ("auto" only)."""
        search = self.size_search(inputs)
        return dict(search.throughput) if search is not None else {}

    def size_search(self, inputs: torch.Tensor) -> SizeSearch | None:
        """The search behind "auto" for inputs shaped like ``inputs`` (memory limit, estimate); None before one."""
        return self._searches.get(_signature(inputs, self))

    def _accumulate(self, inputs: Any, targets: Any, sizes: list[int], weight_per_sample: float) -> StepResult:
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        pieces = list(zip(split_batch(inputs, sizes), split_batch(targets, sizes)))
        for index, (micro_inputs, micro_targets) in enumerate(pieces):
            last = index == len(pieces) - 1
            samples = sizes[index]
            # NOTE [online timing]; a pass one sample longer is the candidate's with a lone last sample folded in
            # (NOTE [one-sample micro-batch]): a share of 129 would otherwise never time the candidate 128
            timed = self._timing is not None and samples - self._timing[1].size in (0, 1)
            if timed:
                _synchronize(self.device)
                started = time.perf_counter()
            micro_inputs = self._prepare(self._to_device(micro_inputs))
            micro_targets = self._to_device(micro_targets)
            self._synchronising = last and hasattr(self.model, "no_sync")
            weight = samples * weight_per_sample
            if self.noise_scale is not None:
                self.noise_scale.begin_micro_batch(weight, samples)
            with nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync():
                with self._autocast():
                    loss, micro_sums = self.loss(self.model, micro_inputs, micro_targets)
                _check_mean_loss(loss)
                (loss * weight).backward()
            if self.noise_scale is not None:
                self.noise_scale.end_micro_batch()
            if timed:
                _synchronize(self.device)
                self._timed(time.perf_counter() - started, samples)
            loss_sum += loss.detach().double() * samples
            for key, value in micro_sums.items():
                sums[key] = sums[key] + value.detach() if key in sums else value.detach()
        # one device-to-host copy per update, not one per micro-batch
        values = torch.stack([loss_sum, *(v.double() for v in sums.values())]).tolist()
        return StepResult(loss_sum=values[0], samples=sum(sizes), micro_batches=len(pieces),
                          micro_batch_size=max(sizes), sums=dict(zip(sums, values[1:])))

    def _to_device(self, batch: Any) -> Any:
        return map_tensors(lambda tensor: tensor.to(self.device, non_blocking=True), batch)

    # NOTE [empty share]: a rank whose share of the logical batch is empty must still join DDP's
    # all-reduce, or the other ranks wait in it forever. It runs the model on the empty batch and
    # backpropagates the output's sum times zero: every parameter gets a zero gradient, DDP all-reduces
    # as usual, and since the loss weights are n * W / B, the average over ranks is still the whole
    # batch's gradient. Buffers are restored (an empty batch has no statistics). Without DDP there is
    # nothing to synchronise and nothing is computed.
    def _empty_share(self, inputs: Any, targets: Any) -> StepResult:
        if not hasattr(self.model, "no_sync"):
            return StepResult(loss_sum=0.0, samples=0, micro_batches=0, micro_batch_size=0)
        buffers = _copy_buffers(self.module)
        with self._autocast():
            loss, _ = self.loss(self.model, self._prepare(self._to_device(inputs)), self._to_device(targets))
        # the mean over no samples is NaN, but its gradient reaches no parameter: every one gets a zero
        (loss.nan_to_num(0.0) * 0.0).backward()
        _restore_buffers(self.module, buffers)
        return StepResult(loss_sum=0.0, samples=0, micro_batches=1, micro_batch_size=0)

    def _prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.transform(inputs) if self.transform is not None else inputs

    def _plan(self, inputs: Any, targets: Any, length: int) -> list[int]:
        """The sizes of this update's passes. While a candidate size is timed (NOTE [online timing]), the update
        opens with as many passes of it as its window still needs and trains the rest at the best size known, so
        a candidate costs a few hundred samples at its speed, not whole updates of thousands."""
        size = self._choose(inputs, targets, length)
        fold = self._folds_single_sample
        if self._timing is None or not isinstance(self._timing[1], TimingWindow):
            return micro_batch_sizes(length, size, fold_single_sample=fold)
        key, window = self._timing
        needed = (not window.warmed) + math.ceil(max(MEASURE_SAMPLES - window.samples, 1) / size)
        head = min(needed, length // size)
        if head * size == length:
            return micro_batch_sizes(length, size, fold_single_sample=fold)
        # the rest at the size chosen last (at a smaller batch, or before the machine changed) where it is larger
        # than the candidate: candidates grow, and small passes are the slow ones
        rest = min(max(self._fallback.get(key, 0), window.size), self._searches[key].memory_limit)
        sizes = [size] * head + micro_batch_sizes(length - head * size, rest)
        if fold and sizes[-1] == 1:  # NOTE [one-sample micro-batch]
            sizes[-2:] = [sizes[-2] + 1]
        return sizes

    def _choose(self, inputs: Any, targets: Any, length: int) -> int:
        return self._split_for_noise_scale(self._chosen_size(inputs, targets, length), length)

    def _split_for_noise_scale(self, size: int, share: int) -> int:
        """With a noise scale, a share that fits one micro-batch is cut in two (rounded up to whole ghost
        batches): the estimate needs a second, smaller batch size. Where no such cut exists, it is left whole."""
        if not self.split_for_noise_scale or size < share or share < 2:
            return size
        half = -(-share // 2)
        if self.ghost_batch_size:
            half = -(-half // self.ghost_batch_size) * self.ghost_batch_size
        return half if half < share else size

    def _chosen_size(self, inputs: Any, targets: Any, length: int) -> int:
        self._timing = None
        if self.micro_batch_size != "auto":
            return min(self.micro_batch_size, length)
        key = _signature(inputs, self)
        started = time.perf_counter()
        try:
            if key not in self._searches:
                self._searches[key] = self._new_search(inputs, targets, length)
                if key in self._restored:
                    self._searches[key].load_state_dict(self._restored.pop(key))
        finally:  # the memory estimate's forward pass; the search's timed passes train (NOTE [online timing])
            self.search_s += time.perf_counter() - started
        search = self._searches[key]
        cap = self._split_for_noise_scale(length, length)  # the largest pass this share can have
        size = search.candidate(cap)
        if size is not None:
            if key not in self._windows or self._windows[key].size != size:
                self._windows[key] = TimingWindow(size)
            self._timing = (key, self._windows[key])
            return size
        size = self._fallback[key] = search.chosen(cap)
        if self.device.type == "cpu" and size in search.throughput:  # NOTE [watch]
            watch = self._watches.get(key)
            if watch is None or (watch.size, watch.measured) != (size, search.throughput[size]):
                self._watches[key] = SpeedWatch(size, search.throughput[size])
            self._timing = (key, self._watches[key])
        return size

    def _timed(self, seconds: float, samples: int) -> None:
        """One training pass of the size being timed (``samples``) took ``seconds``: feed the window or the watch."""
        key, tracker = self._timing
        if isinstance(tracker, TimingWindow):
            rate = tracker.add(seconds, samples)
            if rate is not None:
                self._searches[key].record(tracker.size, rate)
                del self._windows[key]
                self._timing = None  # the rest of this update's passes are not timed
        elif tracker.add(seconds, samples):  # the machine changed under the run: time the sizes again
            if self.on_speed_change is not None:
                self.on_speed_change()
            self._searches[key].restart()
            del self._watches[key]
            self.size_retimings += 1
            self._timing = None

    def _new_search(self, inputs: Any, targets: Any, length: int) -> SizeSearch:
        step = self.ghost_batch_size or 1
        sample = min(length, max(step, FIRST_CANDIDATE))
        with self._unchanged_state():
            first = self._prepare(self._to_device(slice_batch(inputs, 0, sample)))
            estimate = estimate_training_memory(self.module, None, first,
                                                self._to_device(slice_batch(targets, 0, sample)),
                                                self._autocast, loss=self.loss)
        if self.memory_budget_bytes is not None:
            limit = largest_micro_batch_size(estimate, self.memory_budget_bytes)
        else:
            budget = int(MEMORY_FRACTION * available_memory_bytes(self.device))
            limit = largest_micro_batch_size(estimate, budget, described_as=f"the default memory budget, "
                                             f"{MEMORY_FRACTION} of the available memory ({budget} bytes),")
        if self.ghost_batch_size is not None:
            check_ghost_batch_size(self.ghost_batch_size, limit)  # the budget must fit one ghost batch
        return SizeSearch(step, limit, estimate)

    @contextmanager
    def _unchanged_state(self) -> Iterator[None]:
        """Measurements leave no trace: buffers (batch-norm statistics) and the RNG are restored."""
        buffers = _copy_buffers(self.module)
        try:
            cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                yield
        finally:
            _restore_buffers(self.module, buffers)

    def _restart(self, buffers: list[torch.Tensor]) -> None:
        for parameter in self.module.parameters():
            parameter.grad = None
        _restore_buffers(self.module, buffers)
        _empty_cache(self.device)

    def _autocast(self) -> AbstractContextManager:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def micro_batch_sizes(share: int, micro_batch_size: int, *, fold_single_sample: bool = False) -> list[int]:
    """Sizes of the micro-batches of a share: full ones, then the remainder, which with ``fold_single_sample``
    joins the one before it when it is a single sample (NOTE [one-sample micro-batch]).

    Example:
        >>> micro_batch_sizes(65, 64), micro_batch_sizes(65, 64, fold_single_sample=True), micro_batch_sizes(1, 64)
        ([64, 1], [65], [1])
    """
    full, rest = divmod(share, micro_batch_size)
    sizes = [micro_batch_size] * full
    if rest == 1 and fold_single_sample and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


def _signature(inputs: Any, batcher: MicroBatcher) -> tuple:
    if isinstance(inputs, torch.Tensor):  # the form state_dict() has always saved
        return tuple(inputs.shape[1:]), inputs.dtype, batcher.device, batcher.autocast_dtype
    return batch_signature(inputs), None, batcher.device, batcher.autocast_dtype


def _outputs_loss(loss_fn: LossFunction) -> MicroBatchLoss:
    """The general loss form of ``loss_fn(outputs, targets)``, counting argmax hits as ``"correct"``."""
    def loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        outputs = model(inputs)
        return loss_fn(outputs, targets), {"correct": _hits(outputs.detach(), targets)}
    return loss


def _hits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        device = outputs.device if isinstance(outputs, torch.Tensor) else None
        return torch.zeros((), dtype=torch.int64, device=device)
    if outputs.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point():
        return (outputs.argmax(1) == targets).sum()
    if outputs.ndim == 2 and targets.shape == outputs.shape:  # class probabilities (soft labels)
        return (outputs.argmax(1) == targets.argmax(1)).sum()
    return torch.zeros((), dtype=torch.int64, device=outputs.device)  # not a classification output


def _copy_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [buffer.clone() for buffer in module.buffers()]


def _restore_buffers(module: nn.Module, copies: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, copy in zip(module.buffers(), copies):
            buffer.copy_(copy)


def _model_device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check_micro_batch_size(micro_batch_size: object) -> None:
    if micro_batch_size != "auto":
        check_positive_int("micro_batch_size", micro_batch_size, "; use 'auto' to choose it by measurement",
                           alternative=" or 'auto'")


def _check_memory_budget(memory_budget_bytes: object, micro_batch_size: int | str) -> None:
    check_positive_int("memory_budget_bytes", memory_budget_bytes,
                       alternative=" or None (a fraction of the available memory)")
    if micro_batch_size != "auto":
        raise ValueError(f"memory_budget_bytes is used only with micro_batch_size='auto', but got "
                         f"micro_batch_size={micro_batch_size}; drop memory_budget_bytes or use 'auto'")


def _check_reduction(loss_fn: Any) -> None:
    """Refuse a loss_fn that says it does not average: an ``nn.*Loss`` or a partial with reduction != "mean"."""
    reduction = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, functools.partial):
        reduction = loss_fn.keywords.get("reduction", reduction)
    if reduction is not None and reduction != "mean":
        raise ValueError(f"loss_fn should average over the micro-batch (reduction='mean'), but got "
                         f"reduction={reduction!r}; the micro-batch weights n/B assume a mean, so a sum would "
                         "scale the gradient by the micro-batch size")


def _check_mean_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"the loss should be the mean over the micro-batch, a 0-dimensional tensor, but got "
                         f"{shape}; use reduction='mean'")


def _check_step_arguments(inputs: Any, targets: Any, global_batch_size: int, world_size: int) -> int:
    """Check one backward's arguments and return the share's length (samples)."""
    length = batch_length(inputs, "inputs")
    if length is None:
        raise TypeError(f"inputs should be a tensor or a tuple, list or dict of tensors, but got {type(inputs).__name__}")
    target_length = batch_length(targets, "targets")
    if target_length is not None and target_length != length:
        raise ValueError(f"inputs and targets should have the same length, but got {length} inputs and "
                         f"{target_length} targets")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size should be a positive integer, but got world_size={world_size!r}")
    if not isinstance(global_batch_size, int) or global_batch_size < max(length, 1):
        raise ValueError(f"global_batch_size should be the logical batch over all ranks, at least this rank's "
                         f"share ({length} samples) and positive, but got global_batch_size={global_batch_size!r}")
    smallest, largest = global_batch_size // world_size, -(-global_batch_size // world_size)
    if not smallest <= length <= largest:
        warnings.warn(f"global_batch_size={global_batch_size} over world_size={world_size} gives shares of "
                      f"{smallest} to {largest} samples, but this share has {length}: the gradient is scaled by "
                      f"{length * world_size}/{global_batch_size}; pass the size of the logical batch this share "
                      "belongs to", UserWarning, stacklevel=3)
    return length
