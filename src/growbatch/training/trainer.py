"""The training loop: one run of a RunConfig, one update per logical batch, metrics per epoch.

Resumable from any checkpoint (per epoch, or every K updates), stoppable by a signal,
guarded against divergence, and the same on one process or many (DDP via torchrun).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..atomic import write_json_atomically
from ..batching.loader import TensorLoader
from ..batching.microbatch import MicroBatcher
from ..batching.scheduler import BatchSizeScheduler
from ..data import ImageDataset
from ..models import build_model
from .checkpoint import (
    capture_rng,
    check_compatible,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .distributed import (
    AllReduceStats,
    DistInfo,
    average_buffers,
    from_main,
    sum_over_ranks,
    warn_if_ghosts_split,
    wrap_ddp,
)
from .metrics import append_record, write_records
from .settings import RunConfig

__all__ = ["train_run", "DivergenceError", "Interrupted", "StopFlag", "CHECKPOINT_NAME", "METRICS_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """A stop was requested (SIGINT/SIGTERM); a checkpoint was written to resume from."""


@dataclass
class StopFlag:
    """Set by a signal handler; the loop checks it after every update."""

    requested: bool = False
    signal_name: str = ""


@dataclass
class _Tally:
    """Training loss and accuracy summed over the samples of the current epoch (this rank)."""

    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    micro_batch_size: int = 0  # the largest micro-batch of the epoch (this rank)


@dataclass
class _State:
    epoch: int = 0
    updates: int = 0
    samples: int = 0
    wall_s: float = 0.0
    tally: _Tally = field(default_factory=_Tally)
    records: list = field(default_factory=list)


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    first = config.schedule.phases[0]
    if config.optimizer == "adam":
        # NOTE [adam-momentum]: the schedule's momentum is Adam's beta1, as in the paper's §5.1 Adam runs.
        return torch.optim.Adam(model.parameters(), lr=first.lr, betas=(first.momentum, 0.999),
                                weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=first.lr, momentum=first.momentum,
                           nesterov=config.optimizer == "nesterov" and first.momentum > 0,
                           weight_decay=config.weight_decay)


def _evaluate(model: nn.Module, dataset: ImageDataset, config: RunConfig, info: DistInfo,
              normalize: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """Test loss and accuracy over the whole test set, sharded contiguously over ranks."""
    n = len(dataset.y_test)
    start, stop = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
    loss_sum, correct = 0.0, 0
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=info.device.type == "cuda")
    with torch.no_grad(), autocast:
        for i in range(start, stop, config.eval_batch_size):
            j = min(stop, i + config.eval_batch_size)
            x = normalize(dataset.x_test[i:j].to(info.device))
            y = dataset.y_test[i:j].to(info.device)
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum().item())
    model.train()
    total_loss, total_correct = sum_over_ranks([loss_sum, float(correct)], info.device)
    return total_loss / n, total_correct / n


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_run(
    config: RunConfig,
    dataset: ImageDataset,
    run_dir: Path,
    *,
    info: DistInfo,
    resume: bool = False,
    stop: StopFlag | None = None,
    progress: bool = True,
) -> Iterator[dict]:
    """Train one run, yielding every epoch's metrics record: first those restored from a
    checkpoint, then each new one as it is written.

    ``run_dir`` receives ``config.json``, ``metrics.jsonl`` (one flushed line per epoch) and
    ``checkpoint.pt``. With ``resume`` an existing checkpoint is continued exactly.

    Raises:
        DivergenceError: the training loss became NaN or infinite.
        Interrupted: ``stop`` was set; a checkpoint was written first.
    """
    stop = stop or StopFlag()
    run_dir = Path(run_dir)
    schedule = config.schedule
    if schedule.dataset_size != dataset.train_size:
        raise ValueError(f"the schedule is for {schedule.dataset_size} samples, but {dataset.name} has "
                         f"{dataset.train_size} training samples")
    checkpoint_path = run_dir / CHECKPOINT_NAME
    metrics_path = run_dir / METRICS_NAME
    def load() -> dict | None:
        if not (resume and checkpoint_path.exists()):
            return None
        state = load_checkpoint(checkpoint_path)
        check_compatible(state["config"], config.to_dict(), checkpoint_path)
        return state

    # rank 0 reads the checkpoint and hands it to the others (NOTE [rank 0 decides] in experiments.py);
    # it is rank-independent, so a run resumes on any number of processes
    saved = from_main(load)

    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=dataset.in_channels, num_classes=dataset.num_classes,
                        image_size=dataset.image_size, ghost_batch_size=config.ghost_batch_size).to(info.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = _optimizer(config, model)
    loader = TensorLoader(
        dataset.x_train, dataset.y_train, schedule, mean=dataset.mean, std=dataset.std,
        crop_padding=4 if dataset.augment else 0, flip=dataset.augment, seed=config.seed,
        rank=info.rank, world_size=info.world_size, device=info.device, channels_last=config.channels_last,
        normalize_batches=False,  # uint8 logical batches; each micro-batch is normalised on its own
    )
    scheduler = BatchSizeScheduler(loader, optimizer, schedule)
    if info.is_main:
        warn_if_ghosts_split(schedule, config.ghost_batch_size, info.world_size)
    stats = AllReduceStats()
    ddp_model = wrap_ddp(model, info, stats)
    # NOTE [bf16]: on CUDA the forward passes run under bf16 autocast; the CPU stays in float32 (exact resumes)
    autocast_dtype = torch.bfloat16 if info.device.type == "cuda" else None
    micro = MicroBatcher(ddp_model, nn.functional.cross_entropy, micro_batch_size=config.micro_batch_size,
                         device=info.device, autocast_dtype=autocast_dtype, transform=loader.normalize)
    state = _State()
    last_epoch, last_lr, last_batch = 0, scheduler.get_last_lr()[0], 0  # of the latest update, for messages

    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            loader.load_state_dict(saved["loader"])
            stats.load_state_dict(saved["allreduce"])
            c = saved["counters"]
            state = _State(c["epoch"], c["updates"], c["samples"], c["wall_s"], _Tally(**saved["tally"]),
                           list(saved["records"]))
            if "micro" in saved:  # older checkpoints hold no micro-batch measurements
                micro.load_state_dict(saved["micro"])
            restore_rng(saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            # a checkpoint whose settings match but whose contents do not (edited, or another version's)
            detail = " ".join(str(err).split())
            raise ValueError(f"checkpoint {checkpoint_path} does not fit run {config.name} "
                             f"({type(err).__name__}: {detail[:200]}); delete it to start this run over, "
                             "or use --force") from None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(run_dir / CONFIG_NAME, {**config.to_dict(), "growbatch_version": __version__,
                                                  "git_commit": _git_commit(), "world_size": info.world_size})
        # the checkpoint is the truth: drop epochs written after it (and any torn line)
        if saved is not None or metrics_path.exists():
            write_records(metrics_path, state.records)

    def save() -> None:
        average_buffers(model)
        # a checkpoint is only written with finite weights, so the last one kept is always a good one
        bad = _non_finite_state(model, optimizer)
        if bad is not None:
            raise DivergenceError(
                f"run {config.name}: {bad} became inf or NaN by update {state.updates} in epoch "
                f"{_epoch_of(last_epoch, schedule.epochs)} (lr={last_lr:g}, batch_size={last_batch}); "
                f"{_kept(checkpoint_path)}")
        if not info.is_main:
            return
        save_checkpoint(checkpoint_path, {
            "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "loader": loader.state_dict(), "rng": capture_rng(),
            "allreduce": stats.state_dict(), "micro": micro.state_dict(), "records": state.records,
            "counters": {"epoch": state.epoch, "updates": state.updates, "samples": state.samples,
                         "wall_s": state.wall_s},
            "tally": {"loss_sum": state.tally.loss_sum, "correct": state.tally.correct,
                      "samples": state.tally.samples, "micro_batch_size": state.tally.micro_batch_size},
        })

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return loader.normalize(x)

    yield from list(state.records)
    model.train()
    while state.epoch < schedule.epochs:
        epoch = state.epoch
        if loader.epoch != epoch:
            loader.set_epoch(epoch)
        bar = _progress_bar(progress and info.is_main, len(loader), f"{config.name} epoch {epoch + 1}/{schedule.epochs}")
        started = time.perf_counter()
        for inputs, targets in loader:
            global_batch = loader.last_global_batch_size
            optimizer.zero_grad(set_to_none=True)
            result = micro.backward(inputs, targets, global_batch_size=global_batch, world_size=info.world_size)
            loss_sum, bad = sum_over_ranks([result.loss_sum, float(not math.isfinite(result.loss_sum))], info.device) \
                if info.enabled else (result.loss_sum, float(not math.isfinite(result.loss_sum)))
            lr = scheduler.get_last_lr()[0]
            if bad or not math.isfinite(loss_sum):  # before optimizer.step: the weights stay as checkpointed
                raise DivergenceError(
                    f"run {config.name}: the training loss became {loss_sum} at update {state.updates + 1} in "
                    f"epoch {_epoch_of(epoch, schedule.epochs)} (lr={lr:g}, batch_size={global_batch}); "
                    f"{_kept(checkpoint_path)}")
            optimizer.step()
            last_epoch, last_lr, last_batch = epoch, lr, global_batch
            scheduler.step()
            state.updates += 1
            state.samples += global_batch
            state.tally.loss_sum += result.loss_sum
            state.tally.correct += result.correct
            state.tally.samples += result.samples
            state.tally.micro_batch_size = max(state.tally.micro_batch_size, result.micro_batch_size)
            if bar is not None:
                bar.update(1)
            requested = stop.requested
            if info.enabled:
                requested = bool(sum_over_ranks([float(stop.requested)], info.device)[0])
            if requested or (config.checkpoint_every and state.updates % config.checkpoint_every == 0):
                state.wall_s += time.perf_counter() - started
                started = time.perf_counter()
                save()
                if requested:
                    if bar is not None:
                        bar.close()
                    raise Interrupted(f"run {config.name} stopped by {stop.signal_name or 'request'} after update "
                                      f"{state.updates} in epoch {_epoch_of(epoch, schedule.epochs)}; "
                                      f"checkpoint written to {checkpoint_path}")
        if bar is not None:
            bar.close()
        average_buffers(model)
        test_loss, test_acc = _evaluate(ddp_model, dataset, config, info, normalize)
        state.wall_s += time.perf_counter() - started  # training and evaluation of this epoch
        loss_total, correct_total, count_total = sum_over_ranks(
            [state.tally.loss_sum, float(state.tally.correct), float(state.tally.samples)], info.device)
        phase = schedule.phase_at(epoch)
        record = {
            "epoch": epoch, "updates": state.updates, "samples": state.samples, "wall_s": round(state.wall_s, 4),
            "lr": phase.lr, "batch_size": phase.batch_size, "momentum": phase.momentum,
            "train_loss": loss_total / max(count_total, 1), "train_acc": correct_total / max(count_total, 1),
            "test_loss": test_loss, "test_acc": test_acc,
            "allreduces": stats.count, "allreduce_s": round(stats.seconds, 6),
            "micro_batch_size": state.tally.micro_batch_size,
        }
        state.records.append(record)
        state.epoch += 1
        state.tally = _Tally()
        # checkpoint first, then the metrics line: metrics.jsonl never runs ahead of the checkpoint,
        # so a run whose metrics are complete also has its final checkpoint
        save()
        if info.is_main:
            append_record(metrics_path, record)
            if not progress or not sys.stderr.isatty():
                print(f"[{config.name}] epoch {epoch + 1}/{schedule.epochs} lr={phase.lr:.4g} "
                      f"batch={phase.batch_size} train_loss={record['train_loss']:.4f} "
                      f"test_acc={test_acc:.4f} updates={state.updates} ({state.wall_s:.1f} s)",
                      file=sys.stderr, flush=True)
        yield record


def _kept(checkpoint_path: Path) -> str:
    """What a diverged run leaves behind, and what to do about it."""
    fix = "lower the learning rate (--lr) and start over with --force"
    if checkpoint_path.exists():
        return f"the last good checkpoint {checkpoint_path} is kept; {fix}"
    return f"no checkpoint had been written yet; {fix}"


def _epoch_of(epoch: int, epochs: int) -> str:
    """A 0-based epoch as users read it in the progress lines: ``1/30`` for epoch 0."""
    return f"{epoch + 1}/{epochs}"


def _non_finite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first parameter, buffer or optimizer state (momentum, Adam moments) holding inf or NaN, or None."""
    def finite(tensor: object) -> bool:
        return not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()) or bool(tensor.isfinite().all())

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not finite(tensor):
            return f"the weights ({name})"
    for values in optimizer.state.values():
        for key, tensor in values.items():
            if not finite(tensor):
                return f"the optimizer state ({key})"
    return None


def _progress_bar(enabled: bool, total: int, description: str):
    """A tqdm bar on a terminal; None elsewhere (plain per-epoch lines are printed instead)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)


def _git_commit() -> str | None:
    """The commit of the growbatch checkout, when it runs from one."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None

