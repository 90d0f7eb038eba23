"""What a person watching ``growbatch run`` sees: a progress bar per epoch on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from ..training.settings import RunConfig

__all__ = ["ProgressObserver"]


class ProgressObserver:
    """The Trainer's observer for the CLI (rank 0 only).

    Args:
        bars: tqdm bars where stderr is a terminal; without them, or off a terminal (CI, a log file),
            a plain line per epoch: lr, batch, train loss, test accuracy, updates and wall time.
    """

    def __init__(self, bars: bool = True) -> None:
        self.bars = bars and sys.stderr.isatty()
        self._bar: Any = None

    def epoch_started(self, run: RunConfig, epoch: int, updates_in_epoch: int) -> None:
        self._close()
        if self.bars:
            from tqdm import tqdm

            self._bar = tqdm(total=updates_in_epoch, desc=f"{run.name} epoch {epoch + 1}/{run.schedule.epochs}",
                             leave=False, dynamic_ncols=True)

    def update_done(self, trainer: object) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def epoch_ended(self, run: RunConfig, record: dict) -> None:
        self._close()
        if not self.bars:
            print(f"[{run.name}] epoch {record['epoch'] + 1}/{run.schedule.epochs} lr={record['lr']:.4g} "
                  f"batch={record['batch_size']} train_loss={record['train_loss']:.4f} "
                  f"test_acc={record['test_acc']:.4f} updates={record['updates']} ({record['wall_s']:.1f} s)",
                  file=sys.stderr, flush=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
