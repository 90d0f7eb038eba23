"""How many CPU threads a run trains with: the user's choice, else one per core that other work leaves idle.

NOTE [threads under load]: torch starts one intra-op thread per core, and each parallel region waits for its
slowest thread. When other work keeps a core busy, that thread shares the core and every region waits for
it. Measured on 2 cores with a load of about 7 (four other jobs' tests), one Fashion-MNIST epoch of the MNIST
CNN took about 290 s with 2 threads and about 35 s with 1 (issue 19). So ``growbatch run`` without
``--workers`` (and without OMP_NUM_THREADS) counts the cores that are idle as it starts, over a quarter of a
second of /proc/stat, and trains with that many threads (at least one). A resume then takes the thread count
its checkpoint recorded, so it stays bit-identical to the uninterrupted run (NOTE [threads] in trainer.py).
When training at the chosen micro-batch size later changes speed 1.5x (NOTE [watch] in
batching/microbatch_size.py: other work started or ended), the idle cores are counted again
(:func:`rechoose_threads`). Beside a load that began after the first epoch, 2 threads chosen on the idle machine
trained the MNIST CNN at 250-330 samples/s, where 1 thread beside a load from the start trained at 680. A count
lowered that way is raised again at an epoch's end when the other work has ended: with fewer threads than cores,
training at one thread's speed would not change speed when a core frees up, so the watch cannot see it, but
/proc/stat over the epoch does (:func:`more_threads_if_idle`).
"""

from __future__ import annotations

import math
import os
import time

import torch

__all__ = ["choose_threads", "idle_cores", "threads_for", "follows_checkpoint", "more_threads_if_idle",
           "rechoose_threads", "restore_threads"]

SAMPLE_S = 0.25  # how long the idle cores are counted at start
_automatic = False  # True once choose_threads picked the count itself (the user chose none)
_cores = 0  # the count choose_threads chose among (torch's default: one per core), for rechoose_threads
_before: list[tuple[int, bool, int]] = []  # what choose_threads replaced, for restore_threads
_reading: tuple[int, int, int] | None = None  # /proc/stat at the last more_threads_if_idle


def idle_cores(interval: float = SAMPLE_S, stat: str = "/proc/stat") -> float | None:
    """Cores left idle by all work on the machine over ``interval`` seconds; None where /proc/stat is unreadable."""
    first = _cpu_times(stat)
    time.sleep(interval)
    second = _cpu_times(stat)
    if first is None or second is None:
        return None
    (idle0, total0, cpus), (idle1, total1, _) = first, second
    if total1 <= total0:
        return None
    return cpus * (idle1 - idle0) / (total1 - total0)


def _cpu_times(stat: str) -> tuple[int, int, int] | None:
    """(idle + iowait jiffies, all jiffies, CPU count) from /proc/stat's lines."""
    try:
        with open(stat) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    total = next((line.split() for line in lines if line.startswith("cpu ")), None)
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    if total is None or cpus == 0 or len(total) < 6:
        return None
    values = [int(v) for v in total[1:]]
    return values[3] + values[4], sum(values[:8]), cpus


def threads_for(cores: int, idle: float) -> int:
    """Threads for ``cores`` when ``idle`` cores are free: a core counts once it is at least three quarters idle."""
    return max(1, min(cores, math.floor(idle + 0.25)))


def choose_threads(workers: int | None) -> str | None:
    """Set torch's thread count for a run: ``workers`` if given; else, where neither OMP_NUM_THREADS nor
    MKL_NUM_THREADS sets it, one per idle core. Returns a line for the user when it trains with fewer than usual."""
    global _automatic, _cores
    _before.append((torch.get_num_threads(), _automatic, _cores))
    if workers:
        torch.set_num_threads(workers)
        _automatic = False
        return None
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        _automatic = False
        return None
    cores, idle = torch.get_num_threads(), idle_cores()
    _automatic, _cores = idle is not None, cores
    threads = cores if idle is None else threads_for(cores, idle)
    if threads == cores:
        return None
    torch.set_num_threads(threads)
    return (f"growbatch: other work leaves {idle:.1f} cores idle: training with {threads} thread"
            f"{'s' * (threads > 1)} instead of {cores} (--workers N chooses)")


def rechoose_threads(idle: float | None = None) -> str | None:
    """Where the count was chosen here (not by the user), count the idle cores again (or take ``idle``) and set
    one thread per idle core; a line for the user when the count changed, else None. Called between training
    passes, so this run's own threads are idle while the cores are counted."""
    if not _automatic:
        return None
    idle = idle_cores() if idle is None else idle
    if idle is None:
        return None
    before, threads = torch.get_num_threads(), threads_for(_cores, idle)
    if threads == before:
        return None
    torch.set_num_threads(threads)
    return (f"training changed speed 1.5x and other work now leaves {idle:.1f} cores idle: training with "
            f"{threads} thread{'s' * (threads > 1)} instead of {before} (--workers N fixes the count)")


def more_threads_if_idle(stat: str = "/proc/stat") -> str | None:
    """Where growbatch chose fewer threads than cores, and cores sat idle since the last call while this run
    trained, take them: one thread per core at least three quarters idle, on top of the threads in use. Returns a
    line for the user when the count rose, else None (also on the first call, which only reads /proc/stat)."""
    global _reading
    before, _reading = _reading, _cpu_times(stat)
    threads = torch.get_num_threads()
    if not _automatic or threads >= _cores or before is None or _reading is None or _reading[1] <= before[1]:
        return None
    idle = _reading[2] * (_reading[0] - before[0]) / (_reading[1] - before[1])
    more = threads_for(_cores, threads + idle)
    if more <= threads:
        return None
    torch.set_num_threads(more)
    return (f"other work left {idle:.1f} cores idle over the last epoch: training with {more} threads instead of "
            f"{threads} (--workers N fixes the count)")


def follows_checkpoint() -> bool:
    """True where the thread count was chosen here, not by the user: a resume may then take the checkpoint's."""
    return _automatic


def restore_threads() -> None:
    """Undo the last choose_threads (a command run in-process, as the tests do, leaves the process as it was)."""
    global _automatic, _cores
    if _before:
        count, _automatic, _cores = _before.pop()
        torch.set_num_threads(count)
