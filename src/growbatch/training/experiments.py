"""The paper's comparisons as sets of runs: build the schedules, train each run, write summary.json.

``compare`` is §5.1 (decaying lr, hybrid, increasing batch); ``paper-5.2`` is §5.2 (original,
increasing batch, increased initial lr with B ∝ eps, increased momentum with B ∝ 1/(1-m)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..atomic import write_json_atomically
from ..batching.ghost_bn import check_ghost_batch_size
from ..data import ImageDataset, load_dataset
from ..schedule.adaptive import AdaptiveBatch
from ..schedule.builders import default_max_batch_size, step_schedule
from ..schedule.schedule import Phase, Schedule
from .distributed import DistInfo, from_main
from .metrics import read_records
from .rundir import RunLock, prepare_output_dir
from .runfiles import CHECKPOINT_NAME, METRICS_NAME, train_run
from .settings import EXPERIMENTS, ExperimentConfig, RunConfig, RunSettings
from .task import ClassificationTask
from .trainer import Observer, StopFlag

__all__ = ["EXPERIMENTS", "ExperimentConfig", "run_configs", "run_experiment", "SUMMARY_NAME"]

SUMMARY_NAME = "summary.json"
MILESTONE_FRACTIONS = (0.3, 0.6, 0.8)  # the paper's 60/120/160 of 200 epochs
DEFAULT_LR = {"sgd": 1.0, "momentum": 0.1, "nesterov": 0.1, "adam": 1e-3}  # sgd: same eps/(1-m) as momentum 0.9
PAPER_UPDATES_PER_EPOCH = 50_000 / 128  # the paper's N/B0 on CIFAR-10


def default_batch_size(dataset_size: int, cap: int) -> int:
    """The paper's N/B0 ~ 390 updates per epoch, as a power of two in [8, 128], at most the cap."""
    ideal = dataset_size / PAPER_UPDATES_PER_EPOCH
    power = 2 ** round(math.log2(max(ideal, 1)))
    return max(1, min(cap, max(8, min(128, power))))


def _schedules(config: ExperimentConfig, optimizer: str, n: int) -> dict[str, Schedule]:
    epochs = config.resolved_epochs
    cap = config.max_batch_size or default_max_batch_size(n)
    lr = config.lr if config.lr is not None else DEFAULT_LR[optimizer]
    momentum = 0.0 if optimizer == "sgd" else config.momentum
    milestones = tuple(epochs * f for f in MILESTONE_FRACTIONS)
    batch = config.batch_size or default_batch_size(n, cap)
    if config.experiment == "paper-5.2" and config.batch_size is None:
        batch = max(1, min(batch, cap // round(config.factor ** 2)))  # leave room for B0 x factor^2

    def build(mode: str, name: str, lr_: float, batch_: int, momentum_: float, rule: str = "linear") -> Schedule:
        return step_schedule(mode, lr=lr_, batch_size=batch_, epochs=epochs, milestones=milestones,
                             factor=config.factor, dataset_size=n, momentum=momentum_, max_batch_size=cap, name=name,
                             rule=rule)

    if config.experiment == "compare":
        wanted = config.schedules or ("decay", "hybrid", "increase")  # adaptive only when asked for
        rules = config.resolved_rules(optimizer)
        schedules = {"decay": build("decay", "decay", lr, batch, momentum)} if "decay" in wanted else {}
        for mode in (m for m in ("hybrid", "increase") if m in wanted):
            for rule in rules:  # one rule: the plain name; several: one run per rule, named by it
                name = mode if len(rules) == 1 else f"{mode}-{rule}"
                schedules[name] = build(mode, name, lr, batch, momentum, rule)
        if "adaptive" in wanted:  # starts at (lr, B0); grows after each epoch as measured
            schedules["adaptive"] = Schedule((Phase(0, epochs, lr, batch, momentum),), n, name="adaptive")
        return schedules
    k = config.factor
    high_momentum = 1.0 - (1.0 - momentum) / k  # B ∝ 1/(1-m): 0.9 -> 0.98 for factor 5
    schedules = {
        "original": build("decay", "original", lr, batch, momentum),
        "increase": build("increase", "increase", lr, batch, momentum),
        "increase-lr": build("increase", "increase-lr", lr * k, round(batch * k), momentum),
        "increase-momentum": build("increase", "increase-momentum", lr * k, round(batch * k * k), high_momentum),
    }
    return {name: s for name, s in schedules.items() if config.schedules is None or name in config.schedules}


def run_configs(config: ExperimentConfig, dataset_size: int) -> list[RunConfig]:
    """Every run of the experiment, in the order they are trained."""
    runs = []
    for optimizer in config.optimizers:
        schedules = _schedules(config, optimizer, dataset_size)
        # ghost BN over groups of the original schedule's batch (the paper's 128 for B0 = 128),
        # the same for every schedule; 0 turns it off
        base_batch = next(iter(schedules.values())).phases[0].batch_size
        ghost = None if config.ghost_batch_size == 0 else (config.ghost_batch_size or base_batch)
        for schedule_name, schedule in schedules.items():
            adaptive, settings = _adaptive(config, schedule_name, schedule, ghost, dataset_size)
            for seed in config.seeds:
                runs.append(RunConfig(name=f"{schedule_name}-{optimizer}-seed{seed}", schedule=schedule,
                                      model=config.resolved_model, optimizer=optimizer, seed=seed,
                                      ghost_batch_size=ghost, adaptive=adaptive, settings=settings))
    return runs


def _adaptive(config: ExperimentConfig, schedule_name: str, schedule: Schedule, ghost: int | None,
              n: int) -> tuple[AdaptiveBatch | None, RunSettings]:
    """The adaptive rule of a run (None for a step schedule) and its settings.

    Batches stay whole ghost batches and, with a fixed micro-batch size, whole micro-batches. An adaptive run
    measures in ``split`` mode where ``free`` was asked for: it needs a measurement every epoch.
    """
    settings = config.run_settings()
    if schedule_name != "adaptive":
        return None, settings
    first = schedule.phases[0].batch_size
    if ghost and first < 2 * ghost:
        raise ValueError(f"the adaptive schedule measures the noise scale from two or more micro-batches per update, "
                         f"but its initial batch {first} holds fewer than two ghost batches of {ghost}, which cannot be "
                         f"cut; pass --ghost-batch-size {first // 2 or 1} (or 0), or a --batch-size of at least "
                         f"{2 * ghost}")
    multiple = ghost or 1
    if isinstance(settings.micro_batch_size, int):
        multiple = math.lcm(multiple, settings.micro_batch_size)
    cap = config.max_batch_size or default_max_batch_size(n)
    if settings.noise_scale == "free":
        settings = dataclasses.replace(settings, noise_scale="split")
    return AdaptiveBatch(config.noise_multiple, cap, multiple), settings


def _check_one_sample_shares(runs: list[RunConfig], task: ClassificationTask, world_size: int) -> None:
    """Refuse, before anything is written, a run that would cut a batch leaving one process a single sample
    for a model with BatchNorm1d, which cannot normalise one sample (the run would crash at that batch).

    NOTE [one-sample batch]: a trailing one-sample micro-batch joins the one before it (batching/microbatch.py),
    but a whole logical batch of one sample per process (the last of an epoch: N mod B = 1) cannot: refused here.
    """
    has_bn1d: dict[tuple, bool] = {}
    for run in runs:
        key = (run.model, run.ghost_batch_size)
        if key not in has_bn1d:
            has_bn1d[key] = any(isinstance(m, nn.BatchNorm1d) for m in task.build_model(run).modules())
        smallest = run.schedule.smallest_batch_size() if has_bn1d[key] and run.adaptive is None else 2 * world_size
        if smallest < 2 * world_size:  # rank_share: some process gets one sample exactly when b < 2 x world size
            n = run.schedule.dataset_size
            sizes = sorted({p.batch_size for p in run.schedule.phases})
            alone = "" if world_size == 1 else f", which leaves one of the {world_size} processes a single sample"
            raise ValueError(
                f"run {run.name} would cut a batch of {smallest} sample(s) (the last of an epoch: {n} training "
                f"samples in batches of {', '.join(map(str, sizes))}){alone}, but model {run.model} has "
                f"BatchNorm1d, which cannot normalise one sample; choose a --train-size or --batch-size that leaves "
                f"at least {2 * world_size} samples in each epoch's last "
                f"batch (e.g. --train-size {n - smallest})")


def _realised_plan_updates(run: RunConfig, records: list[dict]) -> int:
    """Updates the planner counts for the schedule the run followed (an adaptive one: as its records show)."""
    if run.adaptive is None:
        return run.schedule.plan().total_updates
    phases = tuple(Phase(r["epoch"], r["epoch"] + 1, r["lr"], r["batch_size"], r["momentum"]) for r in records)
    return Schedule(phases, run.schedule.dataset_size, run.schedule.drop_last).plan().total_updates


def _summary_row(run: RunConfig, records: list[dict]) -> dict:
    last = records[-1]
    return {
        "name": run.name, "schedule": run.schedule.name, "optimizer": run.optimizer, "seed": run.seed,
        "epochs": len(records), "final_test_acc": last["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in records), "updates": last["updates"],
        "samples": last["samples"], "wall_s": last["wall_s"],
        "planned_updates": _realised_plan_updates(run, records),
        "allreduces": last.get("allreduces", 0), "allreduce_s": last.get("allreduce_s", 0.0),
    }


def _run_state(run: RunConfig, run_dir: Path, resume: bool, force: bool) -> tuple[list[dict], bool, bool]:
    """A run's records in ``run_dir``, whether it is finished, and whether to resume it from its checkpoint."""
    records = read_records(run_dir / METRICS_NAME) if (run_dir / METRICS_NAME).exists() else []
    finished = resume and len(records) == run.schedule.epochs and not force
    resume_run = resume and not force and (run_dir / CHECKPOINT_NAME).exists()
    return records, finished, resume_run


def run_experiment(
    config: ExperimentConfig,
    out: Path,
    *,
    info: DistInfo,
    resume: bool = False,
    force: bool = False,
    stop: StopFlag | None = None,
    observer: Observer | None = None,
    dataset: ImageDataset | None = None,
    on_run: Callable[[RunConfig], None] | None = None,
) -> dict:
    """Train every run of ``config`` into ``out`` and write ``summary.json``; returns the summary.

    Finished runs are kept on ``resume``; an unfinished one continues from its checkpoint.
    """
    out = Path(out)
    dataset = dataset or load_dataset(config.dataset, config.data_dir)
    if config.train_size is not None:
        dataset = dataset.subset(config.train_size)
    runs = run_configs(config, dataset.train_size)
    manifest = config.manifest()
    # NOTE [rank 0 decides]: only rank 0 takes the lock, reads and writes the output directory; the
    # other ranks receive its decisions (and its errors) through from_main, so they cannot disagree
    # and need not share its file system.
    lock = RunLock(out) if info.is_main else None

    task = ClassificationTask(dataset)

    def prepare() -> bool:
        for run in runs:  # fail before the first run trains, and once rather than on every rank
            if run.ghost_batch_size and isinstance(run.settings.micro_batch_size, int):
                check_ghost_batch_size(run.ghost_batch_size, run.settings.micro_batch_size)
        _check_one_sample_shares(runs, task, info.world_size)
        if out.is_dir():
            lock.acquire()  # first: a directory in use is refused as such, whatever it holds
        try:
            continuing = prepare_output_dir(out, manifest, resume=resume, force=force)
            out.mkdir(parents=True, exist_ok=True)
            if not lock.held:
                lock.acquire()
        except BaseException:
            lock.release()
            raise
        return continuing

    continuing = from_main(prepare)
    try:
        if info.is_main:
            write_json_atomically(out / "experiment.json", manifest)
        summary = {"experiment": config.experiment, "dataset": config.dataset, "model": config.resolved_model,
                   "dataset_size": dataset.train_size, "world_size": info.world_size, "runs": []}
        for run in runs:
            run_dir = out / run.name
            if on_run is not None:
                on_run(run)
            records, finished, resume_run = from_main(lambda: _run_state(run, run_dir, continuing or resume, force))
            if not finished:
                records = list(train_run(run, task, run_dir, info=info, resume=resume_run, stop=stop,
                                         observer=observer))
            summary["runs"].append(_summary_row(run, records))
            if info.is_main:
                write_json_atomically(out / SUMMARY_NAME, summary)
        return summary
    finally:
        if lock is not None:
            lock.release()
