"""The ``growbatch`` command: argparse only; the work is done by the library (``planner``, ``presets``).

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its flags and a
``handler(args) -> int``; :func:`main` turns bad input into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from . import __version__
from .builders import MODES, step_schedule
from .planner import (
    LR_SCHEDULES,
    comparison_dict,
    convert_lr_schedule,
    format_comparison,
    format_noise_report,
    format_plan_table,
    format_table,
    noise_report,
)
from .presets import PRESETS, get_preset
from .run_command import add_report_parser, add_run_parser
from .rundir import LockError
from .schedule import Schedule

__all__ = ["UsageError", "build_parser", "main"]


class UsageError(ValueError):
    """Flags that are each valid but do not go together; reported like any bad value."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the library's (subparsers inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # every rank parses the same command line: one copy of the message is enough (NOTE [one report])
        self.exit(2, None if _launched_rank() > 0 else f"growbatch: error: {message} (see '{self.prog} --help')\n")


def _numbers(text: str) -> tuple[float, ...]:
    """Comma-separated epochs such as ``60,120,160``; whole numbers stay ints for readable errors."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated epochs such as 60,120,160, but got {text!r}") from None
    return tuple(values)


# -- plan ----------------------------------------------------------------------------
# Flags that describe a custom schedule (dest -> flag); None means "not given".
_SCHEDULE_FLAGS = {
    "lr": "--lr", "batch_size": "--batch-size", "momentum": "--momentum", "epochs": "--epochs",
    "milestones": "--milestones", "factor": "--factor", "mode": "--mode", "max_batch_size": "--max-batch-size",
    "dataset_size": "--dataset-size", "lr_schedule": "--lr-schedule", "batch_size_multiple": "--batch-size-multiple",
    "exact": "--exact",
}
_REQUIRED_FLAGS = ("lr", "batch_size", "epochs", "dataset_size")


def _add_plan(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="updates and samples per phase of a preset or a custom schedule",
        description="Print each phase (epochs, lr, momentum, batch size, noise scale, updates, samples) and the "
                    "totals, for a preset, a step schedule from flags, or an LR schedule converted to batch sizes.",
        epilog="examples: growbatch plan cifar10-wrn-increase | growbatch plan --compare cifar10-wrn-decay "
               "cifar10-wrn-increase | growbatch plan --lr 0.1 --batch-size 128 --epochs 200 "
               "--milestones 60,120,160 --dataset-size 50000 --mode hybrid")
    p.add_argument("preset", nargs="?", metavar="PRESET", help="a name from 'growbatch presets'")
    p.add_argument("--compare", nargs="+", metavar="PRESET", help="several presets side by side")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each epoch's last partial batch (default: the preset's; off for a custom schedule)")
    custom = p.add_argument_group("custom schedule (instead of PRESET)")
    custom.add_argument("--lr", type=float, help="initial learning rate (required)")
    custom.add_argument("--batch-size", type=int, help="initial global batch size (required)")
    custom.add_argument("--epochs", type=int, help="number of epochs (required)")
    custom.add_argument("--dataset-size", type=int, help="training samples N (required)")
    custom.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    custom.add_argument("--milestones", type=_numbers, help="epochs of the LR steps, e.g. 60,120,160")
    custom.add_argument("--factor", type=float, help="the noise scale is divided by it at each milestone (default 5)")
    custom.add_argument("--mode", choices=MODES, help="how each step is taken (default increase)")
    custom.add_argument("--max-batch-size", type=int, help="batch cap; past it the lr falls (default N/10)")
    custom.add_argument("--exact", action="store_true", default=None,
                        help="keep the exact g = lr/(1-m)*(N/B-1) rather than the B << N approximation")
    custom.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="convert this LR schedule to batch sizes at equal noise scale (instead of --mode)")
    custom.add_argument("--batch-size-multiple", type=int,
                        help="with --lr-schedule: round batch sizes to a multiple of this (default 1)")
    p.set_defaults(handler=_plan)


def _given(args: argparse.Namespace) -> list[str]:
    return [flag for dest, flag in _SCHEDULE_FLAGS.items() if getattr(args, dest) is not None]


def _preset_schedule(name: str, drop_last: bool | None) -> Schedule:
    schedule = get_preset(name).schedule()
    if drop_last is None:
        return schedule
    return dataclasses.replace(schedule, drop_last=drop_last)


def _custom_schedule(args: argparse.Namespace) -> tuple[Schedule, float | None]:
    """The schedule the flags describe, and the rounding error of g when it is a conversion."""
    missing = [_SCHEDULE_FLAGS[d] for d in _REQUIRED_FLAGS if getattr(args, d) is None]
    if missing:
        raise UsageError(f"a custom schedule needs {', '.join(missing)}; or name a preset "
                         f"(one of {', '.join(PRESETS)})")
    if args.lr_schedule is not None and args.mode is not None:
        raise UsageError(f"--mode {args.mode} and --lr-schedule {args.lr_schedule} cannot be combined; "
                         "--mode steps the paper's way, --lr-schedule converts an LR schedule: pick one")
    if args.lr_schedule is None and args.batch_size_multiple is not None:
        raise UsageError("--batch-size-multiple only applies with --lr-schedule; drop it or add --lr-schedule")
    common = dict(
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, dataset_size=args.dataset_size,
        momentum=0.9 if args.momentum is None else args.momentum, milestones=args.milestones or (),
        factor=5.0 if args.factor is None else args.factor, max_batch_size=args.max_batch_size,
        drop_last=bool(args.drop_last), exact=bool(args.exact),
    )
    if args.lr_schedule is not None:
        conversion = convert_lr_schedule(args.lr_schedule, batch_size_multiple=args.batch_size_multiple or 1,
                                         **common)
        return conversion.schedule, conversion.max_noise_error
    mode = args.mode or "increase"
    return step_schedule(mode, name=f"custom-{mode}", **common), None


def _plan(args: argparse.Namespace) -> int:
    given = _given(args)
    if args.compare:
        if args.preset is not None or given:
            extra = [args.preset] if args.preset is not None else given
            raise UsageError(f"--compare takes preset names only, but also got {' '.join(extra)}; "
                             "put every preset after --compare")
        plans = [_preset_schedule(name, args.drop_last).plan() for name in args.compare]
        print(json.dumps(comparison_dict(plans), indent=2) if args.json else format_comparison(plans))
        return 0
    if args.preset is not None:
        if given:
            raise UsageError(f"a preset is a complete schedule, but got {', '.join(given)} as well; "
                             "drop them, or leave out PRESET for a custom schedule")
        schedule, noise_error = _preset_schedule(args.preset, args.drop_last), None
    else:
        schedule, noise_error = _custom_schedule(args)
    plan = schedule.plan()
    if args.json:
        data = plan.to_dict()
        if noise_error is not None:
            data["max_noise_error"] = noise_error
        print(json.dumps(data, indent=2))
    else:
        print(format_plan_table(plan, noise_error))
    return 0


# -- presets ---------------------------------------------------------------------------
def _add_presets(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("presets", help="list the paper's schedules by name",
                              description="The paper's experiments, for 'growbatch plan PRESET'.")
    p.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    print(format_table(("preset", "schedule"), [(p.name, p.description) for p in PRESETS.values()], align="ll"))
    return 0


# -- noise -----------------------------------------------------------------------------
def _add_noise(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "noise", help="the noise scale of one setting and the settings equivalent to it",
        description="Print g = lr/(1-m) * (N/B - 1), its approximation lr*N/(B(1-m)), the effective lr "
                    "lr/(1-m), the batch that divides g by --factor, and other settings with the same g.")
    p.add_argument("--lr", type=float, required=True, help="learning rate")
    p.add_argument("--batch-size", type=int, required=True, help="global batch size B")
    p.add_argument("--dataset-size", type=int, required=True, help="training samples N")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum m (default 0: plain SGD)")
    p.add_argument("--factor", type=float, default=5.0, help="the wanted division of g (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(handler=_noise)


def _noise(args: argparse.Namespace) -> int:
    report = noise_report(args.lr, args.batch_size, args.dataset_size, args.momentum, factor=args.factor)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_noise_report(report))
    return 0


# -- the command -------------------------------------------------------------------------
# To add a subcommand: write `_add_<name>(subparsers)` that calls `set_defaults(handler=...)`
# and append it here. Handlers return the exit status and raise ValueError for bad input.
_SUBCOMMANDS = (_add_plan, _add_presets, _add_noise, add_run_parser, add_report_parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``growbatch`` parser with every subcommand registered."""
    parser = _Parser(prog="growbatch",
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
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for messages that repeat the command
        return args.handler(args)
    except SystemExit as stop:  # argparse: --help/--version (0) or a bad flag (2)
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except (ValueError, TypeError, LockError) as err:
        _print_error(err, _one_line(err))
        return 2
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
def _launched_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _print_error(err: BaseException, text: str) -> None:
    if getattr(err, "relayed", False):
        return
    rank = getattr(err, "rank", None)
    if rank is None and _launched_rank() > 0:
        return
    tag = f"[rank {rank}] " if rank else ""
    print(f"growbatch: error: {tag}{text}", file=sys.stderr)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # one line, whatever the message holds
