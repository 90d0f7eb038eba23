"""The automatic micro-batch size: the fastest measured size whose training step fits the memory budget.

Memory per sample comes from the tensors autograd saves during one forward pass (see NOTE [memory]);
throughput from timing the training passes themselves at candidate sizes (see :class:`SizeSearch`,
NOTE [online timing]), watched afterwards for a change of speed (:class:`SpeedWatch`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .structure import batch_length, map_tensors

__all__ = ["MEMORY_FRACTION", "MemoryEstimate", "SizeSearch", "SpeedWatch", "TimingWindow", "available_memory_bytes",
           "estimate_training_memory", "fewest_passes", "largest_micro_batch_size", "window_throughput"]

MEMORY_FRACTION = 0.5  # default budget: this fraction of the memory available when the size is first chosen
SAVED_TENSOR_MARGIN = 1.25  # peak RSS per sample / saved bytes per sample measured 1.02-1.10 (bench/README.md)
STATE_COPIES = 3  # per parameter: its gradient and two optimizer moments (Adam), allocated at the first update
FIRST_CANDIDATE = 16  # smaller micro-batches are never the fastest; a smaller local batch runs in one pass
GAIN = 1.05  # a larger candidate counts as faster only if it is 5% faster (timings on a shared machine are noisy)
PATIENCE = 2  # stop measuring after this many larger candidates that were not faster
MEASURE_SAMPLES = 256  # a candidate is timed over passes of at least this many samples in all ...
MEASURE_S = 0.25  # ... or at least this long, whichever comes first (NOTE [timing window])
WATCH_S = 2.0  # the chosen size's speed is compared with its measurement over windows of this many seconds ...
WATCH_CHANGE = 1.5  # ... and a change by this factor either way, in WATCH_WINDOWS windows in a row, ...
WATCH_WINDOWS = 2  # ... times the sizes again (NOTE [watch])


def available_memory_bytes(device: torch.device) -> int:
    """Free memory for tensors on ``device``: free GPU memory, or MemAvailable (capped by a cgroup v2 limit)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _meminfo_available_bytes()
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:  # in a container, the cgroup's limit binds before the machine's RAM does
        cap = limit.read_text().strip()
        if cap != "max":
            available = min(available, int(cap) - int(used.read_text()))
    except (OSError, ValueError):
        pass
    return max(available, 0)


def _meminfo_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one training step at micro-batch size ``m``: ``fixed_bytes + m * per_sample_bytes``."""

    per_sample_bytes: int  # activations autograd keeps per sample, times SAVED_TENSOR_MARGIN
    fixed_bytes: int  # gradients and optimizer state: STATE_COPIES x the trainable parameters

    def bytes_for(self, micro_batch_size: int) -> int:
        return self.fixed_bytes + micro_batch_size * self.per_sample_bytes


# NOTE [memory]: the CPU has no allocator statistics, tracemalloc does not see torch's allocations,
# and ru_maxrss only grows. What dominates a step's peak is what autograd keeps for the backward pass,
# so one forward at a small size runs under saved_tensors_hooks and the storages of the saved
# tensors are summed (each storage once; parameters excluded, they are already resident). Measured
# with ru_maxrss in fresh processes, peak RSS grows by 1.02-1.10x the saved bytes per sample (MNIST
# CNN, WRN-16-4); the rest is backward's temporary gradients, covered by SAVED_TENSOR_MARGIN.


def estimate_training_memory(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                             inputs: torch.Tensor, targets: torch.Tensor,
                             autocast: Callable[[], AbstractContextManager] = nullcontext, *,
                             loss: Callable[[nn.Module, Any, Any], tuple[torch.Tensor, dict]] | None = None,
                             ) -> MemoryEstimate:
    """Estimate a training step's memory from one forward pass over ``inputs`` (see NOTE [memory]).

    The forward pass runs in training mode and updates batch-norm buffers: restore them if that matters.

    Args:
        model: the network (not a DDP wrapper).
        loss_fn: ``loss_fn(outputs, targets)`` -> the mean loss; or None, with ``loss``.
        inputs, targets: a small batch (a few samples to a few hundred) of the real data, on the model's device.
        autocast: a context manager factory the forward runs under (mixed precision).
        loss: the general form ``loss(model, inputs, targets)`` -> (mean loss, metric sums), instead of loss_fn.

    Returns:
        bytes per sample (saved tensors / batch size, rounded up, with the margin) and fixed bytes.
    """
    # copies: a slice of a larger batch would count that batch's whole storage
    inputs, targets = map_tensors(torch.clone, inputs), map_tensors(torch.clone, targets)
    parameters = [p for p in model.parameters() if p.requires_grad]
    resident = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        if loss is not None:
            loss(model, inputs, targets)
        else:
            loss_fn(model(inputs), targets)
    per_sample = math.ceil(sum(saved.values()) * SAVED_TENSOR_MARGIN / max(batch_length(inputs) or 1, 1))
    fixed = STATE_COPIES * sum(p.numel() * p.element_size() for p in parameters)
    return MemoryEstimate(per_sample_bytes=max(per_sample, 1), fixed_bytes=fixed)


def largest_micro_batch_size(estimate: MemoryEstimate, budget_bytes: int, *,
                             described_as: str | None = None) -> int:
    """The largest micro-batch whose estimated step fits ``budget_bytes``.

    ``described_as`` names the budget in the error (default ``memory_budget_bytes=<budget_bytes>``).

    Raises:
        ValueError: not even one sample fits; the message gives the budget, the need, and the fix.
    """
    largest = (budget_bytes - estimate.fixed_bytes) // estimate.per_sample_bytes
    if largest < 1:
        budget = described_as or f"memory_budget_bytes={budget_bytes}"
        raise ValueError(
            f"{budget} cannot fit a training step of even one sample: it needs about "
            f"{estimate.bytes_for(1)} bytes ({estimate.per_sample_bytes} per sample + {estimate.fixed_bytes} for "
            f"gradients and optimizer state); raise memory_budget_bytes to at least {estimate.bytes_for(1)}, free "
            f"memory, or use a smaller model")
    return largest


# NOTE [timing window]: the fastest of two passes per candidate chose badly beside other work (issue 19, 2 cores
# beside two matrix-product processes, MNIST CNN, 1 thread): a pass of 16-64 samples lasts 25-100 ms, a few of
# the scheduler's time slices, so two of them measure luck. 32 samples measured 763 samples/s and 64 measured
# 440, the search stopped at 128, and "auto" trained at 32: 589 samples/s against 656-669 for 64 and 256.
# So after one untimed pass (new buffers for the new size) a candidate is timed over passes of MEASURE_SAMPLES
# samples or MEASURE_S seconds, and its rate is their mean (samples / seconds), what training at that size gets;
# a large or slow candidate still takes only one timed pass.


class TimingWindow:
    """The passes of one candidate size: the first is a warm-up (new buffers for the new size) and not counted;
    then passes until they hold MEASURE_SAMPLES samples or last MEASURE_S seconds (NOTE [timing window]).

    Example: passes of 64 samples lasting 0.1 s (warm-up), then 0.02, 0.06, 0.02, 0.06 s: 256 samples in
    0.16 s, 1,600 samples/s (the fastest single pass would say 3,200).
    """

    def __init__(self, size: int) -> None:
        self.size, self.warmed, self.samples, self.seconds = size, False, 0, 0.0

    def add(self, seconds: float, samples: int | None = None) -> float | None:
        """Count one pass of ``samples`` (default ``size``; one more where a lone last sample joined it) that took
        ``seconds``; the window's samples/s once it is complete."""
        if not self.warmed:
            self.warmed = True
            return None
        self.samples, self.seconds = self.samples + (samples or self.size), self.seconds + seconds
        if self.samples < MEASURE_SAMPLES and self.seconds < MEASURE_S:
            return None
        return self.samples / max(self.seconds, 1e-9)


def window_throughput(size: int, timed_pass: Callable[[], float]) -> float:
    """Samples/s of passes of ``size`` samples over one :class:`TimingWindow`; ``timed_pass()`` runs one pass
    and returns its seconds."""
    window = TimingWindow(size)
    while (rate := window.add(timed_pass())) is None:
        pass
    return rate


def fewest_passes(throughput: dict[int, float]) -> int:
    """The largest measured size whose throughput is within GAIN of the fastest (NOTE [fewer passes]).

    Example: {32: 764, 64: 694, 128: 751} gives 128 (764 / 751 = 1.017 < 1.05); {64: 1470, 128: 1500,
    256: 1300} gives 128 (1500 / 1300 = 1.15).
    """
    best = max(throughput.values())
    return max(size for size, rate in throughput.items() if rate * GAIN >= best)


# NOTE [fewer passes]: the search counts a size as faster only when it is GAIN (5%) faster, because timings on a
# shared machine move by that much; sizes within GAIN of the fastest are equally fast as far as it can tell.
# Among those it takes the largest: fewer passes, fewer parallel regions for other work to stall (issue 19).
# Beside two matrix-product processes it measured {16: 569, 32: 764, 64: 694, 128: 751} samples/s, and the
# fastest measured, 32, then trained at 605-661 against 631-686 for micro-batches of 256.


# NOTE [second look]: other work on the machine only ever slows a timing window down, and a size that looks
# slower counts towards the end of the search (PATIENCE), which is final. Beside two matrix-product processes
# and other jobs (load 4.4) one window measured 64 at 420 samples/s against 593 for 32, and the search ended
# there, for the whole run, although 64 then trained at 635-655. So a size measured more than GAIN slower than
# the best so far is measured once more, and the faster of its two windows counts.


# NOTE [online timing]: the passes that time a candidate size are training passes: an update whose size is still
# being searched opens with as many micro-batches of the candidate as its window still needs, timed as they train,
# and trains the rest at the size chosen last (MicroBatcher._plan). The gradient is the same sum whatever the
# split (only the float rounding differs), so the search costs no extra work, only the passes trained at slower
# candidates: a few hundred samples each. Before (issue 19, bench_peers.py, MNIST CNN on 6,400
# images a phase, idle) separate timed passes took 2.9 s of a 15.3 s run, which left "auto" at 0.78x the best
# fixed size; and re-timing beside a load that began mid-run took 52 s of an 82 s run, so it was left out.


# NOTE [watch]: once a size is chosen, its passes on a CPU are timed too (no device synchronisation needed), over
# windows of WATCH_S seconds. When WATCH_WINDOWS windows in a row run WATCH_CHANGE times slower or faster than the
# size measured, other work on the machine has started or ended, and the sizes are timed again, online. Small
# passes suffer most from other work (16 samples: 31 samples/s at 2 threads beside two matrix-product processes),
# so the best size moves. On a GPU the passes are not watched: timing them would synchronise every pass.


class SizeSearch:
    """Measured throughput per candidate micro-batch size for one input signature, extended as batches grow.

    Candidates are ``step * 2**k`` from the first one of at least FIRST_CANDIDATE samples (``step``:
    the ghost batch size, so micro-batches hold whole ghosts, or 1), up to the cap ``min(local batch,
    memory_limit)``, plus the cap itself when it is a multiple of ``step`` larger than any size measured
    so far (one that looks GAIN slower than the best is measured twice, NOTE [second look]). They are
    measured in increasing order until PATIENCE of them in a row were not GAIN faster
    than the best so far (on a CPU throughput falls beyond a few hundred samples; on a GPU it
    saturates), until one runs out of memory, or until the memory limit. A local batch larger than
    any measured size resumes the search where it stopped. The choice, among the sizes measured that are no
    larger than the cap, is the largest within GAIN of the fastest (:func:`fewest_passes`).

    The search is driven one measurement at a time (:meth:`candidate`, then :meth:`record` with its rate), so a
    caller can time training passes (NOTE [online timing]); :meth:`choose` drives it with a ``measure`` function.

    Args:
        step: candidates are multiples of it (powers of two times it).
        memory_limit: the largest micro-batch that fits the memory budget.
        memory_estimate: what ``memory_limit`` was computed from, kept for reports.
    """

    def __init__(self, step: int, memory_limit: int, memory_estimate: MemoryEstimate | None = None) -> None:
        self.step, self.memory_limit, self.memory_estimate = step, memory_limit, memory_estimate
        self.throughput: dict[int, float] = {}  # samples/s per measured size
        self.finished = False  # stopped for a reason other than the local batch size
        self._not_faster = 0
        self._first_look: dict[int, float] = {}  # a size that looked GAIN slower, waiting for its second look

    def state_dict(self) -> dict:
        """The measurements and where the search stopped (not the memory estimate, kept for reports only)."""
        return {"step": self.step, "memory_limit": self.memory_limit, "finished": self.finished,
                "not_faster": self._not_faster, "throughput": [[size, rate] for size, rate in self.throughput.items()],
                "first_look": [[size, rate] for size, rate in self._first_look.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Continue where the search that wrote ``state`` stopped.

        The memory limit is the smaller of this search's (this machine's memory) and the saved one
        (lowered by an out-of-memory error there); measurements above it are dropped, and a search
        that stopped under a larger limit than this machine's goes on.
        """
        if int(state["step"]) != self.step:
            raise ValueError(f"a micro-batch size search with step={state['step']} cannot continue one with "
                             f"step={self.step} (the ghost batch size changed)")
        saved_limit = int(state["memory_limit"])
        self.memory_limit = min(self.memory_limit, saved_limit)
        self.throughput = {int(size): float(rate) for size, rate in state["throughput"] if size <= self.memory_limit}
        self._first_look = {int(size): float(rate) for size, rate in state.get("first_look", [])
                            if size <= self.memory_limit}
        self._not_faster = int(state["not_faster"])
        self.finished = bool(state["finished"]) and saved_limit <= self.memory_limit

    def candidate(self, local_batch_size: int) -> int | None:
        """The next size to measure for a local batch of this size, or None when :meth:`chosen` can answer."""
        cap = min(local_batch_size, self.memory_limit)
        if self.finished or cap < FIRST_CANDIDATE or cap < self.step:
            return None
        for size in self._candidates(cap):
            if size not in self.throughput:
                return size
        self.finished = cap >= self.memory_limit
        return None

    def record(self, size: int, rate: float | None) -> None:
        """The samples/s of one timing window at ``size`` (the last :meth:`candidate`), None if out of memory."""
        best = max(self.throughput.values(), default=0.0)
        if size in self._first_look:  # NOTE [second look]: the faster of its two windows counts
            first = self._first_look.pop(size)
            rate = None if rate is None else max(rate, first)
        elif rate is not None and rate * GAIN < best:
            self._first_look[size] = rate  # measured once more before it counts
            return
        if rate is None:  # ran out of device memory: nothing this large fits
            self.memory_limit = max([s for s in self.throughput if s < size], default=max(size // 2, 1))
            self.finished = True
            return
        self.throughput[size] = rate
        self._not_faster = 0 if rate > GAIN * best else self._not_faster + 1
        if self._not_faster >= PATIENCE:
            self.finished = True

    def chosen(self, local_batch_size: int) -> int:
        """The micro-batch size for a local batch among the sizes measured (the cap itself if none fits)."""
        cap = min(local_batch_size, self.memory_limit)
        measured = {size: rate for size, rate in self.throughput.items() if size <= cap}
        if cap < FIRST_CANDIDATE or cap < self.step or not measured:
            return cap  # too small to be worth splitting (and it fits)
        return fewest_passes(measured)

    def choose(self, local_batch_size: int, measure: Callable[[int], float | None]) -> int:
        """Measure what is left to measure for a local batch, with ``measure(size)`` -> samples/s or None when out
        of memory, and return the choice."""
        while (size := self.candidate(local_batch_size)) is not None:
            self.record(size, measure(size))
        return self.chosen(local_batch_size)

    def restart(self) -> None:
        """Forget the measurements (the machine changed, NOTE [watch]); the memory limit stays."""
        self.throughput, self._first_look, self._not_faster, self.finished = {}, {}, 0, False

    def halve(self, size: int) -> int | None:
        """After running out of memory at ``size``: the next size to try (and the new limit), or None."""
        smaller = size // 2 // self.step * self.step
        if smaller < 1:
            return None
        self.memory_limit, self.finished = smaller, True
        self.throughput = {s: rate for s, rate in self.throughput.items() if s <= smaller}
        self._first_look = {}
        return smaller

    def _candidates(self, cap: int) -> list[int]:
        sizes, size = [], self.step
        while size <= cap:
            if size >= FIRST_CANDIDATE:
                sizes.append(size)
            size *= 2
        if cap % self.step == 0 and cap > max(self.throughput, default=0) and cap not in sizes:
            sizes.append(cap)  # the whole local batch in one pass (or the memory limit), when growing
        return sizes


class SpeedWatch:
    """The chosen size's speed in training against its measurement (NOTE [watch]).

    Example: 64 measured at 1,000 samples/s; windows of 2 s at 640 and 600 samples/s (1.56x and 1.67x slower)
    say the machine changed; one slow window between normal ones does not.
    """

    def __init__(self, size: int, measured: float) -> None:
        self.size, self.measured = size, measured
        self.samples, self.seconds, self.changed_windows = 0, 0.0, 0

    def add(self, seconds: float, samples: int | None = None) -> bool:
        """Count one pass of ``samples`` (default ``size``); True when WATCH_WINDOWS windows in a row were
        WATCH_CHANGE off."""
        self.samples, self.seconds = self.samples + (samples or self.size), self.seconds + seconds
        if self.seconds < WATCH_S:
            return False
        rate = self.samples / self.seconds
        self.samples, self.seconds = 0, 0.0
        changed = rate * WATCH_CHANGE < self.measured or rate > WATCH_CHANGE * self.measured
        self.changed_windows = self.changed_windows + 1 if changed else 0
        return self.changed_windows >= WATCH_WINDOWS
