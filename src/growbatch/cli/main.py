"""The ``growbatch`` command: argparse only; the work is done by the library.

Each subcommand is a module with an ``add_<name>_parser(subparsers)`` that registers its flags and a
``handler(args) -> int``; :func:`main` turns bad input into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..training.rundir import LockError
from .common import Parser, UsageError, launched_rank
from .info import add_noise_parser, add_presets_parser
from .plan import add_plan_parser
from .report import add_report_parser
from .run import add_run_parser

__all__ = ["UsageError", "build_parser", "main"]

# To add a subcommand: write a module with `add_<name>_parser(subparsers)` that calls `set_defaults(handler=...)`
# and append it here. Handlers return the exit status and raise ValueError for bad input.
_SUBCOMMANDS = (add_plan_parser, add_presets_parser, add_noise_parser, add_run_parser, add_report_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``growbatch`` parser with every subcommand registered."""
    parser = Parser(prog="growbatch",
                     description="Train by increasing the batch size instead of decaying the learning rate.")
    parser.add_argument("--version", action="version", version=f"growbatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``growbatch`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Bad input (``ValueError``, ``TypeError``, :class:`UsageError`) becomes one line on
    stderr, ``growbatch: error: ...``, and status 2, with no traceback.
    """
    warnings.formatwarning = _format_warning  # one line, like the errors
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for messages that repeat the command
        return args.handler(args)
    except SystemExit as stop:  # argparse: --help/--version (0) or a bad flag (2)
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except (ValueError, TypeError, OverflowError, LockError) as err:  # OverflowError: NOTE [bounds] in checks.py
        _print_error(err, _one_line(err))
        return 2
    except BrokenPipeError:  # stdout closed by its reader (growbatch presets | head -1): stop quietly
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except OSError as err:  # a read-only or full output directory, a vanished file
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        _print_error(err, f"{err.strerror or _one_line(err)}{where}")
        return 1
    except KeyboardInterrupt:
        print("growbatch: interrupted", file=sys.stderr)
        return 130


# NOTE [one report]: under torchrun every rank runs main(). An error from the command line (raised
# before the process group exists) or one rank 0 relayed to the others (distributed.from_main) is the
# same on every rank, and rank 0 alone reports it; an error of one rank's own is reported by that rank,
# tagged with its number (run_command sets err.rank).
def _print_error(err: BaseException, text: str) -> None:
    if getattr(err, "relayed", False):
        return
    rank = getattr(err, "rank", None)
    if rank is None and launched_rank() > 0:
        return
    tag = f"[rank {rank}] " if rank else ""
    print(f"growbatch: error: {tag}{text}", file=sys.stderr)


def _format_warning(message: Warning | str, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"growbatch: warning: {' '.join(str(message).split())}\n"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's flush at exit does not raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):  # no stdout left to redirect
        pass


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # one line, whatever the message holds
