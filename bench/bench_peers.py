"""growbatch side by side with what users would pick instead (issue 19 §1-2): the MNIST CNN on MNIST, or ResNet-20
or airbench-small on CIFAR-10, batch 128 -> 640 -> 3,200 (one epoch each), SGD with momentum, on an idle machine and beside a
competing load, from the start or from the second epoch on; prints JSON.

Systems, each run in a fresh process, interleaved (A B C ... A B C ...) within each machine state:
- seed 003's loop: a torch DataLoader over a per-sample Dataset (normalise in ``__getitem__``, and for CIFAR-10
  a random crop of the image padded by 4 zeros and a random flip first; MNIST gets neither), ``num_workers`` =
  cores, re-created at each milestone, the whole batch in one pass;
- bs-scheduler's ``MultiStepBS`` (PyPI ``bs-scheduler``) setting the batch size of one standard DataLoader;
- Lightning's ``GradientAccumulationScheduler``: batches of 128, accumulated 1, 5 and 25 times;
- a fixed-batch loop at 128 throughout (the decaying schedule's batch), same DataLoader;
- growbatch: TensorLoader (DynamicBatchSampler; crop + flip as one batch operation for CIFAR-10) +
  BatchSizeScheduler + MicroBatcher, with ``micro_batch_size="auto"`` and with fixed sizes 64, 256 and one pass
  per batch.
growbatch picks its threads as ``growbatch run`` does (``choose_threads`` as it starts, ``rechoose_threads`` when training
changes speed 1.5x, ``more_threads_if_idle`` at an epoch's end); the others keep torch's default.

Every system's data set hands back the sample indices, so the samples seen twice or never per epoch and the size
of every update are counted, not assumed. Run (serialise timed work on a shared machine with flock):

    flock /tmp/growbatch-cpu.lock .venv/bin/python bench/bench_peers.py           # ~14 min on 2 cores, 6,400 images
    flock /tmp/growbatch-cpu.lock .venv/bin/python bench/bench_peers.py --quick   # < 3 min: 3,200 images, 4 systems, 2 states
    flock /tmp/growbatch-cpu.lock .venv/bin/python bench/bench_peers.py --model airbench-small   # CIFAR-10, 3,200 images
    .venv/bin/python bench/bench_peers.py --table bench/results/peers.json           # the README's table

Writes bench/results/peers.json (peers-MODEL.json for another --model; a --states subset adds its names).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench_loader import cpu_model
from bench_threads import LOAD
from growbatch import BatchSizeScheduler, MicroBatcher, Phase, Schedule, TensorLoader
from growbatch.data import DataError, load_dataset
from growbatch.models import build_model
from growbatch.training.threads import choose_threads, more_threads_if_idle, rechoose_threads

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = {"mnist-cnn": "mnist", "resnet20": "cifar10", "airbench-small": "cifar10"}  # the model and the data set it trains on
SIZES = (128, 640, 3200)  # global batch per epoch (one epoch per phase)
LR, MOMENTUM = 0.01, 0.9  # per update; the same for every system (no lr change: the batch grows instead)
FULL_IMAGES, QUICK_IMAGES = 6400, 3200  # multiples of 3,200: every batch of the plan is full
CIFAR_IMAGES = 3200  # ResNet-20 trains ~4x, airbench-small ~1.5x slower per sample than the MNIST CNN here
PADDING = 4  # CIFAR-10's random crop: the image padded by 4 zeros, a 32 x 32 window of it
WORKERS = os.cpu_count() or 1  # DataLoader workers of the peers (seed 003 uses workers)
FIXED_MICRO = (64, 256, SIZES[-1])  # growbatch's fixed micro-batch sizes; the last is one pass per batch
RUN_TIMEOUT_S = 400  # a run that takes longer is counted as not finished

SYSTEMS = ("seed 003", "bs-scheduler", "lightning", "fixed 128", "growbatch auto",
           *(f"growbatch micro {size}" for size in FIXED_MICRO))
STATE_KEYS = ("idle", "load", "late-load")  # --states: idle, beside a load from the start, from the second epoch
PEERS = ("seed 003", "bs-scheduler", "lightning")  # the increasing schedule by other means
# --quick: on 2 cores all eight systems take ~5 min even on 3,200 images (3x slower under the load), so it
# keeps the baseline of issue 19 §2, the framework peer, "auto" and one fixed size
QUICK_SYSTEMS = ("seed 003", "lightning", "growbatch auto", "growbatch micro 256")
NEEDS = {"bs-scheduler": "bs_scheduler", "lightning": "pytorch_lightning"}  # a peer's package (the bench extra)


def schedule(images: int) -> Schedule:
    """The plan every increasing system follows: one epoch at each of SIZES."""
    phases = tuple(Phase(epoch, epoch + 1, LR, size, MOMENTUM) for epoch, size in enumerate(SIZES))
    return Schedule(phases, dataset_size=images, name="128-640-3200")


class Images:
    """The first training images of a data set (uint8, N x C x H x W), their labels, normalisation and augmentation."""

    def __init__(self, model: str, images: int) -> None:
        name = MODELS[model]
        try:
            dataset = load_dataset(name, DATA)
        except DataError as error:  # synthetic images of the same shape where ../shared/data is absent
            shape = (images, 3, 32, 32) if name == "cifar10" else (images, 1, 28, 28)
            generator = torch.Generator().manual_seed(0)
            self.inputs = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
            self.labels = torch.randint(10, (images,), generator=generator)
            self.mean, self.std, self.augment = (0.5,) * shape[1], (0.25,) * shape[1], name == "cifar10"
            self.source = f"synthetic ({error})"
            return
        self.inputs, self.labels = dataset.x_train[:images].contiguous(), dataset.y_train[:images].contiguous()
        self.mean, self.std, self.augment = dataset.mean, dataset.std, dataset.augment
        self.source = f"{name} ({DATA})"


class IndexedImages(Dataset):
    """The usual per-sample path: crop and flip (CIFAR-10) and normalise one image in ``__getitem__``; the index
    comes back for counting."""

    def __init__(self, data: Images) -> None:
        self.images, self.labels, self.augment = data.inputs, data.labels, data.augment
        self.mean = torch.tensor(data.mean).view(-1, 1, 1)
        self.std = torch.tensor(data.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.images[index].float() / 255
        if self.augment:  # torchvision's RandomCrop(32, padding=4) and RandomHorizontalFlip, per sample
            size = image.shape[-1]
            top, left = torch.randint(0, 2 * PADDING + 1, (2,)).tolist()
            image = F.pad(image, (PADDING,) * 4)[:, top:top + size, left:left + size]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[index], index


class Trace:
    """What a system trained, per epoch: the indices of its samples, the size of every update and the seconds."""

    def __init__(self, epochs: int) -> None:
        self.indices: list[list[torch.Tensor]] = [[] for _ in range(epochs)]
        self.update_sizes: list[list[int]] = [[] for _ in range(epochs)]
        self.epoch_s = [0.0] * epochs
        self.loss_sum = [0.0] * epochs
        self.search_s = [0.0] * epochs  # growbatch "auto": timing candidate micro-batch sizes, part of epoch_s
        self.after_epoch: Callable[[int], None] = lambda epoch: None  # between epochs, outside their time
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self, epoch: int) -> None:
        self.epoch_s[epoch] += time.perf_counter() - self._started
        self.after_epoch(epoch)

    def trained(self, epoch: int, indices: torch.Tensor, loss_sum: float) -> None:
        """Samples that went through a forward and backward pass (one update or one micro-batch of it)."""
        self.indices[epoch].append(indices.detach().cpu())
        self.loss_sum[epoch] += loss_sum

    def update(self, epoch: int, size: int) -> None:
        self.update_sizes[epoch].append(size)

    def summary(self, plan: Schedule) -> dict:
        """Counts against the plan: updates, batches of an earlier phase's size, samples seen twice or never."""
        n, rows = plan.dataset_size, []
        for epoch, sizes in enumerate(self.update_sizes):
            seen = torch.bincount(torch.cat(self.indices[epoch] or [torch.zeros(0, dtype=torch.long)]), minlength=n)
            # sizes an earlier phase of this system's own plan cut, but not this one: batches of an old size
            earlier = {plan.phase_at(e).batch_size for e in range(epoch)} - {plan.phase_at(epoch).batch_size}
            seconds, trained = self.epoch_s[epoch], int(seen.sum())
            rows.append({"epoch": epoch, "batch_size": plan.phase_at(epoch).batch_size, "seconds": seconds,
                         "samples_per_s": trained / seconds if seconds else None,
                         "search_s": self.search_s[epoch],
                         "samples_per_s_without_search": trained / (seconds - self.search_s[epoch]) if seconds else None,
                         "updates": len(sizes), "planned_updates": len(plan.batch_sizes(epoch)),
                         "update_sizes_as_planned": sizes == plan.batch_sizes(epoch),
                         "stale_batches": sum(size in earlier for size in sizes),
                         "seen_twice": int((seen - 1).clamp(min=0).sum()), "never_seen": int((seen == 0).sum()),
                         "train_loss": self.loss_sum[epoch] / max(int(seen.sum()), 1)})
        total_s = sum(self.epoch_s)
        return {"epochs": rows, "updates": sum(r["updates"] for r in rows),
                "planned_updates": plan.plan().total_updates, "train_s": total_s,
                "samples_per_s": sum(len(torch.cat(i)) for i in self.indices if i) / total_s if total_s else None}


def pss_kb(pid: int | str) -> int:
    """Proportional set size of a process (kB): pages shared with a forked parent count once, split between them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            return next(int(line.split()[1]) for line in file if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def child_pids() -> list[int]:
    """This process's children (DataLoader workers), from /proc/self/task/*/children."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


class MemoryPeak:
    """The peak of this process's PSS plus its children's, sampled every ``interval`` seconds in a thread.

    ru_maxrss of a forked DataLoader worker counts the trainer's pages it shares, so the workers' memory is
    summed as PSS instead; short peaks between samples are missed (the trainer's own ru_maxrss catches those).
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_kb = interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            total = pss_kb("self") + sum(pss_kb(pid) for pid in child_pids())
            self.peak_kb = max(self.peak_kb, total)


def one_pass(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """One update with the whole batch in one forward and backward pass; returns the batch's loss sum."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(inputs), labels)
    loss.backward()
    optimizer.step()
    return loss.item() * len(labels)


def train_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=WORKERS,
                      generator=torch.Generator().manual_seed(seed))


def epochs_of(loader_for_epoch: Callable[[int], DataLoader], model: nn.Module, optimizer: torch.optim.Optimizer,
              trace: Trace, after_epoch: Callable[[], None] = lambda: None) -> None:
    """The plain loop: per epoch a loader (the same one or a new one), one pass per batch."""
    for epoch in range(len(SIZES)):
        trace.start()  # a loader built here, its workers started, is charged to the epoch
        for inputs, labels, indices in loader_for_epoch(epoch):
            trace.trained(epoch, indices, one_pass(model, optimizer, inputs, labels))
            trace.update(epoch, len(labels))
        trace.stop(epoch)
        after_epoch()


def run_seed003(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, trace: Trace) -> dict:
    """Seed 003: a new DataLoader with the phase's batch size at every milestone (here every epoch)."""
    epochs_of(lambda epoch: train_loader(dataset, SIZES[epoch], epoch), model, optimizer, trace)
    return {}


def run_fixed(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, trace: Trace) -> dict:
    """The baseline: one DataLoader at the first batch size for every epoch."""
    loader = train_loader(dataset, SIZES[0], 0)
    epochs_of(lambda epoch: loader, model, optimizer, trace)
    return {}


def run_bs_scheduler(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, trace: Trace) -> dict:
    """bs-scheduler's MultiStepBS: x5 at epochs 1 and 2, set on one DataLoader's batch sampler after each epoch."""
    from bs_scheduler import MultiStepBS

    loader = train_loader(dataset, SIZES[0], 0)
    scheduler = MultiStepBS(loader, milestones=[1, 2], gamma=SIZES[1] / SIZES[0])
    epochs_of(lambda epoch: loader, model, optimizer, trace, after_epoch=scheduler.step)
    return {}


def run_lightning(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, trace: Trace) -> dict:
    """Lightning's GradientAccumulationScheduler: batches of 128 accumulated 1, 5, 25 times (x4 gives 640, 3,200)."""
    import logging
    import warnings

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import GradientAccumulationScheduler

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # its advice on workers and logging is not what is measured

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.pending = model, 0

        def training_step(self, batch, batch_index):
            inputs, labels, indices = batch
            loss = F.cross_entropy(self.model(inputs), labels)
            trace.trained(self.current_epoch, indices, loss.item() * len(labels))
            self.pending += len(labels)  # the samples of the update in progress
            return loss  # Lightning divides it by the accumulation factor

        def on_before_optimizer_step(self, optimizer) -> None:
            trace.update(self.current_epoch, self.pending)
            self.pending = 0

        def on_train_epoch_start(self) -> None:
            trace.start()

        def on_train_epoch_end(self) -> None:
            trace.stop(self.current_epoch)

        def configure_optimizers(self):
            return optimizer

        def train_dataloader(self) -> DataLoader:
            return train_loader(dataset, SIZES[0], 0)

    factors = {epoch: size // SIZES[0] for epoch, size in enumerate(SIZES)}
    trainer = pl.Trainer(max_epochs=len(SIZES), accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[GradientAccumulationScheduler(factors)])
    trainer.fit(Module())
    return {"lightning_global_step": trainer.global_step}


def run_growbatch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Images, trace: Trace,
                  micro_batch_size: int | str) -> dict:
    """growbatch as its Trainer wires it: uint8 logical batches from a TensorLoader, normalised per micro-batch.

    The loader's "targets" are the sample indices, so the loss looks the labels up (a gather of a few hundred
    integers per micro-batch) and every trained sample is counted.
    """
    images, labels = data.inputs, data.labels
    plan = schedule(len(labels))
    loader = TensorLoader(images, torch.arange(len(labels)), plan, mean=data.mean, std=data.std, seed=0,
                          crop_padding=PADDING if data.augment else 0, flip=data.augment, normalize_batches=False)
    scheduler = BatchSizeScheduler(loader, optimizer, plan)

    def loss(net: nn.Module, inputs: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return F.cross_entropy(net(inputs), labels[indices]), {}

    # as the Trainer does: a thread count growbatch chose is chosen again when training changes speed (NOTE [watch])
    micro = MicroBatcher(model, loss=loss, micro_batch_size=micro_batch_size, transform=loader.normalize,
                         on_speed_change=rechoose_threads)
    chosen: list[list[int]] = [[] for _ in SIZES]
    more_threads_if_idle()  # the Trainer's first reading of /proc/stat
    for epoch in range(plan.epochs):
        trace.start()
        for inputs, indices in loader:
            optimizer.zero_grad(set_to_none=True)
            result = micro.backward(inputs, indices, global_batch_size=loader.batch_sampler.last_global_batch_size)
            optimizer.step()
            scheduler.step()
            trace.trained(epoch, indices, result.loss_sum)
            trace.update(epoch, result.samples)
            chosen[epoch].append(result.micro_batch_size)
        trace.stop(epoch)
        trace.search_s[epoch] = micro.search_s - sum(trace.search_s)
        if more_threads_if_idle() is not None:  # as the Trainer does at an epoch's end
            micro.retime()
    search = micro.size_search(images[:1]) if micro_batch_size == "auto" else None
    return {"micro_batch_size_per_epoch": [sorted(set(sizes)) for sizes in chosen], "size_search_s": micro.search_s,
            "micro_batch_sizes_per_epoch": [dict(Counter(sizes)) for sizes in chosen],  # updates at each size
            "size_retimings": micro.size_retimings,
            "measured_samples_per_s": search.throughput if search else None}


def worker(system: str, model_name: str, images: int, load_from_epoch: int | None = None) -> dict:
    """One run of ``system`` in this (fresh) process: trace, counts, threads, peak RSS of it and its workers;
    with ``load_from_epoch``, one matrix-product process per core starts after the epoch before it."""
    data = Images(model_name, images)
    load: list[subprocess.Popen] = []
    try:
        return train_system(system, model_name, data, images, load, load_from_epoch)
    finally:
        stop_load(load)


def train_system(system: str, model_name: str, data: Images, images: int, load: list[subprocess.Popen],
                 load_from_epoch: int | None) -> dict:
    """The body of ``worker``; the load processes it starts go into ``load``."""
    started = time.perf_counter()
    said = choose_threads(None) if system.startswith("growbatch") else None  # as `growbatch run` does
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=data.inputs.shape[1], num_classes=10, image_size=data.inputs.shape[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    trace = Trace(len(SIZES))
    if load_from_epoch is not None:
        def start_load(epoch: int) -> None:
            if epoch + 1 == load_from_epoch:
                load.extend(start_load_processes(os.cpu_count() or 1))
        trace.after_epoch = start_load
    with MemoryPeak() as memory:
        if system.startswith("growbatch"):
            size = system.removeprefix("growbatch ").removeprefix("micro ")
            extra = run_growbatch(model, optimizer, data, trace, size if size == "auto" else int(size))
        else:
            runner = {"seed 003": run_seed003, "bs-scheduler": run_bs_scheduler, "lightning": run_lightning,
                      "fixed 128": run_fixed}[system]
            extra = runner(model, optimizer, IndexedImages(data), trace)
    wall_s = time.perf_counter() - started
    plan = schedule(images) if system != "fixed 128" else Schedule(
        tuple(Phase(e, e + 1, LR, SIZES[0], MOMENTUM) for e in range(len(SIZES))), dataset_size=images)
    return {"system": system, "model": model_name, "data": data.source, "finished": True, "wall_s": wall_s, "threads": torch.get_num_threads(),
            "growbatch_said": said, **trace.summary(plan), **extra,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: kB
            "peak_pss_with_workers_mb": memory.peak_kb / 1024}


def in_subprocess(system: str, model: str, images: int, load_from_epoch: int | None = None) -> dict:
    """``worker`` in a fresh interpreter; a crash, an out-of-memory kill or a timeout is a run that did not finish."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps({"system": system, "model": model, "images": images,
                                                                   "load_from_epoch": load_from_epoch})]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"system": system, "finished": False, "why": f"over {RUN_TIMEOUT_S} s", "load_before": load_before}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"system": system, "finished": False, "why": f"exit status {done.returncode}: {tail}",
                "load_before": load_before}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(load_before=load_before, process_s=time.perf_counter() - started)
    print(f"{system}: {result['samples_per_s']:.0f} samples/s, {result['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return result


def measure_state(systems: tuple[str, ...], model: str, images: int, repeats: int,
                  load_from_epoch: int | None = None) -> dict[str, list[dict]]:
    """Every system ``repeats`` times, interleaved, so machine noise falls on all of them."""
    runs: dict[str, list[dict]] = {system: [] for system in systems}
    for _ in range(repeats):
        for system in systems:
            runs[system].append(in_subprocess(system, model, images, load_from_epoch))
    return runs


def summarise(runs: list[dict]) -> dict:
    """Medians over a system's finished runs (throughput, wall time); counts from the first (they are exact)."""
    done = [run for run in runs if run["finished"]]
    if not done:
        return {"finished": False, "why": [run["why"] for run in runs]}
    first = done[0]
    row = {"finished": len(done) == len(runs), "runs": len(runs),
           "samples_per_s": statistics.median(run["samples_per_s"] for run in done),
           "samples_per_s_per_epoch": [statistics.median(run["epochs"][e]["samples_per_s"] for run in done)
                                       for e in range(len(SIZES))],
           "samples_per_s_per_epoch_without_search": [
               statistics.median(run["epochs"][e]["samples_per_s_without_search"] for run in done)
               for e in range(len(SIZES))],
           "wall_s": statistics.median(run["wall_s"] for run in done),
           "peak_rss_mb": max(run["peak_rss_mb"] for run in done),
           "peak_pss_with_workers_mb": max(run["peak_pss_with_workers_mb"] for run in done),
           "threads": sorted({run["threads"] for run in done}),
           "updates": first["updates"], "planned_updates": first["planned_updates"],
           "update_sizes_as_planned": all(r["update_sizes_as_planned"] for run in done for r in run["epochs"]),
           "stale_batches": max(sum(r["stale_batches"] for r in run["epochs"]) for run in done),
           "seen_twice": max(max(r["seen_twice"] for r in run["epochs"]) for run in done),
           "never_seen": max(max(r["never_seen"] for r in run["epochs"]) for run in done),
           "final_train_loss": statistics.median(run["epochs"][-1]["train_loss"] for run in done)}
    if "micro_batch_size_per_epoch" in first:
        row["micro_batch_size_per_epoch"] = [run["micro_batch_size_per_epoch"] for run in done]
        row["size_search_s"] = statistics.median(run["size_search_s"] for run in done)
    return row


def ratios(summary: dict[str, dict]) -> dict:
    """growbatch auto against the fastest peer, seed 003 and the fastest fixed micro-batch, per epoch and overall."""
    def rate(system: str, epoch: int | None, key: str = "samples_per_s_per_epoch") -> float | None:
        row = summary.get(system, {})
        if not row.get("finished"):
            return None
        return row["samples_per_s"] if epoch is None else row[key][epoch]

    result = {}
    for epoch in [*range(len(SIZES)), None]:
        auto = rate("growbatch auto", epoch)
        peers = {s: r for s in PEERS if (r := rate(s, epoch))}
        fixed = {s: r for s in SYSTEMS if s.startswith("growbatch micro") and (r := rate(s, epoch))}
        key = "whole run" if epoch is None else f"epoch {epoch} (batch {SIZES[epoch]})"
        if auto is None or not peers or not fixed:
            result[key] = None
            continue
        fastest_peer, fastest_fixed = max(peers, key=peers.get), max(fixed, key=fixed.get)
        result[key] = {"fastest_peer": fastest_peer, "auto_vs_fastest_peer": auto / peers[fastest_peer],
                       "auto_vs_seed_003": auto / peers["seed 003"] if "seed 003" in peers else None,
                       "fastest_fixed": fastest_fixed, "auto_vs_fastest_fixed": auto / fixed[fastest_fixed]}
        if epoch is not None:  # the one-off timing of sizes left out (NOTE [honest wall time] in trainer.py)
            bare = rate("growbatch auto", epoch, "samples_per_s_per_epoch_without_search")
            result[key]["auto_without_search_vs_fastest_fixed"] = bare / fixed[fastest_fixed]
    return result


def start_load_processes(cores: int) -> list[subprocess.Popen]:
    """``cores`` processes of 512 x 512 matrix products (bench_threads.py's LOAD), running when this returns."""
    # a SIGTERM (a killed job) runs the callers' finally blocks too, so no load process outlives the benchmark
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    load = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(cores)]
    time.sleep(3)  # the load processes import torch first
    return load


def stop_load(load: list[subprocess.Popen]) -> None:
    for process in load:
        process.kill()
        process.wait()


def with_load(cores: int, measure: Callable[[], dict]) -> dict:
    """``measure()`` beside ``cores`` matrix-product processes."""
    load: list[subprocess.Popen] = []
    try:
        load.extend(start_load_processes(cores))
        return measure()
    finally:
        stop_load(load)


def table(result: dict) -> str:
    """The README's tables (Markdown) from a results file: per system samples/s per epoch and overall, wall, RSS
    and counts; then growbatch "auto" against the fastest fixed size, the fastest peer and seed 003."""
    lines = ["| machine state | system | threads | samples/s at 128 / 640 / 3,200 | samples/s, 3 epochs | wall (s) | "
             "peak RSS trainer / PSS with workers (MB) | updates (plan) | stale batches | seen twice / never |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for state, content in result["states"].items():
        for system, row in content["summary"].items():
            if not row.get("finished"):
                lines.append(f"| {state} | {system} | | not finished: {row.get('why')} | | | | | | |")
                continue
            epochs = " / ".join(f"{rate:,.0f}" for rate in row["samples_per_s_per_epoch"])
            micro = ""
            if system == "growbatch auto":
                micro = " (micro " + "; ".join(",".join(map(str, sizes)) for sizes in
                                               row["micro_batch_size_per_epoch"][0]) + ")"
            lines.append(f"| {state} | {system}{micro} | {'/'.join(map(str, row['threads']))} | {epochs} | "
                         f"{row['samples_per_s']:,.0f} | {row['wall_s']:.1f} | {row['peak_rss_mb']:,.0f} / {row['peak_pss_with_workers_mb']:,.0f} | "
                         f"{row['updates']} ({row['planned_updates']}) | {row['stale_batches']} | "
                         f"{row['seen_twice']} / {row['never_seen']} |")
    return "\n".join(lines) + "\n\n" + ratio_table(result)


def ratio_table(result: dict) -> str:
    """growbatch "auto" against the fastest fixed micro-batch size, the fastest peer and seed 003, per phase."""
    lines = ["| machine state | phase | auto / fastest fixed size | auto / fastest peer | auto / seed 003 |",
             "| --- | --- | ---: | ---: | ---: |"]
    for state, content in result["states"].items():
        for phase, row in content["ratios"].items():
            if row is None:
                lines.append(f"| {state} | {phase} | – | – | – |")
                continue
            seed = f"{row['auto_vs_seed_003']:.2f}" if row["auto_vs_seed_003"] is not None else "–"
            lines.append(f"| {state} | {phase} | {row['auto_vs_fastest_fixed']:.2f} ({row['fastest_fixed']}) | "
                         f"{row['auto_vs_fastest_peer']:.2f} ({row['fastest_peer']}) | {seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="mnist-cnn",
                        help=f"mnist-cnn on MNIST (default), or resnet20 or airbench-small on CIFAR-10 ({CIFAR_IMAGES:,} images)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES:,} images instead of {FULL_IMAGES:,} (mnist-cnn) and 4 systems")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds per machine state")
    parser.add_argument("--systems", help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--states", help="comma-separated machine states: idle, load (from the start), late-load "
                                          "(from the second epoch); default all three, idle,load with --quick")
    parser.add_argument("--table", type=Path, metavar="RESULTS", help="print the Markdown table of a results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(worker(config["system"], config["model"], config["images"], config["load_from_epoch"])))
        return
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    images = QUICK_IMAGES if args.quick else FULL_IMAGES if args.model == "mnist-cnn" else CIFAR_IMAGES
    cores = os.cpu_count() or 1
    systems = tuple(args.systems.split(",")) if args.systems else QUICK_SYSTEMS if args.quick else SYSTEMS
    args.states = args.states or ("idle,load" if args.quick else ",".join(STATE_KEYS))
    wrong = [state for state in args.states.split(",") if state not in STATE_KEYS]
    if wrong:
        parser.error(f"--states should name some of {', '.join(STATE_KEYS)}, but got {', '.join(wrong)}")
    unknown = [system for system in systems if system not in SYSTEMS]
    if unknown:
        parser.error(f"--systems should name some of {', '.join(SYSTEMS)}, but got {', '.join(unknown)}")
    missing = [f"{system} needs the {NEEDS[system]} package" for system in systems
               if system in NEEDS and importlib.util.find_spec(NEEDS[system]) is None]
    if missing:
        parser.error(f"{'; '.join(missing)}: pip install -c constraints.txt -e '.[bench]' (make bench does)")
    plan = schedule(images).plan()
    result = {"benchmark": "peers", "model": args.model, "data_set": MODELS[args.model], "images": images, "schedule": list(SIZES), "lr": LR, "momentum": MOMENTUM,
              "dataloader_workers": WORKERS, "repeats": args.repeats, "systems": list(systems),
              "planned_updates": {"total": plan.total_updates, "per_phase": [p.updates for p in plan.phases]},
              "machine": {"nproc": cores, "cpu": cpu_model(), "torch": torch.__version__,
                          "torch_default_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()},
              "states": {}}
    started = time.perf_counter()
    states = {"idle": ("idle", lambda: measure_state(systems, args.model, images, args.repeats)),
              "load": (f"beside {cores} matrix-product processes", lambda: with_load(
                  cores, lambda: measure_state(systems, args.model, images, args.repeats))),
              "late-load": (f"{cores} matrix-product processes from the second epoch", lambda: measure_state(
                  systems, args.model, images, args.repeats, load_from_epoch=1))}
    for key in args.states.split(","):
        state, measure = states[key]
        runs = measure()
        summary = {system: summarise(system_runs) for system, system_runs in runs.items()}
        result["states"][state] = {"summary": summary, "ratios": ratios(summary), "runs": runs}
    result["machine"]["load_average_after"] = os.getloadavg()
    result["bench_s"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(text)
    # bench/results/peers[-resnet20][-STATES].json: a run of some states does not overwrite a run of all
    subset = "" if args.states == ",".join(STATE_KEYS) else "-" + args.states.replace(",", "-")
    name = f"peers{'' if args.model == 'mnist-cnn' else '-' + args.model}{subset}.json"
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results", name).write_text(text)
    print(table(result), file=sys.stderr)


if __name__ == "__main__":
    main()
