"""``growbatch run lm``: language models on a token clock, at equal tokens per run.

Schedules: ``decay`` (the lr schedule, warm-up + cosine or WSD, at a fixed batch), ``converted`` (its conversion
to a batch ramp at equal noise scale by the optimizer's rule, sqrt for Adam), ``seesaw`` (batch doubling, lr /
sqrt 2), ``rampup`` (Megatron's linear ramp with the lr schedule) and ``steps`` (a token step list, with it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json_atomically
from ..data.text import TextCorpus, load_text_dataset
from ..schedule.schedule import Schedule
from ..schedule.tokens import (
    TokenClock,
    convert_at_equal_noise,
    fixed_batch,
    lr_function,
    rampup_batches,
    seesaw,
    with_batches,
)
from .distributed import DistInfo, from_main
from .lm_task import LanguageModelTask
from .metrics import read_records
from .rundir import RunLock, claim_output_dir
from .runfiles import CHECKPOINT_NAME, METRICS_NAME, train_run
from .settings import DEFAULT_SEQ_LEN, DEFAULT_TOKENS, ExperimentConfig, RunConfig
from .trainer import Observer, StopFlag

__all__ = ["LMPlan", "lm_plan", "lm_schedules", "lm_run_configs", "run_lm_experiment", "DEFAULT_TOKENS"]

DEFAULT_LM_BATCH = 16  # sequences
DEFAULT_CAP_MULTIPLE = 8  # default --max-batch-size: 8 x the initial batch
DEFAULT_LM_LR = {"adamw": 2e-3, "adam": 2e-3, "sgd": 0.5, "momentum": 0.05, "nesterov": 0.05}
LR_POINTS_PER_EPOCH = 16  # the lr schedule is sampled 16 times per evaluation interval
EVAL_SEQUENCES = 128  # validation sequences per evaluation (16,384 tokens at seq_len 128)


@dataclass(frozen=True)
class LMPlan:
    """The token clock of an lm experiment and its schedules' shared numbers."""

    clock: TokenClock
    batch_size: int
    max_batch_size: int
    lr: float

    @property
    def total_tokens(self) -> int:
        return self.clock.total_tokens


def lm_plan(config: ExperimentConfig, optimizer: str) -> LMPlan:
    """The clock (tokens rounded down to whole epochs of whole sequences) and the batch, cap and lr.

    Raises:
        ValueError: fewer tokens than one sequence per epoch, or a batch larger than an epoch's sequences.
    """
    seq_len = config.seq_len or DEFAULT_SEQ_LEN
    epochs, tokens = config.resolved_epochs, config.tokens or DEFAULT_TOKENS
    per_epoch = tokens // (seq_len * epochs)
    if per_epoch == 0:
        raise ValueError(f"--tokens {tokens} is less than one sequence of {seq_len} tokens per epoch ({epochs} "
                         f"epochs); give at least --tokens {seq_len * epochs}")
    batch = config.batch_size or DEFAULT_LM_BATCH
    cap = config.max_batch_size or min(per_epoch, DEFAULT_CAP_MULTIPLE * batch)
    for name, value in (("--batch-size", batch), ("--max-batch-size", cap)):
        if value > per_epoch:
            raise ValueError(f"{name} {value} is more than the {per_epoch} sequences of an epoch ({tokens} tokens / "
                             f"{epochs} epochs / {seq_len} tokens); raise --tokens or lower {name}")
    if cap < batch:
        raise ValueError(f"--max-batch-size {cap} should be at least --batch-size {batch}")
    lr = config.lr if config.lr is not None else DEFAULT_LM_LR[optimizer]
    return LMPlan(TokenClock(seq_len, per_epoch, epochs), batch, cap, lr)


def lm_schedules(config: ExperimentConfig, optimizer: str) -> dict[str, Schedule]:
    """The experiment's schedules, all on the same token clock (so at equal tokens)."""
    plan = lm_plan(config, optimizer)
    clock, b0, cap = plan.clock, plan.batch_size, plan.max_batch_size
    momentum = 0.0 if optimizer == "sgd" else config.momentum
    lr_fn = lr_function(config.lr_schedule, plan.lr, clock.epochs, config.warmup)
    common = dict(clock=clock, momentum=momentum, points_per_epoch=LR_POINTS_PER_EPOCH)
    rule = config.resolved_rules(optimizer)[0]
    wanted = config.schedules or tuple(n for n in ("decay", "converted", "seesaw", "rampup", "steps")
                                       if n != "steps" or config.batch_schedule is not None)
    builders: dict[str, Callable[[], Schedule]] = {
        "decay": lambda: fixed_batch(lr_fn, batch_size=b0, name="decay", **common),
        "converted": lambda: convert_at_equal_noise(lr_fn, batch_size=b0, max_batch_size=cap, rule=rule,
                                                    name="converted", **common),
        "seesaw": lambda: seesaw(lr_fn, batch_size=b0, max_batch_size=cap, name="seesaw", **common),
        "rampup": lambda: with_batches(lr_fn, _rampup_steps(config, plan), name="rampup", **common),
        "steps": lambda: with_batches(lr_fn, _token_steps(config, plan), name="steps", **common),
    }
    return {name: builders[name]() for name in wanted}


def _token_steps(config: ExperimentConfig, plan: LMPlan) -> list[tuple[float, int]]:
    """--batch-schedule on the clock; a point the run never reaches is refused (it would be a silent no-op)."""
    steps = config.batch_schedule or ()
    late = [t for t, _ in steps if t >= plan.total_tokens]
    if late:
        raise ValueError(f"--batch-schedule has a step at {late[0]:,} tokens, but each run trains "
                         f"{plan.total_tokens:,}; raise --tokens or move the step earlier")
    return [(plan.clock.epoch_of_tokens(t), b) for t, b in steps]


def _rampup_steps(config: ExperimentConfig, plan: LMPlan) -> list[tuple[float, int]]:
    total_samples = plan.clock.sequences_per_epoch * plan.clock.epochs
    start, increment, samples = config.rampup_batch_size or (plan.batch_size, plan.batch_size, total_samples // 2)
    steps = rampup_batches(start, increment, samples, plan.max_batch_size)
    return [(plan.clock.epoch_of_samples(s), b) for s, b in steps]


def lm_run_configs(config: ExperimentConfig) -> list[RunConfig]:
    """Every run of the lm experiment, in the order they are trained."""
    runs, settings = [], config.run_settings()
    for optimizer in config.optimizers:
        for name, schedule in lm_schedules(config, optimizer).items():
            for seed in config.seeds:
                runs.append(RunConfig(name=f"{name}-{optimizer}-seed{seed}", schedule=schedule,
                                      model=config.resolved_model, optimizer=optimizer, seed=seed, settings=settings))
    return runs


def _summary_row(run: RunConfig, records: list[dict], seq_len: int) -> dict:
    last, plan = records[-1], run.schedule.plan()
    return {"name": run.name, "schedule": run.schedule.name, "optimizer": run.optimizer, "seed": run.seed,
            "epochs": len(records), "final_test_loss": last["test_loss"], "final_test_bpb": last["test_bpb"],
            "best_test_loss": min(r["test_loss"] for r in records), "updates": last["updates"],
            "samples": last["samples"], "tokens": last["tokens"], "wall_s": last["wall_s"],
            "planned_updates": plan.total_updates, "planned_tokens": plan.total_samples * seq_len,
            "gradient_noise_scale": last.get("gradient_noise_scale"), "allreduces": last.get("allreduces", 0)}


def run_lm_experiment(config: ExperimentConfig, out: Path, *, info: DistInfo, resume: bool = False,
                      force: bool = False, stop: StopFlag | None = None, observer: Observer | None = None,
                      corpus: TextCorpus | None = None) -> dict:
    """Train every lm run into ``out`` and write ``summary.json``; returns the summary (as run_experiment)."""
    out = Path(out)
    corpus = corpus or load_text_dataset(config.dataset, config.data_dir, config.text_file)
    seq_len = config.seq_len or DEFAULT_SEQ_LEN
    runs = lm_run_configs(config)
    plan = lm_plan(config, config.optimizers[0])
    task = LanguageModelTask(corpus, seq_len=seq_len, sequences_per_epoch=plan.clock.sequences_per_epoch,
                             eval_sequences=EVAL_SEQUENCES)
    if plan.total_tokens > corpus.train_tokens and info.is_main:  # NOTE [token epochs]: the stream wraps round
        warnings.warn(f"a run trains {plan.total_tokens:,} tokens, more than the {corpus.train_tokens:,} of "
                      f"{corpus.source}: it reads the training stream {plan.total_tokens / corpus.train_tokens:.2f} "
                      "times", stacklevel=2)
    # the corpus by its bytes: the same data from the shared file or self-built, other data refused on --resume
    manifest = {**config.manifest(), "tokens": plan.total_tokens, "seq_len": seq_len,
                "corpus_sha256": corpus.sha256()}
    lock = RunLock(out) if info.is_main else None
    continuing = from_main(lambda: claim_output_dir(out, manifest, lock, resume=resume, force=force))  # NOTE [rank 0 decides]
    try:
        if info.is_main:
            write_json_atomically(out / "experiment.json", manifest)
        summary = {"experiment": "lm", "dataset": config.dataset, "model": config.resolved_model,
                   "corpus": corpus.source, "corpus_tokens": corpus.train_tokens, "seq_len": seq_len,
                   "tokens": plan.total_tokens, "dataset_size": plan.clock.sequences_per_epoch,
                   "world_size": info.world_size, "runs": []}
        for run in runs:
            run_dir = out / run.name
            records, finished, resume_run = from_main(lambda: _run_state(run, run_dir, continuing or resume, force))
            if not finished:
                records = list(train_run(run, task, run_dir, info=info, resume=resume_run, stop=stop,
                                         observer=observer))
            summary["runs"].append(_summary_row(run, records, seq_len))
            if info.is_main:
                write_json_atomically(out / "summary.json", summary)
        return summary
    finally:
        if lock is not None:
            lock.release()


def _run_state(run: RunConfig, run_dir: Path, resume: bool, force: bool) -> tuple[list[dict], bool, bool]:
    records = read_records(run_dir / METRICS_NAME) if (run_dir / METRICS_NAME).exists() else []
    finished = resume and len(records) == run.schedule.epochs and not force
    return records, finished, resume and not force and (run_dir / CHECKPOINT_NAME).exists()

