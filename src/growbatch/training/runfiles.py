"""One run's files and the loop that keeps them: ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``.

:func:`train_run` composes a :class:`~growbatch.training.trainer.Trainer` with its run directory: resume
from the checkpoint, a checkpoint before every metrics line, and the divergence message that says
what was kept. Rank 0 alone reads and writes the files (NOTE [rank 0 decides] in experiments.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_json_atomically
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .distributed import DistInfo, average_buffers, from_main
from .metrics import append_record, write_csv, write_records
from .settings import RunConfig
from .task import Task
from .trainer import DivergenceError, Interrupted, Observer, StopFlag, Trainer

__all__ = ["RunFiles", "train_run", "CHECKPOINT_NAME", "METRICS_NAME", "METRICS_CSV_NAME", "CONFIG_NAME",
           "TENSORBOARD_DIR"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
METRICS_CSV_NAME = "metrics.csv"  # the same records as metrics.jsonl, for spreadsheets and pandas
CONFIG_NAME = "config.json"
TENSORBOARD_DIR = "tensorboard"


class RunFiles:
    """The files of one run directory; every method is a no-op or a relay on ranks other than 0."""

    def __init__(self, run_dir: Path, config: RunConfig, info: DistInfo) -> None:
        self.run_dir, self.config, self.info = Path(run_dir), config, info
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self.metrics_path = self.run_dir / METRICS_NAME
        self.records: list[dict] = []
        self._tensorboard: Any = None

    def load(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue (read by rank 0, handed to every rank), or None to start afresh."""
        def read() -> dict[str, Any] | None:
            if not (resume and self.checkpoint_path.exists()):
                return None
            state = load_checkpoint(self.checkpoint_path)
            check_compatible(state["config"], self.config.to_dict(), self.checkpoint_path)
            return state
        return from_main(read)

    def start(self, records: list[dict], resumed: bool) -> None:
        """Write ``config.json``; drop metrics lines written after the checkpoint (and any torn line)."""
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.run_dir / CONFIG_NAME, {**self.config.to_dict(), "growbatch_version": __version__,
                                                           "git_commit": _git_commit(),
                                                           "world_size": self.info.world_size})
        if resumed or self.metrics_path.exists():  # the checkpoint is the truth
            write_records(self.metrics_path, records)
        self.records = list(records)
        write_csv(self.run_dir / METRICS_CSV_NAME, self.records)
        if self.config.settings.tensorboard:
            # steps are 1-based epochs: on a resume, events after the checkpoint's last epoch are dropped
            self._tensorboard = _tensorboard_writer(self.run_dir / TENSORBOARD_DIR,
                                                    purge_step=len(records) + 1 if records else 0)

    def save(self, trainer: Trainer) -> None:
        """Checkpoint ``trainer`` (every rank takes part: buffers are averaged, the tally summed)."""
        average_buffers(trainer.model)
        # a checkpoint is only written with finite weights, so the last one kept is always a good one
        trainer.check_finite()
        state = trainer.state_dict()
        if self.info.is_main:
            save_checkpoint(self.checkpoint_path, {"config": self.config.to_dict(), **state})

    def append(self, record: dict) -> None:
        """One epoch's record: a line of metrics.jsonl (made durable first), metrics.csv, the TensorBoard scalars."""
        if not self.info.is_main:
            return
        append_record(self.metrics_path, record)
        self.records.append(record)
        write_csv(self.run_dir / METRICS_CSV_NAME, self.records)  # rewritten whole: a few hundred lines at most
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, global_step=record["epoch"] + 1)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def kept(self) -> str:
        """What a diverged run leaves behind, and what to do about it."""
        fix = "lower the learning rate (--lr) and start over with --force"
        if self.checkpoint_path.exists():
            return f"the last good checkpoint {self.checkpoint_path} is kept; {fix}"
        return f"no checkpoint had been written yet; {fix}"


def train_run(config: RunConfig, task: Task, run_dir: Path, *, info: DistInfo, resume: bool = False,
              stop: StopFlag | None = None, observer: Observer | None = None) -> Iterator[dict]:
    """Train one run, yielding every epoch's metrics record: first those restored from a checkpoint,
    then each new one once its checkpoint and its metrics line are written.

    Raises:
        DivergenceError: the training loss (or a weight) became NaN or infinite.
        Interrupted: ``stop`` was set; a checkpoint was written first.
        ValueError: a checkpoint that does not fit this run.
    """
    files = RunFiles(run_dir, config, info)
    saved = files.load(resume)
    trainer = Trainer(config, task, info, stop=stop, observer=observer)
    if saved is not None:
        _restore(trainer, saved, files)
    files.start(trainer.state.records, resumed=saved is not None)
    yield from list(trainer.state.records)
    try:
        yield from trainer.epochs(checkpoint=lambda: files.save(trainer), write=files.append)
    except DivergenceError as err:
        raise DivergenceError(f"{err}; {files.kept()}") from None
    except Interrupted as err:
        raise Interrupted(f"{err}; checkpoint written to {files.checkpoint_path}") from None
    finally:
        files.close()


def _restore(trainer: Trainer, saved: dict[str, Any], files: RunFiles) -> None:
    try:
        trainer.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        # a checkpoint whose settings match but whose contents do not (edited, or another version's)
        detail = " ".join(str(err).split())
        raise ValueError(f"checkpoint {files.checkpoint_path} does not fit run {trainer.config.name} "
                         f"({type(err).__name__}: {detail[:200]}); delete it to start this run over, "
                         "or use --force") from None


def _tensorboard_writer(log_dir: Path, purge_step: int) -> Any:
    """torch's SummaryWriter; ``purge_step``: on a resume, events past the checkpoint's epochs are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package, which is not installed; install it with "
                         "pip install 'growbatch[tensorboard]' (or pip install tensorboard), or drop --tensorboard") \
            from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step or None)


def _git_commit() -> str | None:
    """The commit of the growbatch checkout, when it runs from one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
