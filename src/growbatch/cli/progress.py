"""What a person watching ``growbatch run`` sees: a bar per epoch (lr, batch size, running loss) on a
terminal, one kept line per epoch everywhere, and a table of the runs at the end."""

from __future__ import annotations

import os
import sys
from typing import Any

from ..training.settings import RunConfig

__all__ = ["ProgressObserver", "runs_table"]


class ProgressObserver:
    """The Trainer's observer for the CLI (rank 0 only).

    Args:
        bars: a tqdm bar per epoch where stderr is a terminal, showing the lr, the batch size and the
            running training loss; it gives way to the epoch's summary line, which stays (as off a
            terminal: CI, a log file).
    """

    def __init__(self, bars: bool = True, note: str | None = None) -> None:
        self.bars = bars and sys.stderr.isatty()
        self._bar: Any = None
        self._note = note  # printed once, as training starts (not before an error in the settings)

    def epoch_started(self, run: RunConfig, epoch: int, updates_in_epoch: int) -> None:
        self._close()
        if self._note:
            print(self._note, file=sys.stderr)
            self._note = None
        if self.bars:
            from tqdm import tqdm

            # a terminal that reports no width (a bare pseudo-terminal) would get an empty bar from tqdm
            sized = _terminal_columns() > 0
            self._bar = tqdm(total=updates_in_epoch, desc=f"{run.name} epoch {epoch + 1}/{run.schedule.epochs}",
                             leave=False, dynamic_ncols=sized, ncols=None if sized else 120, file=sys.stderr)

    def update_done(self, trainer: Any) -> None:
        if self._bar is None:
            return
        state, tally = trainer.state, trainer.state.tally
        loss = tally.loss_sum / tally.samples if tally.samples else float("nan")
        # drawn at the epoch's first update (an epoch shorter than tqdm's redraw interval shows its values
        # too), then at the bar's own rate, not once per update
        self._bar.set_postfix_str(f"lr={state.last_lr:.4g} batch={state.last_batch_size} loss={loss:.4f}",
                                  refresh=self._bar.n == 0)
        self._bar.update(1)

    def epoch_ended(self, run: RunConfig, record: dict) -> None:
        self._close()
        print(f"[{run.name}] epoch {record['epoch'] + 1}/{run.schedule.epochs} lr={record['lr']:.4g} "
              f"batch={record['batch_size']} train_loss={record['train_loss']:.4f} "
              f"{_test_text(record)} updates={record['updates']} ({record['wall_s']:.1f} s)",
              file=sys.stderr, flush=True)

    def finished(self, summary: dict) -> None:
        """The runs at a glance; the report's path follows on stdout (``growbatch run`` prints it last)."""
        print(runs_table(summary["runs"]), file=sys.stderr, flush=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _test_text(record: dict) -> str:
    """test_acc for a classifier; tokens and validation loss for a language model."""
    if "test_acc" in record:
        return f"test_acc={record['test_acc']:.4f}"
    return f"tokens={record['tokens']:,} test_loss={record['test_loss']:.4f} test_bpb={record['test_bpb']:.3f}"


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def runs_table(rows: list[dict]) -> str:
    """A plain-text table of ``summary.json``'s runs: final test accuracy, updates, wall time."""
    head = ("run", "final test acc %", "updates", "wall s")
    body = [(r["name"], f"{100 * r['final_test_acc']:.2f}" if "final_test_acc" in r else "", f"{r['updates']:,}",
             f"{r['wall_s']:.1f}") for r in rows]
    if rows and "final_test_loss" in rows[0]:  # a language model: validation loss and tokens
        head = ("run", "final val loss", "bpb", "tokens", "updates", "wall s")
        body = [(r["name"], f"{r['final_test_loss']:.4f}", f"{r['final_test_bpb']:.3f}", f"{r['tokens']:,}",
                 f"{r['updates']:,}", f"{r['wall_s']:.1f}") for r in rows]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in (head, *body)]
    return "\n".join(lines)
