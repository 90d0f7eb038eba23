"""The paper's comparisons as sets of runs: build the schedules, train each run, write summary.json.

``compare`` is §5.1 (decaying lr, hybrid, increasing batch); ``paper-5.2`` is §5.2 (original,
increasing batch, increased initial lr with B ∝ eps, increased momentum with B ∝ 1/(1-m)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_json_atomically
from ..batching.ghost_bn import check_ghost_batch_size
from ..data import DATASET_NAMES, ImageDataset, load_dataset
from ..models import MODEL_NAMES
from ..schedule.builders import default_max_batch_size, step_schedule
from ..schedule.schedule import Schedule
from .distributed import DistInfo, from_main
from .metrics import read_records
from .rundir import RunLock, prepare_output_dir
from .settings import OPTIMIZERS, RunConfig
from .trainer import CHECKPOINT_NAME, METRICS_NAME, StopFlag, train_run

__all__ = ["EXPERIMENTS", "ExperimentConfig", "run_configs", "run_experiment", "SUMMARY_NAME"]

EXPERIMENTS = ("compare", "paper-5.2")
SUMMARY_NAME = "summary.json"
MILESTONE_FRACTIONS = (0.3, 0.6, 0.8)  # the paper's 60/120/160 of 200 epochs
DEFAULT_MODEL = {"digits": "cnn", "mnist": "mnist-cnn", "fashion-mnist": "mnist-cnn", "cifar10": "wrn-16-4"}
DEFAULT_EPOCHS = {"digits": 30, "mnist": 6, "fashion-mnist": 6, "cifar10": 200}
DEFAULT_LR = {"sgd": 1.0, "momentum": 0.1, "nesterov": 0.1, "adam": 1e-3}  # sgd: same eps/(1-m) as momentum 0.9
PAPER_UPDATES_PER_EPOCH = 50_000 / 128  # the paper's N/B0 on CIFAR-10


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment: several schedules x optimizers x seeds on one data set and model."""

    experiment: str = "compare"
    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None  # None: the data set's default
    optimizers: tuple[str, ...] = ("momentum",)
    epochs: int | None = None  # None: the data set's default
    seeds: tuple[int, ...] = (0,)
    batch_size: int | None = None  # initial global batch; None: suited to the data set size
    lr: float | None = None  # None: per optimizer
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_batch_size: int | None = None  # None: N/10
    factor: float = 5.0
    micro_batch_size: int | str = "auto"
    ghost_batch_size: int | None = None  # None: the schedule's initial batch; 0: plain batch norm
    device: str = "auto"
    channels_last: bool = False
    checkpoint_every: int | None = None
    train_size: int | None = None  # None: the whole training split; else a class-balanced subset (seed 0)

    def __post_init__(self) -> None:
        def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        one_of("experiment", self.experiment, EXPERIMENTS)
        one_of("dataset", self.dataset, DATASET_NAMES)
        if self.model is not None:
            one_of("model", self.model, MODEL_NAMES)
        if not self.optimizers:
            raise ValueError(f"optimizers should name at least one of {', '.join(OPTIMIZERS)}")
        for name in self.optimizers:
            one_of("optimizer", name, OPTIMIZERS)
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs <= 0):
            raise ValueError(f"epochs should be a positive integer, but got epochs={self.epochs!r}")
        if self.train_size is not None and (isinstance(self.train_size, bool) or not isinstance(self.train_size, int)
                                            or self.train_size <= 0):
            raise ValueError(f"train_size should be a positive integer, but got train_size={self.train_size!r}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds should be non-negative integers, but got seeds={list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError("seeds and optimizers should not repeat")
        if self.experiment == "paper-5.2" and "sgd" in self.optimizers:
            raise ValueError("paper-5.2 scales the momentum coefficient, so optimizer sgd (no momentum) does not "
                             "apply; use momentum, nesterov or adam")

    @property
    def resolved_model(self) -> str:
        return self.model or DEFAULT_MODEL[self.dataset]

    @property
    def resolved_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS[self.dataset]

    def manifest(self) -> dict:
        """What identifies the experiment in its output directory (not where or how fast it runs)."""
        data = asdict(self)
        for key in ("data_dir", "device", "checkpoint_every"):
            data.pop(key)
        data["optimizers"], data["seeds"] = list(self.optimizers), list(self.seeds)
        data["model"], data["epochs"] = self.resolved_model, self.resolved_epochs
        return data


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

    def build(mode: str, name: str, lr_: float, batch_: int, momentum_: float) -> Schedule:
        return step_schedule(mode, lr=lr_, batch_size=batch_, epochs=epochs, milestones=milestones,
                             factor=config.factor, dataset_size=n, momentum=momentum_, max_batch_size=cap, name=name)

    if config.experiment == "compare":
        return {mode: build(mode, mode, lr, batch, momentum) for mode in ("decay", "hybrid", "increase")}
    k = config.factor
    high_momentum = 1.0 - (1.0 - momentum) / k  # B ∝ 1/(1-m): 0.9 -> 0.98 for factor 5
    return {
        "original": build("decay", "original", lr, batch, momentum),
        "increase": build("increase", "increase", lr, batch, momentum),
        "increase-lr": build("increase", "increase-lr", lr * k, round(batch * k), momentum),
        "increase-momentum": build("increase", "increase-momentum", lr * k, round(batch * k * k), high_momentum),
    }


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
            for seed in config.seeds:
                runs.append(RunConfig(
                    name=f"{schedule_name}-{optimizer}-seed{seed}", schedule=schedule, dataset=config.dataset,
                    data_dir=config.data_dir, model=config.resolved_model, optimizer=optimizer,
                    weight_decay=config.weight_decay, seed=seed, micro_batch_size=config.micro_batch_size,
                    ghost_batch_size=ghost, device=config.device, channels_last=config.channels_last,
                    checkpoint_every=config.checkpoint_every,
                ))
    return runs


def _summary_row(run: RunConfig, records: list[dict]) -> dict:
    last = records[-1]
    return {
        "name": run.name, "schedule": run.schedule.name, "optimizer": run.optimizer, "seed": run.seed,
        "epochs": len(records), "final_test_acc": last["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in records), "updates": last["updates"],
        "samples": last["samples"], "wall_s": last["wall_s"],
        "planned_updates": run.schedule.plan().total_updates,
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
    progress: bool = True,
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

    def prepare() -> bool:
        for run in runs:  # fail before the first run trains, and once rather than on every rank
            if run.ghost_batch_size and isinstance(run.micro_batch_size, int):
                check_ghost_batch_size(run.ghost_batch_size, run.micro_batch_size)
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
                records = list(train_run(run, dataset, run_dir, info=info, resume=resume_run,
                                         stop=stop, progress=progress))
            summary["runs"].append(_summary_row(run, records))
            if info.is_main:
                write_json_atomically(out / SUMMARY_NAME, summary)
        return summary
    finally:
        if lock is not None:
            lock.release()
