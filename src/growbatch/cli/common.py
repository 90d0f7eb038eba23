"""What every subcommand shares: one-line errors, the parser class, and the flag types."""

from __future__ import annotations

import argparse
import os

__all__ = ["UsageError", "Parser", "launched_rank"]


class UsageError(ValueError):
    """Flags that are each valid but do not go together; reported like any bad value."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the library's (subparsers inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # every rank parses the same command line: one copy of the message is enough (NOTE [one report])
        self.exit(2, None if launched_rank() > 0 else f"growbatch: error: {message} (see '{self.prog} --help')\n")


def launched_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
